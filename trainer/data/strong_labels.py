"""Strong (onset/offset) labels in AudioSet's strong-label TSV format, turned into chunk targets.

Format: a header ``segment_id  start_time_seconds  end_time_seconds  label`` and one event per row,
``label`` a class mid. A segment id matches a shard key either exactly (the synthetic set) or with the
key's trailing ``_{end}`` dropped (AudioSet: segment ``YTID_30000`` ↔ key ``YTID_30000_40000``).
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from trainer.data.manifest import Vocabulary

Event = tuple[float, float, int]  # onset s, offset s, class index


def load_strong_labels(path: str | Path, vocab: Vocabulary) -> dict[str, list[Event]]:
    """Events per segment id; rows whose label is outside the vocabulary are skipped (the eval
    vocabulary may be a subset of the strong-label release's)."""
    events: dict[str, list[Event]] = defaultdict(list)
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        need = {"segment_id", "start_time_seconds", "end_time_seconds", "label"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a TSV header with {', '.join(sorted(need))}")
        for lineno, row in enumerate(reader, 2):
            cls = vocab.index.get(row["label"])
            if cls is None:
                continue
            try:
                onset, offset = float(row["start_time_seconds"]), float(row["end_time_seconds"])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: onset/offset are not numbers") from None
            events[row["segment_id"]].append((onset, offset, cls))
    return dict(events)


def events_for_key(strong: dict[str, list[Event]], key: str) -> list[Event] | None:
    if key in strong:
        return strong[key]
    return strong.get(key.rsplit("_", 1)[0])


def chunk_targets(events: list[Event], spans: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot targets for chunks ``spans`` (N × 2, seconds): a class is present in a chunk if one of
    its events overlaps the chunk by any amount."""
    targets = np.zeros((len(spans), num_classes), dtype=np.float32)
    for onset, offset, cls in events:
        overlap = (spans[:, 0] < offset) & (spans[:, 1] > onset)
        targets[overlap, cls] = 1.0
    return targets
