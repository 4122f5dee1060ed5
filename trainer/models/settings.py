"""The models package's settings: the ``model`` section of a run config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from trainer.bounds import check_range


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

    def validate(self, section: str) -> None:
        """ValueError naming the dotted key of the first setting out of its domain or at odds with another."""
        check_range(f"{section}.width_mult", self.width_mult, 0, low_open=True)
        check_range(f"{section}.att_heads", self.att_heads, 0)  # 0: mean pooling
        check_range(f"{section}.dropout", self.dropout, 0, 1, high_open=True)
        if self.pretrained and self.init:
            raise ValueError(f"{section}.init: a run's checkpoint replaces every weight, ImageNet's included; set "
                             f"{section}.init or {section}.pretrained, not both ({section}.pretrained=null to start "
                             f"from {section}.init)")
        if self.pretrained_file and not self.pretrained:
            raise ValueError(f"{section}.pretrained_file: a local copy of the ImageNet weights; set "
                             f"{section}.pretrained: imagenet to use it")
        if self.pretrained and self.name == "mobilenetv2" and self.width_mult != 1.0:
            raise ValueError(f"{section}.width_mult: torchvision's ImageNet MobileNetV2 weights are for width_mult "
                             f"1.0, got {self.width_mult}; set {section}.width_mult=1.0 or {section}.pretrained=null")
