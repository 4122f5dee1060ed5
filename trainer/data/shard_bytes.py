"""Reading a sample's FLAC bytes from its shard, by the offset and size its record gives."""
from __future__ import annotations

import io
import os

import numpy as np

from trainer.data.records import ShardRecord


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
