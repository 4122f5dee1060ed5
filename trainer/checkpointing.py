"""Atomic checkpoints: Accelerate's full training state plus our progress (epoch, step, data stream).

A checkpoint directory only ever gets its final name once it is complete, and the ``latest`` pointer is
replaced atomically, so a kill during a save leaves the previous checkpoint in force.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator

from trainer.data.atomic import atomic_write, temp_path
from trainer.faults import check_finite

PROGRESS = "progress.json"
KEEP = 2  # finished checkpoints kept; the newest is the one resumed from


class SaveFailed(RuntimeError):
    """Writing a checkpoint or weights failed (a full disk, say); what was saved before is intact."""


def save_checkpoint(accelerator: Accelerator, model: torch.nn.Module, run_dir: Path, step: int,
                    progress: dict[str, Any]) -> Path:
    """Collective: every rank calls it. ``progress`` is JSON (epoch, step, data stream state, ...). Refuses
    non-finite weights; a failed write leaves the previous checkpoint as the one to resume from."""
    check_finite(model.state_dict(), f"checkpoint at step {step}")
    root = run_dir / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = temp_path(final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / PROGRESS).write_text(json.dumps(progress))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            with atomic_write(root / "latest") as f:
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


def find_checkpoint(resume: bool | str, run_dir: Path) -> Optional[Path]:
    """``resume`` true: this run's latest finished checkpoint (None if there is none yet); a path: that
    checkpoint, or the latest one of that run directory."""
    if resume is False:
        return None
    path = run_dir if resume is True else Path(resume)
    if (path / PROGRESS).is_file():
        return path
    pointer = path / "checkpoints" / "latest"
    if pointer.is_file():
        return path / "checkpoints" / pointer.read_text().strip()
    if resume is True:
        return None
    raise FileNotFoundError(f"run.resume: {path} holds no finished checkpoint")


def read_progress(path: Path) -> dict[str, Any]:
    """The progress a checkpoint was saved with (epoch, step, seed, data stream state, ...)."""
    return json.loads((path / PROGRESS).read_text())


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    accelerator.load_state(str(path))
    return read_progress(path)


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """A plain state dict of the unwrapped model (for WA, the best model, teachers and predict): written
    whole or not at all, and never non-finite."""
    check_finite(state_dict, str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            torch.save(state_dict, f)
    except OSError as e:
        raise SaveFailed(f"writing {path} failed ({e}); the file as it was before is intact") from e


def copy_weights(src: Path, dst: Path) -> None:
    """``src`` to ``dst``, atomically (``best.pt`` from the best epoch's weights)."""
    try:
        with open(src, "rb") as f, atomic_write(dst, "wb") as g:
            shutil.copyfileobj(f, g)
    except OSError as e:
        raise SaveFailed(f"copying {src} to {dst} failed ({e}); {dst} as it was before is intact") from e


def weights_path(path: str | Path) -> Path:
    """A weights file, or a run directory standing for its best single model."""
    path = Path(path)
    if path.is_dir():
        path = path / "models" / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file; did that run finish training?")
    return path
