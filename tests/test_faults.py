"""What multi-day runs meet: a second launch over a finished run, a corrupt training clip, preemption, a
non-finite loss and a full disk. Each ends with nothing lost and a message that says what to do."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from runkit import REPO, launch, repo_pythonpath, tiny_config
from test_run import _step_losses
from tools.launch import cpu_launch
from trainer.checkpointing import Progress, SaveFailed, find_checkpoints, load_checkpoint, save_checkpoint, save_weights
from trainer.data.datasets import resolve_splits
from trainer.data.features import build_frontend
from trainer.data.manifest import read_manifest
from trainer.data.settings import AugmentConfig, DataConfig, FeatureConfig, LoaderSettings
from trainer.data.streams import TrainStream


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_second_launch_changes_nothing_and_overwrite_starts_clean(built_shards, synthetic_dir, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, tmp_path / "runs",
                         optim={"epochs": 1, "lr": 1e-3, "warmup_steps": 2}, train={"steps_per_epoch": 2, "wa_start": 1,
                                                                                     "trackers": []})
    launch("trainer/run.py", str(config))
    run = tmp_path / "runs" / "tiny"
    before = _tree(run)
    proc = launch("trainer/run.py", str(config), check=False)
    assert proc.returncode != 0
    assert f"{run} already holds a run" in proc.stderr and "run.resume=true" in proc.stderr \
        and "run.overwrite=true" in proc.stderr
    assert _tree(run) == before  # not a byte changed
    (run / "stale.txt").write_text("from the old run")
    proc = launch("trainer/run.py", str(config), "run.overwrite=true")
    assert f"run.overwrite: deleting the previous run in {run}: " in proc.stdout and "stale.txt" in proc.stdout
    assert not (run / "stale.txt").exists() and (run / "summary.json").is_file()


def _flip_a_drawn_member(built_shards, tmp_path) -> tuple[Path, str]:
    """A copy of the training set with one flipped byte in a clip that rank 0 draws in its first batch."""
    data = tmp_path / "data"
    shutil.copytree(built_shards["train"], data)
    train = resolve_splits(DataConfig(train=[str(data)], valid_fraction=0.2)).train
    stream = TrainStream(train, 6, LoaderSettings(4), build_frontend(FeatureConfig("mel64", 4.0)), AugmentConfig(),
                         3, 0, 2, torch.device("cpu"))
    key = train[stream.batches(0)[0][0]].key
    rec = next(r for r in read_manifest(data) if r.key == key)
    raw = bytearray((data / rec.shard).read_bytes())
    raw[rec.offset + rec.size // 2] ^= 0x10
    (data / rec.shard).write_bytes(bytes(raw))
    return data, key


def test_corrupt_clip_skipped_then_sigterm_and_a_resumed_run_repeats_the_losses(built_shards, synthetic_dir, tmp_path):
    """Two processes over a training set with one flipped byte in a clip rank 0 draws first: the clip is
    skipped and logged; SIGTERM after the skip (as scancel and Slurm's preemption signal every process of the
    job) saves a checkpoint and exits with the message; the resumed run repeats the uninterrupted run's losses;
    with data.on_corrupt: fail the run stops naming the clip."""
    data, key = _flip_a_drawn_member(built_shards, tmp_path)
    extra = {"data": {"train": [str(data)], "valid_fraction": 0.2, "eval": [str(built_shards["eval"])],
                      "batch_size": 4, "num_threads": 1, "max_corrupt_fraction": 0.05},  # 1 of 35 clips
             "optim": {"epochs": 2, "lr": 1e-3, "warmup_steps": 2},
             "train": {"steps_per_epoch": 6, "wa_start": 1, "trackers": [], "log_every": 1}}
    config = tiny_config(tmp_path / "c.yaml", built_shards, synthetic_dir, tmp_path / "runs", **extra)
    launch("trainer/run.py", str(config), "run.name=full", processes=2)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "full" / "corrupt_samples.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == [key] and rows[0]["epoch"] == 1 and rows[0]["step"] == 1

    cmd, env = cpu_launch("trainer/run.py", [str(config), "run.name=cut"], 2)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=repo_pythonpath(env))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    steps, deadline = tmp_path / "runs" / "cut" / "steps.csv", time.monotonic() + 300
    while time.monotonic() < deadline and (not steps.is_file() or len(steps.read_text().splitlines()) < 3):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "preempted by SIGTERM at epoch 1, step" in err and "resume with run.resume=true" in err, err[-2000:]
    (checkpoint, progress), *_ = find_checkpoints(True, tmp_path / "runs" / "cut")
    assert progress.epoch == 0
    launch("trainer/run.py", str(config), "run.name=cut", "run.resume=true", processes=2)
    assert _step_losses(tmp_path / "runs" / "cut") == _step_losses(tmp_path / "runs" / "full")

    proc = launch("trainer/run.py", str(config), "run.name=strict", "data.on_corrupt=fail", processes=2, check=False)
    assert proc.returncode != 0 and f"corrupt FLAC member {key}.flac" in proc.stderr


def test_nonfinite_loss_stops_naming_the_step_and_saves_nothing(built_shards, synthetic_dir, tmp_path):
    config = tiny_config(tmp_path / "n.yaml", built_shards, synthetic_dir, tmp_path / "runs",
                         optim={"epochs": 2, "lr": 1e30, "warmup_steps": 1},  # diverges within a few steps
                         train={"steps_per_epoch": 3, "wa_start": 1, "trackers": [], "log_every": 1})
    proc = launch("trainer/run.py", str(config), check=False)
    assert proc.returncode != 0 and "non-finite loss at epoch 1, step" in proc.stderr, proc.stderr[-2000:]
    run = tmp_path / "runs" / "tiny"
    assert not list(run.glob("models/*.pt")) and find_checkpoints(True, run) == []


def test_a_failed_save_keeps_the_previous_checkpoint_and_weights(tmp_path, monkeypatch):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    first = save_checkpoint(accelerator, model, tmp_path, Progress(epoch=1, global_step=1))
    save_weights(model.state_dict(), tmp_path / "models" / "best.pt")
    best = (tmp_path / "models" / "best.pt").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(accelerator, "save_state", full_disk)
        with pytest.raises(SaveFailed, match=r"step_00000002 failed .*No space left.* previous checkpoint "
                                             r"\(step_00000001\) is intact"):
            save_checkpoint(accelerator, model, tmp_path, Progress(epoch=2, global_step=2))
        m.setattr(torch, "save", full_disk)
        with torch.no_grad():
            model.weight.add_(1.0)
        with pytest.raises(SaveFailed, match="best.pt failed"):
            save_weights(model.state_dict(), tmp_path / "models" / "best.pt")
    assert find_checkpoints(True, tmp_path) == [(first, Progress(epoch=1, global_step=1))]
    assert load_checkpoint(accelerator, find_checkpoints(True, tmp_path)) == (first, Progress(epoch=1, global_step=1))
    assert (tmp_path / "models" / "best.pt").read_bytes() == best
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000001"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["best.pt"]
