"""Training samples that fail to decode, found during a run and never decoded again.

A multi-day run meets bit rot and partial copies that verification before the run could not see. When
DALI fails on a batch, the stream finds the sample(s) at fault and, with ``data.on_corrupt: skip``, a
:class:`CorruptLog` appends them to ``runs/NAME/corrupt_samples.jsonl`` (key, shard, error, epoch,
step). Every rank reads the file back when it plans batches, and a resumed run starts from it, so a
corrupt sample is excluded for the rest of the run everywhere. A row torn by a crash (a short write) is
ignored with a warning, never fatal.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


class TooManyCorrupt(RuntimeError):
    """More of the training set failed to decode than a run tolerates."""


def seal(path: str | Path) -> None:
    """End a torn last row of the log at ``path`` (a write cut short by a crash: no newline at the end) with a
    newline, so that the next row appended stays whole; the torn row is then ignored with a warning. Call it
    while no other process appends (the run's main process, before the ranks start)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
                warnings.warn(f"{path}: its last row was torn (a crash during a write); it is ignored", stacklevel=2)


class CorruptLog:
    """The run's corrupt training samples: ``path`` (shared by the ranks, kept across resumes) and the keys
    it holds; ``max_fraction`` of ``total`` samples may be corrupt before the run stops."""

    def __init__(self, path: str | Path, total: int, max_fraction: float) -> None:
        self.path = Path(path)
        self.total = total
        self.max_fraction = max_fraction
        self.rows: dict[str, dict] = {}
        self._read_to = 0  # bytes of the file read so far

    def refresh(self) -> set[str]:
        """The keys known corrupt, including what other ranks have appended since the last call."""
        if self.path.is_file():
            with open(self.path, "rb") as f:
                f.seek(self._read_to)
                for line in f:
                    if not line.endswith(b"\n"):  # another rank's row, half written: next time
                        break
                    self._read_to += len(line)
                    try:
                        row = json.loads(line)
                        self.rows.setdefault(row["key"], row)
                    except (ValueError, TypeError, KeyError):
                        warnings.warn(f"{self.path}: ignoring a row that does not parse (torn by a crash?): "
                                      f"{line[:200]!r}", stacklevel=2)
        return set(self.rows)

    def add(self, key: str, shard: str, error: str, epoch: int, step: int) -> None:
        """Record a sample found corrupt (once, whichever rank finds it first); warn; stop the run when more
        than ``max_fraction`` of the training set is corrupt."""
        if key not in self.refresh():
            row = {"key": key, "shard": shard, "error": error, "epoch": epoch, "step": step}
            self.rows[key] = row
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:  # one write of a whole line: appends from several ranks do not interleave
                os.write(fd, (json.dumps(row) + "\n").encode())
            finally:
                os.close(fd)
            warnings.warn(f"skipping corrupt training sample {key} in {shard} (epoch {epoch}, step {step}): {error}; "
                          f"listed in {self.path}", stacklevel=2)
        if len(self.rows) > self.max_fraction * self.total:
            raise TooManyCorrupt(f"{len(self.rows)} of {self.total} training samples failed to decode, more than "
                                 f"data.max_corrupt_fraction {self.max_fraction} ({self.path}); check the shards "
                                 "with python -m tools.verify_shards")
