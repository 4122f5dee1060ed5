"""``manifest.cache``: a dataset's records as columns (:class:`RecordTable`) in a binary file that is memory-mapped,
so that starting a run on millions of records neither parses JSON nor builds one Python object per record. The
file records the size and mtime of the files it is derived from (``sources``); a cache of other sources, another
format version or a damaged one reads as none. Layout: a small header, then the columns as raw arrays, each
64-byte aligned."""
from __future__ import annotations

import json
import mmap
import warnings
from pathlib import Path

import numpy as np

from trainer.data.atomic import atomic_write
from trainer.data.records import RecordTable

_MAGIC = b"audiotag.records"
_VERSION = 1
_ALIGN = 64


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


def try_save_cache(path: Path, table: RecordTable, sources: dict[str, list[int] | None]) -> None:
    try:
        save_cache(path, table, sources)
    except OSError as e:  # a read-only dataset directory: every start parses manifest.jsonl instead
        warnings.warn(f"cannot write {path} ({e}); the manifest will be parsed again at every start", stacklevel=3)
