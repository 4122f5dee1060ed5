"""The synthetic data generator: real label structure, AudioSet's event patterns, the paper's splits, varied
formats, strong labels that match shard keys, weak-label statistics that the strong labels reproduce."""
from __future__ import annotations

import collections
import csv
import json

import numpy as np
import pytest
import soundfile as sf

from tools import audioset
from tools import make_synthetic as ms
from trainer.data.manifest import Vocabulary, read_manifest

SIZES = {"unbalanced": 40, "valid": 8, "eval": 16}  # conftest's synthetic_dir


def _strong(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _entries(synthetic_dir, split):
    return json.loads((synthetic_dir / f"{split}.json").read_text())["data"]


def test_vocabulary_is_real_and_label_sets_are_real_projections(synthetic_dir):
    vocab = Vocabulary.load(synthetic_dir / "class_labels_indices.csv")
    full = audioset.vocabulary()
    assert len(vocab) == 6
    with open(synthetic_dir / "classes.csv", newline="") as f:
        assert [r["sound"] for r in csv.DictReader(f)] == list(ms.ClassSound.KINDS[:6])  # one kind each
    assert all(full.names[full.index[m]] == n for m, n in zip(vocab.mids, vocab.names))
    real = {tuple(m for m in vocab.mids if m in s) for s in audioset.label_sets("balanced_train")}
    entries = _entries(synthetic_dir, "unbalanced")
    assert len(entries) == 40
    for e in entries:
        labels = tuple(e["labels"].split(","))
        assert labels and labels in real
    # Imbalance is real: the chosen classes do not all get the same number of clips.
    counts = collections.Counter(m for e in entries for m in e["labels"].split(","))
    assert len(set(counts.values())) > 1


def test_balanced_is_a_subset_with_k_clips_per_class_where_there_are_k(synthetic_dir):
    unbalanced, balanced = _entries(synthetic_dir, "unbalanced"), _entries(synthetic_dir, "balanced")
    assert balanced and all(e in unbalanced for e in balanced)
    have = collections.Counter(m for e in balanced for m in e["labels"].split(","))
    total = collections.Counter(m for e in unbalanced for m in e["labels"].split(","))
    assert all(have[m] >= min(4, total[m]) for m in total)  # conftest: balanced_per_class=4
    strong = {r["segment_id"] for r in _strong(synthetic_dir / "balanced_strong.tsv")}
    assert strong == {e["wav"].split("/")[-1].split(".")[0] for e in balanced}


def test_files_exercise_formats_and_rates(synthetic_dir):
    kinds = collections.Counter()
    for split, n in SIZES.items():
        files = sorted((synthetic_dir / "audio" / split).iterdir())
        assert len(files) == n
        for f in files:
            info = sf.info(str(f))
            assert abs(info.duration - 10.0) < 1e-9
            kinds[(f.suffix, info.samplerate, info.channels)] += 1
    assert {(".wav", 44100, 2), (".flac", 48000, 2), (".ogg", 16000, 1), (".wav", 48000, 1), (".wav", 16000, 1)} \
        <= set(kinds)


def test_strong_labels_match_clip_labels_patterns_and_shard_keys(synthetic_dir, built_shards):
    vocab = Vocabulary.load(synthetic_dir / "class_labels_indices.csv")
    patterns = {m: ms.PATTERNS[i % len(ms.PATTERNS)] for i, m in enumerate(vocab.mids)}
    for split, built in (("unbalanced", built_shards["train"]), ("eval", built_shards["eval"])):
        rows = _strong(synthetic_dir / f"{split}_strong.tsv")
        assert list(rows[0]) == ["segment_id", "start_time_seconds", "end_time_seconds", "label"]
        by_seg = collections.defaultdict(lambda: collections.defaultdict(list))
        for r in rows:
            start, end = float(r["start_time_seconds"]), float(r["end_time_seconds"])
            assert 0 <= start < end <= 10.0
            by_seg[r["segment_id"]][r["label"]].append(end - start)
        records = read_manifest(built)
        assert [r.key for r in records] == sorted(by_seg)
        for rec in records:
            events = by_seg[rec.key]
            assert set(events) == {vocab.mids[c] for c in rec.labels}
            for mid, lengths in events.items():
                lo, hi = patterns[mid].seconds
                assert 1 <= len(lengths) <= len(patterns[mid].counts)
                assert all(lo - 0.001 <= n <= hi + 0.001 for n in lengths), (mid, lengths)


def test_classes_csv_reports_the_weak_label_precision_the_strong_labels_give(synthetic_dir):
    with open(synthetic_dir / "classes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    strong = _strong(synthetic_dir / "unbalanced_strong.tsv")
    entries = _entries(synthetic_dir, "unbalanced")
    by_pattern = collections.defaultdict(list)
    for row in rows:
        keys = [e["wav"].split("/")[-1].split(".")[0] for e in entries if row["mid"] in e["labels"].split(",")]
        hits = [any(float(r["start_time_seconds"]) < s + 2 and float(r["end_time_seconds"]) > s
                    for r in strong if r["segment_id"] == k and r["label"] == row["mid"])
                for k in keys for s in range(0, 10, 2)]
        assert int(row["unbalanced_clips"]) == len(keys)
        if keys:
            assert float(row["unbalanced_weak_true_2s"]) == pytest.approx(np.mean(hits), abs=5e-4)
            by_pattern[row["pattern"]].append(np.mean(hits))
    # stationary events cover (nearly) every 2 s chunk of their clips; impulsive ones far fewer
    assert min(by_pattern["stationary"]) > 0.7 > max(by_pattern["impulsive"])


def test_event_patterns_and_class_sounds():
    rng = np.random.default_rng(0)
    for pattern in ms.PATTERNS:
        sound = ms.ClassSound("chirp", "/m/x", 0, pattern)
        lengths = [sound.events(rng) for _ in range(200)]
        assert {len(n) for n in lengths} == set(range(1, len(pattern.counts) + 1))
        assert all(pattern.seconds[0] <= s <= pattern.seconds[1] for n in lengths for s in n)
    for kind in ms.ClassSound.KINDS:  # every kind renders a finite event of the asked length, peak 1 (up to the ramps)
        x = ms.ClassSound(kind, f"/m/{kind}", 0, ms.PATTERNS[0]).render(np.random.default_rng(0), 16000, 0.5)
        assert len(x) == 8000 and np.isfinite(x).all() and 0.99 < np.abs(x).max() <= 1.0
    # Same class and seed, same sound; the parameters do not depend on anything else.
    a, b = ms.ClassSound("formant", "/m/x", 7, ms.PATTERNS[1]), ms.ClassSound("formant", "/m/x", 7, ms.PATTERNS[1])
    np.testing.assert_array_equal(a.render(np.random.default_rng(1), 16000, 1.5),
                                  b.render(np.random.default_rng(1), 16000, 1.5))


def test_output_is_deterministic_for_any_number_of_workers(tmp_path):
    """Same samples and metadata from 1 and 2 worker processes (float WAV and Ogg headers carry a
    timestamp or a random stream serial, so files are compared by their decoded samples)."""
    for name, workers in (("a", "1"), ("b", "2")):
        assert ms.main(["--out", str(tmp_path / name), "--clips", "6", "--valid-clips", "2", "--eval-clips", "3",
                        "--classes", "4", "--seed", "5", "--workers", workers]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("unbalanced.json", "balanced.json", "valid.json", "eval.json", "unbalanced_strong.tsv",
                 "eval_strong.tsv", "classes.csv", "class_labels_indices.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    files = sorted(p.relative_to(a) for p in (a / "audio").rglob("*.*"))
    assert len(files) == 11 and files == sorted(p.relative_to(b) for p in (b / "audio").rglob("*.*"))
    for f in files:
        np.testing.assert_array_equal(sf.read(a / f)[0], sf.read(b / f)[0])
