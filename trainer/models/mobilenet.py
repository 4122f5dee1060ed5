"""PSL MobileNetV2 (Dinkel et al. 2022): frame-wise sigmoid classifier, clip = mean over time."""
from __future__ import annotations

from typing import Optional

import torch
from timm.models import adapt_input_conv
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from .imagenet import with_imagenet_weights

IMAGENET = MobileNet_V2_Weights.IMAGENET1K_V1  # torchvision's only MobileNetV2 weights: width_mult 1.0


class MobileNetV2Tagger(nn.Module):
    def __init__(self, num_classes: int, width_mult: float = 1.0, dropout: float = 0.2, pretrained: bool = False,
                 pretrained_file: Optional[str] = None, conv_init: str = "kaiming_normal") -> None:
        super().__init__()
        if pretrained and width_mult != 1.0:
            raise ValueError(f"width_mult: ImageNet weights exist for width_mult 1.0 only, got {width_mult}")
        net = mobilenet_v2(weights=None, width_mult=width_mult, num_classes=num_classes, dropout=dropout)
        stem = net.features[0][0]
        # Log-mel input has one channel; keep the stem's geometry, only change in_channels.
        net.features[0][0] = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                                       bias=False)
        nn.init.kaiming_normal_(net.features[0][0].weight, mode="fan_out")
        if conv_init == "xavier_uniform":  # PSL's MobileNetV2 (its convolutions have no bias)
            for m in net.features.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)
        elif conv_init != "kaiming_normal":
            raise ValueError(f"conv_init: 'kaiming_normal' or 'xavier_uniform', got {conv_init!r}")
        self.features = net.features
        self.classifier = net.classifier  # Dropout + Linear, applied to every time step
        if pretrained:
            def load() -> None:
                state = torch.load(pretrained_file, map_location="cpu", weights_only=True) if pretrained_file \
                    else IMAGENET.get_state_dict(progress=True, check_hash=True)
                self._load_imagenet(state)

            with_imagenet_weights(load, pretrained_file, "mobilenetv2", IMAGENET.url)

    def _load_imagenet(self, state: dict[str, torch.Tensor]) -> None:
        """torchvision's ImageNet state dict (the same module names as ours), strictly. The RGB stem is summed
        over its input channels, as timm adapts a stem to one channel (PSLA instead replaces the stem with a
        freshly initialised one); the ImageNet classifier gives way to ours, kept as initialised."""
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        state["features.0.0.weight"] = adapt_input_conv(1, state["features.0.0.weight"])
        state.update((f"classifier.{k}", v) for k, v in self.classifier.state_dict().items())
        self.load_state_dict(state)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """features: B × mel × frames → the frame embeddings before the classifier, B × ch × T'."""
        return self.features(features.unsqueeze(1)).mean(dim=2)  # collapse frequency, keep time

    def head(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`embed`'s B × ch × T' → (clip_probs B × C, frame_probs B × T' × C)."""
        frame_probs = torch.sigmoid(self.classifier(frames.transpose(1, 2)))  # the classifier at every time step
        return frame_probs.mean(dim=1), frame_probs

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features: B × mel × frames → (clip_probs B × C, frame_probs B × T' × C)."""
        return self.head(self.embed(features))
