"""FLAC helpers of the shard tools, and the audio API they share with the trainer.

Decoding, downmix, resampling and FLAC encoding live in :mod:`trainer.data.audio` (predict needs the
same path) and are re-exported here for the tools; what only the tools need (reading shards back,
checking FLAC MD5s, the extensions a source scan accepts) stays here.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import soundfile as sf

from trainer.data.audio import SAMPLE_RATE, AudioError, encode_flac, load_audio, to_pcm16

__all__ = ["SAMPLE_RATE", "AUDIO_EXTENSIONS", "AudioError", "load_audio", "to_pcm16", "encode_flac",
           "decode_flac", "flac_md5_matches"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf")


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
