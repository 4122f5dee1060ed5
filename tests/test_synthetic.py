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


# --- the audioset-like world ----------------------------------------------------------------------------------

ANIMAL, DOMESTIC, DOG, CAT, LIVESTOCK = "/m/0jbk", "/m/068hy", "/m/0bt9lr", "/m/01yrx", "/m/0ch8v"


@pytest.fixture(scope="module")
def world10():
    onto, train = audioset.ontology(), audioset.label_sets("balanced_train")
    parent = ms.choose_trees(train, 10, onto)
    return ms.World(parent, onto, sorted(parent, key=audioset.vocabulary().index.__getitem__)), train


def test_missing_rate_is_a_count_over_the_shipped_label_sets():
    # Livestock clips without Animal: counted here directly from the shipped files
    for split, expected in (("balanced_train", 0.589), ("eval", 0.748)):
        sets = audioset.label_sets(split)
        with_child = [s for s in sets if LIVESTOCK in s]
        lacking = [s for s in with_child if ANIMAL not in s]
        n, rate = ms.missing_rate(sets, ANIMAL, {LIVESTOCK})
        assert (n, rate) == (len(with_child), len(lacking) / len(with_child))
        assert rate == pytest.approx(expected, abs=5e-4)
    assert ms.missing_rate([["/m/a"]], ANIMAL, {LIVESTOCK}) == (0, 0.0)


def test_classes_are_small_subtrees_of_the_ontology(world10):
    world, _ = world10
    onto = audioset.ontology()
    # Vehicle ⊃ {Boat ⊃ {Rowboat, Motorboat}, Rail transport}
    assert world.parent == {ANIMAL: None, DOMESTIC: ANIMAL, LIVESTOCK: ANIMAL, DOG: DOMESTIC, CAT: DOMESTIC,
                            "/m/07yv9": None, "/m/019jd": "/m/07yv9", "/m/06d_3": "/m/07yv9",
                            "/m/056ks2": "/m/019jd", "/m/02rlv9": "/m/019jd"}
    for m, p in world.parent.items():
        assert p is None or p in onto.parents[m]
        assert sum(c == m for c in world.parent.values()) in (0, 2)  # an inner class has two children here
    six = ms.choose_trees(audioset.label_sets("balanced_train"), 6, onto)  # Vehicle first: more labels than Animal
    assert list(six)[:5] == list(world.parent)[:5] and six["/m/0k5j"] == "/m/07yv9"  # the sixth joins: Aircraft
    # A clip of a child has its parents; a label below a leaf puts the leaf in the clip; a parent alone is no clip.
    assert world.truth(["/m/05tny_"]) == (ANIMAL, DOMESTIC, DOG)  # Bark
    assert world.truth([LIVESTOCK, "/m/04rlf"]) == (ANIMAL, LIVESTOCK)
    assert world.truth([ANIMAL]) == ()


def test_measured_rates_follow_the_definition(world10):
    world, train = world10
    rates = world.rates(train, ms.Errors())
    for m in (ANIMAL, DOMESTIC, DOG):
        below = world.below(m)
        sets = [set(s) for s in train if set(s) & below]
        measured = sum(m not in s for s in sets) / len(sets)
        assert rates[m]["sets"] == len(sets) and rates[m]["measured"] == pytest.approx(measured, abs=1e-4)
        assert rates[m]["used"] == pytest.approx(1 - (1 - measured) * (1 - ms.UNNOMINATED_RATE), abs=1e-4)
    assert world.below(DOG) >= {DOG, "/m/05tny_"} and ANIMAL not in world.below(ANIMAL)  # Dog, Bark; not Animal alone
    assert rates["/m/056ks2"] == {"sets": 60, "measured": 0.0, "used": ms.UNNOMINATED_RATE}  # nothing below it
    half = world.rates(train, ms.Errors(missing="half"))
    assert all(half[m]["used"] == pytest.approx(rates[m]["used"] / 2, abs=1e-4) for m in rates)
    assert all(r["used"] == 0 for r in world.rates(train, ms.Errors(missing="0")).values())


def test_weak_labels_miss_and_add_at_their_rates(world10):
    world, train = world10
    truths = [t for t in map(world.truth, train) if t] * 2
    used = {m: r["used"] for m, r in world.rates(train, ms.Errors()).items()}
    rng = np.random.default_rng(0)
    weak = [ms.weak_labels(t, used, 0.05, world.classes, rng) for t in truths]
    for m in world.classes:
        have = [m in w for t, w in zip(truths, weak) if m in t]
        sd = np.sqrt(used[m] * (1 - used[m]) / len(have))
        assert abs((1 - np.mean(have)) - used[m]) < 4 * sd + 1e-9, m
    spurious = [len(set(w) - set(t)) for t, w in zip(truths, weak)]
    assert max(spurious) == 1 and np.mean(spurious) == pytest.approx(0.05, abs=4 * np.sqrt(0.05 * 0.95 / len(truths)))
    # In the clips kept (those left with a label), a parent's label is missing beside its child's at the
    # parent's rate: the measure of AudioSet's sets that the rate came from, reproduced.
    kept, kept_weak = ms.draw_clips("unbalanced", 4000, truths, None, used, ms.Errors(), world.classes, 0)
    for child, parents in world.above.items():
        for a in parents:
            lacking = [a not in w for t, w in zip(kept, kept_weak) if child in w and child in t]
            sd = np.sqrt(used[a] * (1 - used[a]) / len(lacking))
            assert len(lacking) > 150 and abs(np.mean(lacking) - used[a]) < 4 * sd, (a, child)
    # no errors asked, none made
    assert all(ms.weak_labels(t, dict.fromkeys(used, 0.0), 0.0, world.classes, rng) == t for t in truths[:500])


