"""Writes tiny valid shard sets for the data tests, independent of tools/build_shards.py."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from trainer.data.manifest import Vocabulary, write_manifest
from trainer.data.records import ShardRecord

SR = 16000


def realistic_audio(seed: int, seconds: float, sr: int = SR) -> np.ndarray:
    """Harmonics with a drifting pitch, white noise and silence gaps, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(100, 400) * (1 + 0.05 * np.sin(2 * np.pi * 0.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(rng.uniform(0.05, 0.3) / k * np.sin(k * phase) for k in range(1, 9))
    wave = wave + rng.uniform(0.005, 0.05) * rng.standard_normal(t.size) + rng.uniform(-0.02, 0.02)
    for _ in range(2):  # silence gaps
        a = rng.integers(0, max(1, t.size - sr // 2))
        wave[a:a + rng.integers(sr // 10, sr // 2)] = 0.0
    return np.clip(wave * 0.8, -1, 1).astype(np.float32)


def flac_bytes(wave: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def make_dataset(root: Path, n: int = 24, num_shards: int = 3, num_classes: int = 5, seconds: float = 2.0,
                 prefix: str = "ds", corrupt: tuple[str, ...] = (), seed: int = 0) -> list[ShardRecord]:
    """Write ``root`` as a built dataset: tar shards + .idx, manifest.jsonl, vocabulary, dataset.json."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for s in range(num_shards):
        shard = f"{prefix}-{s:06d}.tar"
        idx_lines = []
        with tarfile.open(root / shard, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(s, n, num_shards):
                key = f"{prefix}{i:05d}"
                dur = float(seconds * rng.uniform(0.6, 1.2))
                data = flac_bytes(realistic_audio(seed * 100003 + i, dur))
                if key in corrupt:  # keep the header, scramble the frames
                    data = data[:200] + bytes(rng.integers(0, 256, len(data) - 200, dtype=np.uint8))
                labels = tuple(sorted({int(x) for x in rng.integers(0, num_classes, rng.integers(1, 3))}))
                meta = json.dumps({"labels": list(labels)}).encode()
                for ext, payload in (("flac", data), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                    idx_lines.append((key, ext, len(payload)))
                records.append(ShardRecord(key, shard, 0, len(data), labels, dur, float(rng.uniform(0.2, 2.0))))
        with tarfile.open(root / shard) as tar:  # the data offsets tarfile actually wrote
            offsets = {m.name: m.offset_data for m in tar.getmembers()}
        records = [r if r.shard != shard else ShardRecord(r.key, r.shard, offsets[f"{r.key}.flac"], r.size,
                                                          r.labels, r.duration, r.weight) for r in records]
        (root / f"{shard}.idx").write_text(
            f"v1.2 {len(idx_lines) // 2}\n" + "".join(
                f"{ext} {offsets[f'{k}.{ext}'] - 512} {size} {k}.{ext}\n" for k, ext, size in idx_lines))
    write_manifest(root / "manifest.jsonl", records)
    Vocabulary(tuple(f"/m/{c}" for c in range(num_classes)), tuple(f"class {c}" for c in range(num_classes))
               ).save(root / "class_labels_indices.csv")
    (root / "dataset.json").write_text(json.dumps({"feature_stats": {"kaldi_fbank": {"mean": -5.0, "std": 4.0}}}))
    return records


def write_stereo_tone(path: Path, rng: np.random.Generator, seconds: float = 3.0, rate: int = 44100) -> Path:
    """A float WAV at 44.1 kHz, two channels (a 440 Hz tone and noise): what predict and the tagger mix down and
    resample as the builder does."""
    t = np.arange(int(rate * seconds)) / rate
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.1 * rng.standard_normal(t.size)], axis=1)
    sf.write(path, stereo.astype(np.float32), rate, subtype="FLOAT")
    return path
