"""The member reader's cost: pread (what ShardBytes does since issue 22) against the memory map it replaced.

    python -m benchmarks.member_read [--members 256] [--kib 160] [--rounds 5]

One shard-like file of ``--members`` members of ``--kib`` KiB (the size of a 10 s 16 kHz FLAC clip), read member
by member in a shuffled order, each copied once more into a batch buffer as DALI's external_source does:
  mmap   a view of a read-only map of the file (the reader before issue 22: a shard truncated under it is a SIGBUS)
  pread  ``ShardBytes.member``: ``os.preadv`` into a buffer of its own (a short read is an error naming the shard)
warm (the file in the page cache) and cold (evicted first with POSIX_FADV_DONTNEED), the variants interleaved in
each round; the best round of each. "cold+ahead": cold, with each member's will_need (madvise or fadvise
WILLNEED) issued 128 members (the stream's default: 4 batches of 32) before it is read.
Writes benchmarks/results/member_read.json.
"""
from __future__ import annotations

import argparse
import mmap
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import CACHE, write_result
from trainer.data.shard_bytes import ShardBytes


class MmapBytes:
    """The reader before issue 22, kept here as the baseline: views of one read-only map per shard."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[mmap.mmap, np.ndarray]] = {}

    def _map(self, shard: str) -> tuple[mmap.mmap, np.ndarray]:
        if shard not in self._maps:
            with open(shard, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[shard] = (mm, np.frombuffer(mm, np.uint8))
        return self._maps[shard]

    def member(self, shard: str, offset: int, size: int) -> np.ndarray:
        return self._map(shard)[1][offset:offset + size]

    def will_need(self, shard: str, offset: int, size: int) -> None:
        mm = self._map(shard)[0]
        start = offset - offset % mmap.PAGESIZE
        mm.madvise(mmap.MADV_WILLNEED, start, min(offset + size, len(mm)) - start)


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one_pass(reader: type, path: Path, order: np.ndarray, size: int, ahead: int = 0) -> float:
    """Seconds to read every member (in ``order``) and copy it into a batch buffer, with a fresh reader; ``ahead``:
    will_need on each member that many reads before it (the stream's ``data.readahead``)."""
    read, batch = reader(), np.empty(size, np.uint8)
    start = time.perf_counter()
    for j in range(-ahead, len(order)):
        if ahead and j + ahead < len(order):
            read.will_need(str(path), int(order[j + ahead]) * size, size)
        if j >= 0:
            batch[:] = read.member(str(path), int(order[j]) * size, size)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=256, help="members in the shard-like file (default: %(default)s)")
    p.add_argument("--kib", type=int, default=160, help="KiB per member (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds; each variant takes its best (default: %(default)s)")
    a = p.parse_args()
    size = a.kib * 1024
    order = np.random.default_rng(0).permutation(a.members)
    readers = {"mmap": MmapBytes, "pread": ShardBytes}
    best: dict[str, dict[str, float]] = {c: {} for c in ("warm", "cold", "cold+ahead")}
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:  # on disk: /tmp may be a tmpfs, which never evicts
        path = Path(tmp) / "shard.tar"
        with open(path, "wb") as f:
            f.write(np.random.default_rng(1).integers(0, 256, a.members * size, dtype=np.uint8).tobytes())
            os.fsync(f.fileno())  # dirty pages cannot be evicted
        for _ in range(a.rounds):
            for cache in best:
                for name, reader in readers.items():
                    if cache == "warm":
                        one_pass(reader, path, order, size)  # the file into the page cache
                    else:
                        evict(path)
                    t = one_pass(reader, path, order, size, 128 if cache == "cold+ahead" else 0)
                    best[cache][name] = min(best[cache].get(name, float("inf")), t)
    rows = []
    for cache, times in best.items():
        for name, t in times.items():
            rows.append({"cache": cache, "reader": name, "us_per_member": t / a.members * 1e6,
                         "mb_per_s": a.members * size / t / 1e6})
            print(f"{cache:10} {name:6} {t / a.members * 1e6:8.1f} µs/member {a.members * size / t / 1e6:8.0f} MB/s")
    write_result("member_read", {"members": a.members, "member_kib": a.kib, "rounds": a.rounds, "results": rows})


if __name__ == "__main__":
    main()
