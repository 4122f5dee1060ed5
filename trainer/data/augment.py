"""Training augmentation of a batch, on the batch's device.

Every random number of a batch comes from the generator the stream passes in, seeded by (seed, epoch, step,
rank) and drawn on the host (a few per clip), so a resumed run reproduces the same augmentation on any device.

Mixup (``mixup_domain``): ``waveform`` mixes the batch's decoded waveforms before the front-end computes
the features, as PSLA does (:meth:`Augmenter.mix_waveforms`; how a front-end's samples mix, e.g. PSLA's mean
removal, is the front-end's :meth:`FrontEnd.mix_waveforms`); ``features`` mixes the (log-mel) features
after it, a cheaper approximation (the log of a mixed spectrum is not the mix of the logs). Either way the
partners come from the same batch (PSLA draws them from the whole dataset), so nothing is decoded twice.
SpecAugment masks are filled with 0, the normalised features' mean (PSLA masks before normalising).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from trainer.data.features import FrontEnd, lerp_rows
from trainer.data.settings import AugmentConfig


class Augmenter:
    def __init__(self, cfg: AugmentConfig, frontend: FrontEnd) -> None:
        self.cfg = cfg
        self.frontend = frontend

    @property
    def active(self) -> bool:
        c = self.cfg
        return any(v > 0 for v in (c.freqm, c.timem, c.mixup, c.batch_mixup_alpha, c.time_shift, c.gain_db))

    @property
    def mixes_waveforms(self) -> bool:
        """Whether mixup mixes the decoded waveforms (:meth:`mix_waveforms`) rather than the features."""
        return self.cfg.mixup > 0 and self.cfg.mixup_domain == "waveform"

    def mix_waveforms(self, outputs: Sequence[torch.Tensor], y: torch.Tensor,
                      rng: np.random.Generator) -> tuple[Sequence[torch.Tensor], torch.Tensor]:
        """Waveform mixup of a batch's DALI outputs (before the front-end's :meth:`FrontEnd.finish`) and of
        its labels ``y`` (B × C) with the same λ, drawn from ``rng`` before :meth:`__call__`'s draws; in
        the features domain the outputs and labels as they are, and nothing drawn."""
        if not self.mixes_waveforms or y.shape[0] == 0:
            return outputs, y
        partner, lam = self._mixup_draws(rng, y.shape[0])
        p, w = to_device(partner, y.device, torch.long), to_device(lam, y.device, torch.float32)
        return self.frontend.mix_waveforms(outputs, p, w), lerp_rows(y, p, w.to(y.dtype))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment features ``x`` (B × M × T) and labels ``y`` (B × C) with draws from ``rng``. The inputs are
        left as they are; after the first step that copies, the others work in place (every extra pass
        over a batch showed in the loader's profile)."""
        if not self.active or x.shape[0] == 0:
            return x, y
        c = self.cfg
        copied = False
        if c.gain_db > 0:
            db = _dev(rng.uniform(-c.gain_db, c.gain_db, x.shape[0]), x)
            x, copied = x + self.frontend.gain_offset(db)[:, None, None], True
        if c.time_shift > 0:
            x, copied = roll_time(x, rng, self.frontend.frames(c.time_shift)), True
        if c.mixup > 0 and c.mixup_domain == "features":
            (x, y), copied = mix(x, y, *self._mixup_draws(rng, x.shape[0])), True
        if c.batch_mixup_alpha > 0:
            lam = rng.beta(c.batch_mixup_alpha, c.batch_mixup_alpha, x.shape[0])
            (x, y), copied = mix(x, y, rng.permutation(x.shape[0]), lam), True
        if c.freqm > 0:
            x, copied = mask_axis(x if copied else x.clone(), rng, c.freqm, axis=1), True
        if c.timem > 0:
            x = mask_axis(x if copied else x.clone(), rng, c.timem, axis=2)
        return x, y

    def _mixup_draws(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(partner, λ) of PSLA's mixup for ``n`` clips: each clip mixed at rate ``mixup``, with λ ~ Beta(α, α)
        (λ = 1: not mixed) and a partner from the batch. The draws' order is fixed: batches of a seed stay the
        same."""
        c = self.cfg
        mixed = rng.random(n) < c.mixup
        lam = np.where(mixed, rng.beta(c.mixup_alpha, c.mixup_alpha, n), 1.0)
        return rng.integers(0, n, n), lam


def to_device(a: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host array on ``device``: on CUDA through pinned memory and a non-blocking copy, so the host does not
    wait for the device before it can go on preparing the next batch."""
    t = torch.as_tensor(a, dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _dev(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return to_device(a, like.device, like.dtype)


def mix(x: torch.Tensor, y: torch.Tensor, partner: np.ndarray, lam: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip i becomes λᵢ·clipᵢ + (1−λᵢ)·clip[partnerᵢ], features and labels alike (new tensors)."""
    p = to_device(partner, x.device, torch.long)
    return lerp_rows(x, p, _dev(lam, x)), lerp_rows(y, p, _dev(lam, y))


def mask_axis(x: torch.Tensor, rng: np.random.Generator, width: int, axis: int) -> torch.Tensor:
    """torchaudio Frequency/TimeMasking per clip, in place: width w ~ U[0, width), start ~ U[0, size − w),
    fill 0."""
    size = x.shape[axis]
    w = rng.random(x.shape[0]) * width
    start = np.floor(rng.random(x.shape[0]) * (size - w))
    end = start + np.floor(w)
    pos = torch.arange(size, device=x.device)
    inside = (pos[None, :] >= _dev(start, x)[:, None]) & (pos[None, :] < _dev(end, x)[:, None])  # B × size
    inside = inside[:, :, None] if axis == 1 else inside[:, None, :]
    return x.masked_fill_(inside, 0.0)


def roll_time(x: torch.Tensor, rng: np.random.Generator, max_shift: int) -> torch.Tensor:
    """Roll each clip along time by its own shift in [−max_shift, max_shift] frames."""
    shift = to_device(rng.integers(-max_shift, max_shift + 1, x.shape[0]), x.device)
    t = x.shape[-1]
    idx = (torch.arange(t, device=x.device)[None, :] - shift[:, None]) % t  # B × T
    return torch.gather(x, 2, idx[:, None, :].expand(-1, x.shape[1], -1))
