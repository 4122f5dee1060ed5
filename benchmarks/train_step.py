"""Full training steps fed by our stream vs by batches already in memory: how much the loader stalls training.

    python -m benchmarks.train_step [--clips 192] [--steps 32] [--block 8] [--batch N]
        [--device auto|cpu|cuda] [--variants fp32 bf16 bf16+channels_last bf16+channels_last+compile]
        [--workloads weak psl] [--weak-config YAML] [--psl-config YAML]

Two workloads, each with its config's model, features, augmentation and batch size:
  weak  clip-level BCE on whole clips (default config: demo.yaml on a CPU, full_as.yaml on a GPU)
  psl   chunks of the config's psl.chunk_seconds labelled inline by a frozen teacher (the same
        architecture, untrained: only its cost matters), the student trained on them with the config's
        alpha (default: demo_psl_2s.yaml on a CPU, psl_balanced_chunk_2sec.yaml on a GPU)
Both steps use the trainer's own loss (trainer.losses.training_loss).
Variants ('+'-joined): fp32, bf16 (autocast), channels_last (model memory format), compile
(torch.compile of the model); default fp32 on a CPU, all four combinations above on a GPU.
Each is timed over ``--steps`` steps fed by TrainStream and as many fed by a list of batches taken
from the same stream beforehand, the two taking turns in blocks of ``--block`` steps (after warm-up
steps, which include compilation). A block's time ends with a device synchronise, so the GPU's queued
work is counted and the host may run ahead within a block, as in training. Data stall fraction =
1 − (stream clips/s ÷ memory clips/s); on a CPU it includes the stream's decoding and tail workers
competing with the step for the cores. The wait fraction is the stream-fed time spent in next().
Writes benchmarks/results/train_step.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from benchmarks.common import REPO, dataset, write_result
from trainer.config import Config, load_config
from trainer.cpu_tuning import configure_cpu
from trainer.data.chunks import Chunking
from trainer.data.datasets import load_records
from trainer.data.features import build_frontend
from trainer.data.streams import TrainStream
from trainer.losses import training_loss
from trainer.models import build_model
from trainer.optim import build_optimizer
from trainer.psl import ChunkedTeacherStudent

CLASSES = 10
VARIANT_FLAGS = {"bf16", "channels_last", "compile"}  # besides "fp32", the default


def endless(stream: TrainStream) -> Iterator[dict]:
    """The stream's batches epoch after epoch, as a training loop consumes them."""
    for epoch in itertools.count():
        stream.set_epoch(epoch)
        yield from stream


