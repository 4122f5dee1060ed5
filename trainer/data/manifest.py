"""The shard dataset format, shared by the shard builder (writer) and the input pipeline (reader).

A built dataset is a directory ``shards/NAME/`` holding tar shards with DALI ``.idx`` files beside
them, ``manifest.jsonl`` (one :class:`ShardRecord` per sample), ``weights.csv``,
``class_labels_indices.csv``, ``dataset.json``, ``rejects.jsonl`` and ``manifest.cache``. A dataset made by
``tools.enhance_labels`` links to another's shards and adds ``enhancement.csv``: the labels its manifest has
beyond those in the shards.

``manifest.cache`` holds the manifest as columns (:class:`RecordTable`) in a binary file that is
memory-mapped, so that starting a run on millions of records neither parses JSON nor builds one Python
object per record. It is derived from ``manifest.jsonl`` and ``weights.csv`` and records their size and
mtime: the builder writes it, and the loader rebuilds it whenever it is missing or either file changed.
"""
from __future__ import annotations

import array
import csv
import dataclasses
import hashlib
import io
import json
import mmap
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, overload

import numpy as np

from trainer.data.atomic import atomic_write

MANIFEST = "manifest.jsonl"
MANIFEST_CACHE = "manifest.cache"
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
        return cls(*_fields(line))


def _fields(line: str) -> tuple[str, str, int, int, tuple[int, ...], float, float]:
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
        builder = _TableBuilder()
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


class _TableBuilder:
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
        _try_save_cache(dataset_dir / MANIFEST_CACHE, table, sources)
    return table


def _parse_manifest(dataset_dir: Path) -> RecordTable:
    path = dataset_dir / MANIFEST
    builder = _TableBuilder()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    builder.add(*_fields(line))
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


# ---- manifest.cache: a small header, then the columns as raw arrays, each 64-byte aligned -------------------

_MAGIC = b"audiotag.records"
_VERSION = 1
_ALIGN = 64


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


def save_cache(path: Path, table: RecordTable, sources: dict[str, list[int] | None]) -> None:
    """Write ``table`` to ``path`` atomically, under a temporary name of this process's own: ranks that find
    the cache missing at the same time each write a complete file, and the last rename wins."""
    columns, at = {}, 0
    for name, col in table.columns().items():
        at = -(-at // _ALIGN) * _ALIGN
        columns[name] = [np.dtype(RecordTable.COLUMNS[name]).str, len(col), at]
        at += len(col) * col.itemsize
    header = json.dumps({"version": _VERSION, "sources": sources, "shards": table.shards,
                         "columns": columns}).encode()
    start = -(-(len(_MAGIC) + 8 + len(header)) // _ALIGN) * _ALIGN
    with atomic_write(path, "wb", private=True) as f:
        f.write(_MAGIC + len(header).to_bytes(8, "little") + header)
        for name, col in table.columns().items():
            f.write(b"\0" * (start + columns[name][2] - f.tell()))
            f.write(memoryview(np.ascontiguousarray(col, dtype=RecordTable.COLUMNS[name])).cast("B"))


def load_cache(path: Path, sources: dict[str, list[int] | None]) -> RecordTable | None:
    """The table in ``path`` as read-only memory maps, or None when there is none, it is unreadable, of another
    format version, or derived from files other than ``sources`` describes."""
    try:
        with open(path, "rb") as f:  # the map keeps its own reference to the file
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # ValueError: an empty file
        return None
    try:
        if buf[:len(_MAGIC)] != _MAGIC:
            return None
        size = int.from_bytes(buf[len(_MAGIC):len(_MAGIC) + 8], "little")
        header = json.loads(buf[len(_MAGIC) + 8:len(_MAGIC) + 8 + size])
        if header.get("version") != _VERSION or header.get("sources") != sources:
            return None
        start = -(-(len(_MAGIC) + 8 + size) // _ALIGN) * _ALIGN
        columns = {}
        for name, (dtype, count, at) in header["columns"].items():
            columns[name] = np.frombuffer(buf, dtype=np.dtype(dtype), count=count, offset=start + at) if count \
                else np.zeros(0, dtype=np.dtype(dtype))
        return RecordTable(header["shards"], columns)
    except (ValueError, KeyError, TypeError):  # a damaged or truncated file: rebuilt like a stale one
        return None


def _try_save_cache(path: Path, table: RecordTable, sources: dict[str, list[int] | None]) -> None:
    try:
        save_cache(path, table, sources)
    except OSError as e:  # a read-only dataset directory: every start parses manifest.jsonl instead
        warnings.warn(f"cannot write {path} ({e}); the manifest will be parsed again at every start", stacklevel=3)


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


class ShardBytes:
    """Random access to FLAC members' bytes: each member read with ``pread`` into its own buffer, from one open
    file per shard, opened on first use. Shard paths must open (``trainer.data.datasets.load_records`` makes them
    absolute).

    Not a memory map: a shard that shrinks under a running job (truncated, or rewritten in place) makes a read of
    a mapped page past its new end a bus error (SIGBUS) that kills the process with no message; a short read is an
    error naming the shard. The cost of the copy is in benchmarks/NOTES.md (issue 22)."""

    def __init__(self) -> None:
        self._files: dict[str, io.FileIO] = {}

    def _fd(self, shard: str) -> int:
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(shard, "rb", buffering=0)
        return f.fileno()

    def member(self, shard: str, offset: int, size: int) -> np.ndarray:
        """The ``size`` bytes at ``offset`` of ``shard``; raises RuntimeError naming the shard when the file ends
        before them."""
        fd = self._fd(shard)
        # a plain ndarray: untracked by the garbage collector (tracked objects per batch set off full
        # collections with the GIL held: benchmarks/NOTES.md, round 2)
        data = np.empty(size, dtype=np.uint8)
        got = 0
        while got < size and (n := os.preadv(fd, [data[got:]], offset + got)):
            got += n
        if got < size:
            raise RuntimeError(f"shard {shard}: a member at {offset}+{size} runs past the end of the file "
                               f"({os.fstat(fd).st_size} bytes): was the shard truncated or rewritten while in use, "
                               "or is the manifest from another build?")
        return data

    def __call__(self, rec: ShardRecord) -> np.ndarray:
        return self.member(rec.shard, rec.offset, rec.size)

    def will_need(self, shard: str, offset: int, size: int) -> None:
        """Ask the kernel to start reading a member into the page cache now (POSIX_FADV_WILLNEED returns at once),
        so that a later read finds it there."""
        os.posix_fadvise(self._fd(shard), offset, size, os.POSIX_FADV_WILLNEED)
