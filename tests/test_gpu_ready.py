"""What makes the trainer ready for GPUs, checked on the CPU: the recipe's global batch whatever the number of
processes, and a training step that never reads the device from the host outside log steps."""
from __future__ import annotations

import os

import pytest

from runkit import count_reads, launch, repo_pythonpath, tiny_config
from trainer.data.settings import DataConfig


def test_global_batch_plan():
    assert DataConfig(global_batch_size=100).batch_plan(4) == (25, 1)
    assert DataConfig(global_batch_size=100).batch_plan(1) == (100, 1)
    assert DataConfig(batch_size=16).batch_plan(8) == (16, 1)  # a per-process batch stays per process
    assert DataConfig(global_batch_size=100, max_batch_per_process=10).batch_plan(2) == (10, 5)  # 50 = 10 × 5 steps
    with pytest.raises(ValueError, match=r"100 clips do not split evenly over 8 processes; run on 1, 2, 4, 5, 10"):
        DataConfig(global_batch_size=100).batch_plan(8)


def test_global_batch_is_the_same_recipe_on_one_and_two_processes(built_shards, synthetic_dir, tmp_path):
    config = tiny_config(tmp_path / "g.yaml", built_shards, synthetic_dir, tmp_path / "runs",
                         data={"train": [str(built_shards["train"])], "valid_fraction": 0.2,
                               "eval": [str(built_shards["eval"])], "batch_size": None, "global_batch_size": 8,
                               "max_batch_per_process": 2, "num_threads": 1},
                         optim={"epochs": 1, "lr": 1e-3, "warmup_steps": 2}, train={"wa_start": 1, "trackers": []})
    for n in (1, 2):
        out = launch("trainer/run.py", str(config), f"run.name=p{n}", processes=n).stdout
        per, accumulation = 2, 8 // (2 * n)
        assert f"{per} clips per process and step × {n} × {accumulation} accumulation = 8 clips per optimizer step" in out


def test_the_step_reads_nothing_back_outside_log_steps(built_shards, synthetic_dir, tmp_path):
    """PSL steps (teacher, chunks, student): one epoch of 9 steps and one of 18, each read back once per 9 steps.
    The 9 extra steps cost exactly the one extra flush (losses, stop flag), not a read per step (a read is a
    device sync on a GPU)."""
    runs = tmp_path / "runs"
    teacher = tiny_config(tmp_path / "t.yaml", built_shards, synthetic_dir, runs, train={"steps_per_epoch": 2,
                                                                                       "wa_start": 1, "trackers": []})
    launch("trainer/run.py", str(teacher), "run.name=teacher", "optim.epochs=1")
    extra = {"train": {"wa_start": 1, "trackers": [], "log_every": 9},
             "optim": {"epochs": 1, "lr": 1e-3, "warmup_steps": 2},
             "psl": {"teacher": str(runs / "teacher"), "chunk_seconds": 1.0}}
    config = tiny_config(tmp_path / "c.yaml", built_shards, synthetic_dir, runs, **extra)
    env = dict(os.environ, PYTHONPATH=repo_pythonpath(os.environ), OMP_NUM_THREADS="1")
    reads = [count_reads(config, steps, env)["host reads"] for steps in (9, 18)]
    assert reads[1] - reads[0] == 1, reads
