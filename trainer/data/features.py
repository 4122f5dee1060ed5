"""Feature front-ends: DALI graphs from FLAC bytes to log-mel features, plus a torch tail.

``kaldi_fbank`` (PSLA/AST) reproduces ``torchaudio.compliance.kaldi.fbank(wave - wave.mean(),
htk_compat=True, use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)``:
remove the clip mean, pre-emphasise, and take the 512-point power spectrum of 400-sample frames with
Kaldi's symmetric Hann window (first tap 0, so whole-signal pre-emphasis equals Kaldi's per-frame
pre-emphasis); then Kaldi's mel matrix (triangles linear in mel) as a matmul, exact (≈1e-8 mean vs
Kaldi without DC removal), where DALI's own ``mel_filter_bank`` is off by ≈2e-3 mean / 1e-2 max (log
units). The one step left out is Kaldi's per-frame DC removal; it moves mainly the lowest mel bins of
near-silent frames, and tests/test_features.py states the size of that difference.

``mel64`` (PSL/CED) reproduces ``MelSpectrogram(16000, n_fft=512, hop_length=160, n_mels=64)`` followed
by ``AmplitudeToDB(top_db=120)``.

Where each step runs: on a GPU, DALI decodes (and removes the mean) on the CPU and computes the
spectrogram on the device (for mel64 also the mel and dB), and the torch tail the rest on the device.
On a CPU, DALI only decodes to 16-bit samples in its threads and the torch tail does everything else,
on the stream's worker threads (see :meth:`FrontEnd.graph` for why).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from trainer.config import FeatureConfig

SAMPLE_RATE = 16000
HOP = 160  # 10 ms at 16 kHz, both front-ends
KALDI_DEFAULT_NORM = (-4.6476, 4.5699)  # PSLA's AudioSet fbank mean and std
KALDI_DEFAULT_FRAMES = 1056  # PSLA's target_length
_EPS = float(np.finfo(np.float32).eps)
_DIMS = {"kaldi_fbank": 128, "mel64": 64}
_CPU_CHUNK = 4  # clips per step of the CPU torch tail (see FrontEnd.finish)


def frames_per_second(frontend: str) -> int:
    _check(frontend)
    return SAMPLE_RATE // HOP


def feature_dim(frontend: str) -> int:
    _check(frontend)
    return _DIMS[frontend]


def _check(frontend: str) -> None:
    if frontend not in _DIMS:
        raise ValueError(f"unknown front-end {frontend!r} (known: {', '.join(_DIMS)})")


@dataclass(frozen=True)
class FrontEnd:
    """One front-end, resolved from a :class:`FeatureConfig`: the DALI graph and its torch tail."""

    frontend: str
    clip_samples: int
    target_frames: int | None  # kaldi_fbank only
    norm_mean: float
    norm_std: float

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> "FrontEnd":
        _check(cfg.frontend)
        kaldi = cfg.frontend == "kaldi_fbank"
        mean, std = KALDI_DEFAULT_NORM if kaldi else (0.0, 1.0)
        return cls(
            frontend=cfg.frontend,
            clip_samples=int(round(cfg.clip_seconds * SAMPLE_RATE)),
            target_frames=(cfg.target_frames or KALDI_DEFAULT_FRAMES) if kaldi else None,
            norm_mean=mean if cfg.norm_mean is None else cfg.norm_mean,
            norm_std=std if cfg.norm_std is None else cfg.norm_std,
        )

    @property
    def num_frames(self) -> int:
        if self.target_frames is not None:
            return self.target_frames
        return 1 + self.clip_samples // HOP  # centred frames

    @property
    def num_mels(self) -> int:
        return _DIMS[self.frontend]

    def graph(self, flac: Any, gpu: bool) -> tuple[Any, ...]:
        """DALI ops from a batch of FLAC byte arrays to the front-end's DALI outputs, for :meth:`finish`.

        GPU: one output, the B × freq × time spectrogram (kaldi_fbank) or finished features (mel64).
        CPU: DALI only decodes; its outputs are the 16-bit samples cropped or zero-padded to the clip
        length and, for kaldi_fbank, each clip's mean and decoded length, and the torch tail does the rest.
        DALI's CPU spectrogram ran at ~130 clips/s per thread here, torch's FFT at ~700, and DALI's
        per-sample float conversion, mean removal and pre-emphasis cost 0.55 ms of its 1.85 ms per clip.
        """
        from nvidia.dali import fn, types

        if not gpu:
            pcm, _ = fn.decoders.audio(flac, sample_rate=SAMPLE_RATE, downmix=True, dtype=types.INT16)
            fitted = self._fit(pcm)
            if self.frontend == "mel64":
                return (fitted,)
            return fitted, fn.reductions.mean(pcm, dtype=types.FLOAT), pcm.shape()
        audio, _ = fn.decoders.audio(flac, sample_rate=SAMPLE_RATE, downmix=True, dtype=types.FLOAT)
        if self.frontend == "kaldi_fbank":
            audio = audio - fn.reductions.mean(audio)  # PSLA removes the clip's mean before fbank
        audio = self._fit(audio).gpu()
        if self.frontend == "kaldi_fbank":
            audio = fn.preemphasis_filter(audio, preemph_coeff=0.97, border="clamp")
            return (fn.spectrogram(audio, nfft=512, window_length=400, window_step=HOP, center_windows=False,
                                   window_fn=_window(self.frontend, "cpu").tolist(), power=2),)
        import nvidia.dali.math as dmath

        spec = fn.spectrogram(audio, nfft=512, window_length=512, window_step=HOP, center_windows=True,
                              reflect_padding=True, window_fn=_window(self.frontend, "cpu").tolist(), power=2)
        mel = fn.mel_filter_bank(spec, sample_rate=SAMPLE_RATE, nfilter=64, freq_low=0.0, freq_high=SAMPLE_RATE / 2,
                                 mel_formula="htk", normalize=False)
        # to_decibels with a fixed reference: 10·log10(max(x, 1e-10)); DALI's default reference is the max
        db = fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=-100.0)
        return (dmath.max(db, fn.reductions.max(db) - 120.0),)  # AmplitudeToDB's per-clip top_db

    def _fit(self, audio: Any) -> Any:
        """Crop or zero-pad to the clip length: fixed shapes per batch."""
        from nvidia.dali import fn

        return fn.slice(audio, 0, self.clip_samples, axes=[0], out_of_bounds_policy="pad", fill_values=0,
                        normalized_anchor=False, normalized_shape=False)

    def finish(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The torch tail on the batch's device, from :meth:`graph`'s outputs → B × mel × frames features."""
        if outputs[0].dim() == 3:  # GPU
            return outputs[0] if self.frontend == "mel64" else self._from_power(outputs[0])
        pcm = outputs[0]
        feats = torch.empty(pcm.shape[0], self.num_mels, self.num_frames)
        # A few clips at a time: a whole batch's frames and spectra (30+ MB) fall out of cache and past
        # malloc's mmap threshold (page faults on every batch); chunks of 4 ran ~2× faster on 1 thread.
        for i in range(0, pcm.shape[0], _CPU_CHUNK):
            wave = pcm[i:i + _CPU_CHUNK].float()  # in 16-bit units: _power_spectrogram's window scales
            if self.frontend == "kaldi_fbank":
                wave = _kaldi_waveform(wave, outputs[1][i:i + _CPU_CHUNK], outputs[2][i:i + _CPU_CHUNK, 0])
            self._from_power(self._power_spectrogram(wave), out=feats[i:i + _CPU_CHUNK])
        return feats

    def _from_power(self, power: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """B × 257 × frames power spectra → B × mel × frames features, into ``out`` if given."""
        mel = torch.cat([torch.matmul(w, power[:, lo:hi]) for lo, hi, w in _mel_blocks(self.frontend, power.device)],
                        dim=1)
        if out is None:
            out = torch.empty(mel.shape[0], self.num_mels, self.num_frames, device=mel.device)
        if self.frontend == "mel64":
            db = mel.clamp_(min=1e-10).log10_().mul_(10.0)
            return torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - 120.0, out=out)
        logmel = mel.clamp_(min=_EPS).log_()
        t = min(logmel.shape[-1], self.target_frames)
        torch.sub(logmel[..., :t], self.norm_mean, out=out[..., :t]).div_(self.norm_std)
        out[..., t:] = -self.norm_mean / self.norm_std  # PSLA zero-pads the log-mel before normalising
        return out

    def _power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """B × samples in 16-bit units → B × 257 × frames, the spectrum DALI computes on the GPU path from
        float samples: the window carries the 1/32768 (a power of two, so nothing rounds differently)."""
        window = _window(self.frontend, wave.device) * 2.0 ** -15
        if self.frontend == "mel64":
            spec = torch.stft(wave, 512, HOP, 512, window, center=True, pad_mode="reflect", return_complex=True)
        else:
            # windowed 400-sample frames zero-padded to 512 in one buffer: rfft(n=512) padding them itself
            # took 0.53 ms a clip, against 0.36 for this
            frames = wave.unfold(1, 400, HOP)
            padded = torch.empty(*frames.shape[:2], 512, device=wave.device)
            padded[..., 400:] = 0.0
            torch.mul(frames, window, out=padded[..., :400])
            spec = torch.fft.rfft(padded).transpose(1, 2)  # a view: matmul takes it as is
        power = spec.real.square()
        return power.addcmul_(spec.imag, spec.imag)

    def gain_offset(self, db: torch.Tensor) -> torch.Tensor:
        """What a gain of ``db`` decibels adds to this front-end's (normalised) features."""
        if self.frontend == "mel64":
            return db
        return db * (math.log(10.0) / 10.0) / self.norm_std  # ln of power, then normalised


