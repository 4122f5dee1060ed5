"""tools.enhance_labels: ontology completion against the ontology's own child_ids, PSLA's percentile rule on a
hand-checked case, --related-only, the output directory (links, manifest, weights, dataset.json,
enhancement.csv, counts), verify_shards on it, moving it, and a training run on it that reads the input's audio;
an input at a URL (the loopback server of tests/servers.py), whose shards the output names by URL."""
from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.runkit import REPO, launch, tiny_config
from tools import audioset, shard_stats, verify_shards
from tools.added_labels import read_added_labels
from tools.build_shards import psla_weights
from tools.enhance_labels import (MODEL, ONTOLOGY, EnhanceOptions, class_thresholds, enhance, main, model_additions,
                                  predict_scores, related_classes)
from trainer.config import Config
from trainer.data.datasets import load_records
from trainer.data.manifest import (DATASET_INFO, ENHANCEMENT, MANIFEST, REJECTS, VOCABULARY, WEIGHTS, Vocabulary,
                                   read_manifest, read_weights)
from trainer.data.settings import DataConfig, FeatureConfig
from trainer.models import build_model
from trainer.models.settings import ModelConfig

ANIMAL, PETS, DOG, CAT, MUSIC, VIOLIN = "/m/0jbk", "/m/068hy", "/m/0bt9lr", "/m/01yrx", "/m/04rlf", "/m/07y_7"


def ontology_ancestors() -> dict[str, set[str]]:
    """Every class's ancestors, from the shipped ontology.json's child_ids by recursion (not tools.audioset)."""
    entries = json.loads(gzip.decompress((REPO / "tools" / "audioset" / audioset.ONTOLOGY_FILE).read_bytes()))
    parents: dict[str, set[str]] = {e["id"]: set() for e in entries}
    for e in entries:
        for child in e["child_ids"]:
            parents[child].add(e["id"])

    def up(mid: str) -> set[str]:
        return set().union(*({p} | up(p) for p in parents[mid])) if parents[mid] else set()

    return {mid: up(mid) for mid in parents}


@pytest.fixture(scope="module")
def run_dir(built_shards: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as run.py leaves one (config.yaml, vocabulary, models/best.pt) with a seeded model on the
    training set's vocabulary, its head spread so that scores differ between clips and classes."""
    run = tmp_path_factory.mktemp("run")
    cfg = Config(data=DataConfig(train=[str(built_shards["train"])]),
                 features=FeatureConfig(frontend="mel64", clip_seconds=4.0),
                 model=ModelConfig(name="mobilenetv2", width_mult=0.35))
    cfg.save(run / "config.yaml")
    vocab = Vocabulary.load(built_shards["train"] / VOCABULARY)
    vocab.save(run / VOCABULARY)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(vocab))
    torch.nn.init.normal_(model.classifier[1].weight, std=2.0)
    (run / "models").mkdir()
    torch.save(model.state_dict(), run / "models" / "best.pt")
    return run


def _rows(out: Path) -> list:
    return read_added_labels(out / ENHANCEMENT)


def test_ontology_completion_adds_exactly_the_missing_ancestors_in_the_vocabulary(built_shards, tmp_path):
    src, out = built_shards["train"], tmp_path / "onto"
    result = enhance(EnhanceOptions(src, out, ontology=True))
    vocab = Vocabulary.load(src / VOCABULARY)
    ancestors = ontology_ancestors()
    before, after = read_manifest(src), read_manifest(out)
    expected_rows, outside = [], 0
    for b, a in zip(before, after):
        above = set().union(*(ancestors[vocab.mids[c]] for c in b.labels))
        missing = sorted({vocab.index[m] for m in above if m in vocab.index} - set(b.labels))
        assert a.labels == b.labels + tuple(missing), b.key
        expected_rows += [(b.key, c, vocab.mids[c], ONTOLOGY) for c in missing]
        outside += len([m for m in above if m not in vocab.index])
    assert [(r.key, r.index, r.mid, r.reason) for r in _rows(out)] == expected_rows
    assert all(r.score is None and r.threshold is None for r in _rows(out))
    assert expected_rows and outside  # the fixture's label sets do miss ancestors, inside and outside its 6 classes
    assert result.added == {ONTOLOGY: len(expected_rows)}
    assert result.clips_changed == len({r[0] for r in expected_rows})
    assert result.outside_vocabulary == outside
    step = json.loads((out / DATASET_INFO).read_text())["enhancements"][-1]
    assert sum(d["clips"] for d in step[ONTOLOGY]["ancestors_outside_vocabulary"].values()) == outside
    assert f"{len(before)} clips, {result.clips_changed} changed; {len(expected_rows)} labels added" in result.summary()