def test_long_tail_of_the_large_split(world10):
    world, train = world10
    truths = [t for t in map(world.truth, train) if t]
    used = {m: r["used"] for m, r in world.rates(train, ms.Errors()).items()}
    tail = ms.tail_weights(world, truths, 1.0, used, 0.05)
    kept, _ = ms.draw_clips("unbalanced", 6000, truths, tail, used, ms.Errors(), world.classes, 0)
    counts = collections.Counter(m for t in kept for m in t if m in world.leaves)
    # ranked as the label sets have them (Livestock 707 sets ... Rowboat 60), the r-th takes ∝ 1/r of the clips
    n = collections.Counter(m for t in truths for m in t if m in world.leaves)
    ranked = [counts[m] / counts[n.most_common(1)[0][0]] for m, _ in n.most_common()]
    assert len(ranked) == 6 and all(abs(x * r - 1) < 0.25 for r, x in enumerate(ranked, 1)), ranked


def test_sibling_sounds_share_a_kind_and_overlap():
    for seed in range(20):
        a, b = (ms.ClassSound("harmonic", m, seed, ms.PATTERNS[0], family=DOMESTIC) for m in (DOG, CAT))
        lo, hi = sorted((a.f0, b.f0))
        assert lo < hi and lo * (1 + ms.FAMILY_JITTER) >= hi * (1 - ms.FAMILY_JITTER)  # their events' pitches overlap
        assert a.rate != b.rate and np.array_equal(a.harmonics, b.harmonics)  # the family's timbre


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("audioset_like")
    ms.make_synthetic(d, clips=40, eval_clips=24, classes=6, seed=0, valid_clips=8, balanced_per_class=3, workers=2,
                      world="audioset-like")
    return d


def test_world_writes_weak_and_true_labels_and_complete_strong_labels(world_dir):
    onto = audioset.ontology()
    info = json.loads((world_dir / "world.json").read_text())
    parent = {c["mid"]: c["parent"] for c in info["classes"]}
    for split in ("unbalanced", "balanced", "valid", "eval"):
        weak, clean = _entries(world_dir, split), _entries(world_dir, f"{split}_clean")
        assert [e["wav"] for e in weak] == [e["wav"] for e in clean] and all(e["labels"] for e in weak)
        events = collections.defaultdict(lambda: collections.defaultdict(set))
        for r in _strong(world_dir / f"{split}_strong.tsv"):
            events[r["segment_id"]][r["start_time_seconds"], r["end_time_seconds"]].add(r["label"])
        for e in clean:
            labels = set(e["labels"].split(","))
            seg = events[e["wav"].split("/")[-1].split(".")[0]]
            assert set().union(*seg.values()) == labels  # the true labels are the strong labels' classes
            for span in seg.values():  # each event is its leaf's and every class above it
                leaf = [m for m in span if m not in parent.values()]
                assert len(leaf) == 1 and span == {leaf[0]} | (onto.ancestors(leaf[0]) & set(parent))
        stats = info["splits"][split]
        assert sum(s["spurious"] for s in stats.values()) == sum(
            len(set(w["labels"].split(",")) - set(c["labels"].split(","))) for w, c in zip(weak, clean))
    assert any(s["missing"] for s in info["splits"]["unbalanced"].values())
    assert info["pairs"] and info["teacher_ratio"] == pytest.approx(
        len(_entries(world_dir, "unbalanced")) / len(_entries(world_dir, "balanced")), abs=0.01)


def test_both_eval_label_sets_build_into_shards(world_dir, tmp_path):
    from tools.build_shards import BuildOptions, build
    labels = {}
    for name in ("eval", "eval_clean"):
        opts = BuildOptions(source=world_dir / f"{name}.json", out=tmp_path / name,
                            labels=world_dir / "class_labels_indices.csv", workers=1, shard_samples=16)
        result = build(opts, progress=False)
        assert result.num_written == result.num_inputs == 24, result.summary()
        labels[name] = {r.key: r.labels for r in read_manifest(opts.out)}
    assert labels["eval"].keys() == labels["eval_clean"].keys() and labels["eval"] != labels["eval_clean"]


def test_world_is_deterministic_and_sizes_the_teacher_split(tmp_path):
    kw = dict(clips=12, eval_clips=4, classes=6, seed=3, valid_clips=2, balanced_per_class=1,
              world="audioset-like", errors=ms.Errors(teacher_ratio=5.0))
    for name, workers in (("a", 1), ("b", 2)):
        ms.make_synthetic(tmp_path / name, workers=workers, **kw)
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("unbalanced.json", "unbalanced_clean.json", "balanced.json", "eval.json", "eval_clean.json",
                 "unbalanced_strong.tsv", "world.json", "classes.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    info = json.loads((a / "world.json").read_text())
    n_large, n_balanced = len(_entries(a, "unbalanced")), len(_entries(a, "balanced"))
    assert info["errors"]["teacher_ratio"] == 5.0 and n_large == round(5.0 * n_balanced) and n_large != 12
    with pytest.raises(ValueError, match="--missing"):
        ms.make_synthetic(tmp_path / "c", world="audioset-like", errors=ms.Errors(missing="most"))