def interleaved(step: Callable[[dict], None], feeds: dict[str, Iterator[dict]], steps: int, block: int,
                device: torch.device, warmup: int = 2) -> dict[str, dict]:
    """Per feed: clips/s over ``steps`` steps (after ``warmup`` steps each) and the share of that time spent
    waiting for the next batch. The feeds take turns in blocks of ``block`` steps, so load from other
    processes on the machine (which moves a step's time several-fold here) hits every feed alike, while
    the stream's work ahead of the caller (DALI's prefetch, the tail workers' next batches) spills into
    another feed's time only at the end of a block."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for batches in feeds.values():
        for _ in range(warmup):
            step(next(batches))
    sync()
    spent = {name: [0.0, 0.0, 0] for name in feeds}  # total s, waiting s, clips
    for _ in range(0, steps, block):
        for name, batches in feeds.items():
            acc = spent[name]
            start = time.perf_counter()
            for _ in range(block):
                t0 = time.perf_counter()
                batch = next(batches)
                acc[1] += time.perf_counter() - t0
                step(batch)
                acc[2] += len(batch["keys"])
            sync()
            acc[0] += time.perf_counter() - start
    return {name: {"clips_per_s": clips / total, "wait_fraction": wait / total}
            for name, (total, wait, clips) in spent.items()}


def training_step(workload: str, cfg: Config, device: torch.device, variant: str = "fp32") -> Callable[[dict], None]:
    """One optimiser step of ``workload`` ("weak" or "psl") on a fresh model of ``cfg.model``, with the
    ``variant``'s flags (see the module docstring)."""
    flags = set(variant.split("+")) - {"fp32"}
    if flags - VARIANT_FLAGS:
        raise SystemExit(f"unknown variant flag(s) in {variant!r}: {sorted(flags - VARIANT_FLAGS)}")
    def model() -> torch.nn.Module:
        m = build_model(cfg.model, CLASSES, load_pretrained=False).to(device)
        if "channels_last" in flags:
            m = m.to(memory_format=torch.channels_last)
        return torch.compile(m) if "compile" in flags else m

    student = model().train()
    opt = build_optimizer(student.parameters(), cfg.optim)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in flags)

    chunker = None
    if workload == "psl":
        chunker = ChunkedTeacherStudent(model(), Chunking.of(build_frontend(cfg.features), cfg.psl.chunk_seconds or 2.0))

    def step(batch: dict) -> None:
        loss = training_loss(student, chunker, batch, cfg.psl.alpha, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def config_stream(config: Path, clips: int, threads: int, batch: int | None,
                  device: torch.device) -> tuple[Config, TrainStream]:
    """``config``'s data settings over the benchmark set, as trainer/run.py sets up a process."""
    if device.type == "cpu":
        configure_cpu(processes_on_node=1)
    cfg = load_config(config, check_paths=False)
    records = load_records(str(dataset(clips) / "shards"))[0]
    batch = batch or cfg.data.batch_plan(1)[0]  # one process: the recipe's whole global batch
    data_cfg = dataclasses.replace(cfg.data, num_threads=threads, batch_size=batch, global_batch_size=None)
    cfg = dataclasses.replace(cfg, data=data_cfg)
    return cfg, TrainStream(records, CLASSES, data_cfg.loader(batch), build_frontend(cfg.features), cfg.augment, 0, 0, 1,
                            device, weighted=data_cfg.weighted, num_samples=data_cfg.num_samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=192, help="10 s synthetic clips (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=32, help="steps timed per feed and workload (default: %(default)s)")
    ap.add_argument("--block", type=int, default=8, help="steps per turn of each feed (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=None, help="default: each config's data.batch_size")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="DALI threads (default: %(default)s, this machine's cores)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: CUDA when torch sees a GPU (default: %(default)s)")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="fp32, bf16, bf16+channels_last, bf16+channels_last+compile "
                         "(default: all four on CUDA, fp32 on a CPU)")
    ap.add_argument("--workloads", nargs="+", choices=("weak", "psl"), default=["weak", "psl"],
                    help="weak: clip-level BCE; psl: chunks labelled inline by a teacher (default: both)")
    ap.add_argument("--weak-config", type=Path, default=None,
                    help="default: configs/full_as.yaml on CUDA, configs/demo.yaml on a CPU")
    ap.add_argument("--psl-config", type=Path, default=None,
                    help="default: configs/psl_balanced_chunk_2sec.yaml on CUDA, configs/demo_psl_2s.yaml on a CPU")
    a = ap.parse_args()
    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    variants = a.variants or (["fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile"] if cuda else ["fp32"])
    configs = {"weak": a.weak_config or REPO / "configs" / ("full_as.yaml" if cuda else "demo.yaml"),
               "psl": a.psl_config or REPO / "configs" / ("psl_balanced_chunk_2sec.yaml" if cuda else "demo_psl_2s.yaml")}
    rows = []
    for workload in a.workloads:
        config = configs[workload]
        torch.manual_seed(0)
        cfg, stream = config_stream(config, a.clips, a.threads, a.batch, device)
        in_memory = list(itertools.islice(endless(stream), 4))
        for variant in variants:
            r = interleaved(training_step(workload, cfg, device, variant),
                            {"memory": itertools.cycle(in_memory), "stream": endless(stream)}, a.steps, a.block,
                            device)
            fed, memory = r["stream"]["clips_per_s"], r["memory"]["clips_per_s"]
            path = Path(config).resolve()
            rows.append({"workload": workload, "config": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
                         "model": f"{cfg.model.name} ×{cfg.model.width_mult}", "frontend": cfg.features.frontend,
                         "variant": variant, "device": device.type, "batch_size": cfg.data.batch_size,
                         "dali_threads": a.threads, "torch_threads": torch.get_num_threads(), "steps": a.steps,
                         "block": a.block, "stream_clips_per_s": fed, "memory_clips_per_s": memory,
                         "stall_fraction": 1 - fed / memory, "stream_wait_fraction": r["stream"]["wait_fraction"],
                         "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None})
            print(f"{workload:5} {variant:28} {rows[-1]['model']:22} {cfg.features.frontend:12} batch "
                  f"{cfg.data.batch_size:3d}  stream {fed:8.1f}  memory {memory:8.1f} clips/s  stall "
                  f"{rows[-1]['stall_fraction']:6.1%}  wait {rows[-1]['stream_wait_fraction']:6.1%}"
                  + (f"  peak GPU memory {rows[-1]['peak_gpu_gib']:.1f} GiB" if cuda else ""), flush=True)
    write_result("train_step", {"device": device.type, "clips": a.clips, "results": rows})


if __name__ == "__main__":
    main()
