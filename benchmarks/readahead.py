"""Read-ahead on a cold page cache: our stream with and without ``data.readahead``, cold and warm.

    python -m benchmarks.readahead [--clips 1536] [--repeats 3]

One epoch of TrainStream (kaldi_fbank, batch 32, 2 DALI threads, SpecAugment and mixup) over a synthetic
set of ``--clips`` 10 s clips, drawn without replacement (every clip once: at AudioSet scale the shards are
far larger than the page cache and a draw is almost never cached), in a fresh process each. "cold": every
shard evicted from the page cache first (posix_fadvise DONTNEED on each file: no privileges needed, and no
process has them mapped then); "warm": every shard read in full first. Variants run interleaved, each takes
its best of ``--repeats``. Reported: clips/s over the epoch (pipeline build included, the same for all),
the major page faults the process took meanwhile (a batch of another set has loaded the libraries first; since
issue 22 the members are read with pread, not faulted in from a memory map, so shard reads no longer count here),
and the seconds DALI's feeding thread spent in the members' reads (the stream's reads are wrapped to time them).
On a machine whose other tenants keep the cores busy, the last tells more than clips/s.
Writes benchmarks/results/readahead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import dataset, run_module, write_result

DEPTHS = (0, 4)  # data.readahead: off, the default
BATCH = 32
THREADS = 2


def shards(data: Path) -> list[Path]:
    return sorted((data / "shards").glob("*.tar"))


def evict(files: list[Path]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files: list[Path]) -> None:
    for path in files:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def run_one(data: Path, depth: int, other: Path) -> dict:
    """One epoch, every clip once, in this (fresh) process, after a batch of another set has loaded DALI's and
    torch's libraries (their page faults are not the shards')."""
    from trainer.data.datasets import load_records
    from trainer.data.features import build_frontend
    from trainer.data.shard_bytes import ShardBytes
    from trainer.data.settings import AugmentConfig, FeatureConfig, LoaderSettings
    from trainer.data.streams import TrainStream

    waited = [0.0]
    member = ShardBytes.member

    def timed(self: ShardBytes, shard: str, offset: int, size: int) -> np.ndarray:
        """The member's read (a pread), timed."""
        start = time.perf_counter()
        data = member(self, shard, offset, size)
        waited[0] += time.perf_counter() - start
        return data

    ShardBytes.member = timed  # type: ignore[method-assign]

    def stream(root: Path) -> TrainStream:
        loader = LoaderSettings(BATCH, THREADS, 2, readahead=depth)
        return TrainStream(load_records(str(root / "shards"))[0], 10, loader,
                           build_frontend(FeatureConfig("kaldi_fbank")), AugmentConfig(freqm=48, timem=192, mixup=0.5),
                           0, 0, 1, torch.device("cpu"), weighted=False)

    torch.set_num_threads(THREADS)
    next(iter(stream(other)))
    epoch = stream(data)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    waited[0] = 0.0
    start, clips = time.perf_counter(), 0
    for batch in epoch:
        clips += len(batch["keys"])
    seconds = time.perf_counter() - start
    return {"readahead": depth, "clips": clips, "seconds": seconds, "clips_per_s": clips / seconds,
            "major_faults": resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults, "feeder_wait_s": waited[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=1536,
                    help="10 s synthetic clips, each read once (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved rounds; each variant takes its best (default: %(default)s)")
    ap.add_argument("--one", nargs=3, metavar=("DATA", "DEPTH", "OTHER"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(Path(a.one[0]), int(a.one[1]), Path(a.one[2]))))
        return
    data, other = dataset(a.clips), dataset(192)
    files = shards(data)
    runs = []
    for _ in range(a.repeats):
        for cache in ("cold", "warm"):
            for depth in DEPTHS:
                if cache == "cold":
                    evict(files)
                else:
                    warm(files)
                out = run_module("readahead", "--one", str(data), str(depth), str(other), capture_output=True,
                                 text=True, check=True)
                runs.append({"cache": cache, **json.loads(out.stdout.strip().splitlines()[-1])})
                print(f"{cache} readahead={depth}: {runs[-1]['clips_per_s']:7.1f} clips/s, "
                      f"{runs[-1]['major_faults']} major faults, feeder waited {runs[-1]['feeder_wait_s']:.3f} s",
                      flush=True)
    best = [max((r for r in runs if (r["cache"], r["readahead"]) == key), key=lambda r: r["clips_per_s"])
            for key in dict.fromkeys((r["cache"], r["readahead"]) for r in runs)]
    size = sum(p.stat().st_size for p in files)
    write_result("readahead", {"clips": a.clips, "shard_bytes": size, "batch_size": BATCH, "dali_threads": THREADS,
                               "repeats": a.repeats, "results": best, "all_runs": runs})


if __name__ == "__main__":
    main()
