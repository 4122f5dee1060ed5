"""Generate an AudioSet-like synthetic dataset: real label sets, AudioSet's event sparsity, true onsets.

    python -m tools.make_synthetic --out DIR [--clips 1200 --valid-clips 120 --eval-clips 300 --classes 10
                                              --balanced-per-class 20 --seed 0] [--world audioset-like ...]

K classes that co-occur often are chosen from AudioSet's balanced set; each clip takes a real label set
projected onto them, so imbalance and co-occurrence are real. Each class has its own kind of sound (up to
ten classes: harmonic tone, band noise, click train, chirp, AM tone, noise bursts, vibrato tone, buzz,
vowel-like formants, crackle; parameters seeded by the class) and one of AudioSet's temporal patterns:

- impulsive: 1-4 events of 0.1-1 s (a bark, a door knock, a gunshot),
- intermittent: 1-3 events of 1-3 s (a siren passing, a phrase of speech),
- stationary: one event over 60-100 % of the clip (rain, an engine, music).

A clip is 10 s of background (white, pink or brown noise, mains hum or babble-like modulated noise, at
-50 to -20 dBFS) with the events of its labels mixed in at 0-20 dB above it, so the clip's weak label is
true of only some of its 2 s chunks for impulsive and intermittent classes; ``classes.csv`` says how often,
per class and split (the weak-label noise at 2 s, measured from the strong labels, not assumed).

Splits, as AudioSet and PSL use them: ``unbalanced`` (the large training set: a PSL teacher's),
``balanced`` (a subset of it with at least ``--balanced-per-class`` clips of every class where the set has
them, built greedily from the rarest class up, as AudioSet's balanced set is: the PSL students'),
``valid`` (a held-out set drawn like ``unbalanced``, for model selection) and ``eval`` (from AudioSet's
eval label sets). Writes DIR/audio/{unbalanced,valid,eval}/{segment_id}.{wav,flac,ogg},
DIR/{split}.json (PSLA datafiles; balanced.json lists unbalanced clips), DIR/{split}_strong.tsv (AudioSet
strong format; segment ids equal the keys tools.build_shards derives), DIR/class_labels_indices.csv (the
K classes) and DIR/classes.csv.

That is the **clean** world (the default, and the control): every label true, every class its own sound.
``--world audioset-like`` adds what AudioSet's labels get wrong:

- **Hierarchy.** The classes are small sub-trees of AudioSet's ontology (``choose_trees``; at 10 classes:
  Vehicle ⊃ {Boat ⊃ {Rowboat, Motorboat}, Rail transport} and Animal ⊃ {Domestic animals ⊃ {Dog, Cat},
  Livestock}). Only leaves have sounds; a parent's sound is its children's, so a clip of Dog has Domestic animals
  and Animal too. A clip's true classes come from a real label set: a leaf is there when the set has it or a class
  only below it (Bark: Dog); its ancestors with it. Strong labels and ``{split}_clean.json`` hold these.
- **Missing labels**, in ``{split}.json`` (the weak labels: what models train on), each true class left out
  independently at ``(1 − (1 − m)(1 − u)) × {0, ½, 1}`` (``--missing 0|half|audioset``). ``m`` is measured
  from the shipped label sets (``missing_rate``, ``World.rates``): of the sets that make a clip of the class in
  this world, the fraction without its label — balanced_train's for the training splits, eval's for eval
  (Animal 0.53 / 0.54, Livestock 0.82 / 0.84, Vehicle 0.97 / 0.96; per class and per parent-child pair in
  world.json; Livestock clips lack Animal in 59 % of balanced_train's sets and 75 % of eval's). It is 0 where
  nothing is below a class in the ontology: labels no one proposed to the annotators can't be counted from the
  label sets (Fonseca et al., IEEE SPL 2020, trace AudioSet's missing labels to that nomination step). For those,
  ``u`` = ``--unnominated-rate`` (default 0.1) is an assumption, not a published figure: sweep it.
  A clip left with no label is dropped, as the clean world drops label sets with none of its classes, so the
  clips kept miss fewer labels where a clip's every label tends to go (world.json: what each split realised).
- **Spurious labels**: ``--spurious-rate`` (default 0.05, an assumption) of the clips get one label of a class
  they don't have.
- **Confusable siblings**: a tree's leaves share one kind of sound, siblings one temporal pattern, with
  parameters within ±SIBLING_SPREAD of their family's and varying ±FAMILY_JITTER between events, so siblings'
  event pitches overlap.
- **Long tail**: the large split (and valid) draws label sets so that its leaf classes take clips ∝ rank^−α
  (``--long-tail``, default 1: Zipf, an assumption standing for the long tail of AudioSet's unbalanced set),
  ranked by how many shipped sets have them; eval draws its sets uniformly, as AudioSet's eval is balanced.
- **Teacher data**: ``--teacher-ratio R`` sizes the large split to R × the balanced subset (PSL's teacher sees
  about 92×: 2,041,789 unbalanced segments against the 22,160 balanced ones); without it ``--clips`` sets it
  (at the defaults 1,200 clips against 118–133: 9–10×). The balanced subset is chosen by the weak labels, as
  AudioSet's was.

It writes, besides the clean world's files, ``{split}_clean.json`` (same clips, true labels: build it into shards
as any datafile to evaluate against true labels) and ``world.json`` (the options, classes and tree, measured
and used rates per class, the parent-child table, and per split the missing and spurious labels realised).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import itertools
import json
import multiprocessing
import os
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf

from tools import audioset
from trainer.data.manifest import Vocabulary

CLIP_SECONDS = 10.0
CHUNK_SECONDS = 2.0  # the chunk length classes.csv reports weak-label precision for
MAX_CLASS_CLIPS = 1500  # leave out umbrella classes (Music, Speech, ...) that would label nearly every clip
# (sample rate, channels, extension, subtype) cycled over clips so the builder sees real variety.
FORMATS = [(16000, 1, "wav", "PCM_16")] * 6 + [
    (44100, 2, "wav", "FLOAT"), (48000, 2, "flac", "PCM_24"), (16000, 1, "ogg", "VORBIS"), (48000, 1, "wav", "PCM_24")]
BACKGROUNDS = ("white", "pink", "brown", "hum", "babble")
# The audioset-like world (module docstring: what each value is and where it comes from).
WORLDS = ("clean", "audioset-like")
MISSING_SCALES = {"0": 0.0, "half": 0.5, "audioset": 1.0}
TREE_CLASSES = 5  # a sub-tree: a root, two children, two grandchildren
SIBLING_SPREAD = 0.15  # siblings' parameters lie within ±15 % of their family's ...
FAMILY_JITTER = 0.15  # ... and vary ±15 % between events: any two siblings' event pitches overlap
UNNOMINATED_RATE = 0.1
SPURIOUS_RATE = 0.05
LONG_TAIL = 1.0


@dataclass(frozen=True)
class Pattern:
    """How a class's events sit in a clip: how many, and how long."""

    name: str
    counts: tuple[float, ...]  # P(1 event), P(2 events), ...
    seconds: tuple[float, float]  # event length range (stationary: a fraction of the clip, × CLIP_SECONDS)


