"""What ends a multi-day run early, met so that nothing is lost: a second launch over a run's results or
while the run is still going, a run name pointing outside ``run.dir``, a preemption signal, a non-finite loss."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from trainer.data.atomic import atomic_write
from trainer.data.locks import LockHeld, hold_lock
from trainer.rundir import LOCK, MARKER, RESULTS, RunDir


class RunExists(RuntimeError):
    """The run directory cannot be claimed: another run's results are there, it is not inside ``run.dir``, or it
    holds files this trainer did not write."""


class RunLocked(RunExists):
    """Another launch is running this run now."""


class NonFinite(RuntimeError):
    """A non-finite loss or weights; nothing non-finite is saved."""


class Preempted(RuntimeError):
    """The run stopped on a signal after saving a checkpoint; ``code`` is the exit status to end with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run_dir_inside(runs: str | Path, name: str) -> Path:
    """``runs/name``, refused unless it is one directory directly inside ``runs`` once links and ``..`` are
    resolved: run.overwrite deletes it, so it must never be ``runs`` itself, a parent or an outside path (the
    config check refuses such names too; the deleting code does not rely on it)."""
    root = Path(runs).resolve()
    run_dir = Path(runs) / name
    resolved = run_dir.resolve()
    if name in ("", ".", "..") or len(Path(name).parts) != 1 or Path(name).is_absolute() or resolved.parent != root:
        raise RunExists(f"run.name {name!r}: a run directory must be one directory inside run.dir {root}, but it "
                        f"resolves to {resolved}; nothing was touched")
    return run_dir


class RunLock:
    """The run directory's lock (trainer/data/locks.py on ``run_dir/.lock``): held until :meth:`release` or the
    process ends (the kernel drops it then, so a crash leaves no stale lock); the file names the holder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = RunDir(run_dir).lock
        self._held = ExitStack()
        try:
            # the holder is written once the claim succeeds: a refused launch changes nothing
            self.record_holder = self._held.enter_context(hold_lock(self.path, f"{run_dir}", record=False))
        except LockHeld as e:
            raise RunLocked(f"{e}; another launch runs it now") from None

    def release(self) -> None:
        self._held.close()


def claim_run_dir(runs: str | Path, name: str, resume: bool | str, overwrite: bool,
                  log: Callable[[str], None] = print) -> RunLock:
    """Claim ``runs/name`` for this process before any work, or raise :class:`RunExists` having changed
    nothing: the directory must be inside ``runs`` and not locked by another launch; continuing a run needs
    run.resume, starting over needs run.overwrite, which deletes only a directory this trainer marked as a run
    (and lists what it deletes). The claim leaves the run's marker in the directory and returns the lock,
    held for the run's life."""
    run_dir = run_dir_inside(runs, name)
    if run_dir.is_dir():
        _check_ours(run_dir, overwrite)  # before the lock file is made: a directory not ours is not touched
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    try:
        entries = _check_ours(run_dir, overwrite)
        found = [n for n in RESULTS if (run_dir / n).exists()]
        if found and not resume and not overwrite:
            raise RunExists(f"{run_dir} already holds a run ({', '.join(found)}); continue it with run.resume=true, "
                            f"or start over with run.overwrite=true (which deletes its contents first)")
        if overwrite and entries:
            log(f"run.overwrite: deleting the previous run in {run_dir}: {', '.join(map(_describe, entries))}")
            for p in entries:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)  # which removes links inside without following them
                else:
                    p.unlink()
        marker = RunDir(run_dir).marker
        if not marker.is_file():
            with atomic_write(marker, fsync=True) as f:
                json.dump({"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "host": socket.gethostname(), "pid": os.getpid()}, f)
        lock.record_holder()
    except BaseException:
        lock.release()
        raise
    return lock


def _check_ours(run_dir: Path, overwrite: bool) -> list[Path]:
    """The directory's entries (the lock file aside); refused when it holds files but not this trainer's
    marker, unless it is an older run's (its results, no marker) that is to be resumed."""
    entries = sorted(p for p in run_dir.iterdir() if p.name != LOCK)
    names = {p.name for p in entries}
    if names and MARKER not in names and (overwrite or not names & set(RESULTS)):
        raise RunExists(f"{run_dir} holds files that are not a run of this trainer (no {MARKER} marker: "
                        f"{', '.join(sorted(names)[:5])}{', …' if len(names) > 5 else ''}); nothing was deleted: "
                        "move them away or choose another run.name")
    return entries


def _describe(path: Path) -> str:
    if path.is_dir() and not path.is_symlink():
        return f"{path.name}/ ({sum(len(f) for _, _, f in os.walk(path))} files)"
    return path.name


def claim_run(accelerator: Accelerator, runs: str | Path, name: str, resume: bool | str,
              overwrite: bool) -> Optional[RunLock]:
    """Collective: the main process claims the run directory (:func:`claim_run_dir`) and every rank learns the
    outcome, so a refused launch stops on all ranks at once; the main process gets the lock, the others None."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = claim_run_dir(runs, name, resume, overwrite, accelerator.print)
        except Exception as e:  # an OSError too: the other ranks must not wait for a claim that never comes
            error = e
    message = broadcast_object_list([None if error is None else f"{type(error).__name__}: {error}"])[0]
    if error is not None:
        raise error
    if message is not None:
        raise (RunLocked if message.startswith("RunLocked") else RunExists)(message.split(": ", 1)[1])
    return lock


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
