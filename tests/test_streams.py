"""Streams end to end on tiny shard sets: resume, rank coverage (in-process and two real processes),
dataset resolution and the bad-input errors."""
import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from runkit import launch
from tests.shardkit import make_dataset
from trainer.data.augment import Augmenter
from trainer.data.corrupt import CorruptLog, TooManyCorrupt
from trainer.data.datasets import in_holdout, load_records, resolve_splits
from trainer.data.features import build_frontend
from trainer.data.seeding import AUGMENT, numpy_rng
from trainer.data.settings import AugmentConfig, DataConfig, FeatureConfig, LoaderSettings
from trainer.data.streams import EvalStream, TrainStream

FEAT = build_frontend(FeatureConfig(frontend="mel64", clip_seconds=1.0))
AUG = AugmentConfig(freqm=8, timem=20, mixup=0.5, time_shift=0.2, gain_db=3.0)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("streams") / "ds"
    make_dataset(root, n=22, num_shards=3, seconds=1.0)
    return root


def train_stream(records, **kw):
    return TrainStream(records, 5, LoaderSettings(batch_size=4, **kw), FEAT, AUG, 11, 0, 1, CPU, num_samples=30)


def test_resume_mid_epoch_reproduces_following_batches(ds):
    records = load_records(str(ds))[0]
    full = train_stream(records)
    full.set_epoch(1)
    expected = list(full)
    assert len(expected) == len(full) == 8
    first = train_stream(records)
    first.set_epoch(1)
    it = iter(first)
    for _ in range(3):
        next(it)
    sd = first.state_dict()
    assert sd["position"] == 3 and sd["epoch"] == 1
    resumed = train_stream(records)
    resumed.load_state_dict(sd)
    resumed.set_epoch(1)  # the loop sets the epoch again; the position survives
    rest = list(resumed)
    assert len(rest) == 5
    for a, b in zip(expected[3:], rest):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["features"], b["features"]) and torch.equal(a["labels"], b["labels"])
    assert list(resumed) == []  # the epoch is consumed
    resumed.set_epoch(2)
    assert [b["keys"] for b in resumed] != [b["keys"] for b in expected]


def test_tail_workers_give_the_same_batches(ds):
    """On CPU each batch's tail runs on one of torch.get_num_threads() worker threads, batches ahead of the
    caller, reading DALI's output buffers without a copy: 1 or 3 workers give the same batches, bit for bit."""
    records = load_records(str(ds))[0]
    before, runs = torch.get_num_threads(), []
    try:
        for workers in (1, 3):
            torch.set_num_threads(workers)
            stream = train_stream(records, num_threads=1, prefetch=1)
            stream.set_epoch(2)
            runs.append(list(stream))
    finally:
        torch.set_num_threads(before)
    assert len(runs[0]) == len(runs[1]) == 8
    for a, b in zip(*runs):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["features"], b["features"]) and torch.equal(a["labels"], b["labels"])


def test_eval_covers_every_key_once_over_one_and_two_ranks(ds):
    records = load_records(str(ds))[0]
    cfg = LoaderSettings(batch_size=4)
    one = [k for b in EvalStream(records, 5, cfg, FEAT, 0, 1, CPU) for k in b["keys"]]
    two = [[k for b in EvalStream(records, 5, cfg, FEAT, r, 2, CPU) for k in b["keys"]] for r in range(2)]
    assert sorted(one) == sorted(r.key for r in records) and len(set(one)) == len(one)
    assert sorted(two[0] + two[1]) == sorted(one)
    assert len(EvalStream(records, 5, cfg, FEAT, 0, 2, CPU)) == len(EvalStream(records, 5, cfg, FEAT, 1, 2, CPU))


SCRIPT = """
import json, sys, torch
from accelerate import Accelerator
from trainer.data.datasets import load_records
from trainer.data.features import build_frontend
from trainer.data.settings import AugmentConfig, FeatureConfig, LoaderSettings
from trainer.data.streams import EvalStream, TrainStream
acc = Accelerator()
records = load_records(sys.argv[1])[0]
feat = build_frontend(FeatureConfig(frontend="mel64", clip_seconds=1.0))
r, w = acc.process_index, acc.num_processes
train = TrainStream(records, 5, LoaderSettings(3), feat, AugmentConfig(), 3, r, w, acc.device, num_samples=20)
train.set_epoch(2)
out = {"world": w, "len": len(train), "train": [b["keys"] for b in train],
       "eval": [b["keys"] for b in EvalStream(records, 5, LoaderSettings(4), feat, r, w, acc.device)]}
json.dump(out, open(f"{sys.argv[2]}/rank{r}.json", "w"))
"""