PATTERNS = (Pattern("impulsive", (0.4, 0.3, 0.2, 0.1), (0.1, 1.0)),
            Pattern("intermittent", (0.5, 0.35, 0.15), (1.0, 3.0)),
            Pattern("stationary", (1.0,), (0.6 * CLIP_SECONDS, CLIP_SECONDS)))


def choose_classes(label_sets: list[list[str]], k: int) -> list[str]:
    """Greedy: start from the best-connected frequent class, add the one co-occurring most with those chosen."""
    count = collections.Counter(m for s in label_sets for m in s)
    cand = sorted((m for m in count if count[m] <= MAX_CLASS_CLIPS), key=lambda m: (-count[m], m))[: max(4 * k, 40)]
    if k > len(cand):
        raise ValueError(f"--classes {k}: at most {len(cand)} classes are available")
    cset = set(cand)
    co: collections.Counter = collections.Counter()
    for s in label_sets:
        for a, b in itertools.permutations(sorted(set(s) & cset), 2):
            co[a, b] += 1
    chosen = [max(cand, key=lambda m: (sum(co[m, o] for o in cand), count[m]))]
    while len(chosen) < k:
        chosen.append(max((m for m in cand if m not in chosen),
                          key=lambda m: (sum(co[m, o] for o in chosen), count[m])))
    return chosen


