"""Feature front-ends: DALI graphs from FLAC bytes to log-mel features, plus a torch tail.

A :class:`FrontEnd` is the one authority on a front-end's features: its mel bins, frames per second,
frames in a clip or a chunk, its DALI graph and torch tail, and what a gain does to its features.

``kaldi_fbank`` (PSLA/AST, :class:`KaldiFbank`) reproduces ``torchaudio.compliance.kaldi.fbank(wave -
wave.mean(), htk_compat=True, use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0,
frame_shift=10)``: remove the clip mean, pre-emphasise, and take the 512-point power spectrum of
400-sample frames with Kaldi's symmetric Hann window (first tap 0, so whole-signal pre-emphasis equals
Kaldi's per-frame pre-emphasis); then Kaldi's mel matrix (triangles linear in mel) as a matmul, exact,
where DALI's own ``mel_filter_bank`` differs (it is not Kaldi's matrix). The one step left out is Kaldi's
per-frame DC removal; it moves mainly the lowest mel bins of near-silent frames, and
tests/test_features.py states the size of that difference.

``mel64`` (PSL/CED, :class:`Mel64`) reproduces ``MelSpectrogram(16000, n_fft=512, hop_length=160,
n_mels=64)`` followed by ``AmplitudeToDB(top_db=120)``. ``mini_mel32`` (:class:`MiniMel32`) is its miniature for
the CPU demo, ``n_mels=32, hop_length=320``: a quarter of the features, no recipe's front-end.

Where each step runs: on a GPU, DALI decodes (and removes the mean) on the CPU and computes the
spectrogram on the device (for mel64 also the mel and dB), and the torch tail the rest on the device.
On a CPU, DALI only decodes to 16-bit samples in its threads and the torch tail does everything else,
on the stream's worker threads: DALI's CPU spectrogram was slower than torch's FFT (benchmarks/NOTES.md).
Waveform mixup (``augment.mixup_domain: waveform``) needs the samples before the features: the training
stream mixes DALI's sample outputs (:meth:`FrontEnd.mix_waveforms`) before the tail, and on a GPU DALI then
decodes as on a CPU and moves the samples to the device, where the same torch tail computes the features.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from trainer.data.audio import SAMPLE_RATE
from trainer.data.settings import FeatureConfig

HOP = 160  # 10 ms at 16 kHz: the recipes' front-ends
_EPS = float(np.finfo(np.float32).eps)
# Clips per step of the CPU tail: a whole batch's frames and spectra fall out of cache and past malloc's
# mmap threshold (page faults on every batch); see benchmarks/NOTES.md, round 1.
_CPU_CHUNK = 4


class FrontEnd(ABC):
    """A front-end resolved from a :class:`FeatureConfig` (:func:`build_frontend`)."""

    name: ClassVar[str]
    num_mels: ClassVar[int]
    frames_per_second: ClassVar[int] = SAMPLE_RATE // HOP
    clip_samples: int

    def frames(self, seconds: float) -> int:
        """Feature frames covering ``seconds`` of audio."""
        return round(seconds * self.frames_per_second)

    @property
    @abstractmethod
    def num_frames(self) -> int:
        """Frames of a clip's features (fixed: clips are cropped or padded to ``clip_samples``)."""

    def graph(self, flac: Any, gpu: bool, waveforms: bool = False) -> tuple[Any, ...]:
        """DALI ops from a batch of FLAC byte arrays to this front-end's DALI outputs, for :meth:`finish`.
        On a CPU, and on a GPU with ``waveforms`` (the samples are mixed before the features), DALI only
        decodes: the outputs are the 16-bit samples cropped or zero-padded to the clip length and what the
        tail needs besides (:meth:`_decode_graph`), on the GPU moved to the device. Otherwise on a GPU, DALI
        computes the spectrogram on the device (:meth:`_device_graph`)."""
        if gpu and not waveforms:
            return self._device_graph(flac)
        outputs = self._decode_graph(flac)
        return tuple(o.gpu() for o in outputs) if gpu else outputs

    @abstractmethod
    def _decode_graph(self, flac: Any) -> tuple[Any, ...]:
        """DALI's decode: the fitted 16-bit samples first, then what :meth:`finish` needs besides."""

    @abstractmethod
    def _device_graph(self, flac: Any) -> tuple[Any, ...]:
        """DALI's GPU graph: decoded on the CPU, the spectrogram (or more) computed on the device."""

    @abstractmethod
    def finish(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The torch tail on the batch's device, from :meth:`graph`'s outputs → B × mel × frames features."""

    @abstractmethod
    def decoded(self, pcm: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What :meth:`_decode_graph` gives for samples decoded outside DALI (the tagger's arrays), for
        :meth:`finish`: ``pcm`` B × clip_samples int16, zero past each clip's ``length`` (B, ≤ clip_samples)."""

    @abstractmethod
    def traceable(self, pcm: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """:meth:`finish` of :meth:`decoded` as one graph of whole-batch tensor ops, without host reads or
        loops over clips, for ONNX export: ``pcm`` B × clip_samples float in 16-bit units, zero past each
        clip's ``length`` (B, float). Equal to finish up to float rounding (tests/test_export.py)."""

    @abstractmethod
    def mix_waveforms(self, outputs: Sequence[torch.Tensor], partner: torch.Tensor,
                      lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Waveform mixup of :meth:`_decode_graph`'s outputs (on any device), as outputs for :meth:`finish`:
        clip i becomes λᵢ·clipᵢ + (1−λᵢ)·clip[partnerᵢ] (``partner`` and ``lam``, float32, on the outputs'
        device); a clip with λᵢ = 1 is not mixed and its features are exactly those without mixup."""

    @abstractmethod
    def gain_offset(self, db: torch.Tensor) -> torch.Tensor:
        """What a gain of ``db`` decibels adds to this front-end's features."""

    def _fit(self, audio: Any) -> Any:
        """Crop or zero-pad to the clip length: fixed shapes per batch."""
        from nvidia.dali import fn

        return fn.slice(audio, 0, self.clip_samples, axes=[0], out_of_bounds_policy="pad", fill_values=0,
                        normalized_anchor=False, normalized_shape=False)

    def _mel(self, power: torch.Tensor) -> torch.Tensor:
        """B × 257 × frames power spectra → B × mel × frames mel energies."""
        return torch.cat([torch.matmul(w, power[:, lo:hi]) for lo, hi, w in _mel_blocks(self, power.device)], dim=1)

    @abstractmethod
    def mel_matrix(self) -> torch.Tensor:
        """The mel × 257 filter bank (CPU, float32)."""


@dataclass(frozen=True)
class KaldiFbank(FrontEnd):
    """PSLA's 128-bin Kaldi fbank, normalised by ``(x − mean) / std`` and padded or cropped to ``target_frames``."""

    clip_samples: int
    target_frames: int = 1056  # PSLA's target_length
    norm_mean: float = -4.6476  # PSLA's AudioSet fbank mean and std
    norm_std: float = 4.5699

    name: ClassVar[str] = "kaldi_fbank"
    num_mels: ClassVar[int] = 128

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> "KaldiFbank":
        return cls(clip_samples=_clip_samples(cfg), target_frames=cfg.target_frames or cls.target_frames,
                   norm_mean=cls.norm_mean if cfg.norm_mean is None else cfg.norm_mean,
                   norm_std=cls.norm_std if cfg.norm_std is None else cfg.norm_std)

    @property
    def num_frames(self) -> int:
        return self.target_frames

    def _decode_graph(self, flac: Any) -> tuple[Any, ...]:
        """The samples, each clip's mean and decoded length (over the whole clip, before the crop)."""
        from nvidia.dali import fn, types

        pcm, _ = fn.decoders.audio(flac, sample_rate=SAMPLE_RATE, downmix=True, dtype=types.INT16)
        return self._fit(pcm), fn.reductions.mean(pcm, dtype=types.FLOAT), pcm.shape()

    def _device_graph(self, flac: Any) -> tuple[Any, ...]:
        """The B × freq × time power spectrogram."""
        from nvidia.dali import fn, types

        audio, _ = fn.decoders.audio(flac, sample_rate=SAMPLE_RATE, downmix=True, dtype=types.FLOAT)
        audio = audio - fn.reductions.mean(audio)  # PSLA removes the clip's mean before fbank
        audio = fn.preemphasis_filter(self._fit(audio).gpu(), preemph_coeff=0.97, border="clamp")
        return (fn.spectrogram(audio, nfft=512, window_length=400, window_step=HOP, center_windows=False,
                               window_fn=self.window("cpu").tolist(), power=2),)

    def finish(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if outputs[0].dim() == 3:  # GPU: the power spectrogram
            return self._normalise(self._log_mel(outputs[0]))
        pcm, mean, length = outputs
        feats = torch.empty(pcm.shape[0], self.num_mels, self.num_frames, device=pcm.device)
        step = _chunk(pcm)
        for i in range(0, pcm.shape[0], step):
            # in 16-bit units (or a mix of them): the window scales
            wave = _kaldi_waveform(pcm[i:i + step], mean[i:i + step], length[i:i + step, 0])
            self._normalise(self._log_mel(self._power_spectrogram(wave)), out=feats[i:i + step])
        return feats

    def decoded(self, pcm: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mean = pcm.double().sum(dim=1).div_(length).float()  # over the decoded samples, as DALI's reduction
        return pcm, mean, length[:, None]

    def traceable(self, pcm: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        wave = _kaldi_waveform(pcm, pcm.sum(dim=1) / length, length, masked=True)
        return self._normalise(self._log_mel(self._power_spectrogram(wave)))

    def mix_waveforms(self, outputs: Sequence[torch.Tensor], partner: torch.Tensor,
                      lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """PSLA's: each clip's mean over its decoded length removed, the clips mixed, and the mix's mean over
        its decoded length (the longer of the two) left for :meth:`finish` to remove. PSLA cuts the partner to
        the clip's own length; here both are fitted to the clip length first, so a longer partner's samples
        past the end of a shorter clip stay in the mix."""
        pcm, mean, length = outputs
        mix = lerp_rows(_centre(pcm, mean, length[:, 0]), partner, lam)  # at λ = 1 exactly the centred clip
        mixed = lam < 1
        mix_length = torch.where(mixed[:, None], torch.maximum(length, length[partner]), length)
        # an unmixed clip is centred already: with a mean of 0 its features are exactly those without mixup
        mix_mean = torch.where(mixed, mix.sum(dim=1) / mix_length[:, 0].clamp(max=pcm.shape[1]), 0.0)
        return mix, mix_mean, mix_length

    def log_mel(self, pcm: torch.Tensor) -> torch.Tensor:
        """One clip's 16-bit samples (any length ≥ 400) → its 128 × frames log-mel, before normalisation
        and padding: what the dataset statistics (tools.shard_stats) are computed over."""
        mean = pcm.double().mean()[None].float()
        wave = _kaldi_waveform(pcm[None], mean, torch.tensor([pcm.shape[0]]))
        return self._log_mel(self._power_spectrogram(wave))[0]

    def _log_mel(self, power: torch.Tensor) -> torch.Tensor:
        return self._mel(power).clamp_(min=_EPS).log_()

    def _normalise(self, logmel: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(log-mel − mean) / std``, cropped or padded to ``target_frames``, into ``out`` if given."""
        if out is None:
            out = torch.empty(logmel.shape[0], self.num_mels, self.num_frames, device=logmel.device)
        t = min(logmel.shape[-1], self.target_frames)
        torch.sub(logmel[..., :t], self.norm_mean, out=out[..., :t]).div_(self.norm_std)
        out[..., t:] = -self.norm_mean / self.norm_std  # PSLA zero-pads the log-mel before normalising
        return out

    def _power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """B × samples in 16-bit units → B × 257 × frames, the spectrum DALI computes on the GPU path from
        float samples: the window carries the 1/32768 (a power of two, so nothing rounds differently)."""
        window = self.window(wave.device) * 2.0 ** -15
        # windowed 400-sample frames zero-padded to 512 in one buffer: cheaper than rfft(n=512) padding them
        frames = wave.unfold(1, 400, HOP)
        padded = torch.empty(*frames.shape[:2], 512, device=wave.device)
        padded[..., 400:] = 0.0
        torch.mul(frames, window, out=padded[..., :400])
        spec = torch.fft.rfft(padded).transpose(1, 2)  # a view: matmul takes it as is
        power = spec.real.square()
        return power.addcmul_(spec.imag, spec.imag)

    def gain_offset(self, db: torch.Tensor) -> torch.Tensor:
        return db * (math.log(10.0) / 10.0) / self.norm_std  # ln of power, then normalised

    @staticmethod
    def window(device: torch.device | str) -> torch.Tensor:
        # Kaldi's "hanning" is the symmetric Hann, 0.5 − 0.5·cos(2πn/(N−1)); torchaudio's STFT uses the periodic one
        return torch.hann_window(400, periodic=False, device=device)

    def mel_matrix(self) -> torch.Tensor:
        """Kaldi's: linear in mel, low 20 Hz, no weight on the Nyquist bin."""
        from torchaudio.compliance.kaldi import get_mel_banks

        banks, _ = get_mel_banks(128, 512, float(SAMPLE_RATE), 20.0, 0.0, 100.0, -500.0, 1.0)
        return torch.nn.functional.pad(banks.float(), (0, 1))


@dataclass(frozen=True)
class Mel64(FrontEnd):
    """PSL's 64-bin log-mel in dB (top 120 dB), one centred frame per 10 ms, no normalisation."""

    clip_samples: int

    name: ClassVar[str] = "mel64"
    num_mels: ClassVar[int] = 64
    hop: ClassVar[int] = HOP

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> "Mel64":
        for key in ("target_frames", "norm_mean", "norm_std"):
            if getattr(cfg, key) is not None:
                raise ValueError(f"{key}: does not apply to the {cls.name} front-end (it keeps every frame of the clip "
                                 f"and is not normalised); remove it")
        return cls(clip_samples=_clip_samples(cfg))

    @property
    def num_frames(self) -> int:
        return 1 + self.clip_samples // self.hop  # centred frames

    def _decode_graph(self, flac: Any) -> tuple[Any, ...]:
        """The samples."""
        from nvidia.dali import fn, types

        pcm, _ = fn.decoders.audio(flac, sample_rate=SAMPLE_RATE, downmix=True, dtype=types.INT16)
        return (self._fit(pcm),)

    def _device_graph(self, flac: Any) -> tuple[Any, ...]:
        """The finished B × mel × time features."""
        import nvidia.dali.math as dmath
        from nvidia.dali import fn, types

        audio, _ = fn.decoders.audio(flac, sample_rate=SAMPLE_RATE, downmix=True, dtype=types.FLOAT)
        spec = fn.spectrogram(self._fit(audio).gpu(), nfft=512, window_length=512, window_step=self.hop,
                              center_windows=True, reflect_padding=True, window_fn=self.window("cpu").tolist(),
                              power=2)
        mel = fn.mel_filter_bank(spec, sample_rate=SAMPLE_RATE, nfilter=self.num_mels, freq_low=0.0, freq_high=SAMPLE_RATE / 2,
                                 mel_formula="htk", normalize=False)
        # to_decibels with a fixed reference: 10·log10(max(x, 1e-10)); DALI's default reference is the max
        db = fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=-100.0)
        return (dmath.max(db, fn.reductions.max(db) - 120.0),)  # AmplitudeToDB's per-clip top_db

    def finish(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if outputs[0].dim() == 3:  # GPU: finished in DALI
            return outputs[0]
        pcm = outputs[0]
        feats = torch.empty(pcm.shape[0], self.num_mels, self.num_frames, device=pcm.device)
        step = _chunk(pcm)
        for i in range(0, pcm.shape[0], step):
            power = self._power_spectrogram(pcm[i:i + step].float())  # in 16-bit units: the window scales
            self._db(self._mel(power), out=feats[i:i + step])
        return feats

    def decoded(self, pcm: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (pcm,)

    def traceable(self, pcm: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        return self._db(self._mel(self._power_spectrogram(pcm)))

    @staticmethod
    def _db(mel: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Mel energies → dB (floor 1e-10), then AmplitudeToDB's per-clip top_db of 120 (into ``out`` if given)."""
        db = mel.clamp_(min=1e-10).log10_().mul_(10.0)
        return torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - 120.0, out=out)

    def mix_waveforms(self, outputs: Sequence[torch.Tensor], partner: torch.Tensor,
                      lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The samples as they are (PSL's front-end removes no mean); at λ = 1 lerp gives the clip exactly."""
        return (lerp_rows(outputs[0].float(), partner, lam),)

    def _power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """As :meth:`KaldiFbank._power_spectrogram`, with torchaudio's centred, reflect-padded STFT."""
        window = self.window(wave.device) * 2.0 ** -15
        spec = torch.stft(wave, 512, self.hop, 512, window, center=True, pad_mode="reflect", return_complex=True)
        power = spec.real.square()
        return power.addcmul_(spec.imag, spec.imag)

    def gain_offset(self, db: torch.Tensor) -> torch.Tensor:
        return db

    @staticmethod
    def window(device: torch.device | str) -> torch.Tensor:
        return torch.hann_window(512, periodic=True, device=device)

    def mel_matrix(self) -> torch.Tensor:
        """torchaudio's HTK filter bank, 0 Hz to Nyquist, not normalised."""
        from torchaudio.functional import melscale_fbanks

        return melscale_fbanks(257, 0.0, SAMPLE_RATE / 2, self.num_mels, SAMPLE_RATE, None, "htk").T


@dataclass(frozen=True)
class MiniMel32(Mel64):
    """mel64 in miniature: 32 bins, one frame per 20 ms, a quarter of the features, so that the demo's models
    train about 4× faster on a CPU (benchmarks/NOTES.md). For the demo, not for a recipe."""

    name: ClassVar[str] = "mini_mel32"
    num_mels: ClassVar[int] = 32
    hop: ClassVar[int] = 2 * HOP
    frames_per_second: ClassVar[int] = SAMPLE_RATE // hop


FRONTENDS: dict[str, type[FrontEnd]] = {cls.name: cls for cls in (KaldiFbank, Mel64, MiniMel32)}


def build_frontend(cfg: FeatureConfig) -> FrontEnd:
    """The front-end ``cfg`` names; ValueError naming the key of an option that does not apply to it."""
    if cfg.frontend not in FRONTENDS:
        raise ValueError(f"frontend: unknown front-end {cfg.frontend!r} (known: {', '.join(FRONTENDS)})")
    return FRONTENDS[cfg.frontend].from_config(cfg)


def _clip_samples(cfg: FeatureConfig) -> int:
    return int(round(cfg.clip_seconds * SAMPLE_RATE))


def lerp_rows(t: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Mixup of a batch's rows (features, labels or samples): row i becomes λᵢ·tᵢ + (1−λᵢ)·t[partnerᵢ], a new
    tensor; ``partner`` and ``lam`` (of ``t``'s dtype) on ``t``'s device."""
    # lerp(a, b, w) = a + w·(b − a), exactly b at w = 1: one pass over the gathered partners
    return t[partner].lerp_(t, lam.view(-1, *[1] * (t.dim() - 1)))


def _chunk(pcm: torch.Tensor) -> int:
    """Clips per step of the tail: a few on a CPU (see _CPU_CHUNK), the whole batch in one go on a GPU."""
    return _CPU_CHUNK if pcm.device.type == "cpu" else max(1, pcm.shape[0])


def _centre(pcm: torch.Tensor, mean: torch.Tensor, length: torch.Tensor, masked: bool = False) -> torch.Tensor:
    """PSLA's ``wave − wave.mean()`` over each clip's first ``length`` samples, the zero padding left 0, as a
    new float tensor. ``masked``: by a mask on any device (a graph to export has no loop over clips)."""
    wave = pcm.to(torch.float32, copy=True).sub_(mean[:, None])
    if masked or wave.device.type != "cpu":  # a mask: slicing by the lengths would read them back from the device
        return wave.masked_fill_(torch.arange(wave.shape[1], device=wave.device) >= length[:, None], 0.0)
    for row, n in enumerate(length.tolist()):  # on a CPU several times cheaper than building the mask
        wave[row, n:] = 0.0
    return wave


def _kaldi_waveform(pcm: torch.Tensor, mean: torch.Tensor, length: torch.Tensor, masked: bool = False) -> torch.Tensor:
    """:func:`_centre`, then Kaldi's pre-emphasis, y[t] = x[t] − 0.97·x[t−1] with x[−1] = x[0] (the first
    window tap is 0, so this whole-signal filter equals Kaldi's per-frame one)."""
    wave = _centre(pcm, mean, length, masked)
    out = torch.empty_like(wave)
    torch.mul(wave[:, :-1], 0.97, out=out[:, 1:])  # rounded before the subtraction, as Kaldi (no fused a − αb)
    torch.sub(wave[:, 1:], out[:, 1:], out=out[:, 1:])
    torch.mul(wave[:, 0], 0.03, out=out[:, 0])
    return out


_MEL_BLOCK = 16  # filters per block of _mel_blocks
_BLOCK_CACHE: dict[tuple[str, torch.device], list[tuple[int, int, torch.Tensor]]] = {}


def _mel_blocks(frontend: FrontEnd, device: torch.device) -> list[tuple[int, int, torch.Tensor]]:
    """The mel matrix as (lo, hi, rows[:, lo:hi]) blocks of consecutive filters: triangles are narrow, so the
    blocks hold a fraction of the dense matrix's entries and the matmul runs several times faster. Only
    zeros are left out: the sums are the dense ones up to float rounding. The blocks are found on the host
    (the filter bank is a CPU tensor) and only then copied to ``device``: no read back from a GPU."""
    key = (frontend.name, device)
    if key not in _BLOCK_CACHE:
        m = frontend.mel_matrix().cpu()
        blocks = []
        for r in range(0, m.shape[0], _MEL_BLOCK):
            rows = m[r:r + _MEL_BLOCK]
            nz = torch.nonzero(rows.abs().sum(0)).flatten().tolist()
            lo, hi = (nz[0], nz[-1] + 1) if nz else (0, 0)
            blocks.append((lo, hi, rows[:, lo:hi].contiguous().to(device)))
        _BLOCK_CACHE[key] = blocks
    return _BLOCK_CACHE[key]
