import math

import pytest
import torch

from trainer.models.settings import ModelConfig
from trainer.models import build_model, load_weights
from trainer.models.pooling import AttentionPooling


def _check_outputs(model, x, num_classes):
    model.eval()
    with torch.no_grad():
        clip, frame = model(x)
    t_out = math.ceil(x.shape[2] / 32)
    assert clip.shape == (x.shape[0], num_classes)
    assert frame.shape == (x.shape[0], t_out, num_classes)
    for p in (clip, frame):
        assert torch.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    return clip, frame


def test_mobilenet_clip_is_mean_of_frames():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mobilenetv2", width_mult=0.35), num_classes=10)
    clip, frame = _check_outputs(model, torch.randn(2, 64, 200), 10)
    torch.testing.assert_close(clip, frame.mean(dim=1))


def test_mobilenet_param_count():
    model = build_model(ModelConfig(name="mobilenetv2", width_mult=1.0), num_classes=527)
    assert sum(p.numel() for p in model.parameters()) == 2_898_383  # ≈ 2.9 M, as in PSL


@pytest.mark.parametrize("heads", [4, 1, 0])
def test_efficientnet_b0_outputs(heads):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="efficientnet_b0", att_heads=heads), num_classes=7)
    _check_outputs(model, torch.randn(2, 128, 256), 7)


def test_efficientnet_b2_width():
    model = build_model(ModelConfig(name="efficientnet_b2"), num_classes=7)
    assert model.pooling.cla.in_channels == 1408


def test_attention_pooling_normalised_and_weighted():
    torch.manual_seed(0)
    pool = AttentionPooling(in_channels=16, num_classes=5, heads=4)
    torch.testing.assert_close(pool.head_weight.detach(), torch.full((4,), 0.25))
    x = torch.randn(3, 16, 9)
    clip, frame, norm_att = pool(x)
    assert norm_att.shape == (3, 4, 5, 9)
    torch.testing.assert_close(norm_att.sum(dim=3), torch.ones(3, 4, 5))
    # Head h's clip output is Σ_t att·cla; heads are mixed by head_weight.
    cla = torch.sigmoid(pool.cla(x)).view(3, 4, 5, 9)
    expected = sum(pool.head_weight[h] * (norm_att[:, h] * cla[:, h]).sum(-1) for h in range(4))
    torch.testing.assert_close(clip, expected)
    torch.testing.assert_close(frame, (cla * 0.25).sum(1).transpose(1, 2))


def test_mean_pooling():
    pool = AttentionPooling(in_channels=16, num_classes=5, heads=0)
    clip, frame, norm_att = pool(torch.randn(2, 16, 6))
    assert norm_att is None
    torch.testing.assert_close(clip, frame.mean(dim=1))


def test_load_weights_strips_prefix_and_names_mismatch(tmp_path):
    cfg = ModelConfig(name="mobilenetv2", width_mult=0.35)
    src, dst = build_model(cfg, 4), build_model(cfg, 4)
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "w.pt")
    load_weights(dst, tmp_path / "w.pt")
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)
    other = build_model(cfg, 5)
    with pytest.raises(ValueError, match=r"classifier\.1\.weight"):
        load_weights(other, tmp_path / "w.pt")
