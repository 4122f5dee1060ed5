"""PSL MobileNetV2 (Dinkel et al. 2022): frame-wise sigmoid classifier, clip = mean over time."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v2


class MobileNetV2Tagger(nn.Module):
    def __init__(self, num_classes: int, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        net = mobilenet_v2(weights=None, width_mult=width_mult, num_classes=num_classes, dropout=dropout)
        stem = net.features[0][0]
        # Log-mel input has one channel; keep the stem's geometry, only change in_channels.
        net.features[0][0] = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                                       bias=False)
        nn.init.kaiming_normal_(net.features[0][0].weight, mode="fan_out")
        self.features = net.features
        self.classifier = net.classifier  # Dropout + Linear, applied to every time step

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features: B × mel × frames → (clip_probs B × C, frame_probs B × T' × C)."""
        x = self.features(features.unsqueeze(1))  # B × ch × F' × T'
        x = x.mean(dim=2).transpose(1, 2)  # B × T' × ch: collapse frequency, keep time
        frame_probs = torch.sigmoid(self.classifier(x))
        return frame_probs.mean(dim=1), frame_probs
