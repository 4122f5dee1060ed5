"""Audio decoding, downmix, resampling and FLAC encoding for the shard builder.

Everything goes through libsndfile (soundfile), so any format it reads works: WAV (PCM, 24-bit,
float), FLAC, OGG/Vorbis, MP3. Samples are stored as 16 kHz mono PCM16 FLAC, which is lossless, so a
reader decodes exactly the int16 samples the builder wrote.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf")


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


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """Decode FLAC bytes to int16 samples (mono: 1-D) and the sample rate."""
    x, sr = sf.read(io.BytesIO(data), dtype="int16")
    return x, sr


def flac_md5_matches(data: bytes, pcm16: np.ndarray) -> bool:
    """Check decoded samples against the MD5 the FLAC encoder stored in STREAMINFO.

    libsndfile does not verify it itself, and a flipped bit in a frame can decode silently to wrong
    samples; an all-zero MD5 means the encoder did not compute one, which we accept.
    """
    stored = data[26:42]  # 'fLaC' + 4-byte block header + STREAMINFO, whose last 16 bytes are the MD5
    if data[:4] != b"fLaC" or len(stored) != 16:
        return False
    if stored == bytes(16):
        return True
    return hashlib.md5(np.ascontiguousarray(pcm16, dtype="<i2").tobytes()).digest() == stored
