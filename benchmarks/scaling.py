"""Scaling of our loader: per-epoch cost as the data set grows, and throughput vs threads.

    .venv/bin/python benchmarks/scaling.py [--clips 192] [--scales 1 4 16]

Size: one TrainStream epoch (kaldi_fbank, all cores as DALI threads, batch 32) over the synthetic set's
records replicated ×1, ×4, ×16 (new keys, the same FLAC bytes: the page cache holds them, as it would a
hot shard), after one warm-up batch. Flat clips/s means the per-epoch cost is linear in the set size:
no per-epoch setup that grows, no per-record state that slows the sampler.
Threads: clips/s at 1 and 2 threads per loader, taken from benchmarks/results/loader.json (run
benchmarks/loader.py first; not measured twice). Writes benchmarks/results/scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, dataset, write_result  # noqa: E402
from loader import our_stream  # noqa: E402

FRONTEND = "kaldi_fbank"
BATCH = 32


def epoch_cost(data: Path, scale: int, threads: int) -> dict:
    stream = our_stream(data, FRONTEND, threads, BATCH, scale)
    it = iter(stream)
    next(it)  # pipeline build
    clips, start = 0, time.perf_counter()
    for batch in it:
        clips += len(batch["keys"])
    seconds = time.perf_counter() - start
    return {"scale": scale, "records": len(stream.records), "clips": clips, "seconds": seconds,
            "clips_per_s": clips / seconds}


def thread_scaling() -> list[dict]:
    path = RESULTS / "loader.json"
    if not path.is_file():
        return []
    res = json.loads(path.read_text())["results"]
    rows = []
    for r1 in (r for r in res if r["threads"] == 1):
        r2 = next(r for r in res if (r["loader"], r["frontend"], r["threads"]) == (r1["loader"], r1["frontend"], 2))
        rows.append({"loader": r1["loader"], "frontend": r1["frontend"], "clips_per_s_1": r1["clips_per_s"],
                     "clips_per_s_2": r2["clips_per_s"], "speedup": r2["clips_per_s"] / r1["clips_per_s"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=192)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    a = ap.parse_args()
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    data = dataset(a.clips)
    sizes = [epoch_cost(data, s, threads) for s in a.scales]
    base = sizes[0]["seconds"] / sizes[0]["clips"]
    for r in sizes:
        r["cost_per_clip_vs_1x"] = (r["seconds"] / r["clips"]) / base
    print(f"{'scale':>5} {'records':>8} {'epoch s':>8} {'clips/s':>8} {'per-clip cost vs ×1':>20}")
    for r in sizes:
        print(f"{r['scale']:>5} {r['records']:>8} {r['seconds']:8.2f} {r['clips_per_s']:8.1f} "
              f"{r['cost_per_clip_vs_1x']:20.2f}")
    threads_rows = thread_scaling()
    for r in threads_rows:
        print(f"{r['loader']:6} {r['frontend']:12} 1 thread {r['clips_per_s_1']:7.1f}  2 threads "
              f"{r['clips_per_s_2']:7.1f}  ×{r['speedup']:.2f}")
    write_result("scaling", {"frontend": FRONTEND, "batch_size": BATCH, "dali_threads": threads,
                             "sizes": sizes, "threads": threads_rows})


if __name__ == "__main__":
    main()
