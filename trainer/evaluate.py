"""Predictions over an evaluation stream, gathered from all ranks by key, and their metrics.

Every rank predicts its share; predictions are gathered as (key → row) and deduplicated, so results on
one and on several processes are identical. A clip's score is one forward pass over the whole clip (PSL's
``evaluate()``) or the max or mean of the model's scores on its chunks (PSL's inference tool takes the max over
chunks of the training length): :func:`clip_scores`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from trainer.data.atomic import atomic_write
from trainer.data.chunks import Chunking
from trainer.data.features import FrontEnd
from trainer.data.strong_labels import Event, chunk_targets, events_for_key
from trainer.metrics import keys_digest, tagging_metrics
from trainer.settings import PSLConfig


@dataclass
class Predictions:
    keys: list[str]
    probs: np.ndarray  # N × C
    targets: np.ndarray  # N × C

    def save(self, path: str | Path) -> None:
        """Durably: a run's final results read each evaluated epoch's predictions back after a resume."""
        with atomic_write(path, "wb", fsync=True) as f:
            np.savez_compressed(f, keys=np.array(self.keys), probs=self.probs, targets=self.targets)

    @classmethod
    def load(cls, path: str | Path) -> "Predictions":
        with np.load(path, allow_pickle=False) as z:
            return cls(list(z["keys"]), z["probs"], z["targets"])

    def metrics(self, class_names: list[str]) -> dict:
        m = tagging_metrics(self.probs, self.targets, class_names)
        m["keys_digest"] = keys_digest(self.keys)
        return m


def _merge(rows: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> Predictions:
    by_key = {}
    for key, p, t in rows:
        by_key.setdefault(key, (p, t))  # a key seen twice is a padding duplicate: keep one
    keys = sorted(by_key)
    if not keys:
        raise RuntimeError("evaluation produced no predictions: is the evaluation set empty?")
    return Predictions(keys, np.stack([by_key[k][0] for k in keys]), np.stack([by_key[k][1] for k in keys]))


Pooling = Literal["whole", "max", "mean"]
POOLINGS: tuple[Pooling, ...] = ("whole", "max", "mean")


def training_chunking(frontend: FrontEnd, psl: PSLConfig, clip_seconds: float) -> Chunking:
    """The chunks a run's model was trained on, for scoring it over them: ``psl.chunk_seconds`` every
    ``psl.chunk_hop``, or the whole clip (``features.clip_seconds``) for a model trained on clips."""
    return Chunking.of(frontend, psl.chunk_seconds or clip_seconds, psl.chunk_hop)


def pool_chunks(chunk_probs: torch.Tensor, clip_index: torch.Tensor, num_clips: int,
                pooling: Literal["max", "mean"]) -> torch.Tensor:
    """N_chunks × C chunk probabilities → num_clips × C: each clip's max or mean over its chunks."""
    if pooling not in ("max", "mean"):
        raise ValueError(f"pooling over chunks is 'max' or 'mean', got {pooling!r}")
    probs = chunk_probs.float()
    out = torch.zeros(num_clips, probs.shape[1], dtype=probs.dtype, device=probs.device)
    index = clip_index.to(probs.device)[:, None].expand_as(probs)
    return out.scatter_reduce(0, index, probs, reduce="amax" if pooling == "max" else "mean", include_self=False)


def clip_scores(model: torch.nn.Module, features: torch.Tensor, pooling: Pooling = "whole",
                chunking: Optional[Chunking] = None) -> torch.Tensor:
    """B × C clip probabilities for B × M × T ``features``: ``whole``, the model's clip output on the whole clip;
    ``max`` / ``mean``, pooled over its outputs on the chunks ``chunking`` cuts (give the chunk length the model
    was trained on)."""
    if pooling == "whole":
        probs, _ = model(features)
        return probs.float()
    if chunking is None:
        raise ValueError(f"pooling {pooling!r} over chunks needs a chunking")
    chunks, clip_index, _ = chunking.split(features)
    probs, _ = model(chunks)
    return pool_chunks(probs, clip_index, features.shape[0], pooling)


@torch.no_grad()
def predict_clips(model: torch.nn.Module, stream: Iterable[dict], accelerator: Accelerator,
                  pooling: Pooling = "whole", chunking: Optional[Chunking] = None) -> Predictions:
    """Clip-level probabilities (:func:`clip_scores`) for every sample of ``stream``, identical on all ranks."""
    model.eval()
    rows = []
    for batch in stream:
        if not batch["keys"]:  # a rank's empty last batch (ranks get equal batch counts)
            continue
        with accelerator.autocast():
            probs = clip_scores(model, batch["features"], pooling, chunking)
        probs = probs.float().cpu().numpy()
        labels = batch["labels"].float().cpu().numpy()
        rows.extend(zip(batch["keys"], probs, labels))
    return _merge(gather_object(rows))


@torch.no_grad()
def predict_chunks(
    model: torch.nn.Module,
    stream: Iterable[dict],
    accelerator: Accelerator,
    strong: dict[str, list[Event]],
    chunking: Chunking,
) -> Optional[Predictions]:
    """Chunk-level probabilities against true chunk labels from strong annotations.

    Chunks are keyed ``{key}@{start_s}``; clips without strong labels are left out. Returns None when no
    clip of the stream has strong labels.
    """
    model.eval()
    rows = []
    for batch in stream:
        if not batch["keys"]:
            continue
        chunks, clip_index, spans = chunking.split(batch["features"])
        with accelerator.autocast():
            probs, _ = model(chunks)
        probs = probs.float().cpu().numpy()
        spans_s = chunking.to_seconds(spans).numpy()
        clip_index = clip_index.cpu().numpy()
        for i, key in enumerate(batch["keys"]):
            events = events_for_key(strong, key)
            if events is None:
                continue
            sel = np.flatnonzero(clip_index == i)
            targets = chunk_targets(events, spans_s[sel], probs.shape[1])
            rows.extend((f"{key}@{spans_s[j, 0]:.2f}", probs[j], t) for j, t in zip(sel, targets))
    gathered = gather_object(rows)
    return _merge(gathered) if gathered else None
