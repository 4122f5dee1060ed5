"""Nothing a user types, and no second launch, destroys data: run names confined to run.dir, run.overwrite only
over this trainer's runs, a run lock, durable checkpoints with fallback, torn logs, and a resume that checks
what it resumes."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from runkit import REPO, launch, repo_pythonpath, tiny_config
from test_faults import _tree
from trainer.checkpointing import CheckpointUnreadable, Progress, find_checkpoints, load_checkpoint, save_checkpoint
from trainer.data.corrupt import CorruptLog, seal
from trainer.data.datasets import resolve_splits
from trainer.data.manifest import read_weights, write_weights
from trainer.data.settings import DataConfig
from trainer.faults import RunExists, RunLocked, claim_run_dir
from trainer.fingerprint import ResumeMismatch, changes, check_resume, fingerprint
from trainer.results import read_rows, truncate_rows
from trainer.rundir import LOCK, MARKER


def test_run_names_outside_run_dir_are_refused_and_nothing_is_touched(tmp_path):
    """The original bug: run.name=.. with run.overwrite=true deleted run.dir's parent. The claim refuses every
    name that is not one directory inside run.dir (the config check is another layer; this one deletes)."""
    runs = tmp_path / "runs"
    (runs / "other").mkdir(parents=True)
    (runs / "other" / "metrics.csv").write_text("epoch\n1\n")
    (tmp_path / "unrelated.txt").write_text("keep me")
    (tmp_path / "elsewhere").mkdir()
    (runs / "link").symlink_to(tmp_path / "elsewhere")
    before = _tree(tmp_path)
    for name in ("..", ".", "../..", "", str(tmp_path), "other/..", "a/b", "link"):
        for resume, overwrite in ((False, True), (True, False)):
            with pytest.raises(RunExists, match=r"run\.name .*: a run directory must be one directory inside run\.dir "
                                                r".*nothing was touched"):
                claim_run_dir(runs, name, resume, overwrite)
    assert _tree(tmp_path) == before and not (tmp_path / "elsewhere" / LOCK).exists()


def test_overwrite_deletes_only_a_marked_run_and_says_what(tmp_path):
    runs = tmp_path / "runs"
    foreign = runs / "foreign"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("not a run")
    for resume, overwrite in ((False, True), (True, False), (False, False)):  # not ours: refused, not even a lock file
        with pytest.raises(RunExists, match=rf"{foreign} holds files that are not a run of this trainer \(no "
                                            rf"\.audiotag-run marker: notes\.txt\); nothing was deleted"):
            claim_run_dir(runs, "foreign", resume, overwrite)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    older = runs / "older"  # a run from before markers: it may be resumed (and is marked then), not overwritten
    (older / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunExists, match="not a run of this trainer"):
        claim_run_dir(runs, "older", False, True)
    claim_run_dir(runs, "older", True, False).release()
    assert (older / MARKER).is_file()

    lines = []
    lock = claim_run_dir(runs, "mine", False, False, lines.append)  # a new run: marker and lock
    marker = json.loads((runs / "mine" / MARKER).read_text())
    assert marker["pid"] == os.getpid() and {"created", "host"} <= marker.keys()
    assert json.loads((runs / "mine" / LOCK).read_text())["pid"] == os.getpid()
    (runs / "mine" / "checkpoints" / "step_1").mkdir(parents=True)
    (runs / "mine" / "checkpoints" / "step_1" / "model.bin").write_bytes(b"w")
    (runs / "mine" / "metrics.csv").write_text("epoch\n1\n")
    lock.release()
    with pytest.raises(RunExists, match="already holds a run .*run.resume=true.*run.overwrite=true"):
        claim_run_dir(runs, "mine", False, False)
    claim_run_dir(runs, "mine", False, True, lines.append).release()
    assert lines == [f"run.overwrite: deleting the previous run in {runs / 'mine'}: {MARKER}, checkpoints/ (1 files), "
                     "metrics.csv"]
    assert sorted(p.name for p in (runs / "mine").iterdir()) == [MARKER, LOCK]


def _hold_lock(runs: Path, name: str) -> subprocess.Popen:
    """Another process that claims the run as a launch would, then keeps it."""
    code = ("import sys, time; from trainer.faults import claim_run_dir; "
            "lock = claim_run_dir(sys.argv[1], sys.argv[2], False, False); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(runs), name], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=repo_pythonpath(os.environ)))
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_launch_stops_at_once_naming_the_holder(built_shards, synthetic_dir, tmp_path):
    """While one process holds the run, a real two-process launch with run.resume=true stops on both ranks with
    the holder's host and pid, touching nothing; when the holder is killed, the kernel frees the lock."""
    runs = tmp_path / "runs"
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, runs)
    holder = _hold_lock(runs, "tiny")
    try:
        with pytest.raises(RunLocked, match=rf"is in use by another process \(host {os.uname().nodename}, "
                                            rf"pid {holder.pid}, started 20"):
            claim_run_dir(runs, "tiny", True, False)
        before = _tree(runs)
        started = time.monotonic()
        proc = launch("trainer/run.py", str(config), "run.resume=true", processes=2, check=False)
        elapsed = time.monotonic() - started
        assert proc.returncode != 0
        reason = f"is in use by another process (host {os.uname().nodename}, pid {holder.pid}"
        assert proc.stderr.count(reason) == 2, proc.stderr[-3000:]  # both ranks stop with the main process's reason
        assert _tree(runs) == before and elapsed < 120, elapsed
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    claim_run_dir(runs, "tiny", True, False).release()  # no stale lock after a kill -9


