"""Scaling of our loader: per-epoch cost as the data set grows, and throughput vs threads and processes.

    python -m benchmarks.scaling [--clips 192] [--scales 1 4 16] [--epochs 4]

Size: one TrainStream epoch (kaldi_fbank, all cores as DALI threads, batch 32) over the synthetic set's
records replicated ×1, ×4, ×16 (new keys, the same FLAC bytes: the page cache holds them, as it would a
hot shard), after one warm-up batch. Flat clips/s means the per-epoch cost is linear in the set size:
no per-epoch setup that grows, no per-record state that slows the sampler.
Threads: clips/s at 1 and 2 threads per loader, taken from benchmarks/results/loader.json (run
benchmarks/loader.py first; not measured twice).
Processes: ours as a multi-GPU job runs it, one process per rank (each its slice of every epoch), with
the cores split between them: 1 process × all threads vs as many processes × 1 thread, started
together; clips/s = all ranks' clips ÷ (last end − first start) over ``--epochs`` epochs after a
warm-up batch each, best of 2 alternating rounds. Writes benchmarks/results/scaling.json.
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

from benchmarks.common import REPO, RESULTS, dataset, write_result
from benchmarks.loader import our_stream

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


def rank_epochs(data: Path, rank: int, world: int, threads: int, epochs: int) -> dict:
    """One rank's ``epochs`` epochs (after a warm-up batch), with wall-clock start and end times."""
    torch.set_num_threads(threads)
    stream = our_stream(data, FRONTEND, threads, BATCH, rank=rank, world=world)
    it = iter(stream)
    next(it)
    clips, start = 0, time.time()
    for epoch in range(epochs):
        if epoch:
            stream.set_epoch(epoch)
            it = iter(stream)
        clips += sum(len(b["keys"]) for b in it)
    return {"rank": rank, "clips": clips, "start": start, "end": time.time()}


def process_scaling(data: Path, cores: int, epochs: int, rounds: int = 2) -> list[dict]:
    """clips/s of 1 process × ``cores`` threads and of ``cores`` processes × 1 thread, all ranks at once;
    the two alternate for ``rounds`` rounds and each keeps its best (neighbours' load moves single runs)."""
    best: dict[int, dict] = {}
    for _ in range(rounds):
        for world, threads in ((1, cores), (cores, 1)):
            procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.scaling", "--epochs", str(epochs), "--rank",
                                       str(r), str(world), str(threads), str(data)], cwd=REPO, stdout=subprocess.PIPE,
                                      text=True) for r in range(world)]
            outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            if any(p.returncode for p in procs):
                raise SystemExit(f"a rank of the {world}-process run failed")
            seconds = max(o["end"] for o in outs) - min(o["start"] for o in outs)
            clips = sum(o["clips"] for o in outs)
            row = {"processes": world, "threads_each": threads, "clips": clips, "seconds": seconds,
                   "clips_per_s": clips / seconds}
            if world not in best or row["clips_per_s"] > best[world]["clips_per_s"]:
                best[world] = row
    return list(best.values())


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=192, help="10 s synthetic clips of the ×1 set (default: %(default)s)")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16],
                    help="multiples of the set timed (default: 1 4 16)")
    ap.add_argument("--epochs", type=int, default=4,
                    help="epochs per rank of the process comparison (default: %(default)s)")
    ap.add_argument("--rank", nargs=4, metavar=("RANK", "WORLD", "THREADS", "DATA"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank:
        rank, world, threads, data = a.rank
        print(json.dumps(rank_epochs(Path(data), int(rank), int(world), int(threads), a.epochs)))
        return
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
    processes = process_scaling(data, threads, a.epochs)
    for r in processes:
        print(f"ours {FRONTEND}: {r['processes']} process(es) × {r['threads_each']} thread(s): "
              f"{r['clips_per_s']:7.1f} clips/s")
    threads_rows = thread_scaling()
    for r in threads_rows:
        print(f"{r['loader']:6} {r['frontend']:12} 1 thread {r['clips_per_s_1']:7.1f}  2 threads "
              f"{r['clips_per_s_2']:7.1f}  ×{r['speedup']:.2f}")
    write_result("scaling", {"frontend": FRONTEND, "batch_size": BATCH, "dali_threads": threads,
                             "sizes": sizes, "processes": processes, "threads": threads_rows})


if __name__ == "__main__":
    main()
