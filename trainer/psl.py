"""Pseudo strong labels inline: a frozen teacher labels each chunk of every clip while the student
trains on the same chunks, in one forward pass (Dinkel et al., ICASSP 2022, without the offline stage).

Only the student is trained (and wrapped for DDP); the teacher (one finished run's model, or the mean of
several: trainer/runs.py ``build_teacher``) runs in eval mode under inference mode, in the training
precision. Its probabilities are the chunk targets as they are (soft), or thresholded (hard). The
:class:`ChunkOracle` gives the true chunk labels instead, from strong annotations of the training clips:
the upper bound of what pseudo labels can give.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional, Sequence

import numpy as np
import torch

from trainer.data.augment import to_device
from trainer.data.chunks import Chunking
from trainer.data.strong_labels import Event, chunk_targets, events_for_key


@dataclass
class ChunkBatch:
    student: torch.Tensor  # N_chunks × C student probabilities (requires grad)
    teacher: Optional[torch.Tensor]  # N_chunks × C chunk targets (teacher or oracle, no grad), None without either
    weak: torch.Tensor  # N_chunks × C the chunk's clip (weak) labels
    clip_index: torch.Tensor  # N_chunks, which clip of the batch each chunk came from


class ChunkOracle:
    """True chunk labels from strong annotations (a class is present in a chunk its event overlaps)."""

    def __init__(self, strong: dict[str, list[Event]], num_classes: int) -> None:
        self.strong = strong
        self.num_classes = num_classes

    def __call__(self, keys: Sequence[str], clip_index: torch.Tensor, spans_s: torch.Tensor) -> torch.Tensor:
        """N_chunks × C labels for chunks of clips ``keys`` at ``spans_s`` (seconds)."""
        clip_index, spans_s = clip_index.cpu().numpy(), spans_s.numpy()
        targets = np.zeros((len(clip_index), self.num_classes), dtype=np.float32)
        for i, key in enumerate(keys):
            events = events_for_key(self.strong, key)
            if events is None:
                raise KeyError(f"psl.oracle: no strong labels for training clip {key}")
            rows = np.flatnonzero(clip_index == i)
            targets[rows] = chunk_targets(events, spans_s[rows], self.num_classes)
        return torch.from_numpy(targets)


class ChunkedTeacherStudent:
    """Chunks a batch, labels the chunks (teacher or oracle), runs the student on them, returns both.

    ``chunks_per_clip`` None trains on every chunk of every clip (each clip is decoded once and
    contributes all its chunks); k keeps k random chunks per clip, drawn from ``generator``.
    ``threshold`` set: the teacher's targets are hard, 1 where its probability reaches it.
    """

    def __init__(self, teacher: Optional[torch.nn.Module], chunking: Chunking, chunks_per_clip: Optional[int] = None,
                 threshold: Optional[float] = None, oracle: Optional[ChunkOracle] = None) -> None:
        if teacher is not None and oracle is not None:
            raise ValueError("chunk labels come from a teacher or an oracle, not both")
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        self.chunking = chunking
        self.chunks_per_clip = chunks_per_clip
        self.threshold = threshold
        self.oracle = oracle
        self._seconds = 0.0  # CPU: wall time spent in the teacher
        self._events: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()  # CUDA: pairs not yet read

    def teacher_seconds(self) -> float:
        """Time spent in the teacher since the last call, so the epoch log can show its cost (on a GPU from CUDA
        events, waiting here, once an epoch, for the last ones rather than a device sync every step)."""
        self._collect(wait=True)
        seconds, self._seconds = self._seconds, 0.0
        return seconds

    def _collect(self, wait: bool = False) -> None:
        """Add the finished event pairs' times (all of them with ``wait``) and drop the pairs: only the few the
        device has not reached yet are kept, not one pair per step of an epoch."""
        while self._events and (wait or self._events[0][1].query()):
            start, end = self._events.popleft()
            if wait:
                end.synchronize()
            self._seconds += start.elapsed_time(end) / 1000

    def __call__(
        self,
        student: torch.nn.Module,
        features: torch.Tensor,
        labels: torch.Tensor,
        keys: Optional[Sequence[str]] = None,  # the clips' keys: the oracle looks their events up
        autocast: Callable[[], ContextManager] = contextlib.nullcontext,  # the loop passes accelerator.autocast
        generator: Optional[torch.Generator] = None,
    ) -> ChunkBatch:
        chunks, clip_index, spans = self.chunking.split(features)
        if self.chunks_per_clip is not None:
            keep = self._pick(features.shape[0], len(clip_index) // features.shape[0], features.device, generator)
            chunks, clip_index, spans = chunks[keep], clip_index[keep], spans[keep]
        targets = None
        if self.teacher is not None:
            targets = self._teach(chunks, autocast)
        elif self.oracle is not None:
            targets = self.oracle(keys, clip_index, self.chunking.to_seconds(spans)).to(features.device)
        with autocast():
            student_probs, _ = student(chunks)
        return ChunkBatch(student_probs.float(), targets, labels[clip_index], clip_index)

    def _teach(self, chunks: torch.Tensor, autocast: Callable[[], ContextManager]) -> torch.Tensor:
        cuda = chunks.is_cuda
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        started = time.perf_counter()
        with torch.inference_mode(), autocast():
            probs, _ = self.teacher(chunks)
        # Inference tensors can't be saved for backward; a plain copy can serve as the target.
        probs = probs.float().clone()
        if self.threshold is not None:
            probs = (probs >= self.threshold).float()
        if cuda:
            end.record()
            self._events.append((start, end))
            self._collect()
        else:
            self._seconds += time.perf_counter() - started
        return probs

    def _pick(self, clips: int, chunks: int, device: torch.device, generator: Optional[torch.Generator]
              ) -> torch.Tensor:
        """Indices of ``chunks_per_clip`` random chunks of each of ``clips`` clips of ``chunks`` chunks each (the
        chunking's regular layout: clip i's chunks are i·chunks … (i+1)·chunks − 1), ascending. Drawn and chosen on
        the host from per-chunk scores, then copied without the host waiting for the device."""
        scores = torch.rand(clips * chunks, generator=generator, device="cpu").view(clips, chunks)
        pick = torch.argsort(scores, dim=1)[:, : self.chunks_per_clip].sort(dim=1).values
        keep = pick + torch.arange(clips)[:, None] * chunks
        return to_device(keep.flatten().numpy(), device)


def draws_per_epoch(num_clips: int, chunking: Chunking, clip_frames: int, chunks_per_clip: Optional[int]
                    ) -> Optional[int]:
    """Clips drawn per epoch so that an epoch counts chunks, as PSL's does (its epoch is one pass over every
    chunk of every clip): a draw trains on k of a clip's n chunks, so an epoch is n / k passes over the clips.
    None (one pass over the clips) when every draw trains on all of its clip's chunks."""
    if chunks_per_clip is None:
        return None
    n = chunking.count(clip_frames)
    return math.ceil(num_clips * n / min(chunks_per_clip, n))
