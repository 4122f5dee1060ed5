"""PSLA weight averaging (WA): the arithmetic mean of several checkpoints of one model."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Union

import torch

StateDict = Mapping[str, torch.Tensor]


def average_state_dicts(paths_or_dicts: Sequence[Union[str, Path, StateDict]]) -> dict[str, torch.Tensor]:
    """Mean of floating-point tensors (accumulated in float64, cast back); integer buffers such as
    BatchNorm's num_batches_tracked are taken from the last state dict."""
    if not paths_or_dicts:
        raise ValueError("average_state_dicts: nothing to average")
    acc: dict[str, torch.Tensor] = {}
    ref: StateDict = {}
    for i, item in enumerate(paths_or_dicts):
        sd = item if isinstance(item, Mapping) else torch.load(item, map_location="cpu", weights_only=True)
        name = item if not isinstance(item, Mapping) else f"state dict #{i}"
        if i and sd.keys() != ref.keys():
            diff = sorted(sd.keys() ^ ref.keys())
            raise ValueError(f"{name}: keys differ from the first state dict: {diff[:5]}")
        for k, v in sd.items():
            if i and v.shape != ref[k].shape:
                raise ValueError(f"{name}: {k} has shape {tuple(v.shape)}, expected {tuple(ref[k].shape)}")
            if v.is_floating_point():
                acc[k] = acc[k] + v.double() if i else v.double()
        ref = sd
    n = len(paths_or_dicts)
    return {k: (acc[k] / n).to(v.dtype) if v.is_floating_point() else v.clone() for k, v in ref.items()}
