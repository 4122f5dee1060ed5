"""Which device a run trains on, decided loudly: a machine with an NVIDIA driver whose GPU torch cannot use
(a torch build for a newer CUDA than the driver, say) fails with the versions, instead of silently training
on the CPU for days."""
from __future__ import annotations

from pathlib import Path

import torch

_DRIVER = Path("/proc/driver/nvidia/version")


class DeviceError(RuntimeError):
    """The requested or expected GPU is not usable."""


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version line, or None without a driver."""
    try:
        return _DRIVER.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None


def resolve_device(choice: str) -> str:
    """``train.device`` (auto | cuda | cpu) → "cuda" or "cpu". auto is cuda when torch sees a GPU; when it sees
    none but the machine has an NVIDIA driver, a GPU was expected: that is an error, as is cuda without one."""
    if choice == "cpu" or (choice == "auto" and torch.cuda.is_available()):
        return "cpu" if choice == "cpu" else "cuda"
    if torch.cuda.is_available():
        return "cuda"
    driver = driver_version()
    if choice == "cuda" or driver is not None:
        raise DeviceError(
            f"train.device={choice}: torch {torch.__version__} (built for CUDA {torch.version.cuda or 'none'}) sees "
            f"no usable GPU; NVIDIA driver: {driver or 'none found'}. Install a torch build for this driver's "
            f"CUDA version (https://pytorch.org/get-started/locally/), or set train.device=cpu to train on the CPU")
    return "cpu"
