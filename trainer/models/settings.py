"""The models package's settings: the ``model`` section of a run config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class ModelConfig:
    name: Literal["mobilenetv2", "efficientnet_b0", "efficientnet_b2"] = "mobilenetv2"
    width_mult: float = 1.0
    att_heads: int = 4  # EfficientNet attention pooling heads (0: mean pooling)
    dropout: float = 0.2
    # MobileNetV2's convolutions from scratch: torchvision's init, or PSL's (Xavier-uniform; both keep BatchNorm at
    # 1/0 and the classifier at N(0, 0.01))
    conv_init: Literal["kaiming_normal", "xavier_uniform"] = "kaiming_normal"
    # Where the starting weights come from: at most one of the two (the config check refuses both).
    # init: a local checkpoint of one of our runs (a run directory or a weights file), the whole model, classifier
    # included, loaded strictly after building it.
    init: Optional[str] = None
    # pretrained: the backbone's ImageNet weights, as PSLA starts; the RGB stem is summed to one channel and the
    # classifier is ours, freshly initialised. Downloaded by timm/torchvision (cached by them) unless
    # pretrained_file names a local copy of the file they would fetch (for machines without network access).
    pretrained: Optional[Literal["imagenet"]] = None
    pretrained_file: Optional[str] = None
