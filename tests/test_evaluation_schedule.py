"""train.eval_every: which epochs are evaluated, early stopping over the evaluated ones, metrics.csv rows with
empty evaluation cells; and a run that evaluates every 2nd epoch on an expected eval set (data.eval_ids),
uninterrupted and resumed."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from runkit import launch, tiny_config
from trainer import results
from trainer.config import ConfigError, load_config
from trainer.data.datasets import load_records
from trainer.eval_schedule import EvalSchedule, best_epoch
from trainer.evaluate import Predictions


def _train(every: int, epochs: int, patience: int | None, scores: dict[int, float]) -> tuple[list[int], int]:
    """(evaluated epochs, epochs trained) of the training loop's use of the schedule, an epoch scoring
    ``scores[epoch]`` when evaluated."""
    schedule = EvalSchedule(every, epochs, patience, {})
    for epoch in range(epochs):  # 0-based, as the loop: ``epoch`` epochs trained so far
        if schedule.stalled(epoch):
            return sorted(schedule.history), epoch
        if schedule.due(epoch + 1):
            schedule.record(epoch + 1, scores[epoch + 1])
    return sorted(schedule.history), epochs


def test_every_epoch_is_psl_early_stopping_as_it_was():
    rng = np.random.default_rng(0)
    for _ in range(200):
        history = list(rng.integers(0, 4, size=int(rng.integers(1, 9))).astype(float))  # ties: the first best counts
        patience = int(rng.integers(1, 4))
        old = len(history) - 1 - int(np.argmax(history)) >= patience  # the rule before train.eval_every
        schedule = EvalSchedule(1, 10, patience, {e + 1: s for e, s in enumerate(history)})
        assert schedule.stalled(len(history)) == old
        assert all(schedule.due(e) for e in range(1, 11))


def test_evaluates_every_nth_the_last_and_a_stopping_epoch():
    flat = {e: 0.5 for e in range(1, 8)}
    assert _train(2, 7, None, flat) == ([2, 4, 6, 7], 7)
    assert _train(3, 7, None, flat) == ([3, 6, 7], 7)
    # patience 3 from the best evaluated epoch: epoch 5 (2 + 3) would stop training, so it is evaluated ...
    assert _train(2, 9, 3, {2: 0.5, 4: 0.4, 5: 0.45}) == ([2, 4, 5], 5)
    # ... and an improvement there goes on
    assert _train(2, 9, 3, {2: 0.5, 4: 0.4, 5: 0.6, 6: 0.3, 8: 0.3}) == ([2, 4, 5, 6, 8], 8)
    # before any evaluation there is nothing to stop on
    assert _train(5, 9, 1, {5: 0.5, 6: 0.4, 7: 0.3}) == ([5, 6], 6)
    assert best_epoch({2: 0.5, 4: 0.7, 6: 0.7}) == 4


def test_metrics_rows_keep_their_columns_with_empty_evaluation_cells(tmp_path: Path):
    path = tmp_path / "metrics.csv"
    for epoch, score in ((1, None), (2, 0.25), (3, None), (4, 0.5)):
        results.append_row(path, {"epoch": epoch, "train_loss": 0.1, "valid_mAP": score, "eval_mAP": score})
    with open(path) as f:
        assert f.read().splitlines() == ["epoch,train_loss,valid_mAP,eval_mAP", "1,0.1,,", "2,0.1,0.25,0.25",
                                         "3,0.1,,", "4,0.1,0.5,0.5"]
    rows = results.read_rows(path)
    assert results.evaluated(rows, "valid_mAP") == {2: 0.25, 4: 0.5}
    results.plot_curves(path, tmp_path / "curves.png")  # the first row not evaluated: curves of the others
    assert (tmp_path / "curves.png").stat().st_size > 0
    results.truncate_rows(path, 3)  # a resume from epoch 3's checkpoint
    assert results.evaluated(results.read_rows(path), "valid_mAP") == {2: 0.25}
    assert path.read_text().splitlines()[-1] == "3,0.1,,"
    with pytest.raises(ValueError, match="not in fieldnames"):  # a column the header lacks: never misaligned
        results.append_row(path, {"epoch": 4, "train_loss": 0.1, "valid_mAP": 0.5, "eval_mAP": 0.5, "extra": 1})


def test_eval_every_must_be_positive():
    with pytest.raises(ConfigError, match=r"^train\.eval_every: must be positive, got 0"):
        load_config(None, ["data.train=[x]", "train.eval_every=0"], check_paths=False)


LISTED, UNKNOWN = 10, ["--4gqARaEJE", "--BfvyPmVMo", "--U7joUcTCo"]


@pytest.fixture(scope="module")
def every_2nd(built_shards, synthetic_dir, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(config, run directory, eval keys listed): 3 epochs of 2 steps, evaluated every 2nd epoch, on 10 of the
    16 eval clips listed in an AudioSet-style CSV with 3 ids the eval data lacks."""
    root = tmp_path_factory.mktemp("every2")
    keys = sorted(r.key for r in load_records(str(built_shards["eval"]))[0])
    listed = keys[::3] + keys[1::3][:LISTED - len(keys[::3])]
    ids = root / "eval_segments.csv"
    ids.write_text("# expected eval segments\nYTID, start_seconds, end_seconds, positive_labels\n"
                   + "".join(f'{k}, 0.000, 10.000, "/m/x"\n' for k in listed[:5] + UNKNOWN + listed[5:]))
    config = tiny_config(root / "tiny.yaml", built_shards, synthetic_dir, root / "runs", optim={"epochs": 3},
                         data={"eval_ids": str(ids)},
                         train={"steps_per_epoch": 2, "wa_start": 1, "trackers": [], "eval_every": 2})
    launch("trainer/run.py", str(config))
    return config, root / "runs" / "tiny", listed


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_evaluates_every_2nd_and_the_last_epoch(every_2nd):
    _, run, _ = every_2nd
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert all(r["train_loss"] and r["lr"] and r["clips_per_s"] for r in rows)  # every epoch has its row
    for col in ("valid_mAP", "valid_mAUC", "valid_dprime", "eval_mAP", "eval_mAUC", "eval_dprime"):
        assert [bool(r[col]) for r in rows] == [False, True, True], col
    assert not (run / "predictions" / "eval_epoch_1.npz").exists()
    summary = json.loads((run / "summary.json").read_text())
    valid = {e: float(rows[e - 1]["valid_mAP"]) for e in (2, 3)}
    assert summary["best_epoch"] == (2 if valid[2] >= valid[3] else 3)
    assert summary["checkpoint_ensemble"]["epochs"] == [2, 3]
    assert summary["weight_averaged"]["epochs"] == [1, 3]  # weights are saved every epoch, evaluated or not
    members = [Predictions.load(run / "predictions" / f"eval_epoch_{e}.npz") for e in (2, 3)]
    ensemble = Predictions.load(run / "predictions" / "eval_ensemble.npz")
    np.testing.assert_allclose(ensemble.probs, (members[0].probs + members[1].probs) / 2, rtol=1e-6)
    best = Predictions.load(run / "predictions" / f"eval_epoch_{summary['best_epoch']}.npz")
    np.testing.assert_array_equal(Predictions.load(run / "predictions" / "eval_best.npz").probs, best.probs)


