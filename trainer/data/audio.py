"""Audio files → 16 kHz mono samples → PCM16 FLAC: the one decode path of the shard builder and predict.

Everything goes through libsndfile (soundfile), so any format it reads works: WAV (PCM, 24-bit,
float), FLAC, OGG/Vorbis, MP3. Samples are stored as 16 kHz mono PCM16 FLAC, which is lossless, so a
reader decodes exactly the int16 samples that were written. Predict encodes its inputs with the same
functions so the front-end sees them exactly as it saw the training shards.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000  # the shard format's rate; the front-ends in trainer.data.features assume it too


class AudioError(ValueError):
    """The file could not be decoded; the message names the file."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate`` (channel mean, soxr 'VHQ' resampling)."""
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: cannot decode audio: {e}") from None
    if x.size and not np.isfinite(x).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    x = x.mean(axis=1)
    if sr != sample_rate and x.size:
        x = soxr.resample(x, sr, sample_rate, quality="VHQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] to int16, clipping (resampling can overshoot full scale slightly)."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def encode_flac(pcm16: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode mono int16 samples as a FLAC PCM16 file in memory."""
    buf = io.BytesIO()
    sf.write(buf, pcm16, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
