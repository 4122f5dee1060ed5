"""Resident memory of our stream over a long run: is it flat?

    .venv/bin/python benchmarks/memory.py [--clips 192] [--epochs 24]

Runs TrainStream (kaldi_fbank and mel64, 2 DALI threads, batch 32) for ``--epochs`` epochs in a fresh
subprocess each, sampling the process's RSS after every batch. "start" is the RSS at the end of the
first epoch (pipeline built, buffers allocated), "end" at the end of the last; a leak shows as end ≫ start.
glibc's per-thread arenas make RSS wander by ±100 MB from epoch to epoch, so "max of the first half" vs
"max of the second half" is the flatness check (a leak grows the second).
Writes benchmarks/results/memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import dataset, rss_mb, write_result  # noqa: E402
from loader import FRONTENDS, our_stream  # noqa: E402

BATCH = 32


def run_one(frontend: str, data: Path, epochs: int) -> dict:
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    stream = our_stream(data, frontend, threads, BATCH)
    samples, epoch_ends, start = [], [], time.perf_counter()
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        for _ in stream:
            samples.append((round(time.perf_counter() - start, 2), round(rss_mb(), 1)))
        epoch_ends.append(samples[-1][1])
    return {"frontend": frontend, "dali_threads": threads, "batch_size": BATCH, "epochs": epochs,
            "clips": epochs * len(stream) * BATCH, "rss_start_mb": epoch_ends[0], "rss_end_mb": epoch_ends[-1],
            "rss_max_mb": max(r for _, r in samples), "rss_max_first_half_mb": max(epoch_ends[:epochs // 2]),
            "rss_max_second_half_mb": max(epoch_ends[epochs // 2:]), "rss_epoch_ends_mb": epoch_ends,
            "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--one", nargs=2, metavar=("FRONTEND", "DATA"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one[0], Path(a.one[1]), a.epochs)))
        return
    data = dataset(a.clips)
    rows = []
    for frontend in FRONTENDS:
        out = subprocess.run([sys.executable, __file__, "--epochs", str(a.epochs), "--one", frontend, str(data)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'frontend':12} {'clips':>6} {'start':>6} {'end':>6} {'max 1st half':>12} {'max 2nd half':>12}  (RSS MB)")
    for r in rows:
        print(f"{r['frontend']:12} {r['clips']:6d} {r['rss_start_mb']:6.0f} {r['rss_end_mb']:6.0f} "
              f"{r['rss_max_first_half_mb']:12.0f} {r['rss_max_second_half_mb']:12.0f}")
    write_result("memory", {"results": rows})


if __name__ == "__main__":
    main()
