"""The training loop end to end on two CPU processes: result files, metrics that a plain scikit-learn
computation reproduces, equal evaluation on 1 and 2 processes, exact resume, and config errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from runkit import launch, tiny_config
from trainer.config import ConfigError, load_config
from trainer.evaluate import Predictions


def test_two_process_run_writes_psla_results(two_process_run: Path):
    run = two_process_run
    for name in ("config.yaml", "class_labels_indices.csv", "metrics.csv", "steps.csv", "curves.png",
                 "best_single_result.csv", "wa_result.csv", "ensemble_result.csv", "summary.json",
                 "models/best.pt", "models/wa.pt", "models/epoch_1.pt", "models/epoch_2.pt"):
        assert (run / name).is_file(), name
    with open(run / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selected_on"] == "valid" and summary["result_split"] == "eval"
    assert summary["best_single"]["num_samples"] == 16  # every eval clip once, across both ranks
    assert summary["weight_averaged"]["epochs"] == [1, 2]
    assert summary["checkpoint_ensemble"]["epochs"] == [1, 2]  # every epoch evaluated (train.eval_every 1)
    assert "best_single" in summary["chunk_level"]  # strong labels given: chunk-level evaluation ran


def test_reported_metrics_equal_plain_sklearn(two_process_run: Path):
    summary = json.loads((two_process_run / "summary.json").read_text())
    for tag, section in (("best", "best_single"), ("wa", "weight_averaged"), ("ensemble", "checkpoint_ensemble")):
        p = Predictions.load(two_process_run / "predictions" / f"eval_{tag}.npz")
        assert len(set(p.keys)) == len(p.keys) == 16
        has_pos = p.targets.sum(0) > 0
        has_both = has_pos & (p.targets.sum(0) < len(p.targets))
        ap = np.mean([average_precision_score(p.targets[:, c], p.probs[:, c]) for c in np.flatnonzero(has_pos)])
        auc = np.mean([roc_auc_score(p.targets[:, c], p.probs[:, c]) for c in np.flatnonzero(has_both)])
        assert summary[section]["mAP"] == pytest.approx(ap, abs=1e-9)
        assert summary[section]["mAUC"] == pytest.approx(auc, abs=1e-9)
        assert summary[section]["num_skipped_ap"] == int((~has_pos).sum())
    epochs = [Predictions.load(two_process_run / "predictions" / f"eval_epoch_{e}.npz") for e in (1, 2)]
    ensemble = Predictions.load(two_process_run / "predictions" / "eval_ensemble.npz")
    np.testing.assert_allclose(ensemble.probs, (epochs[0].probs + epochs[1].probs) / 2, rtol=1e-6)
    # Scored over chunks of its training length: a whole-clip student's is the clip (4 s), one chunk, so max = mean.
    pooled = {p: Predictions.load(two_process_run / "predictions" / f"eval_best_chunk_{p}.npz") for p in ("max", "mean")}
    assert summary["best_single_chunk_pooled"]["chunk_seconds"] == 4.0
    assert pooled["max"].keys == pooled["mean"].keys and len(set(pooled["max"].keys)) == 16
    np.testing.assert_allclose(pooled["max"].probs, pooled["mean"].probs, rtol=1e-6)
    p = pooled["max"]
    has_pos = p.targets.sum(0) > 0
    ap = np.mean([average_precision_score(p.targets[:, c], p.probs[:, c]) for c in np.flatnonzero(has_pos)])
    assert summary["best_single_chunk_pooled"]["max"]["mAP"] == pytest.approx(ap, abs=1e-9)


def test_evaluation_equal_on_one_and_two_processes(built_shards, synthetic_dir, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, tmp_path / "runs")
    for n in (1, 2):
        launch("tests/scripts/predict_eval_set.py", str(config), str(tmp_path / f"p{n}.npz"), processes=n)
    one, two = (Predictions.load(tmp_path / f"p{n}.npz") for n in (1, 2))
    assert one.keys == two.keys and len(one.keys) == 16
    np.testing.assert_allclose(one.probs, two.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(one.targets, two.targets)


def _step_losses(run: Path) -> list[tuple[int, float]]:
    with open(run / "steps.csv") as f:
        return [(int(r["global_step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_killed_and_resumed_run_repeats_the_same_losses(built_shards, synthetic_dir, tmp_path):
    """Single process: checkpoints every 2 steps; a run stopped abruptly at step 5 (mid epoch 2) and
    resumed from its step-4 checkpoint logs exactly the losses of an uninterrupted run."""
    extra = {"train": {"steps_per_epoch": 3, "wa_start": 1, "trackers": [], "save_every_steps": 2}}
    full = tiny_config(tmp_path / "full.yaml", built_shards, synthetic_dir, tmp_path / "runs", **extra)
    launch("trainer/run.py", str(full), "run.name=full")
    launch("trainer/run.py", str(full), "run.name=cut", "train.stop_after_steps=5")
    cut = tmp_path / "runs" / "cut"
    assert (cut / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert not (cut / "summary.json").exists()
    # resumed with another run.seed: the checkpoint's seed is kept (and the difference reported)
    proc = launch("trainer/run.py", str(full), "run.name=cut", "run.resume=true", "run.seed=4")
    assert "run.seed 4 differs from the checkpoint's seed 3; resuming with 3" in proc.stdout
    assert _step_losses(cut) == _step_losses(tmp_path / "runs" / "full")
    assert len(_step_losses(cut)) == 6


def test_config_errors_name_the_key(built_shards, synthetic_dir, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"^optim\.lr: expected a number"):
        load_config(config, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"^optim\.lrr: unknown key"):
        load_config(config, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"^data\.eval\[0\]: .*does not exist"):
        load_config(config, ["data.eval=[shards/nope]"])
    with pytest.raises(ConfigError, match=r"^model\.name: 'resnet' is not one of"):
        load_config(config, ["model.name=resnet"])
    proc = launch("trainer/run.py", str(config), "features.frontend=mfcc", check=False)
    assert proc.returncode != 0 and "features.frontend: 'mfcc' is not one of" in proc.stderr


def test_unreadable_override_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^data\.train: cannot read .* as YAML"):
        load_config(None, ["data.train=[shards/x/x-{000000..000001}.tar]"], check_paths=False)
    cfg = load_config(None, ["data.train=shards/x/x-{000000..000001}.tar"], check_paths=False)
    assert cfg.data.train == ["shards/x/x-{000000..000001}.tar"]


def test_dali_threads_are_auto_unless_a_positive_number():
    def cfg(*overrides: str):
        return load_config(None, ["data.train=[shards/x]", *overrides], check_paths=False)

    assert cfg().data.num_threads == "auto" and cfg("data.num_threads=3").data.num_threads == 3
    with pytest.raises(ConfigError, match=r"^data\.num_threads: must be positive or auto, got 0"):
        cfg("data.num_threads=0")
    with pytest.raises(ConfigError, match=r"^data\.num_threads: 'many' is not one of int or 'auto'"):
        cfg("data.num_threads=many")


def test_single_shard_spec_and_options_that_do_not_apply(built_shards, synthetic_dir, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, tmp_path / "runs")
    shard = sorted(built_shards["train"].glob("*.tar"))[0]
    assert load_config(config, [f"data.train=[{shard}]"]).data.train == [str(shard)]  # one x.tar is a dataset spec
    with pytest.raises(ConfigError, match=r"^features\.norm_mean: does not apply to the mel64 front-end"):
        load_config(config, ["features.norm_mean=-4.0"])
    with pytest.raises(ConfigError, match=r"^features\.target_frames: does not apply to the mel64 front-end"):
        load_config(config, ["features.target_frames=1000"])
    assert load_config(config, ["features.frontend=kaldi_fbank", "features.target_frames=1000"]).features.target_frames


def test_every_shipped_config_is_valid():
    """Each runnable recipe loads and validates (a *_base.yaml is only inherited)."""
    configs = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                     if not p.stem.endswith("_base"))
    assert len(configs) >= 15
    for path in configs:
        load_config(path, check_paths=False)
