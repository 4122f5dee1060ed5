"""A dataset's records: :class:`ShardRecord`, one written sample as ``manifest.jsonl`` holds it, and
:class:`RecordTable`, the records as columns, which the input pipeline reads without a Python object per record
(and trainer/data/record_cache.py memory-maps)."""
from __future__ import annotations

import array
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence, overload

import numpy as np


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
        return cls(*record_fields(line))


def record_fields(line: str) -> tuple[str, str, int, int, tuple[int, ...], float, float]:
    """A manifest line's :class:`ShardRecord` fields, in order."""
    d = json.loads(line)
    try:
        return (str(d["key"]), str(d["shard"]), int(d["offset"]), int(d["size"]), tuple(int(x) for x in d["labels"]),
                float(d["duration"]), float(d.get("weight", 1.0)))
    except KeyError as e:
        raise ValueError(f"manifest record lacks field {e}: {line[:200]}") from None


def key_hash(key: str) -> int:
    """The first 8 bytes of the key's SHA-1 as an unsigned integer: the validation hold-out's order-free draw
    (:func:`trainer.data.datasets.in_holdout`), stored per record in the cache."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


class RecordTable(Sequence[ShardRecord]):
    """Records as columns: what the input pipeline reads, without a Python object per record.

    ``table[i]`` is the :class:`ShardRecord` of row ``i`` (and iterating yields them), so code written for a
    list of records works unchanged; the streams use the columns. ``shards`` names the shard files
    (``shard_index`` points into it); labels and keys are stored as CSR: row ``i``'s labels are
    ``label_indices[label_offsets[i]:label_offsets[i + 1]]``, its key the UTF-8 bytes
    ``key_bytes[key_offsets[i]:key_offsets[i + 1]]``. Columns may be read-only memory maps of the cache.
    """

    COLUMNS = {"shard_index": np.int32, "offset": np.int64, "size": np.int64, "duration": np.float64,
               "weight": np.float64, "key_hash": np.uint64, "label_offsets": np.int64, "label_indices": np.int32,
               "key_offsets": np.int64, "key_bytes": np.uint8}

    def __init__(self, shards: Sequence[str], columns: Mapping[str, np.ndarray]) -> None:
        self.shards = list(shards)
        self.shard_index: np.ndarray = columns["shard_index"]
        self.offset: np.ndarray = columns["offset"]
        self.size: np.ndarray = columns["size"]
        self.duration: np.ndarray = columns["duration"]
        self.weight: np.ndarray = columns["weight"]
        self.key_hash: np.ndarray = columns["key_hash"]
        self.label_offsets: np.ndarray = columns["label_offsets"]
        self.label_indices: np.ndarray = columns["label_indices"]
        self.key_offsets: np.ndarray = columns["key_offsets"]
        self.key_bytes: np.ndarray = columns["key_bytes"]
        n = len(self.shard_index)
        if not all(len(c) == n for c in (self.offset, self.size, self.duration, self.weight, self.key_hash)) \
                or len(self.label_offsets) != n + 1 or len(self.key_offsets) != n + 1:
            raise ValueError("record columns of different lengths")

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.COLUMNS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordTable):
            return NotImplemented
        return self.shards == other.shards and all(np.array_equal(a, b) for a, b in
                                                   zip(self.columns().values(), other.columns().values()))

    @classmethod
    def from_records(cls, records: Iterable[ShardRecord]) -> "RecordTable":
        builder = TableBuilder()
        for r in records:
            builder.add(r.key, r.shard, r.offset, r.size, r.labels, r.duration, r.weight)
        return builder.table()

    @classmethod
    def concat(cls, tables: Sequence["RecordTable"]) -> "RecordTable":
        """The tables' rows one after the other (columns copied), their shard lists joined."""
        if len(tables) == 1:
            return tables[0]
        shards: list[str] = []
        parts: dict[str, list[np.ndarray]] = {name: [] for name in cls.COLUMNS}
        for name in ("label_offsets", "key_offsets"):
            parts[name].append(np.zeros(1, np.int64))
        for t in tables:
            parts["shard_index"].append(t.shard_index + len(shards))
            shards += t.shards
            for name in ("offset", "size", "duration", "weight", "key_hash", "label_indices", "key_bytes"):
                parts[name].append(getattr(t, name))
            for name in ("label_offsets", "key_offsets"):  # CSR: on from where the previous table's entries end
                parts[name].append(getattr(t, name)[1:] + parts[name][-1][-1])
        return cls(shards, {name: np.concatenate(p).astype(cls.COLUMNS[name], copy=False) for name, p in parts.items()})

    def take(self, rows: np.ndarray) -> "RecordTable":
        """A new table of ``rows`` (indices, in that order, or a boolean mask); columns copied."""
        rows = np.asarray(rows)
        labels, label_offsets = _take_csr(self.label_offsets, self.label_indices, rows)
        keys, key_offsets = _take_csr(self.key_offsets, self.key_bytes, rows)
        return RecordTable(self.shards, {
            "shard_index": self.shard_index[rows], "offset": self.offset[rows], "size": self.size[rows],
            "duration": self.duration[rows], "weight": self.weight[rows], "key_hash": self.key_hash[rows],
            "label_offsets": label_offsets, "label_indices": labels, "key_offsets": key_offsets, "key_bytes": keys})

    def with_shards(self, shards: Sequence[str]) -> "RecordTable":
        """The same rows (columns shared) with the shard files named otherwise, e.g. by absolute path."""
        if len(shards) != len(self.shards):
            raise ValueError(f"{len(shards)} shard names for {len(self.shards)} shards")
        return RecordTable(shards, self.columns())

    def __len__(self) -> int:
        return len(self.shard_index)

    @overload
    def __getitem__(self, i: int) -> ShardRecord: ...

    @overload
    def __getitem__(self, i: slice) -> "RecordTable": ...

    def __getitem__(self, i: int | slice) -> ShardRecord | "RecordTable":
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"record {i} of {n}")
        i %= n
        return ShardRecord(self.key(i), self.shard(i), int(self.offset[i]), int(self.size[i]), self.labels(i),
                           float(self.duration[i]), float(self.weight[i]))

    def __iter__(self) -> Iterator[ShardRecord]:
        return (self[i] for i in range(len(self)))

    def key(self, i: int) -> str:
        return self.key_bytes[self.key_offsets[i]:self.key_offsets[i + 1]].tobytes().decode()

    def keys(self, rows: Iterable[int]) -> list[str]:
        return [self.key(i) for i in rows]

    def shard(self, i: int) -> str:
        return self.shards[self.shard_index[i]]

    def labels(self, i: int) -> tuple[int, ...]:
        return tuple(self.label_indices[self.label_offsets[i]:self.label_offsets[i + 1]].tolist())

    def multi_hot(self, rows: Sequence[int], num_classes: int) -> np.ndarray:
        """``len(rows) × num_classes`` float32 targets: 1 at each row's labels."""
        rows = np.asarray(rows, dtype=np.int64)
        labels, offsets = _take_csr(self.label_offsets, self.label_indices, rows)
        y = np.zeros((len(rows), num_classes), dtype=np.float32)
        y[np.repeat(np.arange(len(rows)), np.diff(offsets)), labels] = 1.0
        return y

    def find(self, keys: Iterable[str]) -> dict[str, int]:
        """Row of each of ``keys`` present in the table (a scan of the hash column, then the keys compared)."""
        wanted = {key_hash(k): k for k in keys}
        if not wanted:
            return {}
        found = {}
        for i in np.flatnonzero(np.isin(self.key_hash, np.fromiter(wanted, dtype=np.uint64, count=len(wanted)))):
            key = self.key(i)
            if wanted.get(int(self.key_hash[i])) == key:
                found[key] = int(i)
        return found


