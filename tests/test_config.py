"""Validation before any work: every numeric setting within its domain, run names that stay inside run.dir,
splits that are not empty, datasets listed once, and a warning for eval clips that are also training clips."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from runkit import launch, tiny_config
from trainer.config import ConfigError, load_config
from trainer.data.datasets import SplitError, in_holdout, resolve_splits

# (overrides, the dotted key the ConfigError must start with): each is a value no run can work with
BAD_SETTINGS = [
    (["run.name=.."], "run.name"), (["run.name=."], "run.name"), (["run.name=''"], "run.name"),
    (["run.name=a/b"], "run.name"), (["run.name=/tmp/elsewhere"], "run.name"), (['run.name="a\\0b"'], "run.name"),
    (["run.seed=-1"], "run.seed"), (["run.seed=4294967296"], "run.seed"),
    (["optim.lr=.nan"], "optim.lr"), (["optim.lr=.inf"], "optim.lr"), (["optim.lr=0"], "optim.lr"),
    (["optim.lr=-1e-3"], "optim.lr"), (["optim.epochs=0"], "optim.epochs"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps"), (["optim.lrscheduler_start=-1"], "optim.lrscheduler_start"),
    (["optim.lrscheduler_step=0"], "optim.lrscheduler_step"), (["optim.lrscheduler_decay=0"], "optim.lrscheduler_decay"),
    (["optim.lrscheduler_decay=1.5"], "optim.lrscheduler_decay"), (["optim.weight_decay=-1"], "optim.weight_decay"),
    (["optim.weight_decay=.nan"], "optim.weight_decay"), (["optim.betas=[1.0, 0.999]"], r"optim.betas\[0\]"),
    (["optim.betas=[0.9, .nan]"], r"optim.betas\[1\]"), (["optim.grad_clip=0"], "optim.grad_clip"),
    (["optim.grad_clip=.inf"], "optim.grad_clip"), (["optim.grad_accum=0"], "optim.grad_accum"),
    (["train.cpu_threads=0"], "train.cpu_threads"), (["train.steps_per_epoch=0"], "train.steps_per_epoch"),
    (["train.steps_per_epoch=-5"], "train.steps_per_epoch"), (["train.save_every_steps=-1"], "train.save_every_steps"),
    (["train.log_every=0"], "train.log_every"), (["train.eval_every=0"], "train.eval_every"),
    (["train.early_stop_patience=0"], "train.early_stop_patience"), (["train.stop_after_steps=0"], "train.stop_after_steps"),
    (["train.wa_end=0"], "train.wa_end"),
    (["evaluation.batch_size=0"], "evaluation.batch_size"), (["evaluation.chunk_seconds=0"], "evaluation.chunk_seconds"),
    (["evaluation.chunk_seconds=.nan"], "evaluation.chunk_seconds"),
    (["evaluation.chunk_seconds=0.001"], "evaluation.chunk_seconds"),  # shorter than one frame
    (["psl.alpha=1.5"], "psl.alpha"), (["psl.alpha=.nan"], "psl.alpha"), (["psl.chunk_seconds=0"], "psl.chunk_seconds"),
    (["psl.chunk_seconds=0.001"], "psl.chunk_seconds"), (["psl.chunk_seconds=2", "psl.chunk_hop=-1"], "psl.chunk_hop"),
    (["psl.chunk_seconds=2", "psl.chunks_per_clip=0"], "psl.chunks_per_clip"), (["psl.threshold=1"], "psl.threshold"),
    (["data.valid_fraction=0"], "data.valid_fraction"), (["data.valid_fraction=.nan"], "data.valid_fraction"),
    (["data.batch_size=0"], "data.batch_size"), (["data.global_batch_size=-32"], "data.global_batch_size"),
    (["data.global_batch_size=32", "data.max_batch_per_process=0"], "data.max_batch_per_process"),
    (["data.num_samples=0"], "data.num_samples"), (["data.num_samples=-1"], "data.num_samples"),
    (["data.num_threads=0"], "data.num_threads"), (["data.prefetch=0"], "data.prefetch"),
    (["data.readahead=-1"], "data.readahead"), (["data.max_corrupt_fraction=1"], "data.max_corrupt_fraction"),
    (["data.remote.connections=0"], "data.remote.connections"), (["data.remote.timeout=.nan"], "data.remote.timeout"),
    (["data.remote.retries=-1"], "data.remote.retries"), (["data.remote.cache_bytes=-1"], "data.remote.cache_bytes"),
    (["features.clip_seconds=0"], "features.clip_seconds"), (["features.clip_seconds=.inf"], "features.clip_seconds"),
    (["features.target_frames=0"], "features.target_frames"), (["features.norm_mean=.nan"], "features.norm_mean"),
    (["features.norm_std=0"], "features.norm_std"),
    (["augment.freqm=-1"], "augment.freqm"), (["augment.timem=-1"], "augment.timem"), (["augment.mixup=1.5"], "augment.mixup"),
    (["augment.mixup_alpha=0"], "augment.mixup_alpha"), (["augment.batch_mixup_alpha=-1"], "augment.batch_mixup_alpha"),
    (["augment.time_shift=-1"], "augment.time_shift"), (["augment.gain_db=.inf"], "augment.gain_db"),
    (["model.width_mult=0"], "model.width_mult"), (["model.att_heads=-1"], "model.att_heads"),
    (["model.dropout=1"], "model.dropout"), (["model.dropout=-0.1"], "model.dropout"),
]


@pytest.mark.parametrize("overrides, key", BAD_SETTINGS, ids=[" ".join(o) for o, _ in BAD_SETTINGS])
def test_a_setting_out_of_its_domain_is_a_config_error_naming_it(overrides, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_config(None, ["data.train=[x]", *overrides], check_paths=False)


def test_settings_at_the_edges_of_their_domains_are_accepted():
    cfg = load_config(None, ["data.train=[x]", "run.name=my run.v2", "run.dir=../elsewhere/runs", "run.seed=0",
                             "optim.warmup_steps=0", "optim.lrscheduler_decay=1", "optim.betas=[0, 0.5]",
                             "optim.weight_decay=0", "train.save_every_steps=0", "train.steps_per_epoch=null",
                             "data.readahead=0", "augment.mixup=1", "model.att_heads=0", "model.dropout=0"],
                      check_paths=False)
    assert cfg.run_dir == Path("../elsewhere/runs/my run.v2")  # run.dir may be any path; the name is one component


def test_an_empty_validation_split_stops_before_any_work(built_shards, synthetic_dir, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, tmp_path / "runs")
    cfg = load_config(config, ["data.valid_fraction=0.001"])  # 0.1 % of 40 clips: none
    with pytest.raises(SplitError, match=r"^data\.valid_fraction: 0\.001 of the 40 training clips holds out 0 "
                                         r"for validation, leaving 40 to train on"):
        resolve_splits(cfg.data)
    with pytest.raises(SplitError, match=r"^data\.valid_fraction: 0\.999 of the 40 training clips holds out 40 "):
        resolve_splits(load_config(config, ["data.valid_fraction=0.999"]).data)
    # the same through a real launch: a config error, and nothing of the run written
    proc = launch("trainer/run.py", str(config), "data.valid_fraction=0.001", check=False)
    assert proc.returncode == 1 and "config error: data.valid_fraction: 0.001 of the 40 training clips" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_dataset_listed_twice_is_an_error(built_shards, synthetic_dir, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, tmp_path / "runs")
    train = built_shards["train"]
    link = tmp_path / "same"
    link.symlink_to(train)  # another spelling of the same directory: compared resolved
    shards = sorted(p.name for p in train.glob("*.tar"))
    for second, what in ((train, "the directory again"), (link, "a link to it"), (train / shards[1], "one of its shards")):
        cfg = load_config(config, [f"data.train=[{train},{second}]"])
        with pytest.raises(SplitError, match=rf"^data\.train\[1\]: {re.escape(str(second))} lists shards of "
                                             rf"{re.escape(str(train.resolve()))} that data\.train\[0\] "
                                             rf"\({re.escape(str(train))}\) already lists"):
            resolve_splits(cfg.data)
    cfg = load_config(config, [f"data.eval=[{built_shards['eval']},{built_shards['eval']}]"])
    with pytest.raises(SplitError, match=r"^data\.eval\[1\]: "):
        resolve_splits(cfg.data)
    # two different shards of one dataset are two parts of it, not a repeat
    cfg = load_config(config, [f"data.train=[{train / shards[0]},{train / shards[1]}]"])
    assert len(resolve_splits(cfg.data).train) + len(resolve_splits(cfg.data).valid) == 32


def test_eval_clips_that_are_training_clips_are_a_warning_with_the_count(built_shards, synthetic_dir, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, tmp_path / "runs")
    assert resolve_splits(load_config(config).data).warnings == []  # the fixture's eval clips are their own
    train = built_shards["train"]
    first = sorted(p.name for p in train.glob("*.tar"))[0]
    splits = resolve_splits(load_config(config, [f"data.eval=[{train}/{first}]"]).data)  # 16 training clips
    keys = splits.eval.keys(range(len(splits.eval)))
    shared = sum(not in_holdout(k, 0.2) for k in keys)  # the clips held out for validation are not trained on
    assert len(keys) == 16 and 0 < shared < 16
    assert splits.warnings == [f"data.eval: {shared} of its 16 clips are also training clips (the same keys after "
                               f"the validation hold-out); their scores are not held out"]
    splits = resolve_splits(load_config(config, [f"data.valid=[{train}]"]).data)
    assert splits.warnings == ["data.valid: 40 of its 40 clips are also training clips (the same keys after the "
                               "validation hold-out); their scores are not held out"]
