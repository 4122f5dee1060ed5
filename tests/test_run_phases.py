"""The training loop's resume and early stopping, without a launch: a checkpoint's typed progress saved and read
back, a resumed run's rows rewound to its checkpoint, and the stop decided from the evaluated epochs kept."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator

from trainer import results
from trainer.checkpointing import Progress, find_checkpoints, read_progress, save_checkpoint
from trainer.config import load_config
from trainer.run import early_stop, eval_schedule, rewind
from trainer.rundir import RunDir


def test_progress_round_trips_a_checkpoint_and_reads_older_ones(tmp_path: Path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    progress = Progress(epoch=1, step=3, global_step=7, seed=5, stream={"position": 3}, fingerprint={"config": {}})
    saved = save_checkpoint(accelerator, model, tmp_path, progress)
    assert saved.name == "step_00000007" and find_checkpoints(True, tmp_path) == [(saved, progress)]
    # the file as the untyped dict wrote it: the same keys in the same order
    assert list(json.loads((saved / "progress.json").read_text())) == ["epoch", "step", "global_step", "seed",
                                                                       "stream", "fingerprint"]
    older = tmp_path / "older"
    older.mkdir()
    (older / "progress.json").write_text('{"epoch": 2, "step": 0}')
    assert read_progress(older) == Progress(epoch=2)
    # the epoch the checkpoint was cut in resumes at its step, the ones after it from their start
    assert (progress.first_step(1), progress.first_step(2)) == (3, 0)


def test_resume_rewinds_the_rows_and_stops_early_as_the_interrupted_run_would(tmp_path: Path):
    cfg = load_config("configs/demo.yaml", [f"run.dir={tmp_path}", "run.name=r", "train.early_stop_patience=2"],
                      check_paths=False)
    run = RunDir(cfg.run_dir)
    run.path.mkdir()
    for epoch, score in enumerate((0.5, 0.3, 0.2, 0.6), start=1):  # epoch 4 was trained after the checkpoint
        results.append_row(run.metrics, {"epoch": epoch, "valid_mAP": score})
        for step in range(1, 5):
            results.append_row(run.steps, {"epoch": epoch, "step": step, "loss": 0.1})
    checkpoint = Progress(epoch=3, step=2, global_step=14)
    rewind(run, checkpoint)
    assert [r["epoch"] for r in results.read_rows(run.metrics)] == ["1", "2", "3"]
    assert len(results.read_rows(run.steps)) == 14
    schedule = eval_schedule(cfg, run)
    assert schedule.history == {1: 0.5, 2: 0.3, 3: 0.2}
    # epoch 3 (0-based) would start: two epochs without improving on epoch 1's score
    assert early_stop(schedule, 3, "valid_mAP") == ("early stop: valid_mAP has not improved for 2 epochs "
                                                    "(best 0.5000 in epoch 1)")
    assert early_stop(schedule, 2, "valid_mAP") is None
    rewind(run, Progress())  # a fresh start over an old run's rows (run.overwrite empties it first)
    assert results.read_rows(run.metrics) == [] and eval_schedule(cfg, run).history == {}
