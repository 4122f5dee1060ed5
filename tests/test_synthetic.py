"""The synthetic data generator: real label structure, varied formats, strong labels that match shard keys."""
from __future__ import annotations

import collections
import csv
import filecmp
import json

import numpy as np
import soundfile as sf

from tools import audioset
from tools import make_synthetic as ms
from trainer.data.manifest import Vocabulary, read_manifest


def _strong(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_vocabulary_is_real_and_label_sets_are_real_projections(synthetic_dir):
    vocab = Vocabulary.load(synthetic_dir / "class_labels_indices.csv")
    full = audioset.vocabulary()
    assert len(vocab) == 6
    assert all(full.names[full.index[m]] == n for m, n in zip(vocab.mids, vocab.names))
    real = {tuple(m for m in vocab.mids if m in s) for s in audioset.label_sets("balanced_train")}
    entries = json.loads((synthetic_dir / "train.json").read_text())["data"]
    assert len(entries) == 40
    for e in entries:
        labels = tuple(e["labels"].split(","))
        assert labels and labels in real
    # Imbalance is real: the chosen classes do not all get the same number of clips.
    counts = collections.Counter(m for e in entries for m in e["labels"].split(","))
    assert len(set(counts.values())) > 1


def test_files_exercise_formats_and_rates(synthetic_dir):
    kinds = collections.Counter()
    for split, n in (("train", 40), ("eval", 16)):
        files = sorted((synthetic_dir / "audio" / split).iterdir())
        assert len(files) == n
        for f in files:
            info = sf.info(str(f))
            assert abs(info.duration - 10.0) < 1e-9
            kinds[(f.suffix, info.samplerate, info.channels)] += 1
    assert {(".wav", 44100, 2), (".flac", 48000, 2), (".ogg", 16000, 1), (".wav", 48000, 1), (".wav", 16000, 1)} \
        <= set(kinds)


def test_strong_labels_match_clip_labels_and_shard_keys(synthetic_dir, built_shards):
    for split in ("train", "eval"):
        rows = _strong(synthetic_dir / f"{split}_strong.tsv")
        assert list(rows[0]) == ["segment_id", "start_time_seconds", "end_time_seconds", "label"]
        by_seg = collections.defaultdict(collections.Counter)
        for r in rows:
            start, end = float(r["start_time_seconds"]), float(r["end_time_seconds"])
            assert 0 <= start < end <= 10.0
            by_seg[r["segment_id"]][r["label"]] += 1
        vocab = Vocabulary.load(built_shards[split] / "class_labels_indices.csv")
        records = read_manifest(built_shards[split])
        assert [r.key for r in records] == sorted(by_seg)
        for rec in records:
            events = by_seg[rec.key]
            assert set(events) == {vocab.mids[c] for c in rec.labels}
            assert all(1 <= n <= 3 for n in events.values())


def test_classes_have_distinct_event_lengths():
    sounds = [ms.ClassSound(rank, f"/m/c{rank}", 0) for rank in range(10)]
    rng = np.random.default_rng(0)
    lengths = [len(s.render(rng, 16000)) / 16000 for s in sounds]
    assert all(0.16 <= n <= 1.2 for n in lengths[1::2]) and all(1.6 <= n <= 7.2 for n in lengths[0::2])
    assert len({s.kind for s in sounds}) == len(ms.ClassSound.KINDS)
    # Same class and seed, same sound; the parameters do not depend on anything else.
    a, b = ms.ClassSound(3, "/m/x", 7), ms.ClassSound(3, "/m/x", 7)
    np.testing.assert_array_equal(a.render(np.random.default_rng(1), 16000), b.render(np.random.default_rng(1), 16000))


def test_cli_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert ms.main(["--out", str(tmp_path / name), "--clips", "3", "--eval-clips", "2", "--classes", "4",
                        "--seed", "5"]) == 0
    cmp = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    for split in ("train", "eval"):
        files = sorted(p.name for p in (tmp_path / "a" / "audio" / split).iterdir())
        assert files and all(filecmp.cmp(tmp_path / "a" / "audio" / split / f, tmp_path / "b" / "audio" / split / f,
                                         shallow=False) for f in files)
