"""Helpers for tests that launch the trainer: a tiny config over the fixture shards, and a launcher for
one or two Accelerate CPU processes over gloo (tools.launch's recipe)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import yaml

from tools.launch import cpu_launch

REPO = Path(__file__).resolve().parents[1]


def repo_pythonpath(env: Mapping[str, str]) -> str:
    """``env``'s PYTHONPATH with this repository first (prepended, not replaced: a machine's own packages may be
    found through it)."""
    return os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)


def tiny_config(path: Path, built_shards: dict[str, Path], synthetic_dir: Path, runs: Path, **sections) -> Path:
    """A config that trains a 0.35-width MobileNetV2 for 2 epochs of 3 steps on the fixture shards."""
    cfg = {
        "run": {"name": "tiny", "dir": str(runs), "seed": 3},
        "data": {"train": [str(built_shards["train"])], "valid_fraction": 0.2, "eval": [str(built_shards["eval"])],
                 "batch_size": 4, "num_threads": 1},
        "evaluation": {"strong_labels": str(synthetic_dir / "eval_strong.tsv"), "batch_size": 4},
        "features": {"frontend": "mel64", "clip_seconds": 4.0},
        "augment": {"freqm": 8, "timem": 20, "mixup": 0.5},
        "model": {"name": "mobilenetv2", "width_mult": 0.35},
        "optim": {"lr": 1e-3, "epochs": 2, "warmup_steps": 2},
        "train": {"steps_per_epoch": 3, "wa_start": 1, "trackers": []},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(script: str, *args: str, processes: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``script`` under ``accelerate launch`` on the CPU with ``processes`` processes."""
    cmd, env = cpu_launch(script, args, processes)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=repo_pythonpath(env))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def count_reads(config: Path, steps: int, env: dict[str, str]) -> dict[str, int]:
    """One epoch of ``steps`` steps under tests/scripts/count_host_reads.py: the trainer's host reads
    (Tensor.item/tolist) and, on a GPU, every synchronizing CUDA call."""
    proc = subprocess.run([sys.executable, "tests/scripts/count_host_reads.py", str(config), f"run.name=s{steps}",
                           f"train.steps_per_epoch={steps}", "data.num_samples=200"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: int(n) for name, n in re.findall(r"(host reads|cuda syncs): (\d+)", proc.stdout)}
