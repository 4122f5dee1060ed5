"""CPU training settings that matter more than any model change on a small machine.

- ``accelerate launch`` exports OMP_NUM_THREADS=1, which leaves all but one core idle: give each
  process its share of the cores.
- glibc serves every allocation above its (dynamic) mmap threshold with a fresh mmap and returns it on
  free, so each training step page-faults its activations in again; the faults stall torch's other
  threads, which spin meanwhile (benchmarks/NOTES.md, "CPU training settings"). Keeping freed memory in
  the heap costs RSS that stays at the peak of a step, which a training process reaches anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

import torch

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters from glibc's malloc.h


def configure_cpu(processes_on_node: int, threads: Optional[int] = None) -> int:
    """Set torch's intra-op threads (default: this process's share of the usable cores) and keep
    glibc from mmapping/unmapping large blocks. Returns the number of threads."""
    n = threads or max(1, len(os.sched_getaffinity(0)) // max(1, processes_on_node))
    torch.set_num_threads(n)
    libc_name = ctypes.util.find_library("c")
    if libc_name and "libc.so" in libc_name:  # glibc only; musl and others have no mallopt to tune
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "mallopt"):
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    return n
