"""Generate a small, learnable synthetic AudioSet-like dataset with real label structure.

    python -m tools.make_synthetic --out DIR [--clips 600 --eval-clips 200 --classes 10 --seed 0]

K classes that co-occur often are chosen from the real AudioSet balanced set; each clip takes a real
label set projected onto them, so imbalance and co-occurrence are real. Each class has its own sound
(harmonic tone, band noise, click train, chirp or AM tone, parameters seeded by the class) and typical
event length; a clip is 10 s of background noise with 1-3 events per label. Writes:
DIR/audio/{train,eval}/{segment_id}.{wav,flac,ogg}, DIR/train.json and DIR/eval.json (PSLA datafiles),
DIR/class_labels_indices.csv (the K classes), DIR/train_strong.tsv and DIR/eval_strong.tsv (AudioSet
strong format; segment ids equal the keys tools.build_shards derives).
"""
from __future__ import annotations

import argparse
import collections
import csv
import itertools
import json
import sys
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf

from tools import audioset
from trainer.data.manifest import Vocabulary

CLIP_SECONDS = 10.0
MAX_CLASS_CLIPS = 1500  # leave out umbrella classes (Music, Speech, ...) that would label nearly every clip
# (sample rate, channels, extension, subtype) cycled over clips so the builder sees real variety.
FORMATS = [(16000, 1, "wav", "PCM_16")] * 6 + [
    (44100, 2, "wav", "FLOAT"), (48000, 2, "flac", "PCM_24"), (16000, 1, "ogg", "VORBIS"), (48000, 1, "wav", "PCM_24")]


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
    """A class's sound generator; all parameters come from a class-seeded RNG."""

    KINDS = ("harmonic", "band_noise", "clicks", "chirp", "am_tone")

    def __init__(self, rank: int, mid: str, seed: int) -> None:
        rng = np.random.default_rng([seed, zlib.crc32(mid.encode())])
        self.kind = self.KINDS[rank % len(self.KINDS)]
        # Alternate short and long classes so event lengths differ between classes.
        self.length = rng.uniform(0.2, 1.0) if rank % 2 else rng.uniform(2.0, 6.0)
        self.f0 = float(rng.uniform(120, 1500))
        self.f1 = float(self.f0 * rng.uniform(1.5, 4.0))
        self.harmonics = rng.uniform(0.2, 1.0, size=int(rng.integers(2, 7)))
        self.rate = float(rng.uniform(4, 30))
        self.band = np.sort(rng.uniform(200, 6000, size=2))

    def render(self, rng: np.random.Generator, sr: int) -> np.ndarray:
        n = max(int(self.length * rng.uniform(0.8, 1.2) * sr), 16)
        t = np.arange(n) / sr
        if self.kind == "harmonic":
            k = np.arange(1, len(self.harmonics) + 1)[:, None]
            x = (self.harmonics[:, None] / k * np.sin(2 * np.pi * self.f0 * k * t)).sum(0)
        elif self.kind == "band_noise":
            spec = np.fft.rfft(rng.standard_normal(n))
            f = np.fft.rfftfreq(n, 1 / sr)
            x = np.fft.irfft(spec * ((f >= self.band[0]) & (f <= self.band[1])), n)
        elif self.kind == "clicks":
            x = np.zeros(n)
            x[(np.arange(0, t[-1], 1 / self.rate) * sr).astype(int)] = 1.0
            tb = np.arange(int(0.004 * sr)) / sr
            burst = np.exp(-tb / 0.001) * np.sin(2 * np.pi * self.f1 * tb)
            x = np.convolve(x, burst)[:n]
        elif self.kind == "chirp":
            x = np.sin(2 * np.pi * (self.f0 * t + (self.f1 - self.f0) * t**2 / (2 * t[-1])))
        else:
            x = np.sin(2 * np.pi * self.f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * self.rate * t))
        ramp = min(int(0.01 * sr), n // 2)
        env = np.ones(n)
        env[:ramp], env[n - ramp :] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
        return x * env / (np.abs(x).max() + 1e-9)


def make_split(out: Path, split: str, tag: str, label_sets: list[tuple[str, ...]], n: int,
               sounds: dict[str, ClassSound], rng: np.random.Generator) -> tuple[list[dict], list[tuple]]:
    """Write ``n`` clips of one split; returns PSLA datafile entries and strong-label rows."""
    audio_dir = out / "audio" / split
    audio_dir.mkdir(parents=True, exist_ok=True)
    order = np.concatenate([rng.permutation(len(label_sets)) for _ in range(-(-n // len(label_sets)))])[:n]
    entries, strong = [], []
    for i, j in enumerate(order):
        labels = label_sets[j]
        sr, channels, ext, subtype = FORMATS[i % len(FORMATS)]
        seg = f"syn_{tag}_{i + 1:06d}"
        total = int(CLIP_SECONDS * sr)
        x = rng.standard_normal(total) * rng.uniform(0.002, 0.01)
        for mid in labels:
            for _ in range(int(rng.integers(1, 4))):
                ev = sounds[mid].render(rng, sr)[:total] * rng.uniform(0.15, 0.5)
                onset = int(rng.integers(0, total - len(ev) + 1))
                x[onset : onset + len(ev)] += ev
                strong.append((seg, round(onset / sr, 3), round((onset + len(ev)) / sr, 3), mid))
        x /= max(1.0, np.abs(x).max() / 0.95)
        if channels == 2:
            x = np.stack([x, x * rng.uniform(0.5, 1.0)], axis=1)
        sf.write(audio_dir / f"{seg}.{ext}", x.astype(np.float32), sr, subtype=subtype)
        entries.append({"wav": f"audio/{split}/{seg}.{ext}", "labels": ",".join(labels)})
    return entries, strong


def write_strong(path: Path, rows: Iterable[tuple]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["segment_id", "start_time_seconds", "end_time_seconds", "label"])
        w.writerows(rows)


def make_synthetic(out: str | Path, clips: int = 600, eval_clips: int = 200, classes: int = 10,
                   seed: int = 0) -> Vocabulary:
    """Generate the dataset into ``out``; returns the K-class vocabulary."""
    out = Path(out)
    full_vocab = audioset.vocabulary()
    train_sets = audioset.label_sets("balanced_train")
    eval_sets = audioset.label_sets("eval")
    chosen = sorted(choose_classes(train_sets, classes), key=full_vocab.index.__getitem__)
    vocab = Vocabulary(tuple(chosen), tuple(full_vocab.names[full_vocab.index[m]] for m in chosen))
    out.mkdir(parents=True, exist_ok=True)
    vocab.save(out / "class_labels_indices.csv")
    sounds = {m: ClassSound(full_vocab.index[m], m, seed) for m in chosen}
    rng = np.random.default_rng(seed)
    for split, tag, sets, n in (("train", "tr", train_sets, clips), ("eval", "ev", eval_sets, eval_clips)):
        # Project real label sets onto the chosen classes; clips left with no label are dropped.
        projected = [p for p in (tuple(m for m in chosen if m in s) for s in sets) if p]
        entries, strong = make_split(out, split, tag, projected, n, sounds, rng)
        (out / f"{split}.json").write_text(json.dumps({"data": entries}, indent=1) + "\n")
        write_strong(out / f"{split}_strong.tsv", strong)
    return vocab


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.make_synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clips", type=int, default=600, help="training clips")
    p.add_argument("--eval-clips", type=int, default=200)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    vocab = make_synthetic(a.out, a.clips, a.eval_clips, a.classes, a.seed)
    print(f"{a.out}: {a.clips} train + {a.eval_clips} eval clips, {len(vocab)} classes: " + ", ".join(vocab.names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
