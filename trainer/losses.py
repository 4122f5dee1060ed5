"""The student's training loss: weak clip-level BCE, or PSL's loss on chunks labelled inline by a teacher."""
from __future__ import annotations

from typing import Callable, ContextManager

import torch
import torch.nn.functional as F

from trainer.psl import ChunkBatch, ChunkedTeacherStudent


def training_loss(model: torch.nn.Module, chunker: ChunkedTeacherStudent | None, batch: dict, alpha: float,
                  autocast: Callable[[], ContextManager]) -> torch.Tensor:
    """Weak clip-level BCE, or :func:`psl_loss` on the chunks ``chunker`` makes; forward passes under
    ``autocast`` (the loop passes accelerator.autocast), the loss in fp32."""
    if chunker is None:
        with autocast():
            probs, _ = model(batch["features"])
        return F.binary_cross_entropy(probs.float(), batch["labels"])
    return psl_loss(chunker(model, batch["features"], batch["labels"], keys=batch["keys"], autocast=autocast), alpha)


def psl_loss(batch: ChunkBatch, alpha: float) -> torch.Tensor:
    """α · BCE(student, chunk targets) + (1 − α) · BCE(student, weak labels). α = 1 is PSL, α = 0.5
    teacher-student, α = 0 (or no teacher or oracle) plain weak-label training on chunks."""
    weak = F.binary_cross_entropy(batch.student, batch.weak)
    if batch.teacher is None or alpha == 0.0:
        return weak
    pseudo = F.binary_cross_entropy(batch.student, batch.teacher)
    return alpha * pseudo + (1.0 - alpha) * weak
