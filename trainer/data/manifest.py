"""The shard dataset format's files, shared by the shard builder (writer) and the input pipeline (reader): their
names, ``manifest.jsonl`` and ``weights.csv`` written and read, and the vocabulary.

A built dataset is a directory ``shards/NAME/`` holding tar shards with DALI ``.idx`` files beside
them, ``manifest.jsonl`` (one :class:`ShardRecord` per sample), ``weights.csv``,
``class_labels_indices.csv``, ``dataset.json``, ``rejects.jsonl`` and ``manifest.cache``. A dataset made by
``tools.enhance_labels`` links to another's shards and adds ``enhancement.csv``: the labels its manifest has
beyond those in the shards.

The records and their columns are trainer/data/records.py's, a record's bytes trainer/data/shard_bytes.py's.
``manifest.cache`` (trainer/data/record_cache.py) holds the manifest as memory-mapped columns; it is derived
from ``manifest.jsonl`` and ``weights.csv`` and records their size and mtime (:func:`source_stats`): the
builder writes it, and the loader rebuilds it whenever it is missing or either file changed.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from trainer.data.atomic import atomic_write
from trainer.data.record_cache import load_cache, save_cache, try_save_cache
from trainer.data.records import RecordTable, ShardRecord, TableBuilder, record_fields

MANIFEST = "manifest.jsonl"
MANIFEST_CACHE = "manifest.cache"
WEIGHTS = "weights.csv"
VOCABULARY = "class_labels_indices.csv"
DATASET_INFO = "dataset.json"
REJECTS = "rejects.jsonl"
ENHANCEMENT = "enhancement.csv"


def write_manifest(path: Path, records: Iterable[ShardRecord]) -> None:
    with atomic_write(path, private=True) as f:  # parts of a build that finish together both write it
        for r in records:
            f.write(r.to_json() + "\n")


def read_manifest(dataset_dir: str | Path, cache: bool = True) -> RecordTable:
    """The records of ``manifest.jsonl``, shard names relative to ``dataset_dir``; weights come from
    ``weights.csv`` when present (it is the source of truth for sampling, so a user can swap in other weights
    without rebuilding). With ``cache``, from ``manifest.cache``, which is (re)built first when it is missing or
    older than either file; without, parsed from the text files (what ``tools.verify_shards`` checks)."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is {dataset_dir} a dataset built by tools.build_shards?")
    sources = source_stats(dataset_dir)  # before parsing: a change made meanwhile leaves the cache stale
    if cache:
        table = load_cache(dataset_dir / MANIFEST_CACHE, sources)
        if table is not None:
            return table
    table = _parse_manifest(dataset_dir)
    if cache:
        try_save_cache(dataset_dir / MANIFEST_CACHE, table, sources)
    return table


def _parse_manifest(dataset_dir: Path) -> RecordTable:
    path = dataset_dir / MANIFEST
    builder = TableBuilder()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    builder.add(*record_fields(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: {e}") from None
    table = builder.table()
    weights_path = dataset_dir / WEIGHTS
    if weights_path.is_file():
        weights = read_weights(weights_path)
        if len(weights) != len(table):
            raise ValueError(f"{weights_path} has {len(weights)} weights for {len(table)} manifest records")
        table.weight = np.array(weights, dtype=np.float64)
    return table


def write_weights(path: Path, weights: Iterable[float]) -> None:
    with atomic_write(path, private=True) as f:
        for w in weights:
            f.write(f"{w!r}\n")


def read_weights(path: Path) -> list[float]:
    with open(path) as f:
        return [float(line) for line in f if line.strip()]



def source_stats(dataset_dir: Path) -> dict[str, list[int] | None]:
    """Size and mtime (ns) of the files the cache is derived from; None for an absent weights.csv."""
    stats = {}
    for name in (MANIFEST, WEIGHTS):
        try:
            st = os.stat(dataset_dir / name)
            stats[name] = [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            stats[name] = None
    return stats


def write_manifest_cache(dataset_dir: str | Path, table: RecordTable) -> None:
    """Write ``manifest.cache`` for the table just written as ``manifest.jsonl`` and ``weights.csv`` (the builder)."""
    dataset_dir = Path(dataset_dir)
    save_cache(dataset_dir / MANIFEST_CACHE, table, source_stats(dataset_dir))



@dataclass(frozen=True)
class Vocabulary:
    """A label vocabulary in the ``class_labels_indices.csv`` form (index, mid, display_name)."""

    mids: tuple[str, ...]
    names: tuple[str, ...]
    index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.index.update({m: i for i, m in enumerate(self.mids)})

    def __len__(self) -> int:
        return len(self.mids)

    def digest(self) -> str:
        """A short hash that changes whenever the class order or ids change."""
        return hashlib.sha256("\n".join(self.mids).encode()).hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """Read a ``class_labels_indices.csv``; raises ValueError naming the file, the line and what is wrong with
        a malformed row, a duplicate index, mid or display name (a duplicate mid's class would never get a
        positive), or indices that are not 0..N-1."""
        path = Path(path)
        rows: dict[int, tuple[str, str]] = {}
        seen: dict[str, dict[str, int]] = {"mid": {}, "display_name": {}}  # value -> line
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"index", "mid", "display_name"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected columns index,mid,display_name")
            for row in reader:
                line = reader.line_num
                if None in row or None in row.values():
                    raise ValueError(f"{path}:{line}: expected {len(reader.fieldnames)} fields "
                                     f"({','.join(reader.fieldnames)}), got another number")
                try:
                    i = int(row["index"])
                except ValueError:
                    raise ValueError(f"{path}:{line}: index {row['index']!r} is not an integer") from None
                if i in rows:
                    raise ValueError(f"{path}:{line}: index {i} appears twice")
                for col, values in seen.items():
                    value = row[col]
                    if not value.strip():
                        raise ValueError(f"{path}:{line}: empty {col}")
                    if value in values:
                        raise ValueError(f"{path}:{line}: {col} {value!r} is already that of line {values[value]}")
                    values[value] = line
                rows[i] = (row["mid"], row["display_name"])
        if not rows:
            raise ValueError(f"{path}: no classes")
        if sorted(rows) != list(range(len(rows))):
            raise ValueError(f"{path}: indices must be 0..N-1 without gaps")
        return cls(tuple(rows[i][0] for i in range(len(rows))), tuple(rows[i][1] for i in range(len(rows))))

    def save(self, path: str | Path) -> None:
        with atomic_write(path, newline="", private=True) as f:
            w = csv.writer(f)
            w.writerow(["index", "mid", "display_name"])
            for i, (m, n) in enumerate(zip(self.mids, self.names)):
                w.writerow([i, m, n])
