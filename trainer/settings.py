"""The training loop's settings: the ``run``, ``train``, ``optim``, ``evaluation`` and ``psl`` sections.

The data and models packages keep theirs (trainer/data/settings.py, trainer/models/settings.py);
trainer/config.py composes all sections, loads and validates them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

from trainer.bounds import check_range


@dataclass
class RunConfig:
    name: str = "run"
    dir: str = "runs"  # the run directory is {dir}/{name}
    seed: int = 0
    resume: Union[bool, str] = False  # true: latest checkpoint of this run; a path: that checkpoint
    overwrite: bool = False  # start over in a directory holding another run's results (deleted first)
    allow_changed: bool = False  # resume although the data or settings differ from the checkpoint's (logged)

    def validate(self, section: str) -> None:
        """ValueError naming the dotted key (``section.name``) of the first setting out of its domain."""
        # one path component, so that {dir}/{name} (which run.overwrite may delete) stays inside run.dir
        seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
        if self.name in ("", ".", "..") or any(s in self.name for s in seps) or "\0" in self.name:
            raise ValueError(f"{section}.name: {self.name!r} is not a directory name: one path component, not "
                             f"'.' or '..', without {' or '.join(map(repr, sorted(seps)))} (run.dir says where)")
        check_range(f"{section}.seed", self.seed, 0, 2**32 - 1)  # what numpy and accelerate's set_seed take
        if self.resume and self.overwrite:
            raise ValueError(f"{section}.overwrite: cannot both resume a run and start it over; set one of "
                             f"{section}.resume, {section}.overwrite")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    epochs: int = 10
    warmup_steps: int = 1000
    lrscheduler_start: Optional[int] = 10  # epoch from which the lr decays (None: never, as PSL) ...
    lrscheduler_step: int = 5  # ... every this many epochs ...
    lrscheduler_decay: float = 0.5  # ... by this factor (PSLA)
    weight_decay: float = 5e-7
    betas: tuple[float, float] = (0.95, 0.999)
    grad_clip: Optional[float] = None
    grad_accum: int = 1

    def validate(self, section: str) -> None:
        """ValueError naming the dotted key of the first setting out of its domain."""
        check_range(f"{section}.lr", self.lr, 0, low_open=True)
        check_range(f"{section}.epochs", self.epochs, 0, low_open=True)
        check_range(f"{section}.warmup_steps", self.warmup_steps, 0)
        check_range(f"{section}.lrscheduler_start", self.lrscheduler_start, 0)
        check_range(f"{section}.lrscheduler_step", self.lrscheduler_step, 0, low_open=True)
        check_range(f"{section}.lrscheduler_decay", self.lrscheduler_decay, 0, 1, low_open=True)
        check_range(f"{section}.weight_decay", self.weight_decay, 0)
        for i, beta in enumerate(self.betas):
            check_range(f"{section}.betas[{i}]", beta, 0, 1, high_open=True)
        check_range(f"{section}.grad_clip", self.grad_clip, 0, low_open=True, unset="no clipping")
        check_range(f"{section}.grad_accum", self.grad_accum, 0, low_open=True)


@dataclass
class TrainConfig:
    device: Literal["auto", "cuda", "cpu"] = "auto"  # auto: cuda when torch sees a GPU (an unusable one is an error)
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    channels_last: bool = False  # the model in channels-last memory format (a GPU option: see benchmarks/train_step)
    compile: bool = False  # torch.compile the model (a GPU option: see benchmarks/train_step)
    cpu_threads: Optional[int] = None  # torch threads per process on CPU; None: cores / local processes
    steps_per_epoch: Optional[int] = None  # cap, for demos and tests
    save_every_steps: int = 0  # 0: only at epoch ends
    wa_start: int = 1  # weight averaging over epochs wa_start..wa_end (1-based, inclusive)
    wa_end: Optional[int] = None  # default: the last epoch
    log_every: int = 10
    eval_every: int = 1  # evaluate every this many epochs, and always the last and one where training would stop early
    early_stop_patience: Optional[int] = None  # stop when the selection split's mAP has not improved for this many epochs
    on_nonfinite: Literal["fail", "skip_step"] = "fail"  # skip_step: drop such steps (costs a host sync a step)
    stop_after_steps: Optional[int] = None  # tests: exit abruptly after this many steps, as a kill would
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])

    def validate(self, section: str) -> None:
        """ValueError naming the dotted key of the first setting out of its domain."""
        check_range(f"{section}.cpu_threads", self.cpu_threads, 0, low_open=True, unset="cores / local processes")
        check_range(f"{section}.steps_per_epoch", self.steps_per_epoch, 0, low_open=True, unset="the whole epoch")
        check_range(f"{section}.save_every_steps", self.save_every_steps, 0)  # 0: off
        check_range(f"{section}.wa_start", self.wa_start, 0, low_open=True)
        check_range(f"{section}.wa_end", self.wa_end, 0, low_open=True, unset="the last epoch")
        check_range(f"{section}.log_every", self.log_every, 0, low_open=True)
        check_range(f"{section}.eval_every", self.eval_every, 0, low_open=True)
        check_range(f"{section}.early_stop_patience", self.early_stop_patience, 0, low_open=True, unset="never")
        check_range(f"{section}.stop_after_steps", self.stop_after_steps, 0, low_open=True, unset="never")


@dataclass
class EvalConfig:
    batch_size: int = 64  # per process
    select_on: Literal["valid", "eval"] = "valid"  # the split that picks the best epoch
    strong_labels: Optional[str] = None  # AudioSet strong-format TSV for chunk-level evaluation
    chunk_seconds: float = 2.0  # chunk length of the chunk-level evaluation

    def validate(self, section: str) -> None:
        """ValueError naming the dotted key of the first setting out of its domain."""
        check_range(f"{section}.batch_size", self.batch_size, 0, low_open=True)
        check_range(f"{section}.chunk_seconds", self.chunk_seconds, 0, low_open=True)


@dataclass
class PSLConfig:
    # a run directory whose best checkpoint is the frozen teacher, or a list of them: their mean is the teacher
    teacher: Union[str, list[str], None] = None
    alpha: float = 1.0  # loss = alpha * BCE(student, teacher) + (1 - alpha) * BCE(student, weak labels)
    chunk_seconds: Optional[float] = None  # None: train on whole clips
    chunk_hop: Optional[float] = None  # default: chunk_seconds
    chunks_per_clip: Optional[int] = None  # None: all chunks; k: k random chunks per clip
    targets: Literal["soft", "hard"] = "soft"  # the teacher's probabilities, or 1 where they reach threshold
    threshold: float = 0.5
    oracle: Optional[str] = None  # strong-label TSV of the training clips: learn from their true chunk labels

    def validate(self, section: str) -> None:
        """ValueError naming the dotted key of the first setting out of its domain or at odds with another."""
        check_range(f"{section}.alpha", self.alpha, 0, 1)
        check_range(f"{section}.chunk_seconds", self.chunk_seconds, 0, low_open=True, unset="whole clips")
        check_range(f"{section}.chunk_hop", self.chunk_hop, 0, low_open=True, unset="chunk_seconds")
        check_range(f"{section}.chunks_per_clip", self.chunks_per_clip, 0, low_open=True, unset="all chunks")
        check_range(f"{section}.threshold", self.threshold, 0, 1, low_open=True, high_open=True)
        if self.teacher == []:
            raise ValueError(f"{section}.teacher: an empty list; give at least one run directory, or leave it unset")
        if (self.teacher or self.oracle) and self.chunk_seconds is None:
            raise ValueError(f"{section}.chunk_seconds: required when {section}.teacher or {section}.oracle is set")
        if self.teacher and self.oracle:
            raise ValueError(f"{section}.oracle: the chunk labels come from the teacher or from the oracle, not both")
        if self.targets == "hard" and not self.teacher:
            raise ValueError(f"{section}.targets: 'hard' thresholds a teacher's probabilities; set {section}.teacher")


def teacher_members(teacher: Union[str, Path, Sequence[Union[str, Path]]]) -> list[tuple[str, Path]]:
    """(dotted key, run directory) of each member of ``psl.teacher``: ``psl.teacher`` for one directory,
    ``psl.teacher[i]`` for the i-th of a list, so errors name the member as the config spells it."""
    if isinstance(teacher, (str, Path)):
        return [("psl.teacher", Path(teacher))]
    return [(f"psl.teacher[{i}]", Path(d)) for i, d in enumerate(teacher)]
