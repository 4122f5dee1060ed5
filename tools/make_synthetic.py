"""Generate an AudioSet-like synthetic dataset: real label sets, AudioSet's event sparsity, true onsets.

    python -m tools.make_synthetic --out DIR [--clips 1200 --valid-clips 120 --eval-clips 300 --classes 10
                                              --balanced-per-class 20 --seed 0]

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
from dataclasses import dataclass
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

    def __init__(self, kind: str, mid: str, seed: int, pattern: Pattern) -> None:
        rng = np.random.default_rng([seed, zlib.crc32(mid.encode())])
        self.kind = kind
        self.pattern = pattern
        self.f0 = float(rng.uniform(120, 1500))
        self.f1 = float(self.f0 * rng.uniform(1.5, 4.0))
        self.harmonics = rng.uniform(0.2, 1.0, size=int(rng.integers(2, 7)))
        self.rate = float(rng.uniform(4, 30))
        self.band = np.sort(rng.uniform(200, 6000, size=2))

    def events(self, rng: np.random.Generator) -> list[float]:
        """Lengths (s) of this class's events in one clip."""
        n = 1 + int(rng.choice(len(self.pattern.counts), p=self.pattern.counts))
        return [float(rng.uniform(*self.pattern.seconds)) for _ in range(n)]

    def render(self, rng: np.random.Generator, sr: int, seconds: float) -> np.ndarray:
        """One event of ``seconds``, peak 1, with 10 ms ramps; pitch varies by ±5 % between events."""
        n = max(int(seconds * sr), 16)
        t = np.arange(n) / sr
        f0, f1 = self.f0 * rng.uniform(0.95, 1.05), self.f1 * rng.uniform(0.95, 1.05)
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
    path, seg, i, labels, sounds, seed = job
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
            strong.append((seg, round(onset / sr, 3), round((onset + len(ev)) / sr, 3), mid))
    x /= max(1.0, np.abs(x).max() / 0.95)
    if channels == 2:
        x = np.stack([x, x * rng.uniform(0.5, 1.0)], axis=1)
    sf.write(path, x.astype(np.float32), sr, subtype=subtype)
    return strong


def make_split(out: Path, split: str, tag: str, label_sets: list[tuple[str, ...]], n: int,
               sounds: dict[str, ClassSound], seed: int, pool: multiprocessing.pool.Pool | None
               ) -> tuple[list[dict], list[tuple]]:
    """Write ``n`` clips of one split; returns PSLA datafile entries and strong-label rows."""
    audio_dir = out / "audio" / split
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    order = np.concatenate([rng.permutation(len(label_sets)) for _ in range(-(-n // len(label_sets)))])[:n]
    entries, jobs = [], []
    for i, j in enumerate(order):
        seg, ext = f"syn_{tag}_{i + 1:06d}", FORMATS[i % len(FORMATS)][2]
        jobs.append((audio_dir / f"{seg}.{ext}", seg, i, label_sets[j], sounds, [seed, zlib.crc32(split.encode()), i]))
        entries.append({"wav": f"audio/{split}/{seg}.{ext}", "labels": ",".join(label_sets[j])})
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


def make_synthetic(out: str | Path, clips: int = 1200, eval_clips: int = 300, classes: int = 10, seed: int = 0,
                   valid_clips: int | None = None, balanced_per_class: int = 20, workers: int = 1) -> Vocabulary:
    """Generate the dataset into ``out`` (clips rendered by ``workers`` processes; the output is the same for
    any number); returns the K-class vocabulary."""
    out = Path(out)
    full_vocab = audioset.vocabulary()
    train_sets = audioset.label_sets("balanced_train")
    eval_sets = audioset.label_sets("eval")
    chosen = sorted(choose_classes(train_sets, classes), key=full_vocab.index.__getitem__)
    vocab = Vocabulary(tuple(chosen), tuple(full_vocab.names[full_vocab.index[m]] for m in chosen))
    out.mkdir(parents=True, exist_ok=True)
    vocab.save(out / "class_labels_indices.csv")
    # each class its own kind of sound (as far as there are kinds) and a temporal pattern, by its place in the list
    sounds = {m: ClassSound(ClassSound.KINDS[i % len(ClassSound.KINDS)], m, seed, PATTERNS[i % len(PATTERNS)])
              for i, m in enumerate(chosen)}
    splits: dict[str, tuple[list[dict], list[tuple]]] = {}
    n_valid = max(1, clips // 10) if valid_clips is None else valid_clips
    # forkserver, not fork: the caller (a test session, a trainer) may already run CUDA or DALI threads
    with multiprocessing.get_context("forkserver").Pool(workers) if workers > 1 else _no_pool() as pool:
        for split, tag, sets, n in (("unbalanced", "un", train_sets, clips), ("valid", "va", train_sets, n_valid),
                                    ("eval", "ev", eval_sets, eval_clips)):
            # Project real label sets onto the chosen classes; clips left with no label are dropped.
            projected = [p for p in (tuple(m for m in chosen if m in s) for s in sets) if p]
            splits[split] = make_split(out, split, tag, projected, n, sounds, seed, pool)
    entries, strong = splits["unbalanced"]
    subset = balanced_subset(entries, chosen, balanced_per_class, np.random.default_rng([seed, 1]))
    keys = {Path(entries[i]["wav"]).stem for i in subset}
    splits["balanced"] = [entries[i] for i in subset], [row for row in strong if row[0] in keys]
    for split, (split_entries, split_strong) in splits.items():
        write_datafile(out / f"{split}.json", split_entries)
        write_strong(out / f"{split}_strong.tsv", split_strong)
    with open(out / "classes.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        names = list(splits)
        w.writerow(["index", "mid", "display_name", "pattern", "sound"]
                   + [f"{s}_{col}" for s in names for col in ("clips", f"weak_true_{CHUNK_SECONDS:g}s")])
        for i, m in enumerate(chosen):
            stats = [chunk_precision(splits[s][1], splits[s][0], m) for s in names]
            w.writerow([i, m, vocab.names[i], sounds[m].pattern.name, sounds[m].kind]
                       + [v for n, frac in stats for v in (n, f"{frac:.3f}")])
    return vocab


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.make_synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clips", type=int, default=1200, help="clips of the unbalanced (large) training split")
    p.add_argument("--valid-clips", type=int, default=None, help="held-out clips (default: a tenth of --clips)")
    p.add_argument("--eval-clips", type=int, default=300)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--balanced-per-class", type=int, default=20, help="clips per class in the balanced subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes rendering clips")
    a = p.parse_args(argv)
    vocab = make_synthetic(a.out, a.clips, a.eval_clips, a.classes, a.seed, a.valid_clips, a.balanced_per_class,
                           a.workers)
    sizes = {s: len(json.loads((a.out / f"{s}.json").read_text())["data"]) for s in ("unbalanced", "balanced",
                                                                                      "valid", "eval")}
    print(f"{a.out}: " + ", ".join(f"{n} {s}" for s, n in sizes.items()) + f" clips; {len(vocab)} classes "
          f"(patterns and weak-label precision per {CHUNK_SECONDS:g} s chunk: {a.out / 'classes.csv'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
