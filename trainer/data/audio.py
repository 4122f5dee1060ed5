"""Audio files → 16 kHz mono samples → PCM16 FLAC: the one decode path of the shard builder and predict.

Everything goes through libsndfile (soundfile), so any format it reads works: WAV (PCM, 24-bit,
float), FLAC, OGG/Vorbis, MP3. Samples are stored as 16 kHz mono PCM16 FLAC, which is lossless, so a
reader decodes exactly the int16 samples that were written. Predict encodes its inputs with the same
functions so the front-end sees them exactly as it saw the training shards.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000  # the shard format's rate; the front-ends in trainer.data.features assume it too
# Below this a header is damaged or lying (a WAV claiming 1 Hz turned 844 bytes into 400 s at 16 kHz): refused
# before decoding, which also bounds resampling's growth to 16000 / 4000 = 4x the decoded frames.
MIN_SOURCE_RATE = 4000
_BLOCK_FRAMES = 1 << 16  # iter_windows' decode block


class AudioError(ValueError):
    """The file could not be decoded; the message names the file."""


class SampleRateTooLow(AudioError):
    """The header's sample rate is below :data:`MIN_SOURCE_RATE`."""


class AudioTooLong(AudioError):
    """The file is longer than the caller's ``max_seconds``."""


def _open(path: str | Path) -> sf.SoundFile:
    """``path`` opened for reading, its header checked (nothing decoded yet)."""
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: cannot decode audio: {e}") from None
    if f.samplerate < MIN_SOURCE_RATE:
        f.close()
        raise SampleRateTooLow(f"{path}: sample rate {f.samplerate} Hz in the header is below {MIN_SOURCE_RATE} Hz "
                               "(a damaged header?)")
    return f


def _read(f: sf.SoundFile, path: str | Path, frames: int) -> np.ndarray:
    """Up to ``frames`` frames (-1: all) of ``f`` as float32 mono (channel mean), checked finite."""
    try:
        x = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: cannot decode audio: {e}") from None
    if x.size and not np.isfinite(x).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return x.mean(axis=1)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate`` (channel mean, soxr 'VHQ' resampling).

    Raises :class:`SampleRateTooLow` for a header below :data:`MIN_SOURCE_RATE` and, with ``max_seconds``,
    :class:`AudioTooLong` for a file longer than that, both before decoding more than ``max_seconds`` of it (a
    header that understates the length is caught by reading one frame past the limit)."""
    with _open(path) as f:
        sr, limit = f.samplerate, -1 if max_seconds is None else int(max_seconds * f.samplerate)
        if limit >= 0 and f.frames > limit:
            raise AudioTooLong(f"{path}: {f.frames / sr:.1f} s long, above the limit of {max_seconds:g} s")
        x = _read(f, path, -1 if limit < 0 else limit + 1)
        if limit >= 0 and len(x) > limit:
            raise AudioTooLong(f"{path}: longer than its header says, above the limit of {max_seconds:g} s")
    return _to_rate(x, sr, sample_rate)


def from_array(x: np.ndarray, sample_rate: int, source: str = "array", max_seconds: float | None = None
               ) -> np.ndarray:
    """Samples or samples × channels (soundfile's layout; integers are full-scale PCM) at ``sample_rate`` →
    float32 mono at :data:`SAMPLE_RATE` by :func:`load_audio`'s rule (channel mean, soxr 'VHQ'), with the same
    checks; errors name ``source``."""
    if x.ndim not in (1, 2):
        raise AudioError(f"{source}: expected samples or samples × channels, got shape {x.shape}")
    if sample_rate < MIN_SOURCE_RATE:
        raise SampleRateTooLow(f"{source}: sample rate {sample_rate} Hz is below {MIN_SOURCE_RATE} Hz")
    if max_seconds is not None and len(x) > max_seconds * sample_rate:
        raise AudioTooLong(f"{source}: {len(x) / sample_rate:.1f} s long, above the limit of {max_seconds:g} s")
    if np.issubdtype(x.dtype, np.integer):
        x = x / float(np.iinfo(x.dtype).max + 1)
    x = np.asarray(x, dtype=np.float32)
    if x.size and not np.isfinite(x).all():
        raise AudioError(f"{source}: audio contains NaN or infinite samples")
    return _to_rate(x.mean(axis=1) if x.ndim == 2 else x, sample_rate, SAMPLE_RATE)


def _to_rate(x: np.ndarray, sr: int, sample_rate: int) -> np.ndarray:
    if sr != sample_rate and x.size:
        x = soxr.resample(x, sr, sample_rate, quality="VHQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def iter_windows(path: str | Path, seconds: float, hop: float | None = None, sample_rate: int = SAMPLE_RATE
                 ) -> Iterator[tuple[float, np.ndarray]]:
    """``(start in seconds, float32 mono samples at sample_rate)`` for windows of ``path`` starting at 0, ``hop``,
    2 ``hop``... (``hop`` defaults to ``seconds``), ending with the first window that reaches the end of the file:
    every window is ``seconds`` long except that last one, which may be shorter (a file of no samples gives one
    empty window). The file is decoded in blocks and resampled as a stream, so memory stays a few windows' worth
    however long the file is; the samples are those :func:`load_audio` returns. The header is checked as there."""
    hop = seconds if hop is None else hop
    if not 0 < hop <= seconds:
        raise ValueError(f"iter_windows: need 0 < hop <= seconds, got hop {hop} and seconds {seconds}")
    size, step = round(seconds * sample_rate), round(hop * sample_rate)
    if size < 1 or step < 1:
        raise ValueError(f"iter_windows: windows of {seconds} s with hop {hop} s are shorter than a sample")
    with _open(path) as f:
        stream = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="VHQ") \
            if f.samplerate != sample_rate else None
        buf, start, last = np.zeros(0, np.float32), 0, False  # buf holds samples from ``start`` on
        while not last:
            x = _read(f, path, _BLOCK_FRAMES)
            last = len(x) < _BLOCK_FRAMES
            if stream is not None:
                x = stream.resample_chunk(x, last=last)
            buf = np.concatenate([buf, x.astype(np.float32, copy=False)])
            while len(buf) > size:  # samples beyond this window: it is not the last
                yield start / sample_rate, buf[:size].copy()
                buf, start = buf[step:], start + step
        yield start / sample_rate, buf.copy()  # from ``start`` to the end (empty for a file of no samples)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] to int16, clipping (resampling can overshoot full scale slightly)."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def encode_flac(pcm16: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode mono int16 samples as a FLAC PCM16 file in memory."""
    buf = io.BytesIO()
    sf.write(buf, pcm16, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
