"""The shard dataset format, shared by the shard builder (writer) and the input pipeline (reader).

A built dataset is a directory ``shards/NAME/`` holding tar shards with DALI ``.idx`` files beside
them, ``manifest.jsonl`` (one :class:`ShardRecord` per sample), ``weights.csv``,
``class_labels_indices.csv``, ``dataset.json`` and ``rejects.jsonl``. A dataset made by ``tools.enhance_labels``
links to another's shards and adds ``enhancement.csv``: the labels its manifest has beyond those in the shards.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from trainer.data.atomic import atomic_write

MANIFEST = "manifest.jsonl"
WEIGHTS = "weights.csv"
VOCABULARY = "class_labels_indices.csv"
DATASET_INFO = "dataset.json"
REJECTS = "rejects.jsonl"
ENHANCEMENT = "enhancement.csv"


@dataclass(frozen=True)
class ShardRecord:
    """One written sample: where its FLAC bytes live and what it is labelled with."""

    key: str  # webdataset key: no dots, unique within the dataset
    shard: str  # tar file name, relative to the dataset directory
    offset: int  # byte offset of the FLAC member's data inside the tar
    size: int  # byte size of the FLAC member's data
    labels: tuple[int, ...]  # class indices into the dataset's vocabulary
    duration: float  # seconds, after resampling to 16 kHz
    weight: float = 1.0  # PSLA class-balanced sampling weight

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels)
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "ShardRecord":
        d = json.loads(line)
        try:
            return cls(
                key=str(d["key"]),
                shard=str(d["shard"]),
                offset=int(d["offset"]),
                size=int(d["size"]),
                labels=tuple(int(x) for x in d["labels"]),
                duration=float(d["duration"]),
                weight=float(d.get("weight", 1.0)),
            )
        except KeyError as e:
            raise ValueError(f"manifest record lacks field {e}: {line[:200]}") from None


def write_manifest(path: Path, records: Iterable[ShardRecord]) -> None:
    with atomic_write(path) as f:
        for r in records:
            f.write(r.to_json() + "\n")


def read_manifest(dataset_dir: str | Path) -> list[ShardRecord]:
    """Read ``manifest.jsonl``; weights come from ``weights.csv`` when present (it is the source of truth
    for sampling, so a user can swap in other weights without rebuilding)."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is {dataset_dir} a dataset built by tools.build_shards?")
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(ShardRecord.from_json(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: {e}") from None
    weights_path = dataset_dir / WEIGHTS
    if weights_path.is_file():
        weights = read_weights(weights_path)
        if len(weights) != len(records):
            raise ValueError(f"{weights_path} has {len(weights)} weights for {len(records)} manifest records")
        records = [dataclasses.replace(r, weight=w) for r, w in zip(records, weights)]
    return records


def write_weights(path: Path, weights: Iterable[float]) -> None:
    with atomic_write(path) as f:
        for w in weights:
            f.write(f"{w!r}\n")


def read_weights(path: Path) -> list[float]:
    with open(path) as f:
        return [float(line) for line in f if line.strip()]


@dataclass(frozen=True)
class AddedLabel:
    """One row of ``enhancement.csv``: a label the manifest gives ``key`` that its shard's ``.json`` lacks."""

    key: str
    index: int  # class index into the dataset's vocabulary
    mid: str
    display_name: str
    reason: str  # "ontology" (an ancestor of a label) or "model" (a trained run's score at or above the threshold)
    score: float | None = None  # model rows: the run's clip probability for the class
    threshold: float | None = None  # model rows: the class's threshold

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def write_added_labels(path: Path, rows: Iterable[AddedLabel]) -> None:
    with atomic_write(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(AddedLabel.fields())
        for r in rows:
            w.writerow(["" if v is None else v for v in dataclasses.astuple(r)])


def read_added_labels(path: Path) -> list[AddedLabel]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != AddedLabel.fields():
            raise ValueError(f"{path}: expected columns {','.join(AddedLabel.fields())}")
        rows = []
        for lineno, d in enumerate(reader, 2):
            try:
                rows.append(AddedLabel(d["key"], int(d["index"]), d["mid"], d["display_name"], d["reason"],
                                       float(d["score"]) if d["score"] else None,
                                       float(d["threshold"]) if d["threshold"] else None))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
    return rows


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
        path = Path(path)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
            raise ValueError(f"{path}: expected columns index,mid,display_name")
        rows.sort(key=lambda r: int(r["index"]))
        if [int(r["index"]) for r in rows] != list(range(len(rows))):
            raise ValueError(f"{path}: indices must be 0..N-1 without gaps")
        return cls(tuple(r["mid"] for r in rows), tuple(r["display_name"] for r in rows))

    def save(self, path: str | Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "mid", "display_name"])
            for i, (m, n) in enumerate(zip(self.mids, self.names)):
                w.writerow([i, m, n])


class ShardBytes:
    """Random access to records' FLAC bytes: one read-only memory map per shard, opened on first use.
    ``rec.shard`` must be a path that opens (records from ``trainer.data.datasets.load_records`` are absolute)."""

    def __init__(self) -> None:
        self._maps: dict[str, np.ndarray] = {}

    def __call__(self, rec: ShardRecord) -> np.ndarray:
        mm = self._maps.get(rec.shard)
        if mm is None:
            with open(rec.shard, "rb") as f:  # the map keeps its own reference to the file
                # a plain ndarray over the map: its slices are views the garbage collector does not track
                # (np.memmap slices are tracked objects, and a batch's worth set off full collections with
                # the GIL held: benchmarks/NOTES.md, round 2)
                mm = self._maps[rec.shard] = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ),
                                                           dtype=np.uint8)
        if rec.offset + rec.size > len(mm):
            raise RuntimeError(f"shard {rec.shard}: member {rec.key} at {rec.offset}+{rec.size} runs past "
                               f"the end of the file ({len(mm)} bytes); is the manifest from another build?")
        return mm[rec.offset:rec.offset + rec.size]
