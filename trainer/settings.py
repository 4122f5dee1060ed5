"""The training loop's settings: the ``run``, ``train``, ``optim``, ``evaluation`` and ``psl`` sections.

The data and models packages keep theirs (trainer/data/settings.py, trainer/models/settings.py);
trainer/config.py composes all sections, loads and validates them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, Union


@dataclass
class RunConfig:
    name: str = "run"
    dir: str = "runs"  # the run directory is {dir}/{name}
    seed: int = 0
    resume: Union[bool, str] = False  # true: latest checkpoint of this run; a path: that checkpoint
    overwrite: bool = False  # start over in a directory holding another run's results (deleted first)


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


@dataclass
class EvalConfig:
    batch_size: int = 64  # per process
    select_on: Literal["valid", "eval"] = "valid"  # the split that picks the best epoch
    strong_labels: Optional[str] = None  # AudioSet strong-format TSV for chunk-level evaluation
    chunk_seconds: float = 2.0  # chunk length of the chunk-level evaluation


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


def teacher_members(teacher: Union[str, Path, Sequence[Union[str, Path]]]) -> list[tuple[str, Path]]:
    """(dotted key, run directory) of each member of ``psl.teacher``: ``psl.teacher`` for one directory,
    ``psl.teacher[i]`` for the i-th of a list, so errors name the member as the config spells it."""
    if isinstance(teacher, (str, Path)):
        return [("psl.teacher", Path(teacher))]
    return [(f"psl.teacher[{i}]", Path(d)) for i, d in enumerate(teacher)]
