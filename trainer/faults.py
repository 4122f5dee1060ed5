"""What ends a multi-day run early, met so that nothing is lost: a second launch over a run's results, a
preemption signal, a non-finite loss."""
from __future__ import annotations

import signal
from pathlib import Path

import torch
from accelerate import Accelerator

RESULTS = ("checkpoints", "metrics.csv", "models")  # what makes a directory a run's


class RunExists(RuntimeError):
    """A new run was started where another run's results are."""


class NonFinite(RuntimeError):
    """A non-finite loss or weights; nothing non-finite is saved."""


class Preempted(RuntimeError):
    """The run stopped on a signal after saving a checkpoint; ``code`` is the exit status to end with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def claim_run_dir(run_dir: Path, resume: bool | str, overwrite: bool) -> None:
    """Refuse to start a new run over an existing run's results, before any work: continuing needs
    run.resume, starting over needs run.overwrite (the caller then empties the directory)."""
    found = [name for name in RESULTS if (run_dir / name).exists()]
    if found and not resume and not overwrite:
        raise RunExists(f"{run_dir} already holds a run ({', '.join(found)}); continue it with run.resume=true, "
                        f"or start over with run.overwrite=true (which deletes its contents first)")


class Preemption:
    """Catches SIGTERM (Slurm's preemption and scancel), SIGINT (Ctrl-C) and SIGUSR1 (which Slurm can send
    ahead of the kill): the run finishes its step, the ranks agree at the next log step, save a checkpoint
    and exit. The signal is only recorded here, so no step is cut short."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {s: signal.signal(s, self._record) for s in self.SIGNALS}

    def _record(self, signum: int, frame: object) -> None:
        self.signal = self.signal or signum

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any rank was signalled (a collective: every rank calls it at the same point)."""
        flag = torch.tensor([float(self.signal is not None)], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item() > 0)

    def stop(self, where: str, checkpoint: Path) -> Preempted:
        sig = self.signal or signal.SIGTERM
        return Preempted(f"preempted by {signal.Signals(sig).name} {where}: checkpoint {checkpoint} saved; "
                         f"resume with run.resume=true", 128 + sig)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def check_finite(state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Refuse to save non-finite weights (one pass over the parameters; done at save points only)."""
    bad = [name for name, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFinite(f"{what}: the model's weights are not finite ({', '.join(bad[:3])}…); nothing was saved")
