"""Train one epoch in this process and print how many times the trainer's own code read a tensor back to the
host (Tensor.item / Tensor.tolist: a device sync on a GPU), for tests/test_gpu_ready.py. Reads inside torch
(Adam's step counters live on the CPU) are not counted. Usage: CONFIG OVERRIDE..."""
import sys
from pathlib import Path

import torch

from trainer import run

TRAINER = str(Path(run.__file__).parent)
calls = {"n": 0}
for name in ("item", "tolist"):
    original = getattr(torch.Tensor, name)

    def counted(self, *args, _original=original, **kwargs):
        calls["n"] += sys._getframe(1).f_code.co_filename.startswith(TRAINER)
        return _original(self, *args, **kwargs)

    setattr(torch.Tensor, name, counted)
syncs = {"n": 0}
if torch.cuda.is_available():  # on a GPU also count every synchronizing CUDA call, wherever it is made
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    show = warnings.showwarning

    def count_syncs(message, category, *args, **kwargs):
        if "synchronizing" in str(message):
            syncs["n"] += 1
        else:
            show(message, category, *args, **kwargs)

    warnings.showwarning = count_syncs
    warnings.simplefilter("always")
run.main(sys.argv[1:])
print(f"host reads: {calls['n']}")
print(f"cuda syncs: {syncs['n']}")
