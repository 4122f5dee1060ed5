"""Predictions over an evaluation stream, gathered from all ranks by key, and their metrics.

Every rank predicts its share; predictions are gathered as (key → row) and deduplicated, so results on
one and on several processes are identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from trainer.data.atomic import atomic_write
from trainer.data.chunks import Chunking
from trainer.data.strong_labels import Event, chunk_targets, events_for_key
from trainer.metrics import keys_digest, tagging_metrics


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


@torch.no_grad()
def predict_clips(model: torch.nn.Module, stream: Iterable[dict], accelerator: Accelerator) -> Predictions:
    """Clip-level probabilities for every sample of ``stream``, identical on all ranks."""
    model.eval()
    rows = []
    for batch in stream:
        if not batch["keys"]:  # a rank's empty last batch (ranks get equal batch counts)
            continue
        with accelerator.autocast():
            probs, _ = model(batch["features"])
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
