"""Exclusive OS locks that name their holder: one process at a time writes a run or a built dataset.

The lock is ``fcntl.flock`` on a file that stays in place: the kernel releases it when the holder's
process ends, however it ends, so a crash leaves no stale lock to clean up. The holder writes its host,
pid and start time into the file for the message a second process gets.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

_held: set[int] = set()  # lock fds of this process: a forked child closes its copies, so that a child that
# outlives its parent (a stuck worker) does not keep the lock held in a dead process's name
os.register_at_fork(after_in_child=lambda: [os.close(fd) for fd in _held] and _held.clear())


class LockHeld(RuntimeError):
    """Another process holds the lock; the message names it."""


@contextmanager
def hold_lock(path: str | Path, what: str, record: bool = True) -> Iterator[Callable[[], None]]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block, or raise :class:`LockHeld` at once
    naming the holder and ``what`` is locked (e.g. ``"the build of shards/NAME"``). Yields the function that
    writes this process into the file as the holder; ``record`` false leaves that to the caller, for a claim
    that may still be refused and must then have changed nothing."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            try:
                h = json.loads(holder)
                holder = f"host {h['host']}, pid {h['pid']}, started {h['started']}"
            except (ValueError, KeyError, TypeError):  # the holder has not written itself yet
                holder = holder or "a process that has not written its name yet"
            raise LockHeld(f"{what} is in use by another process ({holder}): wait for it to end, or stop it "
                           f"(lock file {path})") from None
        _held.add(fd)

        def write_holder() -> None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode() + b"\n", 0)

        if record:
            write_holder()
        yield write_holder
    finally:
        _held.discard(fd)
        os.close(fd)  # releases the lock
