"""model.pretrained: imagenet, from local copies of ImageNet-shaped weights (nothing is downloaded here)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from torchvision.models import mobilenet_v2

from runkit import REPO, repo_pythonpath
from trainer.config import ConfigError, load_config
from trainer.models import build_model
from trainer.models.imagenet import PretrainedUnavailable
from trainer.models.settings import ModelConfig


def _assert_starts_from(backbone: dict[str, torch.Tensor], imagenet: dict[str, torch.Tensor], stem: str,
                        classifier: str) -> None:
    """Every ImageNet weight is in the backbone, the stem summed over RGB; the ImageNet classifier is not."""
    assert set(backbone) == {k for k in imagenet if not k.startswith(classifier)}
    for k, v in backbone.items():
        torch.testing.assert_close(v, imagenet[k].sum(dim=1, keepdim=True) if k == stem else imagenet[k],
                                   rtol=0, atol=0, msg=k)


def test_efficientnet_starts_from_local_imagenet_weights(tmp_path):
    torch.manual_seed(0)
    imagenet = timm.create_model("efficientnet_b0").state_dict()  # ImageNet-shaped: RGB stem, 1000 classes
    save_file(imagenet, tmp_path / "model.safetensors")
    model = build_model(ModelConfig(name="efficientnet_b0", pretrained="imagenet",
                                    pretrained_file=str(tmp_path / "model.safetensors")), num_classes=7)
    assert model.backbone.conv_stem.in_channels == 1
    _assert_starts_from(model.backbone.state_dict(), imagenet, "conv_stem.weight", "classifier.")
    clip, frame = model.eval()(torch.randn(2, 128, 96))
    assert clip.shape == (2, 7) and frame.shape == (2, 3, 7)


def test_mobilenet_starts_from_local_imagenet_weights(tmp_path):
    torch.manual_seed(0)
    imagenet = mobilenet_v2(weights=None).state_dict()
    torch.save(imagenet, tmp_path / "mobilenet_v2-b0353104.pth")
    model = build_model(ModelConfig(name="mobilenetv2", pretrained="imagenet",
                                    pretrained_file=str(tmp_path / "mobilenet_v2-b0353104.pth")), num_classes=5)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    _assert_starts_from(backbone, imagenet, "features.0.0.weight", "classifier.")
    assert model.classifier[1].weight.shape == (5, 1280)  # ours, not ImageNet's 1000 classes
    clip, frame = model.eval()(torch.randn(2, 64, 96))
    assert clip.shape == (2, 5) and frame.shape == (2, 3, 5)


def test_a_file_of_another_model_is_refused(tmp_path):
    """Strict loading: a file that is not this backbone's ImageNet weights fails, naming the key, rather than
    leaving the backbone randomly initialised."""
    torch.save(mobilenet_v2(weights=None).state_dict(), tmp_path / "mobilenet.pth")
    with pytest.raises(PretrainedUnavailable, match=r"^model\.pretrained_file: .*mobilenet\.pth does not load as the "
                                                    r"ImageNet weights of efficientnet_b0 \(RuntimeError"):
        build_model(ModelConfig(name="efficientnet_b0", pretrained="imagenet",
                                pretrained_file=str(tmp_path / "mobilenet.pth")), num_classes=3)


OFFLINE = """
from trainer.models import build_model
from trainer.models.imagenet import PretrainedUnavailable
from trainer.models.settings import ModelConfig
for name in ("efficientnet_b0", "mobilenetv2"):
    build_model(ModelConfig(name=name, pretrained="imagenet"), 3, load_pretrained=False)  # no download tried
    try:
        build_model(ModelConfig(name=name, pretrained="imagenet"), 3)
    except PretrainedUnavailable as e:
        print(e)
"""


def test_offline_download_failure_says_how_to_use_a_local_copy(tmp_path):
    """No network: the hub is offline and every HTTP(S) request goes to a closed port, with empty caches."""
    closed = "http://127.0.0.1:9"
    env = dict(os.environ, PYTHONPATH=repo_pythonpath(os.environ), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), TORCH_HOME=str(tmp_path / "torch"), HTTP_PROXY=closed,
               HTTPS_PROXY=closed, http_proxy=closed, https_proxy=closed, NO_PROXY="", no_proxy="")
    proc = subprocess.run([sys.executable, "-c", OFFLINE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    effnet, mobilenet = [line for line in proc.stdout.splitlines() if line.startswith("model.pretrained")]
    for message, name, file in ((effnet, "efficientnet_b0", "timm/efficientnet_b0.ra_in1k"),
                                (mobilenet, "mobilenetv2", "mobilenet_v2-b0353104.pth")):
        assert message.startswith(f"model.pretrained: the ImageNet weights of {name} could not be downloaded")
        assert file in message and "set model.pretrained_file to its local path" in message


def test_config_checks(tmp_path):
    def cfg(*overrides: str, check_paths: bool = False):
        return load_config(None, [f"data.train=[{tmp_path}]", *overrides], check_paths=check_paths)

    assert cfg("model.pretrained=imagenet").model.pretrained == "imagenet"
    with pytest.raises(ConfigError, match=r"^model\.pretrained: 'resnet' is not one of 'imagenet'"):
        cfg("model.pretrained=resnet")
    with pytest.raises(ConfigError, match=r"^model\.init: .* not both"):
        cfg("model.pretrained=imagenet", "model.init=runs/x")
    with pytest.raises(ConfigError, match=r"^model\.pretrained_file: .* set model\.pretrained: imagenet"):
        cfg("model.pretrained_file=w.pth")
    with pytest.raises(ConfigError, match=r"^model\.width_mult: .* width_mult 1\.0, got 0\.35"):
        cfg("model.pretrained=imagenet", "model.width_mult=0.35")
    assert cfg("model.name=efficientnet_b0", "model.pretrained=imagenet", "model.width_mult=0.35")  # MobileNet's
    with pytest.raises(ConfigError, match=r"^model\.pretrained_file: .*nope\.pth does not exist"):
        cfg("model.pretrained=imagenet", f"model.pretrained_file={tmp_path / 'nope.pth'}", check_paths=True)


def test_recipes_pretrained_as_their_papers():
    """PSLA starts from ImageNet, PSL's MobileNetV2 from scratch."""
    def model(name: str) -> ModelConfig:
        return load_config(REPO / "configs" / name, check_paths=False).model

    assert model("full_as.yaml").pretrained == model("balanced_as.yaml").pretrained == "imagenet"
    assert model("psl_teacher_full_as.yaml").pretrained is None
    assert model("psl_balanced_chunk_2sec.yaml").pretrained is None