def test_percentile_rule_on_a_hand_checked_case():
    # 8 clips x 3 classes. Class 0 is labelled on clips 0-4 (scores 0.125 0.25 0.5 0.625 1.0: 25th percentile
    # 0.25, the second of five; mean 0.5), class 1 on clips 5-6 (0.25 and 0.75: 25th percentile 0.375, mean 0.5),
    # class 2 on none (no threshold, so never added whatever its scores).
    scores = np.array([[0.125, 0.375, 1.0],
                       [0.25, 0.37, 1.0],
                       [0.5, 0.5, 1.0],
                       [0.625, 0.0, 1.0],
                       [1.0, 0.9, 1.0],
                       [0.25, 0.25, 1.0],
                       [0.24, 0.75, 1.0],
                       [0.9, 0.1, 1.0]], dtype=np.float32)
    labelled = np.zeros(scores.shape, dtype=bool)
    labelled[0:5, 0] = labelled[5:7, 1] = True
    thresholds = class_thresholds(scores, labelled, 25)
    assert thresholds[:2].tolist() == [0.25, 0.375] and np.isnan(thresholds[2])
    add = model_additions(scores, labelled, thresholds)
    # at or above the threshold, on clips without the label: clip 5 reaches 0.25 exactly, clip 6 (0.24) does not
    assert sorted(zip(*np.nonzero(add))) == [(0, 1), (2, 1), (4, 1), (5, 0), (7, 0)]
    mean = class_thresholds(scores, labelled, "mean")
    assert mean[:2].tolist() == [0.5, 0.5]
    assert sorted(zip(*np.nonzero(model_additions(scores, labelled, mean)))) == [(2, 1), (4, 1), (7, 0)]
    median = class_thresholds(scores, labelled, 50)
    assert median[:2].tolist() == [0.5, 0.5]


def test_related_only_keeps_ancestors_and_descendants_of_a_clips_labels():
    mids = (ANIMAL, PETS, DOG, CAT, MUSIC, VIOLIN)
    vocab = Vocabulary(mids, tuple(mids))
    related = related_classes(vocab, audioset.ontology())
    name = dict(enumerate(mids))
    assert {name[b] for b in np.flatnonzero(related[mids.index(DOG)])} == {ANIMAL, PETS}  # not its sibling Cat
    assert {name[b] for b in np.flatnonzero(related[mids.index(PETS)])} == {ANIMAL, DOG, CAT}
    assert {name[b] for b in np.flatnonzero(related[mids.index(VIOLIN)])} == {MUSIC}
    labelled = np.zeros((3, len(mids)), dtype=bool)
    labelled[0, mids.index(DOG)] = labelled[1, mids.index(PETS)] = labelled[2, mids.index(VIOLIN)] = True
    scores, thresholds = np.ones(labelled.shape, dtype=np.float32), np.zeros(len(mids))
    everything = model_additions(scores, labelled, thresholds)
    assert (everything == ~labelled).all()
    add = model_additions(scores, labelled, thresholds, related)
    assert [{name[c] for c in np.flatnonzero(row)} for row in add] == [{ANIMAL, PETS}, {ANIMAL, DOG, CAT}, {MUSIC}]