def test_two_real_processes(ds, tmp_path):
    script = tmp_path / "keys.py"
    script.write_text(SCRIPT)
    launch(str(script), str(ds), str(tmp_path), processes=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["len"] == ranks[1]["len"] == len(ranks[0]["train"]) == len(ranks[1]["train"]) == 4
    # the two ranks read disjoint slices of the single-process sequence
    records = load_records(str(ds))[0]
    single = TrainStream(records, 5, LoaderSettings(3), FEAT, AugmentConfig(), 3, 0, 1, CPU, num_samples=24)
    single.set_epoch(2)
    seq = [records[i].key for b in single.batches() for i in b]
    interleaved = [k for pair in zip(sum(ranks[0]["train"], []), sum(ranks[1]["train"], [])) for k in pair]
    assert interleaved == seq
    evals = sum(ranks[0]["eval"], []) + sum(ranks[1]["eval"], [])
    assert sorted(evals) == sorted(r.key for r in records)


def test_corrupt_eval_clip_is_left_out_and_reported(tmp_path):
    make_dataset(tmp_path / "bad", n=6, num_shards=2, seconds=0.5, corrupt=("ds00003",))
    records = load_records(str(tmp_path / "bad"))[0]
    ev = EvalStream(records, 5, LoaderSettings(3), FEAT, 0, 1, CPU)
    for _ in range(2):  # the second pass plans without it
        with pytest.warns(UserWarning, match="ds00003") if not ev.missing else contextlib.nullcontext():
            keys = [k for b in ev for k in b["keys"]]
        assert sorted(keys) == sorted(r.key for r in records if r.key != "ds00003")
    assert list(ev.missing) == ["ds00003"] and "ds-000001.tar" in ev.missing["ds00003"]


def _corrupt_train(tmp_path, log=None, rank=0, world=1):
    if not (tmp_path / "bad").is_dir():
        make_dataset(tmp_path / "bad", n=6, num_shards=2, seconds=0.5, corrupt=("ds00003",))
    records = load_records(str(tmp_path / "bad"))[0]
    return TrainStream(records, 5, LoaderSettings(batch_size=4), FEAT, AUG, 7, rank, world, CPU, num_samples=40,
                       corrupt=log)


def test_corrupt_training_sample_stops_the_run_naming_it_with_fail(tmp_path):
    stream = _corrupt_train(tmp_path)
    with pytest.raises(RuntimeError, match=r"corrupt FLAC member ds00003\.flac in shard .*ds-000001\.tar"):
        list(stream)


def test_corrupt_training_sample_is_skipped_logged_and_replaced_deterministically(tmp_path):
    log = CorruptLog(tmp_path / "corrupt.jsonl", total=6, max_fraction=0.5)
    stream = _corrupt_train(tmp_path, log)
    assert any(stream.records[i].key == "ds00003" for b in stream.batches() for i in b)  # it is drawn
    with pytest.warns(UserWarning, match="skipping corrupt training sample ds00003"):
        full = list(stream)
    assert len(full) == len(stream) == 10 and all(len(b["keys"]) == 4 for b in full)  # no batch is short
    assert all("ds00003" not in b["keys"] for b in full)
    rows = [json.loads(line) for line in (tmp_path / "corrupt.jsonl").read_text().splitlines()]
    assert [(r["key"], r["epoch"]) for r in rows] == [("ds00003", 1)] and r"ds-000001.tar" in rows[0]["shard"]
    # a resumed stream (a new process, the same log) plans the same batches without decoding it again
    resumed = _corrupt_train(tmp_path, CorruptLog(tmp_path / "corrupt.jsonl", total=6, max_fraction=0.5))
    resumed.load_state_dict({"epoch": 0, "position": 3})
    rest = list(resumed)
    assert [b["keys"] for b in rest] == [b["keys"] for b in full[3:]]
    assert all(torch.equal(a["features"], b["features"]) for a, b in zip(rest, full[3:]))
    # another rank reads the log: it never draws the sample either
    other = _corrupt_train(tmp_path, CorruptLog(tmp_path / "corrupt.jsonl", total=6, max_fraction=0.5), 1, 2)
    assert all("ds00003" not in b["keys"] for b in other)
    with pytest.raises(TooManyCorrupt, match="1 of 6 training samples failed to decode"):
        list(_corrupt_train(tmp_path / "strict", CorruptLog(tmp_path / "strict.jsonl", total=6, max_fraction=0.1)))


def test_missing_shard_and_index(tmp_path):
    make_dataset(tmp_path / "d", n=6, num_shards=2, seconds=0.3)
    (tmp_path / "d" / "ds-000001.tar.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"ds-000001\.tar\.idx"):
        load_records(str(tmp_path / "d"))
    (tmp_path / "d" / "ds-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"ds-000000\.tar"):
        load_records(str(tmp_path / "d"))


def test_patterns_holdout_and_vocabulary(tmp_path):
    make_dataset(tmp_path / "a", n=30, num_shards=3, seconds=0.3)
    make_dataset(tmp_path / "b", n=10, num_shards=2, seconds=0.3, prefix="bb")
    recs = load_records(str(tmp_path / "a" / "ds-{000000..000001}.tar"))[0]
    assert {Path(r.shard).name for r in recs} == {"ds-000000.tar", "ds-000001.tar"} and len(recs) == 20
    assert all(Path(r.shard).is_absolute() for r in recs)
    with pytest.raises(FileNotFoundError, match=r"missing shard .*ds-000006\.tar"):
        load_records(str(tmp_path / "a" / "ds-{000006..000007}.tar"))
    splits = resolve_splits(DataConfig(train=[str(tmp_path / "a"), str(tmp_path / "b")], valid_fraction=0.3))
    assert len(splits.train) + len(splits.valid) == 40 and 0 < len(splits.valid) < 25
    assert all(in_holdout(r.key, 0.3) for r in splits.valid)
    assert splits.feature_config(FeatureConfig()).norm_mean == -5.0
    make_dataset(tmp_path / "c", n=4, num_shards=1, seconds=0.3, num_classes=7)
    with pytest.raises(ValueError, match="vocabulary"):
        resolve_splits(DataConfig(train=[str(tmp_path / "a"), str(tmp_path / "c")]))


def test_background_feed_gives_the_same_batches(ds):
    """On a GPU a background thread feeds DALI and runs the tail ahead of the step; forced on here, it gives the
    inline stream's batches bit for bit, resumes at the same place, and stops cleanly when the caller does."""
    records = load_records(str(ds))[0]
    inline, background = train_stream(records), train_stream(records)
    background._background = True
    for s in (inline, background):
        s.set_epoch(1)
    a, b = list(inline), list(background)
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"] and torch.equal(x["features"], y["features"]) and torch.equal(x["labels"], y["labels"])
    background.set_epoch(2)
    for i, batch in enumerate(background):  # stop early, as the loop does at steps_per_epoch
        if i == 2:
            break
    assert background.state_dict() == {"epoch": 2, "position": 3}
    inline.set_epoch(2)
    assert [b["keys"] for b in background] == [b["keys"] for b in list(inline)[3:]]


WAVE_AUG = AugmentConfig(freqm=8, timem=20, mixup=0.5, time_shift=0.2, gain_db=3.0, mixup_domain="waveform")


def _frontend(name):
    return build_frontend(FeatureConfig(frontend=name, clip_seconds=1.0,
                                        target_frames=100 if name == "kaldi_fbank" else None))


def _batches(records, frontend, aug, seed=11):
    stream = TrainStream(records, 5, LoaderSettings(batch_size=4), frontend, aug, seed, 0, 1, CPU, num_samples=12)
    stream.set_epoch(1)
    return list(stream)


def _by_hand(records, frontend, aug, seed=11):
    """The batches as the stream should make them from DALI's outputs: waveform mixup, the front-end's tail,
    then the rest of the augmentation, all drawn from batch i's generator."""
    plain = TrainStream(records, 5, LoaderSettings(batch_size=4), frontend, AugmentConfig(), seed, 0, 1, CPU,
                        num_samples=12)
    plain.set_epoch(1)
    augmenter, out = Augmenter(aug, frontend), []
    for i in range(len(plain)):
        dali, idx = plain._run(i)
        dali = [t.clone() for t in dali]  # DALI's buffers belong to the batch
        rng = numpy_rng(seed, AUGMENT, 1, i, 0)
        mixed, y = augmenter.mix_waveforms(dali, plain._labels(idx), rng)
        out.append(augmenter(frontend.finish(mixed), y, rng))
    return out


@pytest.mark.parametrize("name", ["kaldi_fbank", "mel64"])
def test_waveform_mixup_batches(ds, name):
    """mixup_domain waveform: the stream mixes DALI's outputs before the tail with batch i's generator (bit for
    bit the batches made by hand), deterministically for a seed; it gives other batches than feature mixup,
    whose batches are still the features augmented as before."""
    records = load_records(str(ds))[0]
    frontend = _frontend(name)
    wave = _batches(records, frontend, WAVE_AUG)
    assert len(wave) == 3
    for got, want in zip(wave, _by_hand(records, frontend, WAVE_AUG)):
        assert torch.equal(got["features"], want[0]) and torch.equal(got["labels"], want[1])
    again = _batches(records, frontend, WAVE_AUG)
    assert all(torch.equal(a["features"], b["features"]) for a, b in zip(wave, again))
    assert not torch.equal(_batches(records, frontend, WAVE_AUG, seed=12)[0]["features"], wave[0]["features"])
    feature_aug = dataclasses.replace(WAVE_AUG, mixup_domain="features")
    feature = _batches(records, frontend, feature_aug)
    assert [b["keys"] for b in feature] == [b["keys"] for b in wave]
    assert not any(torch.equal(a["features"], b["features"]) for a, b in zip(wave, feature))
    for got, want in zip(feature, _by_hand(records, frontend, feature_aug)):
        assert torch.equal(got["features"], want[0]) and torch.equal(got["labels"], want[1])
