"""Per-step training losses, kept on the device and read every ``train.log_every`` steps in one collective.

Reading a loss every step (``loss.item()``) makes the host wait for the device at every step; here the
steps' losses stay on the device and a flush averages them over the ranks, together with the ranks'
preemption flags, and copies them to the host once: the steps.csv rows, the tracker's loss, whether to
stop, and the first non-finite loss with the keys of its batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator

from trainer.data.augment import to_device
from trainer.faults import NonFinite


@dataclass
class Flush:
    rows: list[dict]  # steps.csv rows of the flushed steps, loss averaged over the ranks
    stop: bool  # some rank was asked to stop
    nonfinite: NonFinite | None = None  # about the first non-finite loss, if any ...
    first_nonfinite: int | None = None  # ... which is rows[first_nonfinite]


@dataclass
class StepLog:
    losses: list[torch.Tensor] = field(default_factory=list)  # 0-d, on the device
    steps: list[dict] = field(default_factory=list)  # epoch, step, global_step, lr (1-based epoch and step)
    keys: list[list[str]] = field(default_factory=list)

    def add(self, loss: torch.Tensor, keys: list[str], epoch: int, step: int, global_step: int, lr: float) -> None:
        self.losses.append(loss.detach().float())
        self.steps.append({"epoch": epoch + 1, "step": step + 1, "global_step": global_step, "lr": lr})
        self.keys.append(keys)

    def flush(self, accelerator: Accelerator, stop: bool) -> Flush:
        """A collective: every rank calls it after the same steps."""
        n = len(self.losses)
        local = torch.stack(self.losses) if n else torch.zeros(0, device=accelerator.device)
        # a pinned, non-blocking copy: torch.tensor(..., device=cuda) from a list would wait for the device
        flag = to_device(np.array([float(stop)], dtype=np.float32), local.device)
        total = accelerator.reduce(torch.cat([local, flag]), "sum")
        values = torch.cat([total, local]).tolist()  # the one copy to the host
        mean = [v / accelerator.num_processes for v in values[:n]]
        flush = Flush([{**s, "loss": m} for s, m in zip(self.steps, mean)], values[n] > 0)
        bad = next((i for i, m in enumerate(mean) if not math.isfinite(m)), None)
        if bad is not None:
            s = self.steps[bad]
            whose = (f"this rank's batch {self.keys[bad][:8]}" if not math.isfinite(values[n + 1 + bad])
                     else "another rank's batch")
            flush.nonfinite = NonFinite(f"non-finite loss at epoch {s['epoch']}, step {s['step']} (global step "
                                        f"{s['global_step']}), {whose}; nothing after the last checkpoint was saved "
                                        f"(train.on_nonfinite: skip_step skips such steps instead)")
            flush.first_nonfinite = bad
        self.losses, self.steps, self.keys = [], [], []
        return flush
