"""Dataset statistics: class histogram, durations, and the log-mel mean/std used to normalise inputs.

    python -m tools.shard_stats shards/NAME [--max-samples 2000]

The feature statistics are PSLA's dataset_mean/std: Kaldi fbank (128 bins, 10 ms hop, Hanning
window, HTK-compatible, no energy, no dither) on mean-removed waveforms, over a deterministic subset
of clips. They are stored in dataset.json as "feature_stats": {"kaldi_fbank": {"mean", "std"}}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torchaudio

from tools.audio_io import SAMPLE_RATE, decode_flac
from trainer.data.manifest import DATASET_INFO, VOCABULARY, ShardRecord, Vocabulary, read_manifest


def fbank_stats(dataset_dir: Path, records: list[ShardRecord], max_samples: int, seed: int = 0) -> dict:
    """Mean and std of every fbank value over up to ``max_samples`` clips chosen with ``seed``."""
    if len(records) > max_samples:
        records = [records[i] for i in sorted(np.random.default_rng(seed).choice(len(records), max_samples, False))]
    total, total_sq, count = 0.0, 0.0, 0
    for r in records:
        with open(dataset_dir / r.shard, "rb") as f:
            f.seek(r.offset)
            pcm, _ = decode_flac(f.read(r.size))
        wave = torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None]
        if wave.shape[1] < 400:  # shorter than one 25 ms frame: no fbank frame
            continue
        fb = torchaudio.compliance.kaldi.fbank(
            wave - wave.mean(), htk_compat=True, sample_frequency=SAMPLE_RATE, use_energy=False,
            window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10).double()
        total, total_sq, count = total + fb.sum().item(), total_sq + (fb * fb).sum().item(), count + fb.numel()
    if not count:
        raise ValueError(f"{dataset_dir}: no clip long enough for fbank statistics")
    mean = total / count
    return {"mean": mean, "std": float(np.sqrt(max(total_sq / count - mean * mean, 0.0))), "num_clips": len(records)}


def shard_stats(dataset_dir: str | Path, max_samples: int = 2000) -> dict:
    """Compute the statistics, store the feature stats in dataset.json and return everything."""
    d = Path(dataset_dir)
    records = read_manifest(d)
    vocab = Vocabulary.load(d / VOCABULARY)
    counts = np.zeros(len(vocab), dtype=int)
    for r in records:
        counts[list(r.labels)] += 1
    durations = np.array([r.duration for r in records])
    feats = fbank_stats(d, records, max_samples)
    info_path = d / DATASET_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info["feature_stats"] = {"kaldi_fbank": feats}
    tmp = info_path.with_name(info_path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    tmp.replace(info_path)
    return {"class_counts": counts.tolist(), "names": list(vocab.names), "num_clips": len(records),
            "duration": {"min": float(durations.min()), "mean": float(durations.mean()),
                         "max": float(durations.max()), "hours": float(durations.sum() / 3600)},
            "kaldi_fbank": feats}


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.shard_stats", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--max-samples", type=int, default=2000, help="clips used for the fbank mean/std")
    p.add_argument("--top", type=int, default=20, help="classes shown in the histogram")
    a = p.parse_args(argv)
    try:
        s = shard_stats(a.dataset, a.max_samples)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'class':>5}  {'clips':>6}  name")
    for c in np.argsort(-np.array(s["class_counts"]), kind="stable")[: a.top]:
        print(f"{c:>5}  {s['class_counts'][c]:>6}  {s['names'][c]}")
    dur, fb = s["duration"], s["kaldi_fbank"]
    print(f"{s['num_clips']} clips, {dur['hours']:.2f} h; duration min/mean/max {dur['min']:.2f}/{dur['mean']:.2f}/"
          f"{dur['max']:.2f} s")
    print(f"kaldi_fbank mean {fb['mean']:.4f} std {fb['std']:.4f} over {fb['num_clips']} clips "
          f"(written to {a.dataset / DATASET_INFO})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
