"""Cut clip features into fixed-length chunks for pseudo-strong-label (PSL) training."""
from __future__ import annotations

import math

import torch


def split_chunks(features: torch.Tensor, chunk_frames: int, hop_frames: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B × M × T features → (N × M × chunk_frames chunks, N clip indices, N × 2 [start, end) frame spans).

    Chunks start every ``hop_frames``; a clip shorter than one chunk gives one zero-padded chunk, and
    a last partial chunk is kept, zero-padded, with its span ending at the clip's true end.
    """
    if chunk_frames <= 0 or hop_frames <= 0:
        raise ValueError(f"chunk_frames and hop_frames must be positive, got {chunk_frames}, {hop_frames}")
    b, m, t = features.shape
    n = 1 + math.ceil(max(0, t - chunk_frames) / hop_frames)
    padded_len = (n - 1) * hop_frames + chunk_frames
    padded = torch.nn.functional.pad(features, (0, padded_len - t))
    chunks = padded.unfold(2, chunk_frames, hop_frames)  # B × M × n × chunk
    chunks = chunks.permute(0, 2, 1, 3).reshape(b * n, m, chunk_frames)
    starts = torch.arange(n, device=features.device) * hop_frames
    spans = torch.stack([starts, torch.clamp(starts + chunk_frames, max=t)], dim=1).repeat(b, 1)
    clip_index = torch.arange(b, device=features.device).repeat_interleave(n)
    return chunks, clip_index, spans