@pytest.mark.parametrize("related_only", [False, True])
def test_output_directory(built_shards, run_dir, tmp_path, related_only):
    src, out = built_shards["train"], tmp_path / "enhanced"
    result = enhance(EnhanceOptions(src, out, ontology=True, model=run_dir, percentile=25,
                                    related_only=related_only))
    before, after = read_manifest(src), read_manifest(out)
    vocab = Vocabulary.load(out / VOCABULARY)
    assert vocab == Vocabulary.load(src / VOCABULARY)

    # shards and indexes: relative links to the input's files, no copy
    files = sorted(p.name for p in src.iterdir() if p.suffix in (".tar", ".idx"))
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".tar", ".idx")) == files and len(files) == 6
    for name in files:
        link = out / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)), name
        assert os.readlink(link) == os.path.relpath(src.resolve() / name, out.resolve()) and link.samefile(src / name)

    # the manifest: the same samples, each with its input labels plus its rows of enhancement.csv
    rows = _rows(out)
    added: dict[str, list[int]] = {}
    for r in rows:
        added.setdefault(r.key, []).append(r.index)
    assert [(a.key, a.shard, a.offset, a.size, a.duration) for a in after] == \
        [(b.key, b.shard, b.offset, b.size, b.duration) for b in before]
    assert all(a.labels == b.labels + tuple(added.get(b.key, ())) for a, b in zip(after, before))
    weights = psla_weights([a.labels for a in after], len(vocab), 0.01)
    assert read_weights(out / WEIGHTS) == weights and [a.weight for a in after] == weights
    assert (out / REJECTS).read_bytes() == (src / REJECTS).read_bytes()

    # PSLA's rule, recomputed here from the run's scores: per class the 25th percentile of its labelled clips
    scores, missing = predict_scores(run_dir, "best", load_records(str(src))[0], vocab)
    assert not missing and not np.isnan(scores).any()
    labelled = np.zeros(scores.shape, dtype=bool)
    for i, b in enumerate(before):
        labelled[i, list(b.labels)] = True
    info = json.loads((out / DATASET_INFO).read_text())
    step = info["enhancements"][-1]
    ancestors = ontology_ancestors()
    by_ontology = {(r.key, r.index) for r in rows if r.reason == ONTOLOGY}
    expected = set()
    for c, mid in enumerate(vocab.mids):
        if not labelled[:, c].any():
            assert step[MODEL]["thresholds"][c] is None
            continue
        threshold = float(np.percentile(scores[labelled[:, c], c].astype(np.float64), 25))
        assert step[MODEL]["thresholds"][c] == threshold
        for i, b in enumerate(before):
            own = {vocab.mids[k] for k in b.labels}
            related = set().union(*(ancestors[m] for m in own)) | {m for m in vocab.mids if ancestors[m] & own}
            if scores[i, c] >= threshold and not labelled[i, c] and (b.key, c) not in by_ontology \
                    and (not related_only or mid in related):
                expected.add((b.key, c))
    model_rows = [r for r in rows if r.reason == MODEL]
    assert {(r.key, r.index) for r in model_rows} == expected and expected
    assert all(r.score >= r.threshold and r.threshold == step[MODEL]["thresholds"][r.index] for r in model_rows)

    # the counts add up: rows = labels added = per reason = per class; changed clips = keys with rows
    assert len(rows) == sum(result.added.values()) == sum(len(a.labels) - len(b.labels) for a, b in zip(after, before))
    assert result.added == {ONTOLOGY: len(by_ontology), MODEL: len(model_rows)} == step["labels_added"]
    assert result.clips_changed == len(added) == step["clips_changed"]
    for d in step["labels_added_per_class"]:
        assert (d[ONTOLOGY], d[MODEL]) == (sum(r.index == d["index"] and r.reason == ONTOLOGY for r in rows),
                                           sum(r.index == d["index"] and r.reason == MODEL for r in rows))
    assert sum(d[ONTOLOGY] + d[MODEL] for d in step["labels_added_per_class"]) == len(rows)
    assert info["class_counts"] == [sum(c in a.labels for a in after) for c in range(len(vocab))]
    assert info["num_written"] == len(after) and info["name"] == out.name
    assert step["source"] == os.path.relpath(src.resolve(), out.resolve()) and step["steps"] == [ONTOLOGY, MODEL]
    assert step[MODEL]["percentile"] == 25 and step[MODEL]["related_only"] is related_only
    assert step[MODEL]["run"] == str(run_dir.resolve())
    with open(out / ENHANCEMENT, newline="") as f:
        assert next(csv.reader(f)) == ["key", "index", "mid", "display_name", "reason", "score", "threshold"]

    # verify_shards passes, and names a manifest label that neither the .json nor enhancement.csv explains
    assert verify_shards.verify(out) == ([], len(before))
    (out / ENHANCEMENT).write_text("".join((out / ENHANCEMENT).read_text().splitlines(keepends=True)[:-1]))
    problems, _ = verify_shards.verify(out)
    assert len(problems) == 1 and rows[-1].key in problems[0] and "differ from the manifest's" in problems[0]


def test_moving_both_directories_together_keeps_the_links_and_stats_read_them(built_shards, tmp_path):
    shutil.copytree(built_shards["train"], tmp_path / "a" / "train")
    assert main([str(tmp_path / "a" / "train"), "--out", str(tmp_path / "a" / "nested" / "train_onto"),
                 "--ontology"]) == 0
    shutil.move(tmp_path / "a", tmp_path / "b")
    out = tmp_path / "b" / "nested" / "train_onto"
    name = f"{built_shards['train'].name}-000000.tar"
    assert os.readlink(out / name) == f"../../train/{name}"
    assert verify_shards.verify(out) == ([], 40)
    assert len(load_records(str(out))[0]) == 40
    stats = shard_stats.shard_stats(out, max_samples=8)  # reads the audio through the links
    info = json.loads((out / DATASET_INFO).read_text())
    assert stats["class_counts"] == info["class_counts"] and info["feature_stats"]["kaldi_fbank"]["num_clips"] == 8
    shutil.move(tmp_path / "b" / "train", tmp_path / "elsewhere")  # the input alone moves: the links break
    with pytest.raises(FileNotFoundError, match=rf"missing shard .*{name} \(a link to .*does not resolve"):
        load_records(str(out))
    problems, _ = verify_shards.verify(out)
    assert problems and all("does not resolve" in p for p in problems)