def test_results_are_on_the_listed_eval_clips_present(every_2nd):
    _, run, listed = every_2nd
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_ids"] == {"file": str(run.parents[1] / "eval_segments.csv"), "expected": LISTED + 3,
                                   "present": LISTED, "missing": 3, "not_listed": 16 - LISTED}
    assert (run / "eval_missing_ids.txt").read_text().splitlines() == UNKNOWN
    for section, tag in (("best_single", "best"), ("weight_averaged", "wa"), ("checkpoint_ensemble", "ensemble")):
        assert summary[section]["num_samples"] == LISTED
        assert sorted(Predictions.load(run / "predictions" / f"eval_{tag}.npz").keys) == sorted(listed)
    for name in ("best_single_result.csv", "wa_result.csv", "ensemble_result.csv"):
        with open(run / name) as f:
            (row,) = csv.DictReader(f)
        assert [int(row[k]) for k in ("num_samples", "eval_ids_expected", "eval_ids_present")] == \
               [LISTED, LISTED + 3, LISTED]


def test_resumed_run_evaluates_the_same_epochs(every_2nd):
    """Stopped abruptly in epoch 3 and resumed from the end of epoch 2: the same evaluations, selection and
    ensemble as the uninterrupted run."""
    config, run, _ = every_2nd
    launch("trainer/run.py", str(config), "run.name=cut", "train.stop_after_steps=5")
    cut = run.parent / "cut"
    assert [r["epoch"] for r in _metrics(cut)] == ["1", "2"]
    launch("trainer/run.py", str(config), "run.name=cut", "run.resume=true")
    timing = {"clips_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in _metrics(cut)] == \
           [{k: v for k, v in r.items() if k not in timing} for r in _metrics(run)]
    full, resumed = (json.loads((d / "summary.json").read_text()) for d in (run, cut))
    for key in ("best_epoch", "best_single", "weight_averaged", "checkpoint_ensemble", "eval_ids"):
        assert resumed[key] == full[key], key