def _take_csr(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of the CSR rows ``rows``: indices, in that order, or a boolean mask."""
    if rows.dtype == bool:  # a split of the whole table: a mask over the values (1 byte each, not an index's 8)
        counts = np.diff(offsets)
        taken, counts = values[np.repeat(rows, counts)], counts[rows]
    else:
        rows = rows.astype(np.int64, copy=False)
        starts, counts = offsets[rows], offsets[rows + 1] - offsets[rows]
        # position of each taken value: its row's start, plus its rank inside the row
        at = np.arange(counts.sum(), dtype=np.int64) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
        taken = values[at]
    new_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    return taken, new_offsets


class TableBuilder:
    """Accumulates records into typed arrays (no Python object kept per record), then makes a table."""

    def __init__(self) -> None:
        self.shards: dict[str, int] = {}
        self.shard_index, self.offset, self.size = array.array("i"), array.array("q"), array.array("q")
        self.duration, self.weight, self.key_hash = array.array("d"), array.array("d"), array.array("Q")
        self.label_counts, self.label_indices = array.array("q"), array.array("i")
        self.key_lengths, self.key_bytes = array.array("q"), bytearray()

    def add(self, key: str, shard: str, offset: int, size: int, labels: Sequence[int], duration: float,
            weight: float) -> None:
        self.shard_index.append(self.shards.setdefault(shard, len(self.shards)))
        self.offset.append(offset)
        self.size.append(size)
        self.duration.append(duration)
        self.weight.append(weight)
        self.key_hash.append(key_hash(key))
        encoded = key.encode()
        self.key_lengths.append(len(encoded))
        self.key_bytes += encoded
        self.label_counts.append(len(labels))
        self.label_indices.extend(labels)

    def table(self) -> RecordTable:
        def csr(lengths: array.array) -> np.ndarray:
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(np.frombuffer(lengths, dtype=np.int64), out=offsets[1:])
            return offsets

        cols = {name: np.frombuffer(getattr(self, name), dtype=RecordTable.COLUMNS[name])
                for name in ("shard_index", "offset", "size", "duration", "weight", "key_hash", "label_indices",
                             "key_bytes")}
        cols.update(label_offsets=csr(self.label_counts), key_offsets=csr(self.key_lengths))
        return RecordTable(list(self.shards), cols)
