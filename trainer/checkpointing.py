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

PROGRESS = "progress.json"
KEEP = 2  # finished checkpoints kept; the newest is the one resumed from


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, progress: dict[str, Any]) -> Path:
    """Collective: every rank calls it. ``progress`` is JSON (epoch, step, data stream state, ...)."""
    root = run_dir / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = temp_path(final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
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
    """A plain state dict of the unwrapped model (for WA, the best model, teachers and predict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(state_dict, f)


def weights_path(path: str | Path) -> Path:
    """A weights file, or a run directory standing for its best single model."""
    path = Path(path)
    if path.is_dir():
        path = path / "models" / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file; did that run finish training?")
    return path