def test_a_torn_corrupt_samples_row_is_ignored_with_a_warning(tmp_path):
    """A short write (no newline at the end) and a line that does not parse: warnings, never fatal, and the
    rows appended after them stay readable (before: json.loads raised on every later read)."""
    path = tmp_path / "corrupt_samples.jsonl"
    good = {"key": "a", "shard": "s.tar", "error": "e", "epoch": 1, "step": 1}
    path.write_text(json.dumps(good) + "\n" + "garbage\n" + '{"key": "b", "sha')
    with pytest.warns(UserWarning, match="its last row was torn"):
        seal(path)
    log = CorruptLog(path, 1000, 0.1)
    with pytest.warns(UserWarning, match="ignoring a row that does not parse"):
        assert log.refresh() == {"a"}
    with pytest.warns(UserWarning, match="skipping corrupt training sample c"):
        log.add("c", "s.tar", "bad", 2, 3)
    with pytest.warns(UserWarning, match="does not parse"):
        assert CorruptLog(path, 1000, 0.1).refresh() == {"a", "c"}
    seal(path)  # whole rows: nothing to do
    assert path.read_text().endswith('"step": 3}\n')


def test_truncated_rows_are_rewritten_aside(tmp_path, monkeypatch):
    path = tmp_path / "steps.csv"
    path.write_text("global_step,loss\r\n1,0.5\r\n2,0.4\r\n3,0.3\r\n4,0.")  # a row torn by a crash at the end
    truncate_rows(path, 2)
    assert [r["global_step"] for r in read_rows(path)] == ["1", "2"] and path.read_text().startswith("global_step,loss")
    before = path.read_bytes()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)  # interrupted before the rename: the old file stands whole
    with pytest.raises(KeyboardInterrupt):
        truncate_rows(path, 1)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["steps.csv"]


