"""Full training steps fed by our stream vs by batches already in memory: how much the loader stalls training.

    .venv/bin/python benchmarks/train_step.py [--clips 192] [--steps 16] [--block 8] [--batch 16]

Two workloads on configs/demo.yaml's model (MobileNetV2 ×0.5), features and augmentation:
  weak  clip-level BCE on whole 10 s clips
  psl   2 s chunks labelled inline by a frozen teacher (same architecture, untrained: only its cost
        matters), student trained on the teacher's probabilities (trainer.psl, alpha 1)
Each is timed over ``--steps`` steps fed by TrainStream and as many fed by a list of batches taken
from the same stream beforehand, the two taking turns in blocks of ``--block`` steps (after a warm-up
step each). Data stall fraction = 1 − (stream clips/s ÷ memory clips/s); on a CPU it includes the
stream's decoding and tail workers competing with the step for the cores. The wait fraction is the
stream-fed time spent in next(): what the tail workers had not finished ahead of the step.
Batch 16 (the demo's) keeps a CPU step under a second; the stall is a ratio of two rates and moves
little with it. Writes benchmarks/results/train_step.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, dataset, write_result  # noqa: E402
from trainer.config import Config, load_config  # noqa: E402
from trainer.cpu_tuning import configure_cpu  # noqa: E402
from trainer.data.datasets import load_records  # noqa: E402
from trainer.data.features import feature_dim, frames_per_second  # noqa: E402
from trainer.data.streams import TrainStream  # noqa: E402
from trainer.models import build_model  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.psl import ChunkedTeacherStudent, psl_loss  # noqa: E402

CLASSES = 10


def endless(stream: TrainStream) -> Iterator[dict]:
    """The stream's batches epoch after epoch, as a training loop consumes them."""
    for epoch in itertools.count():
        stream.set_epoch(epoch)
        yield from stream


def interleaved(step: Callable[[dict], None], feeds: dict[str, Iterator[dict]], steps: int,
                block: int) -> dict[str, dict]:
    """Per feed: clips/s over ``steps`` steps (after a warm-up step each) and the share of that time spent
    waiting for the next batch. The feeds take turns in blocks of ``block`` steps, so load from other
    processes on the machine (which moves a step's time several-fold here) hits every feed alike, while
    the stream's work ahead of the caller (DALI's prefetch, the tail workers' next batches) spills into
    another feed's time only at the end of a block."""
    for batches in feeds.values():
        step(next(batches))
    spent = {name: [0.0, 0.0, 0] for name in feeds}  # total s, waiting s, clips
    for _ in range(0, steps, block):
        for name, batches in feeds.items():
            acc = spent[name]
            for _ in range(block):
                t0 = time.perf_counter()
                batch = next(batches)
                t1 = time.perf_counter()
                step(batch)
                t2 = time.perf_counter()
                acc[0] += t2 - t0
                acc[1] += t1 - t0
                acc[2] += len(batch["keys"])
    return {name: {"clips_per_s": clips / total, "wait_fraction": wait / total}
            for name, (total, wait, clips) in spent.items()}


def training_step(workload: str, cfg: Config, n_mels: int) -> Callable[[dict], None]:
    """One optimiser step of ``workload`` ("weak" or "psl") on a fresh model of ``cfg.model``."""
    model = build_model(cfg.model, CLASSES, n_mels).train()
    opt = build_optimizer(model.parameters(), cfg.optim)
    chunk = 2 * frames_per_second(cfg.features.frontend)
    chunker = ChunkedTeacherStudent(build_model(cfg.model, CLASSES, n_mels), chunk, chunk) \
        if workload == "psl" else None

    def step(batch: dict) -> None:
        if chunker is None:
            loss = F.binary_cross_entropy(model(batch["features"])[0], batch["labels"])
        else:
            loss = psl_loss(chunker(model, batch["features"], batch["labels"]), 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def demo_stream(clips: int, threads: int, batch: int) -> tuple[Config, TrainStream]:
    """configs/demo.yaml's data settings over the benchmark set, as trainer/run.py sets up a CPU process."""
    configure_cpu(processes_on_node=1)
    cfg = load_config(REPO / "configs" / "demo.yaml", check_paths=False)
    records = load_records(str(dataset(clips) / "shards"))[0]
    data_cfg = dataclasses.replace(cfg.data, num_threads=threads, batch_size=batch)
    cfg = dataclasses.replace(cfg, data=data_cfg)
    return cfg, TrainStream(records, CLASSES, data_cfg, cfg.features, cfg.augment, 0, 0, 1, torch.device("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=192)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--block", type=int, default=8, help="steps per turn of each feed")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="DALI threads")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg, stream = demo_stream(a.clips, a.threads, a.batch)
    in_memory = list(itertools.islice(endless(stream), 4))
    n_mels = feature_dim(cfg.features.frontend)
    rows = []
    for workload in ("weak", "psl"):
        r = interleaved(training_step(workload, cfg, n_mels),
                        {"memory": itertools.cycle(in_memory), "stream": endless(stream)}, a.steps, a.block)
        fed, memory = r["stream"]["clips_per_s"], r["memory"]["clips_per_s"]
        rows.append({"workload": workload, "batch_size": a.batch, "dali_threads": a.threads,
                     "torch_threads": torch.get_num_threads(), "steps": a.steps, "block": a.block,
                     "stream_clips_per_s": fed, "memory_clips_per_s": memory, "stall_fraction": 1 - fed / memory,
                     "stream_wait_fraction": r["stream"]["wait_fraction"]})
    print(f"{'workload':8} {'stream':>8} {'memory':>8} {'stall':>6} {'wait':>6}   (clips/s, {cfg.model.name} ×{cfg.model.width_mult}, "
          f"{cfg.features.frontend}, batch {a.batch})")
    for r in rows:
        print(f"{r['workload']:8} {r['stream_clips_per_s']:8.1f} {r['memory_clips_per_s']:8.1f} "
              f"{r['stall_fraction']:6.1%} {r['stream_wait_fraction']:6.1%}")
    write_result("train_step", {"config": "configs/demo.yaml", "model": dataclasses.asdict(cfg.model),
                                "frontend": cfg.features.frontend, "clips": a.clips, "results": rows})


if __name__ == "__main__":
    main()
