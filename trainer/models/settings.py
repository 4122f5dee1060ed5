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
    init: Optional[str] = None  # a local checkpoint (a run directory or a weights file)
