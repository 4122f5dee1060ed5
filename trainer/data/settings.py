"""The data package's settings: which datasets, how they are sampled and read, the front-end, augmentation.

They are the ``data``, ``features`` and ``augment`` sections of a run config (trainer/config.py composes
and validates the sections; each package owns its own). The streams take the small :class:`LoaderSettings`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from trainer.bounds import check_range


@dataclass(frozen=True)
class RemoteSettings:
    """How clips are read from a dataset at a URL (trainer/data/remote.py)."""

    connections: int = 16  # range requests in flight per process
    retries: int = 5  # further tries of a request after a timeout, a 5xx or a dropped connection
    timeout: float = 30.0  # seconds for one request, body included
    cache_dir: Optional[str] = None  # the node's copies of the small files (and shards); None: ~/.cache/audiotag
    cache_bytes: int = 0  # whole shards kept in cache_dir up to this many bytes, least recently used out; 0: none

    def validate(self, section: str) -> None:
        """ValueError naming the dotted key of the first setting out of its domain."""
        check_range(f"{section}.connections", self.connections, 0, low_open=True)
        check_range(f"{section}.retries", self.retries, 0)
        check_range(f"{section}.timeout", self.timeout, 0, low_open=True)
        check_range(f"{section}.cache_bytes", self.cache_bytes, 0)  # 0: no shard cache


@dataclass(frozen=True)
class LoaderSettings:
    """What a stream needs to read batches: their size, DALI's threads and prefetch depth, read-ahead."""

    batch_size: int
    num_threads: Union[int, Literal["auto"]] = "auto"  # DALI CPU threads per process (see dali_threads)
    prefetch: int = 2  # DALI prefetch queue depth
    readahead: int = 4  # batches whose samples the kernel is asked to read before DALI takes them; 0: off
    remote: RemoteSettings = RemoteSettings()


