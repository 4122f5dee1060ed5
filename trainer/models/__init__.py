"""Model factory. Models see only feature tensors: they never import the data pipeline or the loop."""
from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from .efficientnet import EfficientNetTagger
from .mobilenet import MobileNetV2Tagger
from .settings import ModelConfig


FRAME_STRIDE = 32  # input frames per output frame: both backbones downsample time by 32


def build_model(cfg: ModelConfig, num_classes: int, load_pretrained: bool = True) -> nn.Module:
    """forward(B × mel × frames) → (clip_probs B × C, frame_probs B × T' × C), both after sigmoid; it is
    head(embed(features)), where embed gives the frame embeddings before the classifier (B × ch × T').

    T' = ceil(frames / FRAME_STRIDE). Both backbones average out whatever frequency rows remain, so they take any
    number of mel bins. With cfg.pretrained the backbone starts from ImageNet weights (PretrainedUnavailable
    when they cannot be had); load_pretrained=False skips them where trained weights are loaded over the model
    next (a finished run, a resumed checkpoint), so that no download is attempted for nothing.
    """
    imagenet = dict(pretrained=load_pretrained and cfg.pretrained == "imagenet", pretrained_file=cfg.pretrained_file)
    if cfg.name == "mobilenetv2":
        return MobileNetV2Tagger(num_classes, cfg.width_mult, cfg.dropout, conv_init=cfg.conv_init, **imagenet)
    if cfg.name in ("efficientnet_b0", "efficientnet_b2"):
        return EfficientNetTagger(cfg.name, num_classes, cfg.att_heads, **imagenet)
    raise ValueError(f"model.name: unknown model {cfg.name!r}")


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict, a torch file or ``.safetensors`` (a 'module.' prefix from DataParallel/DDP is
    stripped); strict."""
    if Path(path).suffix == ".safetensors":
        state = safetensors.torch.load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(f"{path}: does not fit the model: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(f"{path}: parameter {k} has shape {tuple(v.shape)}, "
                             f"the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state)
