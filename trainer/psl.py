"""Pseudo strong labels inline: a frozen teacher labels each chunk of every clip while the student
trains on the same chunks, in one forward pass (Dinkel et al., ICASSP 2022, without the offline stage).

Only the student is trained (and wrapped for DDP); the teacher runs in eval mode under inference mode,
in the training precision.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch

from trainer.data.chunks import Chunking


@dataclass
class ChunkBatch:
    student: torch.Tensor  # N_chunks × C student probabilities (requires grad)
    teacher: Optional[torch.Tensor]  # N_chunks × C teacher probabilities (no grad), None without a teacher
    weak: torch.Tensor  # N_chunks × C the chunk's clip (weak) labels
    clip_index: torch.Tensor  # N_chunks, which clip of the batch each chunk came from


class ChunkedTeacherStudent:
    """Chunks a batch, runs the teacher and the student on the chunks, returns both.

    ``chunks_per_clip`` None trains on every chunk of every clip (each clip is decoded once and
    contributes all its chunks); k keeps k random chunks per clip, drawn from ``generator``.
    """

    def __init__(self, teacher: Optional[torch.nn.Module], chunking: Chunking,
                 chunks_per_clip: Optional[int] = None) -> None:
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        self.chunking = chunking
        self.chunks_per_clip = chunks_per_clip
        self.teacher_seconds = 0.0  # wall time spent in the teacher, so the log can show its cost

    def __call__(
        self,
        student: torch.nn.Module,
        features: torch.Tensor,
        labels: torch.Tensor,
        autocast: Callable[[], ContextManager] = contextlib.nullcontext,  # the loop passes accelerator.autocast
        generator: Optional[torch.Generator] = None,
    ) -> ChunkBatch:
        chunks, clip_index, _ = self.chunking.split(features)
        if self.chunks_per_clip is not None:
            keep = self._pick(clip_index, generator)
            chunks, clip_index = chunks[keep], clip_index[keep]
        teacher_probs = None
        if self.teacher is not None:
            started = time.perf_counter()
            with torch.inference_mode(), autocast():
                teacher_probs, _ = self.teacher(chunks)
            # Inference tensors can't be saved for backward; a plain copy can serve as the target.
            teacher_probs = teacher_probs.float().clone()
            if teacher_probs.is_cuda:
                torch.cuda.synchronize(teacher_probs.device)
            self.teacher_seconds += time.perf_counter() - started
        with autocast():
            student_probs, _ = student(chunks)
        return ChunkBatch(student_probs.float(), teacher_probs, labels[clip_index], clip_index)

    def _pick(self, clip_index: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        scores = torch.rand(len(clip_index), generator=generator, device="cpu").to(clip_index.device)
        keep = []
        for clip in torch.unique(clip_index):
            idx = torch.nonzero(clip_index == clip).flatten()
            keep.append(idx[torch.argsort(scores[idx])[: self.chunks_per_clip]])
        return torch.sort(torch.cat(keep)).values