def test_resume_skips_checkpoints_that_do_not_load_and_names_them(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    first = save_checkpoint(accelerator, model, tmp_path, Progress(epoch=1, global_step=1))
    second = save_checkpoint(accelerator, model, tmp_path, Progress(epoch=2, global_step=2))
    weights = next(p for p in second.iterdir() if p.name.startswith("model"))
    weights.write_bytes(weights.read_bytes()[:20])  # torn weights: progress.json parses, the state does not load
    lines = []
    candidates = find_checkpoints(True, tmp_path, lines.append)
    assert [p for p, _ in candidates] == [second, first] and not lines
    assert load_checkpoint(accelerator, candidates, lines.append) == (first, Progress(epoch=1, global_step=1))
    assert len(lines) == 1 and lines[0].startswith(f"warning: skipping checkpoint {second}: its training state does "
                                                   "not load (")
    (second / "progress.json").write_text("")  # a power loss before the file reached the disk
    lines.clear()
    assert [p for p, _ in find_checkpoints(True, tmp_path, lines.append)] == [first]
    assert lines == [f"warning: skipping checkpoint {second}: progress.json does not load (Expecting value: line 1 "
                     "column 1 (char 0))"]
    (first / "progress.json").write_text("{")
    with pytest.raises(CheckpointUnreadable, match=rf"{tmp_path} holds no finished checkpoint that loads"):
        find_checkpoints(True, tmp_path, lines.append)


def test_power_loss_checkpoint_and_a_changed_resume(built_shards, synthetic_dir, tmp_path):
    """One process, checkpoints every 2 steps, stopped abruptly after step 5 (latest step_4, step_3 kept). Then
    as after a power loss: step_4's progress.json empty, a torn row at the end of corrupt_samples.jsonl. Between
    the launches the training set's weights and optim.lr change: the resume stops naming both and writes
    nothing; with run.allow_changed it resumes from step_3, says so, and finishes."""
    data = tmp_path / "data"
    shutil.copytree(built_shards["train"], data)
    extra = {"data": {"train": [str(data)], "valid_fraction": 0.2, "eval": [str(built_shards["eval"])],
                      "batch_size": 4, "num_threads": 1},
             "train": {"steps_per_epoch": 3, "wa_start": 1, "trackers": [], "save_every_steps": 2}}
    config = tiny_config(tmp_path / "c.yaml", built_shards, synthetic_dir, tmp_path / "runs", **extra)
    launch("trainer/run.py", str(config), "train.stop_after_steps=5")
    run = tmp_path / "runs" / "tiny"
    step3, step4 = run / "checkpoints" / "step_00000003", run / "checkpoints" / "step_00000004"
    assert (run / "checkpoints" / "latest").read_text() == step4.name and step3.is_dir()
    (step4 / "progress.json").write_text("")
    (run / "corrupt_samples.jsonl").write_text('{"key": "x", "shard": "s.t')
    weights = read_weights(data / "weights.csv")
    write_weights(data / "weights.csv", [weights[0] * 2] + weights[1:])
    before = _tree(run)
    del before[LOCK]  # names the last launch to hold the run

    proc = launch("trainer/run.py", str(config), "run.resume=true", "optim.lr=2e-3", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"skipping checkpoint {step4}: progress.json does not load" in out
    assert f"error: resuming {step3}, but since it was saved: " in proc.stderr
    assert "optim.lr: 0.001 → 0.002" in proc.stderr
    assert f"data train: the records of {data} changed" in proc.stderr
    assert "run.allow_changed=true" in proc.stderr
    assert {k: v for k, v in _tree(run).items() if k != LOCK} == before  # refused: not a byte of the run changed

    proc = launch("trainer/run.py", str(config), "run.resume=true", "optim.lr=2e-3", "run.allow_changed=true")
    assert "warning: resuming with changes (run.allow_changed): optim.lr: 0.001 → 0.002" in proc.stdout
    assert f"warning: resuming with changes (run.allow_changed): data train: the records of {data} changed" \
        in proc.stdout
    assert f"resumed from {step3}: epoch 2, step 0" in proc.stdout
    assert "its last row was torn" in proc.stderr
    with open(run / "steps.csv") as f:
        assert [int(r["global_step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]
    assert (run / "summary.json").is_file()
    progress = json.loads((run / "checkpoints" / "step_00000006" / "progress.json").read_text())
    assert progress["fingerprint"]["config"]["optim.lr"] == 2e-3


def test_fingerprint_names_what_changed(built_shards):
    data = resolve_splits(DataConfig(train=[str(built_shards["train"])], valid_fraction=0.2,
                                     eval=[str(built_shards["eval"])]))
    config = {"optim": {"lr": 1e-3, "epochs": 2}, "run": {"name": "a", "seed": 1}, "data": {"num_threads": 1}}
    saved = fingerprint(config, data)
    assert set(saved["data"]["train"]) == {str(built_shards["train"])}
    assert saved["data"]["train"] != saved["data"]["valid"]
    later = {"optim": {"lr": 2e-3, "epochs": 2, "new_key": 1}, "run": {"name": "b", "seed": 2},
             "data": {"num_threads": 2}}
    now = fingerprint(later, resolve_splits(DataConfig(train=[str(built_shards["train"])], valid_fraction=0.3,
                                                       eval=[str(built_shards["eval"])])))
    found = changes(saved, now)  # run.name, run.seed, data.num_threads may change; a key old code lacked is no change
    assert found == ["optim.lr: 0.001 → 0.002", f"data train: the records of {built_shards['train']} changed "
                     "(manifest.jsonl or weights.csv)", f"data valid: the records of {built_shards['train']} changed "
                     "(manifest.jsonl or weights.csv)"]
    with pytest.raises(ResumeMismatch, match=r"resuming ck, but since it was saved: optim\.lr: 0\.001 → 0\.002; data "
                                             r"train: .*run\.allow_changed=true"):
        check_resume(saved, now, False, Path("ck"))
    assert check_resume(saved, now, True, Path("ck"))[0] == "resuming with changes (run.allow_changed): optim.lr: " \
                                                            "0.001 → 0.002"
    assert check_resume(saved, fingerprint(config, data), False, Path("ck")) == []
    assert "records no fingerprint" in check_resume(None, now, False, Path("ck"))[0]
    no_eval = fingerprint(config, resolve_splits(DataConfig(train=[str(built_shards["train"])], valid_fraction=0.2)))
    assert changes(saved, no_eval) == [f"data eval: {built_shards['eval']} no longer used"]
