"""The student's training loss: weak clip-level BCE, or PSL's loss on chunks labelled inline by a teacher.

BCE takes probabilities clamped to [1e-7, 1 − 1e-7], as PSLA does: attention pooling's head weights are
free, so a clip probability can leave [0, 1] (torch's BCE then raises, on a GPU as a device-side assert), and
under bf16 a sigmoid rounds to exactly 1. A NaN stays NaN, for the loop to stop naming the step.
"""
from __future__ import annotations

from typing import Callable, ContextManager

import torch

from trainer.psl import ChunkBatch, ChunkedTeacherStudent


def training_loss(model: torch.nn.Module, chunker: ChunkedTeacherStudent | None, batch: dict, alpha: float,
                  autocast: Callable[[], ContextManager]) -> torch.Tensor:
    """Weak clip-level BCE, or :func:`psl_loss` on the chunks ``chunker`` makes; forward passes under
    ``autocast`` (the loop passes accelerator.autocast), the loss in fp32."""
    if chunker is None:
        with autocast():
            probs, _ = model(batch["features"])
        return bce(probs, batch["labels"])
    return psl_loss(chunker(model, batch["features"], batch["labels"], keys=batch["keys"], autocast=autocast), alpha)


def psl_loss(batch: ChunkBatch, alpha: float) -> torch.Tensor:
    """α · BCE(student, chunk targets) + (1 − α) · BCE(student, weak labels). α = 1 is PSL, α = 0.5
    teacher-student, α = 0 (or no teacher or oracle) plain weak-label training on chunks."""
    weak = bce(batch.student, batch.weak)
    if batch.teacher is None or alpha == 0.0:
        return weak
    pseudo = bce(batch.student, batch.teacher)
    return alpha * pseudo + (1.0 - alpha) * weak


EPS = 1e-7  # PSLA's clamp


def bce(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of ``probs`` (clamped to [EPS, 1 − EPS], in fp32) against ``targets``."""
    p = probs.float().clamp(EPS, 1.0 - EPS)
    return -(targets * torch.log(p) + (1.0 - targets) * torch.log1p(-p)).mean()
