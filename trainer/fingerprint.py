"""What a checkpoint was trained on, so that a resume can check it continues the same run.

Every checkpoint's progress records the resolved config (flattened to dotted keys) and a digest of the records
each dataset contributes to each split (keys, labels, weights, shard places: what the run trains and selects
on) plus the vocabulary. A resume compares them with its own and stops naming what changed, unless
``run.allow_changed`` is set. Keys in :data:`MAY_CHANGE` are not compared: they say where the run lives, how
fast it reads or what it logs, not what it learns (``run.seed`` has its own rule: the checkpoint's is kept).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.datasets import Splits
from trainer.data.records import RecordTable

MAY_CHANGE = frozenset({
    "run.name", "run.dir", "run.seed", "run.resume", "run.overwrite", "run.allow_changed",
    "train.trackers", "train.log_every", "train.save_every_steps", "train.stop_after_steps", "train.cpu_threads",
    "data.num_threads", "data.prefetch", "data.readahead", "data.on_corrupt", "data.max_corrupt_fraction",
    "evaluation.batch_size",
})


class ResumeMismatch(RuntimeError):
    """The run to be resumed was trained on other data or settings."""


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys; values other than numbers, strings and booleans as their text (as
    trackers take them)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def dataset_digests(table: RecordTable) -> dict[str, str]:
    """Dataset directory → a digest of the records the table takes from it (order included). Shard indices
    are counted within the directory, so one dataset's digest does not depend on the others listed with it."""
    dirs = [str(Path(s).parent) for s in table.shards]
    out = {}
    for d in dict.fromkeys(dirs):
        ids = np.array([i for i, x in enumerate(dirs) if x == d])
        part, local = table, table.shard_index  # one dataset (the usual case): no copy
        if len(ids) < len(dirs):
            part = table.take(np.isin(table.shard_index, ids))
            local = np.searchsorted(ids, part.shard_index)
        h = hashlib.sha256()  # the fastest of hashlib's on CPUs with SHA extensions
        h.update("\n".join(Path(table.shards[i]).name for i in ids).encode())
        for name, dtype in RecordTable.COLUMNS.items():
            column = local if name == "shard_index" else getattr(part, name)
            if name in ("label_offsets", "key_offsets"):
                column = column - column[0]
            h.update(np.ascontiguousarray(column, dtype=dtype))
        out[d] = h.hexdigest()[:32]
    return out


def fingerprint(config: dict, splits: Splits) -> dict[str, Any]:
    """What the checkpoints of a run record: its config (dotted keys, :data:`MAY_CHANGE` left out) and data."""
    return {"config": {k: v for k, v in flat(config).items() if k not in MAY_CHANGE},
            "data": {"vocabulary": splits.vocab.digest(),
                     **{split: dataset_digests(getattr(splits, split)) for split in ("train", "valid", "eval")}}}


def changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's fingerprint and this launch's, one line per config key or dataset."""
    out = []
    old, new = saved.get("config", {}), now["config"]
    for key in sorted(old.keys() & new.keys()):  # a key one version of the code lacks is not a change of settings
        if old[key] != new[key]:
            out.append(f"{key}: {old[key]!r} → {new[key]!r}")
    old, new = saved.get("data", {}), now["data"]
    if old.get("vocabulary") != new["vocabulary"]:
        out.append("data vocabulary: the class list changed")
    for split in ("train", "valid", "eval"):
        before, after = old.get(split, {}), new[split]
        for d in sorted(before.keys() | after.keys()):
            if d not in after:
                out.append(f"data {split}: {d} no longer used")
            elif d not in before:
                out.append(f"data {split}: {d} added")
            elif before[d] != after[d]:
                out.append(f"data {split}: the records of {d} changed (manifest.jsonl or weights.csv)")
    return out


def check_resume(saved: dict[str, Any] | None, now: dict[str, Any], allow_changed: bool, checkpoint: Path) -> list[str]:
    """Stop a resume whose data or settings differ from the checkpoint's, naming each difference, unless
    ``allow_changed``; the differences allowed (to be logged), or a note when the checkpoint records none."""
    if saved is None:
        return [f"{checkpoint} records no fingerprint (saved by an older version): data and settings not checked"]
    found = changes(saved, now)
    if found and not allow_changed:
        raise ResumeMismatch(f"resuming {checkpoint}, but since it was saved: " + "; ".join(found)
                             + ". Restore them, or set run.allow_changed=true to continue with the change")
    return [f"resuming with changes (run.allow_changed): {c}" for c in found]