def dali_threads(num_threads: Union[int, Literal["auto"]], step_threads: int) -> int:
    """DALI's CPU threads for a process: ``num_threads``, or for ``auto`` the cores this process may use
    (its CPU affinity) shared among the processes on the node (``LOCAL_WORLD_SIZE``, default 1), less the
    ``step_threads`` the training step keeps busy, and at least 1."""
    if num_threads != "auto":
        return int(num_threads)
    share = len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, share - step_threads)


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # dataset dirs or URLs, or brace-expanded shard patterns
    valid: list[str] = field(default_factory=list)  # empty: hold out valid_fraction of train
    valid_fraction: float = 0.1
    eval: list[str] = field(default_factory=list)
    eval_ids: Optional[str] = None  # the expected eval clip ids (see eval_ids.py); results on those present
    global_batch_size: Optional[int] = None  # the recipe's batch over all processes (PSLA 100, PSL 32) ...
    batch_size: Optional[int] = None  # ... or the batch per process (default 32)
    max_batch_per_process: Optional[int] = None  # memory cap: a larger per-process batch accumulates gradients
    weighted: bool = True  # PSLA balanced sampling: draws ∝ weights.csv, with replacement
    num_samples: Optional[int] = None  # draws per epoch; default: training set size
    # the loader's settings (LoaderSettings holds their defaults): DALI CPU threads per process (auto: see
    # dali_threads), DALI's prefetch queue depth, batches read ahead of DALI into the page cache (0: off)
    num_threads: Union[int, Literal["auto"]] = LoaderSettings.num_threads
    prefetch: int = LoaderSettings.prefetch
    readahead: int = LoaderSettings.readahead
    on_corrupt: Literal["fail", "skip"] = "skip"  # a training sample that does not decode: stop, or skip and log it
    max_corrupt_fraction: float = 0.001  # stop when more of the training set than this has been skipped
    remote: RemoteSettings = field(default_factory=RemoteSettings)  # datasets at URLs

    def validate(self, section: str) -> None:
        """ValueError naming the dotted key of the first setting out of its domain or at odds with another.
        What needs the datasets read (an empty split, a dataset listed twice) is checked by resolve_splits."""
        if not self.train:
            raise ValueError(f"{section}.train: at least one dataset is required")
        if not self.valid and not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"{section}.valid_fraction: must be in (0, 1) when {section}.valid is empty, "
                             f"got {self.valid_fraction!r}")
        if self.eval_ids and not self.eval:
            raise ValueError(f"{section}.eval_ids: selects eval clips; it needs {section}.eval")
        check_range(f"{section}.global_batch_size", self.global_batch_size, 0, low_open=True, unset="set batch_size instead")
        check_range(f"{section}.batch_size", self.batch_size, 0, low_open=True, unset="32 per process")
        check_range(f"{section}.max_batch_per_process", self.max_batch_per_process, 0, low_open=True, unset="no cap")
        if self.global_batch_size is not None and self.batch_size is not None:
            raise ValueError(f"{section}.batch_size: set the batch per process or {section}.global_batch_size, "
                             f"not both")
        check_range(f"{section}.num_samples", self.num_samples, 0, low_open=True, unset="the training set's size")
        if self.num_threads != "auto" and self.num_threads <= 0:
            raise ValueError(f"{section}.num_threads: must be positive or auto, got {self.num_threads}")
        check_range(f"{section}.prefetch", self.prefetch, 0, low_open=True)
        check_range(f"{section}.readahead", self.readahead, 0)  # 0: off
        check_range(f"{section}.max_corrupt_fraction", self.max_corrupt_fraction, 0, 1, high_open=True)
        self.remote.validate(f"{section}.remote")

    def batch_plan(self, world_size: int) -> tuple[int, int]:
        """(clips per process and step, gradient accumulation steps) for ``world_size`` processes: the global
        batch split evenly (a ValueError naming the process counts that divide it otherwise), then split
        again into accumulation steps where ``max_batch_per_process`` asks."""
        if self.global_batch_size is None:
            per_process = self.batch_size or 32
        elif self.global_batch_size % world_size:
            fits = [n for n in range(1, self.global_batch_size + 1) if self.global_batch_size % n == 0]
            raise ValueError(f"global_batch_size: {self.global_batch_size} clips do not split evenly over "
                             f"{world_size} processes; run on {', '.join(map(str, fits[:12]))} processes, or change it")
        else:
            per_process = self.global_batch_size // world_size
        cap = self.max_batch_per_process or per_process
        steps = next(k for k in range(1, per_process + 1) if per_process % k == 0 and per_process // k <= cap)
        return per_process // steps, steps

    def loader(self, batch_size: int) -> LoaderSettings:
        """Loader settings for batches of ``batch_size`` clips."""
        return LoaderSettings(batch_size, self.num_threads, self.prefetch, self.readahead, self.remote)


@dataclass
class FeatureConfig:
    frontend: Literal["kaldi_fbank", "mel64", "mini_mel32"] = "kaldi_fbank"
    clip_seconds: float = 10.0  # waveforms are padded or cropped to this before features
    target_frames: Optional[int] = None  # kaldi_fbank only: pad/crop frames (PSLA 1056, AST 1024)
    norm_mean: Optional[float] = None  # kaldi_fbank only; None: the dataset's stats, else PSLA's -4.6476
    norm_std: Optional[float] = None

    def validate(self, section: str) -> None:
        """ValueError naming the dotted key of the first setting out of its domain (which options apply to the
        front-end is build_frontend's check)."""
        check_range(f"{section}.clip_seconds", self.clip_seconds, 0, low_open=True)
        check_range(f"{section}.target_frames", self.target_frames, 0, low_open=True, unset="the front-end's")
        check_range(f"{section}.norm_mean", self.norm_mean, unset="the dataset's")
        check_range(f"{section}.norm_std", self.norm_std, 0, low_open=True, unset="the dataset's")


@dataclass
class AugmentConfig:
    freqm: int = 0  # SpecAugment frequency mask width (PSLA 48)
    timem: int = 0  # SpecAugment time mask width (PSLA 192)
    mixup: float = 0.0  # PSLA mixup rate: the fraction of clips mixed with another
    mixup_alpha: float = 10.0  # λ ~ Beta(alpha, alpha)
    # what mixup mixes: the decoded waveforms before the front-end (PSLA) or the batch's features
    mixup_domain: Literal["waveform", "features"] = "features"
    batch_mixup_alpha: float = 0.0  # >0: every clip mixed with a permuted partner, λ ~ Beta(α, α)
    time_shift: float = 0.0  # max random roll, seconds
    gain_db: float = 0.0  # max random gain, ± dB

    def validate(self, section: str) -> None:
        """ValueError naming the dotted key of the first setting out of its domain (0 turns each one off)."""
        for name in ("freqm", "timem", "batch_mixup_alpha", "time_shift", "gain_db"):
            check_range(f"{section}.{name}", getattr(self, name), 0)
        check_range(f"{section}.mixup", self.mixup, 0, 1)
        check_range(f"{section}.mixup_alpha", self.mixup_alpha, 0, low_open=True)  # Beta(α, α) needs α > 0
