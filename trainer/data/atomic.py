"""Atomic file writes: a file appears under its name complete, or not at all.

Everything the project publishes (shards and their indexes, manifests, dataset and run results,
checkpoints, weights) is written to a temporary name beside its final one and renamed into place,
so a kill or a failed write leaves the previous version (or nothing) rather than half a file. A rename
alone survives a kill, not a power loss: ``fsync=True`` (and :func:`fsync_dir`, :func:`fsync_tree`) also make
the new version durable before it is published, for what later writes refer to (checkpoints, ``latest``).
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
def atomic_write(path: str | Path, mode: str = "w", private: bool = False, fsync: bool = False,
                 **open_kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` for writing, published by a rename when the block ends without an error; on an
    error the temporary file is removed and ``path`` is left as it was. ``private``: see :func:`temp_path`.
    ``fsync``: the file's data reach the disk before the rename, and the rename before this returns, so a power
    loss leaves the old or the new version whole (without it, possibly an empty file under the new name)."""
    path = Path(path)
    tmp = temp_path(path, private)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(path: str | Path) -> None:
    """Make the directory's entries (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """Make every file and directory under ``root`` (and ``root``'s own entries) durable: for a directory
    written by another library (Accelerate's checkpoint state) before it is published by a rename."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)
