"""Atomic, durable checkpoints: Accelerate's full training state plus our progress (epoch, step, data stream).

A checkpoint directory only ever gets its final name once it is complete and on disk (fsync'd), and the
``latest`` pointer is replaced atomically and durably after it, so a kill or a power loss during a save leaves
the previous checkpoint in force. Resume takes the newest checkpoint that loads and names each one it skipped.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from accelerate import Accelerator

from trainer.data.atomic import atomic_write, fsync_dir, fsync_tree, temp_path
from trainer.faults import check_finite
from trainer.rundir import RunDir

PROGRESS = "progress.json"
KEEP = 2  # finished checkpoints kept; the newest is the one resumed from


@dataclass
class Progress:
    """Where a run stands, saved with each checkpoint (progress.json) and resumed from: ``step`` steps of epoch
    ``epoch`` (0-based) done, ``global_step`` micro-steps in all; the seed, the training stream's state at that
    step and the run's fingerprint (trainer/fingerprint.py) it was saved with."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    seed: int | None = None
    stream: dict[str, Any] | None = None
    fingerprint: dict[str, Any] | None = None

    def first_step(self, epoch: int) -> int:
        """The step ``epoch`` starts at: where the checkpoint left it for its epoch, 0 for the epochs after."""
        return self.step if epoch == self.epoch else 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        return cls(d["epoch"], d["step"], d.get("global_step", 0), d.get("seed"), d.get("stream"),
                   d.get("fingerprint"))


class SaveFailed(RuntimeError):
    """Writing a checkpoint or weights failed (a full disk, say); what was saved before is intact."""


class CheckpointUnreadable(RuntimeError):
    """No checkpoint of a run to be resumed loads."""


def save_checkpoint(accelerator: Accelerator, model: torch.nn.Module, run_dir: Path, progress: Progress,
                    durable: Iterable[Path] = ()) -> Path:
    """Collective: every rank calls it; the checkpoint is named after ``progress.global_step``. Refuses
    non-finite weights; a failed write leaves the previous checkpoint as the one to resume from. ``durable``:
    files the progress counts on (metrics.csv, steps.csv rows appended so far), made durable with it."""
    step = progress.global_step
    check_finite(model.state_dict(), f"checkpoint at step {step}")
    root = RunDir(run_dir).checkpoints
    final = root / f"step_{step:08d}"
    tmp = temp_path(final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with atomic_write(tmp / PROGRESS) as f:
                f.write(json.dumps(asdict(progress)))
            fsync_tree(tmp)  # every file on disk before the directory gets its final name
            for path in durable:
                if path.is_file():
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            fsync_dir(root)
            with atomic_write(root / "latest", fsync=True) as f:
                f.write(final.name)
            for old in sorted(root.glob("step_*"))[:-KEEP]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        latest = root / "latest"
        raise SaveFailed(f"saving checkpoint {final} failed ({e}); the previous checkpoint "
                         f"({latest.read_text().strip() if latest.is_file() else 'none yet'}) is intact: make room, "
                         f"then resume with run.resume=true") from e
    accelerator.wait_for_everyone()
    return final


def find_checkpoints(resume: bool | str, run_dir: Path,
                     log: Callable[[str], None] = print) -> list[tuple[Path, Progress]]:
    """The finished checkpoints to resume from, newest first (``latest``'s, then the others by step), each with
    its progress; one whose progress.json is missing or does not parse (a power loss before it reached the
    disk) is named in the log and left out. ``resume`` true: this run's (none yet: []); a path: that checkpoint,
    or those of that run directory."""
    if resume is False:
        return []
    path = run_dir if resume is True else Path(resume)
    if (path / PROGRESS).exists():
        paths = [path]
    else:
        root = RunDir(path).checkpoints
        paths = sorted(root.glob("step_*"), reverse=True)
        pointer = root / "latest"
        latest = root / pointer.read_text().strip() if pointer.is_file() else None
        if latest in paths:
            paths.remove(latest)
            paths.insert(0, latest)
    found = []
    for p in paths:
        try:
            found.append((p, read_progress(p)))
        except CheckpointUnreadable as e:
            log(f"warning: skipping checkpoint {p}: {e}")
    if not found and (resume is not True or paths):
        raise CheckpointUnreadable(f"run.resume: {path} holds no finished checkpoint that loads")
    return found


def read_progress(path: Path) -> Progress:
    """The progress a checkpoint was saved with."""
    try:
        progress = json.loads((path / PROGRESS).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointUnreadable(f"{PROGRESS} does not load ({e})") from None
    if not isinstance(progress, dict) or not {"epoch", "step"} <= progress.keys():
        raise CheckpointUnreadable(f"{PROGRESS} is not a checkpoint's progress")
    return Progress.from_dict(progress)


def load_checkpoint(accelerator: Accelerator, candidates: list[tuple[Path, Progress]],
                    log: Callable[[str], None] = print) -> tuple[Path, Progress]:
    """Load the first of ``candidates`` (from :func:`find_checkpoints`) whose training state loads, naming each
    one skipped and why; (its path, its progress). Collective: every rank loads the same one."""
    reasons = []
    for path, progress in candidates:
        try:
            accelerator.load_state(str(path))
        except Exception as e:  # noqa: BLE001 — whatever a torn file makes torch or safetensors raise
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            failed = accelerator.reduce(torch.ones(1, device=accelerator.device), "sum")
        else:
            failed = accelerator.reduce(torch.zeros(1, device=accelerator.device), "sum")
            reason = "another process could not load its part"
        if failed.item() == 0:
            return path, progress
        log(f"warning: skipping checkpoint {path}: its training state does not load ({reason})")
        reasons.append(f"{path.name} ({reason})")
    raise CheckpointUnreadable(f"no checkpoint loads: {'; '.join(reasons)}")


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """A plain state dict of the unwrapped model (for WA, the best model, teachers and predict): written
    whole or not at all, durably, and never non-finite."""
    check_finite(state_dict, str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb", fsync=True) as f:  # a resumed run averages the epochs saved before
            torch.save(state_dict, f)
    except OSError as e:
        raise SaveFailed(f"writing {path} failed ({e}); the file as it was before is intact") from e


def copy_weights(src: Path, dst: Path) -> None:
    """``src`` to ``dst``, atomically (``best.pt`` from the best epoch's weights)."""
    try:
        with open(src, "rb") as f, atomic_write(dst, "wb", fsync=True) as g:
            shutil.copyfileobj(f, g)
    except OSError as e:
        raise SaveFailed(f"copying {src} to {dst} failed ({e}); {dst} as it was before is intact") from e


def weights_path(path: str | Path) -> Path:
    """A weights file, or a run directory standing for its best single model."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).weights("best")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file; did that run finish training?")
    return path
