"""Atomic file writes: a file appears under its name complete, or not at all.

Everything the project publishes (shards and their indexes, manifests, dataset and run results,
checkpoints, weights) is written to a temporary name beside its final one and renamed into place,
so a kill or a failed write leaves the previous version (or nothing) rather than half a file.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def temp_path(path: str | Path, private: bool = False) -> Path:
    """The temporary name ``path`` is written under before it is renamed: hidden, beside it. ``private``: a
    name of this process's own, for a file that several processes (ranks, nodes) may write at once."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp" if private else f".{path.name}.tmp")


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", private: bool = False, **open_kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` for writing, published by a rename when the block ends without an error; on an
    error the temporary file is removed and ``path`` is left as it was. ``private``: see :func:`temp_path`."""
    path = Path(path)
    tmp = temp_path(path, private)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