class ClassSound:
    """A class's sound and temporal pattern; all parameters come from a class-seeded RNG."""

    KINDS = ("harmonic", "band_noise", "clicks", "chirp", "am_tone", "noise_bursts", "fm_tone", "buzz", "formant",
             "crackle")

    def __init__(self, kind: str, mid: str, seed: int, pattern: Pattern, family: str | None = None) -> None:
        """``family`` (a parent's mid): siblings draw their parameters around the family's (within ±SIBLING_SPREAD
        of them) and vary ±FAMILY_JITTER between events, so siblings' sounds overlap; without one, each class
        has parameters of its own and ±5 % between events."""
        rng = np.random.default_rng([seed, zlib.crc32(mid.encode())])
        base = np.random.default_rng([seed, zlib.crc32(family.encode())]) if family else rng
        self.kind = kind
        self.pattern = pattern
        self.jitter = FAMILY_JITTER if family else 0.05
        self.f0 = float(base.uniform(120, 1500))
        self.f1 = float(self.f0 * base.uniform(1.5, 4.0))
        self.harmonics = base.uniform(0.2, 1.0, size=int(base.integers(2, 7)))
        self.rate = float(base.uniform(4, 30))
        self.band = np.sort(base.uniform(200, 6000, size=2))
        if family:  # this sibling's own place around the family's parameters
            own = rng.uniform(1 - SIBLING_SPREAD, 1 + SIBLING_SPREAD, size=4)
            self.f0, self.f1, self.rate = self.f0 * own[0], self.f1 * own[1], self.rate * own[2]
            self.band = np.minimum(self.band * own[3], 7500.0)

    def events(self, rng: np.random.Generator) -> list[float]:
        """Lengths (s) of this class's events in one clip."""
        n = 1 + int(rng.choice(len(self.pattern.counts), p=self.pattern.counts))
        return [float(rng.uniform(*self.pattern.seconds)) for _ in range(n)]

    def render(self, rng: np.random.Generator, sr: int, seconds: float) -> np.ndarray:
        """One event of ``seconds``, peak 1, with 10 ms ramps; pitch varies by ±``jitter`` between events."""
        n = max(int(seconds * sr), 16)
        t = np.arange(n) / sr
        f0 = self.f0 * rng.uniform(1 - self.jitter, 1 + self.jitter)
        f1 = self.f1 * rng.uniform(1 - self.jitter, 1 + self.jitter)
        if self.kind == "harmonic":
            k = np.arange(1, len(self.harmonics) + 1)[:, None]
            x = (self.harmonics[:, None] / k * np.sin(2 * np.pi * f0 * k * t)).sum(0)
        elif self.kind == "band_noise":
            spec = np.fft.rfft(rng.standard_normal(n))
            f = np.fft.rfftfreq(n, 1 / sr)
            x = np.fft.irfft(spec * ((f >= self.band[0]) & (f <= self.band[1])), n)
        elif self.kind == "clicks":
            x = np.zeros(n)
            x[(np.arange(0, t[-1] + 1e-9, 1 / self.rate) * sr).astype(int)] = 1.0
            tb = np.arange(int(0.004 * sr)) / sr
            burst = np.exp(-tb / 0.001) * np.sin(2 * np.pi * f1 * tb)
            x = np.convolve(x, burst)[:n]
        elif self.kind == "chirp":
            x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(t[-1], 1e-3))))
        elif self.kind == "am_tone":
            x = np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * self.rate * t))
        elif self.kind == "noise_bursts":  # decaying broadband bursts, `rate` a second
            x = rng.standard_normal(n) * np.exp(-(t % (1 / self.rate)) * self.rate * 8)
        elif self.kind == "fm_tone":  # vibrato: the pitch swings ±10 % at `rate` Hz
            x = np.sin(2 * np.pi * f0 * t - 0.1 * f0 / self.rate * np.cos(2 * np.pi * self.rate * t))
        elif self.kind == "buzz":  # a sawtooth: every harmonic, falling as 1/k
            x = 2 * ((f0 * t) % 1.0) - 1
        elif self.kind == "formant":  # a vowel: harmonics of f0 shaped by two resonances
            k = np.arange(1, int(8000 / f0))[:, None]
            amp = np.exp(-((k * f0 - self.band[0]) / 250) ** 2) + np.exp(-((k * f0 - self.band[1]) / 350) ** 2)
            x = (amp * np.sin(2 * np.pi * f0 * k * t)).sum(0)
        else:  # crackle: sparse random pops
            x = np.zeros(n)
            pops = rng.integers(0, n, size=max(1, int(self.rate * 4 * seconds)))
            x[pops] = rng.uniform(-1, 1, size=len(pops))
            x = np.convolve(x, np.exp(-np.arange(int(0.002 * sr)) / (0.0005 * sr)))[:n]
        ramp = min(int(0.01 * sr), n // 2)
        env = np.ones(n)
        env[:ramp], env[n - ramp:] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
        return x * env / (np.abs(x).max() + 1e-9)


def background(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """``n`` samples of one of BACKGROUNDS at unit RMS."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    if kind == "hum":
        t = np.arange(n) / sr
        mains = 50.0 if rng.random() < 0.5 else 60.0
        x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi))
                for k in range(1, 6)) + 0.05 * rng.standard_normal(n)
    else:
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 20.0)
        slope = {"white": 0.0, "pink": 0.5, "brown": 1.0, "babble": 0.5}[kind]
        x = np.fft.irfft(spec / f**slope, n)
        if kind == "babble":  # syllable-rate modulation of speech-shaped noise
            x *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(3, 6) * np.arange(n) / sr + rng.uniform(0, 2 * np.pi))
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def render_clip(job: tuple) -> list[tuple]:
    """Worker: write one clip; returns its strong-label rows. Everything random comes from the clip's own
    seed, so the output does not depend on the number of workers."""
    path, seg, i, labels, sounds, seed, above = job
    rng = np.random.default_rng(seed)
    sr, channels, _, subtype = FORMATS[i % len(FORMATS)]
    total = int(CLIP_SECONDS * sr)
    level = 10 ** (rng.uniform(-50, -20) / 20)  # background RMS, dBFS
    x = background(rng, total, sr) * level
    strong = []
    for mid in labels:
        for seconds in sounds[mid].events(rng):
            ev = sounds[mid].render(rng, sr, seconds)[:total]
            ev *= level * 10 ** (rng.uniform(0, 20) / 20) / (np.sqrt(np.mean(ev**2)) + 1e-12)  # 0-20 dB SNR
            onset = int(rng.integers(0, total - len(ev) + 1))
            x[onset:onset + len(ev)] += ev
            span = round(onset / sr, 3), round((onset + len(ev)) / sr, 3)
            # a parent's sound is its children's: each event is also one of every class above it
            strong.extend((seg, *span, m) for m in (mid, *above.get(mid, ())))
    x /= max(1.0, np.abs(x).max() / 0.95)
    if channels == 2:
        x = np.stack([x, x * rng.uniform(0.5, 1.0)], axis=1)
    sf.write(path, x.astype(np.float32), sr, subtype=subtype)
    return strong


def draw_order(split: str, n: int, n_sets: int, seed: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Which label set each of ``n`` clips takes: every set once per round in a random order, or (``weights``)
    independent draws in proportion to them. Either way the first clips do not depend on ``n``."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    if weights is not None:
        return rng.choice(n_sets, size=n, p=weights / weights.sum())
    return np.concatenate([rng.permutation(n_sets) for _ in range(-(-n // n_sets))])[:n]


def make_split(out: Path, split: str, tag: str, labels: list[tuple[str, ...]], sounds: dict[str, ClassSound],
               seed: int, pool: multiprocessing.pool.Pool | None, weak: list[tuple[str, ...]] | None = None,
               above: dict[str, tuple[str, ...]] | None = None) -> tuple[list[dict], list[tuple]]:
    """Write one clip per entry of ``labels`` (the classes whose sounds it has); returns PSLA datafile entries
    (labelled ``weak``, default ``labels``) and strong-label rows (an event of a class also for the classes
    ``above`` it)."""
    audio_dir = out / "audio" / split
    audio_dir.mkdir(parents=True, exist_ok=True)
    entries, jobs = [], []
    for i, clip in enumerate(labels):
        seg, ext = f"syn_{tag}_{i + 1:06d}", FORMATS[i % len(FORMATS)][2]
        jobs.append((audio_dir / f"{seg}.{ext}", seg, i, clip, sounds, [seed, zlib.crc32(split.encode()), i],
                     above or {}))
        entries.append({"wav": f"audio/{split}/{seg}.{ext}", "labels": ",".join((weak or labels)[i])})
    rows = pool.imap(render_clip, jobs, chunksize=4) if pool else map(render_clip, jobs)
    return entries, [row for clip in rows for row in clip]


def balanced_subset(entries: list[dict], classes: list[str], per_class: int, rng: np.random.Generator) -> list[int]:
    """Indices of a subset with at least ``per_class`` clips of every class that has them: classes from the
    rarest up each take random clips until they have enough, counting the labels of clips already taken."""
    labels = [set(e["labels"].split(",")) for e in entries]
    total = collections.Counter(m for s in labels for m in s)
    order = rng.permutation(len(entries))
    taken: set[int] = set()
    have: collections.Counter = collections.Counter()
    for c in sorted(classes, key=lambda m: (total[m], m)):
        for i in order:
            if have[c] >= per_class:
                break
            if c in labels[i] and i not in taken:
                taken.add(int(i))
                have.update(labels[i])
    return sorted(taken)


def chunk_precision(strong: list[tuple], entries: list[dict], mid: str) -> tuple[int, float]:
    """(clips labelled ``mid``, fraction of their CHUNK_SECONDS chunks that an event of ``mid`` overlaps)."""
    keys = [Path(e["wav"]).stem for e in entries if mid in e["labels"].split(",")]
    events = collections.defaultdict(list)
    for seg, onset, offset, label in strong:
        if label == mid:
            events[seg].append((onset, offset))
    starts = np.arange(0.0, CLIP_SECONDS, CHUNK_SECONDS)
    hit = [any(on < s + CHUNK_SECONDS and off > s for on, off in events[k]) for k in keys for s in starts]
    return len(keys), float(np.mean(hit)) if hit else float("nan")


@contextlib.contextmanager
def _no_pool() -> Iterator[None]:
    yield None


def write_datafile(path: Path, entries: list[dict]) -> None:
    path.write_text(json.dumps({"data": entries}, indent=1) + "\n")


def write_strong(path: Path, rows: Iterable[tuple]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["segment_id", "start_time_seconds", "end_time_seconds", "label"])
        w.writerows(rows)


@dataclass(frozen=True)
class Errors:
    """The audioset-like world's label errors (module docstring: what each is and where its value comes from)."""

    missing: str = "audioset"  # a key of MISSING_SCALES: every class's missing rate × 0, ½ or 1
    unnominated_rate: float = UNNOMINATED_RATE  # added to every class's measured rate, as 1 − (1 − m)(1 − u)
    spurious_rate: float = SPURIOUS_RATE  # fraction of clips with one label of a class they do not have
    long_tail: float = LONG_TAIL  # α: the large split's leaves take clips ∝ rank^−α (0: as the label sets)
    teacher_ratio: float | None = None  # the large split's clips per balanced-subset clip (None: --clips)


def choose_trees(label_sets: list[list[str]], k: int, onto: audioset.Ontology) -> dict[str, str | None]:
    """``k`` classes as small sub-trees of AudioSet's ontology: {mid: its parent among them, or None}, in the order
    chosen. A tree starts at the most labelled class (at most MAX_CLASS_CLIPS labels: no umbrella class) that has
    two labelled children and no relation to the classes already chosen; it takes those two children, then the two
    children of the first of them that has two (TREE_CLASSES classes on three levels). One or two classes left over
    join as further children of the trees' inner classes, the most labelled first."""
    vocab = set(audioset.vocabulary().mids)
    count = collections.Counter(m for s in label_sets for m in s)

    def kids(m: str) -> list[str]:
        return sorted((c for c in onto.children[m] if c in vocab and count[c]), key=lambda c: (-count[c], c))

    def related(m: str) -> set[str]:
        return {m} | onto.ancestors(m) | onto.descendants(m)

    parent: dict[str, str | None] = {}
    while len(parent) < k:
        taken = set().union(*map(related, parent))
        if k - len(parent) >= 3:
            roots = [m for m in vocab if count[m] <= MAX_CLASS_CLIPS and len(kids(m)) >= 2 and not related(m) & taken]
            if not roots:
                raise ValueError(f"--classes {k}: the ontology has no further sub-tree for {k - len(parent)} classes")
            root = min(roots, key=lambda m: (-count[m], m))
            tree: dict[str, str | None] = {root: None, **{c: root for c in kids(root)[:2]}}
            inner = [c for c in kids(root)[:2] if len(kids(c)) >= 2]
            if inner and k - len(parent) >= TREE_CLASSES:
                tree.update({g: inner[0] for g in kids(inner[0])[:2]})
            parent.update(tree)
        else:
            extra = [(c, m) for m in parent if m in parent.values() for c in kids(m)
                     if c not in parent and related(c) & set(parent) <= onto.ancestors(c)]
            if not extra:
                raise ValueError(f"--classes {k}: no class is left to join the chosen sub-trees")
            c, m = min(extra, key=lambda cm: (-count[cm[0]], cm[0]))
            parent[c] = m
    return parent


def missing_rate(label_sets: Iterable[Iterable[str]], mid: str, below: Iterable[str]) -> tuple[int, float]:
    """(label sets with a class of ``below``, the fraction of them without ``mid``): how often AudioSet's
    annotators left out ``mid`` where a class below it in the ontology shows its sound is there."""
    below = set(below)
    have = [mid in s for s in map(set, label_sets) if s & below]
    return len(have), (len(have) - sum(have)) / len(have) if have else 0.0


class World:
    """The audioset-like world's classes (``choose_trees``): only leaves have sounds; a class is in a clip when a
    leaf at or below it is, and a leaf is when the clip's AudioSet label set has it or a class only below it."""

    def __init__(self, parent: dict[str, str | None], onto: audioset.Ontology, order: list[str]) -> None:
        self.parent, self.classes = parent, order
        self.leaves = [m for m in order if m not in parent.values()]
        self.above = {m: self._chain(m) for m in order}
        # the labels that put a leaf in a clip: its own and those of classes only below it (Bark under Dog, but
        # not Hiss, under Cat and Onomatopoeia, nor Growling, under Dog and Cat: those say no more than "a sound")
        self.makers = {m: {m} | {d for d in onto.descendants(m) if onto.ancestors(d) <= onto.ancestors(m) | {m}
                                 | onto.descendants(m)} for m in self.leaves}

    def _chain(self, m: str) -> tuple[str, ...]:
        up = []
        while self.parent[m] is not None:
            m = self.parent[m]
            up.append(m)
        return tuple(up)

    def below(self, mid: str) -> set[str]:
        """The labels that put ``mid`` in a clip."""
        return set().union(*(self.makers[leaf] for leaf in self.leaves if leaf == mid or mid in self.above[leaf]))

    def truth(self, label_set: Iterable[str]) -> tuple[str, ...]:
        """The classes of a clip drawn from ``label_set``, in vocabulary order (empty: not a clip of this world)."""
        s = set(label_set)
        present = {leaf for leaf in self.leaves if s & self.makers[leaf]}
        present |= {a for leaf in present for a in self.above[leaf]}
        return tuple(m for m in self.classes if m in present)

    def rates(self, label_sets: list[list[str]], errors: Errors) -> dict[str, dict[str, float]]:
        """Per class: the measured rate m, ``missing_rate`` over ``below``: of AudioSet's label sets that make a
        clip of the class here, the fraction without its label (0 for a class with nothing below it in AudioSet's
        ontology), and the rate used, ``MISSING_SCALES[errors.missing] · (1 − (1 − m)(1 − u))``."""
        out = {}
        for m in self.classes:
            n, measured = missing_rate(label_sets, m, self.below(m))
            used = MISSING_SCALES[errors.missing] * (1 - (1 - measured) * (1 - errors.unnominated_rate))
            out[m] = {"sets": n, "measured": round(measured, 4), "used": round(used, 4)}
        return out


def weak_labels(truth: tuple[str, ...], rates: dict[str, float], spurious_rate: float, classes: list[str],
                rng: np.random.Generator) -> tuple[str, ...]:
    """A clip's AudioSet-like labels: each true class left out at its rate, independently, and at
    ``spurious_rate`` one class it does not have added. Empty: the clip has no label among these classes."""
    kept = {m for m in truth if rng.random() >= rates[m]}
    absent = [m for m in classes if m not in truth]
    if rng.random() < spurious_rate and absent:
        kept.add(absent[int(rng.integers(len(absent)))])
    return tuple(m for m in classes if m in kept)


def tail_weights(world: World, sets: list[tuple[str, ...]], alpha: float, rates: dict[str, float],
                 spurious_rate: float) -> np.ndarray:
    """Draw weights of ``sets`` (their true classes) so that leaf classes take the clips kept (``draw_clips``)
    ∝ rank^−α, ranked by how many sets have them: each set weighs as its leaf with the largest share of rank^−α
    per set, over the chance that the clip keeps a weak label."""
    n = collections.Counter(m for s in sets for m in s if m in world.leaves)
    rank = {m: r for r, m in enumerate(sorted(n, key=lambda m: (-n[m], m)), 1)}
    return np.array([max(rank[m] ** -alpha / n[m] for m in s if m in rank)
                     / (1 - np.prod([rates[m] for m in s]) * (1 - spurious_rate)) for s in sets])


def draw_clips(split: str, count: int, truths: list[tuple[str, ...]], tail: np.ndarray | None,
               rates: dict[str, float], errors: Errors, classes: list[str], seed: int
               ) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(true classes, weak labels) of the first ``count`` clips left with a weak label: like AudioSet's label sets
    projected onto these classes (and the clean world's), the world has no clip without one. The first clips do
    not depend on ``count``."""
    size = count
    while True:
        t, w = [], []
        for i, j in enumerate(draw_order(split, size, len(truths), seed, tail)):
            labels = weak_labels(truths[j], rates, errors.spurious_rate, classes,
                                 np.random.default_rng([seed, zlib.crc32(split.encode()), i, 1]))
            if labels:
                t.append(truths[j])
                w.append(labels)
            if len(t) == count:
                return t, w
        size *= 2


def _audioset_like(out: Path, clips: int, eval_clips: int, classes: int, seed: int, n_valid: int, per_class: int,
                   errors: Errors, pool: multiprocessing.pool.Pool | None
                   ) -> tuple[list[str], dict[str, ClassSound], dict[str, tuple[list[dict], list[tuple]]], dict]:
    """The audioset-like world's splits: (classes, sounds, {split: (entries, strong rows)}, world.json's content
    with "clean": {split: true classes per clip} and "subset": the balanced subset's clips)."""
    if errors.missing not in MISSING_SCALES:
        raise ValueError(f"--missing {errors.missing!r}: expected one of {', '.join(MISSING_SCALES)}")
    onto, full_vocab = audioset.ontology(), audioset.vocabulary()
    sources = {"balanced_train": audioset.label_sets("balanced_train"), "eval": audioset.label_sets("eval")}
    parent = choose_trees(sources["balanced_train"], classes, onto)
    world = World(parent, onto, sorted(parent, key=full_vocab.index.__getitem__))
    # Sounds: one kind per tree, one temporal pattern per family; siblings (a family) are confusable.
    roots = [m for m in parent if parent[m] is None]
    families = list(dict.fromkeys(parent[m] for m in parent if m in world.leaves))
    sounds = {m: ClassSound(ClassSound.KINDS[roots.index((world.above[m] or (m,))[-1]) % len(ClassSound.KINDS)], m,
                            seed, PATTERNS[families.index(parent[m]) % len(PATTERNS)], family=parent[m])
              for m in world.leaves}
    rates = {src: world.rates(sets, errors) for src, sets in sources.items()}
    splits: dict[str, tuple[list[dict], list[tuple]]] = {}
    clean: dict[str, list[tuple[str, ...]]] = {}
    drawn: dict[str, tuple[list[tuple[str, ...]], list[tuple[str, ...]]]] = {}
    for split, src, n in (("unbalanced", "balanced_train", clips), ("valid", "balanced_train", n_valid),
                          ("eval", "eval", eval_clips)):
        truths = [t for t in map(world.truth, sources[src]) if t]
        used = {m: r["used"] for m, r in rates[src].items()}
        tail = (tail_weights(world, truths, errors.long_tail, used, errors.spurious_rate)
                if split != "eval" and errors.long_tail else None)
        drawn[split] = draw_clips(split, n, truths, tail, used, errors, world.classes, seed)
        if split == "unbalanced":
            # the balanced subset, chosen by the weak labels as AudioSet's was; the large split sized around it
            subset = balanced_subset([{"labels": ",".join(w)} for w in drawn[split][1]], world.classes, per_class,
                                     np.random.default_rng([seed, 1]))
            if errors.teacher_ratio:
                target = round(errors.teacher_ratio * len(subset))
                if target < len(subset):
                    raise ValueError(f"--teacher-ratio {errors.teacher_ratio}: below 1")
                t, w = draw_clips(split, max(target, n), truths, tail, used, errors, world.classes, seed)
                others = [i for i in range(len(t)) if i not in set(subset)][:target - len(subset)]
                keep = sorted(set(subset) | set(others))
                drawn[split] = [t[i] for i in keep], [w[i] for i in keep]
                subset = [keep.index(i) for i in subset]
    for split, tag in (("unbalanced", "un"), ("valid", "va"), ("eval", "ev")):
        truths, weak = drawn[split]
        leaves = [tuple(m for m in t if m in world.leaves) for t in truths]
        splits[split] = make_split(out, split, tag, leaves, sounds, seed, pool, weak=weak, above=world.above)
        clean[split] = truths
    info = {"world": "audioset-like", "errors": asdict(errors),
            "classes": [{"mid": m, "name": onto.name(m), "parent": parent[m], "leaf": m in world.leaves,
                         "sound": sounds[m].kind if m in sounds else None,
                         "pattern": sounds[m].pattern.name if m in sounds else None,
                         "missing_rate": {src: rates[src][m] for src in rates}} for m in world.classes],
            "pairs": [{"parent": a, "child": c, **{src: dict(zip(("sets", "missing"), missing_rate(sets, a, {c})))
                                                     for src, sets in sources.items()}}
                      for c in world.classes for a in world.above[c]],
            "clean": clean, "subset": subset}
    return world.classes, sounds, splits, info


def _split_stats(entries: list[dict], truths: list[tuple[str, ...]], classes: list[str]) -> dict[str, dict]:
    """Per class: clips that have it, the fraction of them without its weak label, and its weak labels on clips
    without it."""
    out = {}
    for m in classes:
        have = [m in e["labels"].split(",") for e, t in zip(entries, truths) if m in t]
        spurious = sum(m in e["labels"].split(",") and m not in t for e, t in zip(entries, truths))
        out[m] = {"clips": len(have), "missing": round(1 - sum(have) / len(have), 4) if have else None,
                  "spurious": spurious}
    return out


def make_synthetic(out: str | Path, clips: int = 1200, eval_clips: int = 300, classes: int = 10, seed: int = 0,
                   valid_clips: int | None = None, balanced_per_class: int = 20, workers: int = 1,
                   world: str = "clean", errors: Errors | None = None) -> Vocabulary:
    """Generate the dataset into ``out`` (clips rendered by ``workers`` processes; the output is the same for
    any number); returns the K-class vocabulary. ``world="audioset-like"`` makes the world of the module
    docstring with ``errors`` (default ``Errors()``)."""
    if world not in WORLDS:
        raise ValueError(f"--world {world!r}: expected one of {', '.join(WORLDS)}")
    out = Path(out)
    full_vocab = audioset.vocabulary()
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, tuple[list[dict], list[tuple]]] = {}
    n_valid = max(1, clips // 10) if valid_clips is None else valid_clips
    info: dict = {}
    # forkserver, not fork: the caller (a test session, a trainer) may already run CUDA or DALI threads
    with multiprocessing.get_context("forkserver").Pool(workers) if workers > 1 else _no_pool() as pool:
        if world == "clean":
            train_sets = audioset.label_sets("balanced_train")
            eval_sets = audioset.label_sets("eval")
            chosen = sorted(choose_classes(train_sets, classes), key=full_vocab.index.__getitem__)
            # each class its own kind of sound (as far as there are kinds) and a temporal pattern, by its place
            sounds = {m: ClassSound(ClassSound.KINDS[i % len(ClassSound.KINDS)], m, seed, PATTERNS[i % len(PATTERNS)])
                      for i, m in enumerate(chosen)}
            for split, tag, sets, n in (("unbalanced", "un", train_sets, clips), ("valid", "va", train_sets, n_valid),
                                        ("eval", "ev", eval_sets, eval_clips)):
                # Project real label sets onto the chosen classes; clips left with no label are dropped.
                projected = [p for p in (tuple(m for m in chosen if m in s) for s in sets) if p]
                order = draw_order(split, n, len(projected), seed)
                splits[split] = make_split(out, split, tag, [projected[j] for j in order], sounds, seed, pool)
        else:
            chosen, sounds, splits, info = _audioset_like(out, clips, eval_clips, classes, seed, n_valid,
                                                          balanced_per_class, errors or Errors(), pool)
    vocab = Vocabulary(tuple(chosen), tuple(full_vocab.names[full_vocab.index[m]] for m in chosen))
    vocab.save(out / "class_labels_indices.csv")
    entries, strong = splits["unbalanced"]
    subset = info.pop("subset") if info else balanced_subset(entries, chosen, balanced_per_class,
                                                              np.random.default_rng([seed, 1]))
    keys = {Path(entries[i]["wav"]).stem for i in subset}
    splits["balanced"] = [entries[i] for i in subset], [row for row in strong if row[0] in keys]
    for split, (split_entries, split_strong) in splits.items():
        write_datafile(out / f"{split}.json", split_entries)
        write_strong(out / f"{split}_strong.tsv", split_strong)
    if info:  # the true labels beside the weak ones: {split}_clean.json (same clips), and what the errors did
        clean = info.pop("clean")
        clean["balanced"] = [clean["unbalanced"][i] for i in subset]
        info["splits"] = {}
        for split, (split_entries, _) in splits.items():
            write_datafile(out / f"{split}_clean.json",
                           [{**e, "labels": ",".join(t)} for e, t in zip(split_entries, clean[split])])
            info["splits"][split] = _split_stats(split_entries, clean[split], chosen)
        info["teacher_ratio"] = round(len(splits["unbalanced"][0]) / len(subset), 2)
        (out / "world.json").write_text(json.dumps(info, indent=1) + "\n")
    with open(out / "classes.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        names = list(splits)
        w.writerow(["index", "mid", "display_name", "pattern", "sound"]
                   + [f"{s}_{col}" for s in names for col in ("clips", f"weak_true_{CHUNK_SECONDS:g}s")])
        for i, m in enumerate(chosen):
            stats = [chunk_precision(splits[s][1], splits[s][0], m) for s in names]
            kind = (sounds[m].pattern.name, sounds[m].kind) if m in sounds else ("parent", "children's")
            w.writerow([i, m, vocab.names[i], *kind] + [v for n, frac in stats for v in (n, f"{frac:.3f}")])
    return vocab


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.make_synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output directory (audio, split JSONs, labels)")
    p.add_argument("--clips", type=int, default=1200,
                   help="clips of the unbalanced (large) training split (default: %(default)s)")
    p.add_argument("--valid-clips", type=int, default=None, help="held-out clips (default: a tenth of --clips)")
    p.add_argument("--eval-clips", type=int, default=300, help="clips of the eval split (default: %(default)s)")
    p.add_argument("--classes", type=int, default=10, help="classes (default: %(default)s)")
    p.add_argument("--balanced-per-class", type=int, default=20,
                   help="clips per class in the balanced subset (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole world (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes rendering clips (default: %(default)s, this machine's cores)")
    p.add_argument("--world", choices=WORLDS, default="clean",
                   help="clean: every label true; audioset-like: AudioSet's hierarchy and label errors "
                        "(default: %(default)s)")
    g = p.add_argument_group("audioset-like world")
    g.add_argument("--missing", choices=list(MISSING_SCALES), default=Errors.missing,
                   help="missing weak labels at 0, half or all of the AudioSet-measured rates (default: %(default)s)")
    g.add_argument("--unnominated-rate", type=float, default=Errors.unnominated_rate,
                   help="missing rate added to every class (labels never proposed to the annotators; "
                        "default: %(default)s)")
    g.add_argument("--spurious-rate", type=float, default=Errors.spurious_rate,
                   help="fraction of clips with one label of a class they do not have (default: %(default)s)")
    g.add_argument("--long-tail", type=float, default=Errors.long_tail,
                   help="α: the large split's leaf classes take clips in proportion to rank^-α (0: no tail; "
                        "default: %(default)s)")
    g.add_argument("--teacher-ratio", type=float, default=None,
                   help="size the large split to this many clips per balanced-subset clip (default: --clips)")
    a = p.parse_args(argv)
    errors = Errors(a.missing, a.unnominated_rate, a.spurious_rate, a.long_tail, a.teacher_ratio)
    vocab = make_synthetic(a.out, a.clips, a.eval_clips, a.classes, a.seed, a.valid_clips, a.balanced_per_class,
                           a.workers, a.world, errors)
    sizes = {s: len(json.loads((a.out / f"{s}.json").read_text())["data"]) for s in ("unbalanced", "balanced",
                                                                                      "valid", "eval")}
    print(f"{a.out}: " + ", ".join(f"{n} {s}" for s, n in sizes.items()) + f" clips; {len(vocab)} classes "
          f"(patterns and weak-label precision per {CHUNK_SECONDS:g} s chunk: {a.out / 'classes.csv'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
