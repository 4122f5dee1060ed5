"""PSLA attention pooling over time (Gong et al. 2021), written for B × channels × T inputs."""
from __future__ import annotations

import torch
from torch import nn

_EPS = 1e-7


class AttentionPooling(nn.Module):
    """``heads`` ≥ 1: per head, a sigmoid attention normalised over time weights a sigmoid classifier;
    heads are mixed by learnable weights (initialised 1/heads; a single head has none, as in PSLA).
    ``heads`` = 0: mean of the frame-wise sigmoid classifier over time.
    """

    def __init__(self, in_channels: int, num_classes: int, heads: int = 4) -> None:
        super().__init__()
        if heads < 0:
            raise ValueError(f"attention heads must be >= 0 (0: mean pooling), got {heads}")
        self.heads = heads
        self.num_classes = num_classes
        # One 1×1 conv per role with heads·C outputs computes all heads in one matmul.
        self.cla = nn.Conv1d(in_channels, max(heads, 1) * num_classes, 1)
        self.att = nn.Conv1d(in_channels, heads * num_classes, 1) if heads else None
        if heads > 1:
            self.head_weight = nn.Parameter(torch.full((heads,), 1.0 / heads))
        else:
            self.register_buffer("head_weight", torch.ones(1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x: B × channels × T → (clip_probs B × C, frame_probs B × T × C, norm_att B × H × C × T or None)."""
        b, _, t = x.shape
        cla = torch.sigmoid(self.cla(x)).view(b, -1, self.num_classes, t)  # B × H × C × T
        w = self.head_weight.view(1, -1, 1, 1)
        frame_probs = (cla * w).sum(dim=1).transpose(1, 2)
        if self.att is None:
            return frame_probs.mean(dim=1), frame_probs, None
        att = torch.sigmoid(self.att(x)).view(b, -1, self.num_classes, t).clamp(_EPS, 1.0 - _EPS)
        norm_att = att / att.sum(dim=3, keepdim=True)
        clip_probs = ((norm_att * cla).sum(dim=3) * w.squeeze(-1)).sum(dim=1)
        return clip_probs, frame_probs, norm_att