def _kaldi_waveform(wave: torch.Tensor, mean: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """PSLA's ``wave − wave.mean()`` over each clip's decoded samples (the zero padding stays 0), then
    Kaldi's pre-emphasis, y[t] = x[t] − 0.97·x[t−1] with x[−1] = x[0] (the first window tap is 0, so this
    whole-signal filter equals Kaldi's per-frame one)."""
    for row, (m, n) in enumerate(zip(mean.tolist(), length.tolist())):
        wave[row, :n].sub_(m)
    out = torch.empty_like(wave)
    torch.mul(wave[:, :-1], 0.97, out=out[:, 1:])  # rounded before the subtraction, as Kaldi (no fused a − αb)
    torch.sub(wave[:, 1:], out[:, 1:], out=out[:, 1:])
    torch.mul(wave[:, 0], 0.03, out=out[:, 0])
    return out


def _window(frontend: str, device: torch.device | str) -> torch.Tensor:
    # Kaldi's "hanning" is the symmetric Hann, 0.5 − 0.5·cos(2πn/(N−1)); torchaudio's STFT uses the periodic one
    if frontend == "kaldi_fbank":
        return torch.hann_window(400, periodic=False, device=device)
    return torch.hann_window(512, periodic=True, device=device)


_MEL_CACHE: dict[tuple[str, torch.device], torch.Tensor] = {}


def _mel_matrix(frontend: str, device: torch.device) -> torch.Tensor:
    """mel × 257 filter bank: Kaldi's (linear in mel, low 20 Hz, no Nyquist weight) or torchaudio's HTK."""
    if (frontend, device) not in _MEL_CACHE:
        if frontend == "kaldi_fbank":
            from torchaudio.compliance.kaldi import get_mel_banks

            banks, _ = get_mel_banks(128, 512, float(SAMPLE_RATE), 20.0, 0.0, 100.0, -500.0, 1.0)
            banks = torch.nn.functional.pad(banks.float(), (0, 1))
        else:
            from torchaudio.functional import melscale_fbanks

            banks = melscale_fbanks(257, 0.0, SAMPLE_RATE / 2, 64, SAMPLE_RATE, None, "htk").T
        _MEL_CACHE[(frontend, device)] = banks.contiguous().to(device)
    return _MEL_CACHE[(frontend, device)]


_MEL_BLOCK = 16  # filters per block of _mel_blocks
_BLOCK_CACHE: dict[tuple[str, torch.device], list[tuple[int, int, torch.Tensor]]] = {}


def _mel_blocks(frontend: str, device: torch.device) -> list[tuple[int, int, torch.Tensor]]:
    """The mel matrix as (lo, hi, rows[:, lo:hi]) blocks of consecutive filters: triangles are narrow, so the
    blocks hold 13% (kaldi) / 26% (mel64) of the dense matrix's entries and the matmul runs 3–5× faster.
    Only zeros are left out: the sums are the dense ones up to float rounding."""
    if (frontend, device) not in _BLOCK_CACHE:
        m = _mel_matrix(frontend, device)
        blocks = []
        for r in range(0, m.shape[0], _MEL_BLOCK):
            rows = m[r:r + _MEL_BLOCK]
            nz = torch.nonzero(rows.abs().sum(0)).flatten().tolist()
            lo, hi = (nz[0], nz[-1] + 1) if nz else (0, 0)
            blocks.append((lo, hi, rows[:, lo:hi].contiguous()))
        _BLOCK_CACHE[(frontend, device)] = blocks
    return _BLOCK_CACHE[(frontend, device)]
