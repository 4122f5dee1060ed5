"""PSLA EfficientNet (Gong et al. 2021): timm backbone, frequency pooling, attention pooling over time."""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .pooling import AttentionPooling


class EfficientNetTagger(nn.Module):
    def __init__(self, variant: str, num_classes: int, att_heads: int = 4) -> None:
        super().__init__()
        # num_classes=0, global_pool='' makes timm return the B × ch × F' × T' feature map.
        self.backbone = timm.create_model(variant, pretrained=False, in_chans=1, num_classes=0, global_pool="")
        self.pooling = AttentionPooling(self.backbone.num_features, num_classes, att_heads)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """features: B × mel × frames (mel as image height, time as width) → B × ch × T'."""
        x = self.backbone(features.unsqueeze(1))
        # PSLA's AvgPool2d((4, 1)) over frequency (F' = 4 for 128 mel bins); fewer mel bins give
        # F' < 4, where the kernel shrinks to F'. Whatever frequency rows remain are averaged.
        x = F.avg_pool2d(x, (min(4, x.shape[2]), 1))
        return x.mean(dim=2)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features: B × mel × frames → (clip_probs B × C, frame_probs B × T' × C)."""
        clip_probs, frame_probs, _ = self.pooling(self.embed(features))
        return clip_probs, frame_probs
