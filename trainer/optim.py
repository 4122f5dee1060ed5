"""The optimiser (Adam: PSLA's and PSL's) and the learning-rate schedule (PSLA's; PSL has none)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from trainer.settings import OptimConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Adam:
    """Adam(lr, weight_decay, betas) from ``cfg``: PSLA's defaults (5e-7, (0.95, 0.999)), or PSL's torch
    defaults (0, (0.9, 0.999)) where a recipe sets them."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)


def lr_factor(step: int, cfg: OptimConfig, steps_per_epoch: int) -> float:
    """Multiplier of cfg.lr for the optimiser step with 0-based index ``step``.

    Warm-up: linear from 1/warmup_steps to 1 over the first ``warmup_steps`` steps (0: none).
    Decay, as PSLA's MultiStepLR(milestones=range(start, ∞, step)) stepped after each 1-based epoch:
    epoch e (1-based) gets decay ** (number of milestones m ≤ e - 1), so with start=10, step=5 the
    first decayed epoch is 11, the second decay starts at epoch 16. ``lrscheduler_start`` None: no decay.
    """
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    finished_epochs = step // steps_per_epoch  # = e - 1 for the 1-based epoch e this step is in
    decays = 0
    if cfg.lrscheduler_start is not None and finished_epochs >= cfg.lrscheduler_start:
        decays = (finished_epochs - cfg.lrscheduler_start) // cfg.lrscheduler_step + 1
    return warm * cfg.lrscheduler_decay ** decays


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int) -> LambdaLR:
    """LambdaLR stepped once per optimiser step; ``steps_per_epoch`` counts optimiser steps
    (after gradient accumulation). Resumable through state_dict()/load_state_dict()."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if cfg.lrscheduler_step < 1:
        raise ValueError(f"optim.lrscheduler_step must be positive, got {cfg.lrscheduler_step}")
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch))