def test_enhancing_an_enhanced_dataset_links_to_the_audio_and_keeps_its_rows(built_shards, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    enhance(EnhanceOptions(built_shards["train"], first, ontology=True))
    result = enhance(EnhanceOptions(first, second, ontology=True))
    assert result.added == {ONTOLOGY: 0} and result.clips_changed == 0  # nothing is missing any more
    assert _rows(second) == _rows(first)
    assert [r.labels for r in read_manifest(second)] == [r.labels for r in read_manifest(first)]
    link = second / f"{built_shards['train'].name}-000000.tar"
    assert Path(os.path.realpath(link)) == (built_shards["train"] / link.name).resolve()  # not via first/
    info = json.loads((second / DATASET_INFO).read_text())
    assert [e["source"] for e in info["enhancements"]] == [os.path.relpath(built_shards["train"].resolve(),
                                                                           first.resolve()), "../first"]
    assert verify_shards.verify(second) == ([], 40)


def test_a_dataset_at_a_url_is_enhanced_into_a_local_one_naming_its_shards_by_url(built_shards, served_shards,
                                                                                  tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    local, remote = tmp_path / "local", tmp_path / "remote"
    enhance(EnhanceOptions(built_shards["train"], local, ontology=True))
    url = f"{served_shards}/syntrain"
    assert main([url, "--out", str(remote), "--ontology"]) == 0
    assert f"names by URL the 3 shards of {url}" in capsys.readouterr().out
    assert not [p for p in remote.iterdir() if p.suffix in (".tar", ".idx")]  # no links, no copies
    a, b = read_manifest(local), read_manifest(remote)
    assert [r.shard for r in b] == [f"{url}/{r.shard}" for r in a]
    assert [(r.key, r.offset, r.size, r.labels) for r in b] == [(r.key, r.offset, r.size, r.labels) for r in a]
    assert _rows(remote) == _rows(local) and (remote / REJECTS).read_bytes() == (local / REJECTS).read_bytes()
    assert json.loads((remote / DATASET_INFO).read_text())["enhancements"][-1]["source"] == url
    records = load_records(str(remote))[0]  # the shard URLs as they are, each checked to answer
    assert records.shards == [f"{url}/{Path(s).name}" for s in load_records(str(local))[0].shards]
    assert verify_shards.verify(remote) == ([], 40)  # the remote shards downloaded and checked against it
    assert shard_stats.shard_stats(remote, max_samples=4)["kaldi_fbank"] == \
        shard_stats.shard_stats(local, max_samples=4)["kaldi_fbank"]  # the clips read by range


def test_refusals(built_shards, run_dir, tmp_path, capsys):
    src = str(built_shards["train"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("a result")
    assert main([src, "--out", str(out), "--ontology"]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "a result"
    assert main([src, "--out", src, "--ontology"]) == 2
    for args, message in ((["--weights", "wa"], "nothing to do"),
                          (["--ontology", "--percentile", "25"], "apply to the model step"),
                          (["--ontology", "--related-only"], "apply to the model step"),
                          (["--model", str(run_dir)], "needs --percentile"),
                          (["--model", str(run_dir), "--percentile", "101"], "within [0, 100]")):
        assert main([src, "--out", str(tmp_path / "new"), *args]) == 2, args
        assert message in capsys.readouterr().err, args
    other = tmp_path / "other_run"
    shutil.copytree(run_dir, other)
    Vocabulary(("/m/a",), ("A",)).save(other / VOCABULARY)
    assert main([src, "--out", str(tmp_path / "new"), "--model", str(other), "--percentile", "10"]) == 2
    assert f"{other / VOCABULARY}" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))  # nothing half-written
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty --out is taken
    assert main([src, "--out", str(empty), "--ontology"]) == 0
    assert "40 clips" in capsys.readouterr().out and (empty / MANIFEST).is_file()


def test_a_run_trains_on_the_enhanced_dataset_without_copying_audio(built_shards, synthetic_dir, tmp_path):
    out = tmp_path / "syntrain_onto"
    enhance(EnhanceOptions(built_shards["train"], out, ontology=True))
    runs = tmp_path / "runs"
    cfg = tiny_config(tmp_path / "cfg.yaml", {"train": out, "eval": built_shards["eval"]}, synthetic_dir, runs)
    launch("trainer/run.py", str(cfg))
    summary = json.loads((runs / "tiny" / "summary.json").read_text())
    assert summary["best_single"]["num_samples"] == 16
    tars = list(out.glob("*.tar"))
    assert tars and all(t.is_symlink() for t in tars)
    assert not [p for p in out.rglob("*") if p.is_file() and not p.is_symlink() and p.suffix in (".tar", ".flac")]
