"""Resident memory of our stream, and of training fed by it, over a long run: is it flat?

    python -m benchmarks.memory [--clips 192] [--epochs 48] [--train-steps 480]

Runs TrainStream (kaldi_fbank and mel64, 2 DALI threads, batch 32) for ``--epochs`` epochs, and weak
training steps of configs/demo.yaml's model fed by it (batch 16) for ``--train-steps`` steps, in a fresh
subprocess each, sampling the process's RSS after every batch or step. "start" is the RSS at the end of the
first epoch (pipeline built, buffers allocated), "end" at the end of the last; a leak shows as end ≫ start.
glibc's per-thread arenas make RSS wander by ±100 MB from epoch to epoch, so "max of the first half" vs
"max of the second half" is the flatness check (a leak grows the second).
Writes benchmarks/results/memory.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.common import REPO, dataset, rss_mb, run_module, write_result
from benchmarks.loader import FRONTENDS, our_stream
from benchmarks.train_step import config_stream, endless, training_step

BATCH = 32
TRAIN_BATCH = 16


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
    return summary(f"loader {frontend}", epochs * len(stream) * BATCH, samples, epoch_ends)


def run_training(clips: int, steps: int) -> dict:
    """Weak training steps fed by the stream; RSS after each step, "epochs" being blocks of 12 steps."""
    cfg, stream = config_stream(REPO / "configs" / "demo.yaml", clips, len(os.sched_getaffinity(0)), TRAIN_BATCH,
                                torch.device("cpu"))
    step = training_step("weak", cfg, torch.device("cpu"))
    samples, start = [], time.perf_counter()
    for batch in itertools.islice(endless(stream), steps):
        step(batch)
        samples.append((round(time.perf_counter() - start, 2), round(rss_mb(), 1)))
    return summary(f"training {cfg.features.frontend}", steps * TRAIN_BATCH, samples, [r for _, r in samples[11::12]])


def summary(name: str, clips: int, samples: list[tuple[float, float]], ends: list[float]) -> dict:
    half = len(ends) // 2
    return {"run": name, "clips": clips, "rss_start_mb": ends[0], "rss_end_mb": ends[-1],
            "rss_max_mb": max(r for _, r in samples), "rss_max_first_half_mb": max(ends[:half]),
            "rss_max_second_half_mb": max(ends[half:]), "rss_epoch_ends_mb": ends, "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=192, help="10 s synthetic clips (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=48, help="epochs of the stream alone (default: %(default)s)")
    ap.add_argument("--train-steps", type=int, default=480,
                    help="weak training steps fed by the stream (default: %(default)s)")
    ap.add_argument("--one", nargs=2, metavar=("FRONTEND|train", "DATA"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        what, data = a.one
        print(json.dumps(run_training(a.clips, a.train_steps) if what == "train" else
                         run_one(what, Path(data), a.epochs)))
        return
    data = dataset(a.clips)
    rows = []
    for what in (*FRONTENDS, "train"):
        out = run_module("memory", "--clips", str(a.clips), "--epochs", str(a.epochs), "--train-steps",
                         str(a.train_steps), "--one", what, str(data), capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'run':20} {'clips':>6} {'start':>6} {'end':>6} {'max 1st half':>12} {'max 2nd half':>12}  (RSS MB)")
    for r in rows:
        print(f"{r['run']:20} {r['clips']:6d} {r['rss_start_mb']:6.0f} {r['rss_end_mb']:6.0f} "
              f"{r['rss_max_first_half_mb']:12.0f} {r['rss_max_second_half_mb']:12.0f}")
    write_result("memory", {"loader_batch_size": BATCH, "train_batch_size": TRAIN_BATCH, "results": rows})


if __name__ == "__main__":
    main()
