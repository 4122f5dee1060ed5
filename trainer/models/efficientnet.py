"""PSLA EfficientNet (Gong et al. 2021): timm backbone, frequency pooling, attention pooling over time."""
from __future__ import annotations

from typing import Optional

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .imagenet import with_imagenet_weights
from .pooling import AttentionPooling


class EfficientNetTagger(nn.Module):
    def __init__(self, variant: str, num_classes: int, att_heads: int = 4, pretrained: bool = False,
                 pretrained_file: Optional[str] = None) -> None:
        super().__init__()
        self.backbone = _imagenet_backbone(variant, pretrained_file) if pretrained else \
            timm.create_model(variant, in_chans=1, num_classes=0, global_pool="")
        self.pooling = AttentionPooling(self.backbone.num_features, num_classes, att_heads)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """features: B × mel × frames (mel as image height, time as width) → B × ch × T'."""
        x = self.backbone(features.unsqueeze(1))
        # PSLA's AvgPool2d((4, 1)) over frequency (F' = 4 for 128 mel bins); fewer mel bins give
        # F' < 4, where the kernel shrinks to F'. Whatever frequency rows remain are averaged.
        x = F.avg_pool2d(x, (min(4, x.shape[2]), 1))
        return x.mean(dim=2)

    def head(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`embed`'s B × ch × T' → (clip_probs B × C, frame_probs B × T' × C)."""
        clip_probs, frame_probs, _ = self.pooling(frames)
        return clip_probs, frame_probs

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features: B × mel × frames → (clip_probs B × C, frame_probs B × T' × C)."""
        return self.head(self.embed(features))


def _imagenet_backbone(variant: str, file: Optional[str]) -> nn.Module:
    """timm's ImageNet ``variant`` for one input channel, downloaded or read from ``file`` (a .safetensors or
    .pth state dict), without its classifier: B × 1 × H × W → the B × ch × H/32 × W/32 feature map.

    timm adapts the RGB stem to one channel by summing its weights over the input channels (adapt_input_conv),
    so a grey image gives the activations of that image in RGB. PSLA differs: efficientnet_pytorch's
    from_pretrained(in_channels=1) replaces the stem with a freshly initialised convolution; and its weights are
    the TensorFlow ones (timm's tf_efficientnet_*), not timm's own efficientnet_* weights used here.
    """
    # Built with the ImageNet classifier so that timm loads the checkpoint strictly (with num_classes=0 it drops
    # the classifier and loads non-strictly: a file of another model, e.g. efficientnet_pytorch's, would leave
    # the backbone silently random); the classifier is removed after loading.
    def load() -> nn.Module:
        return timm.create_model(variant, pretrained=True, in_chans=1,
                                 pretrained_cfg_overlay=dict(file=file) if file else None)

    source = timm.models.get_pretrained_cfg(variant)  # where timm downloads from: the hub, else the URL
    download = " or ".join(filter(None, [
        source.hf_hub_id and f"https://huggingface.co/{source.hf_hub_id}/resolve/main/model.safetensors", source.url]))
    backbone = with_imagenet_weights(load, file, variant, download)
    backbone.reset_classifier(0, global_pool="")
    return backbone
