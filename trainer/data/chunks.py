"""Fixed-length chunks of clip features: PSL training, chunk-level evaluation and predict's timeline all
cut clips here, with the same seconds → frames conversion and the same rule for a clip's remainder
(:func:`split_chunks`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.data.features import FrontEnd


@dataclass(frozen=True)
class Chunking:
    """Chunks of ``frames`` frames starting every ``hop`` frames, in a front-end's frames."""

    frames: int
    hop: int
    frames_per_second: float

    @classmethod
    def of(cls, frontend: FrontEnd, seconds: float, hop_seconds: float | None = None) -> "Chunking":
        """Chunks of ``seconds`` every ``hop_seconds`` (default: back to back) in ``frontend``'s frames."""
        frames, hop = frontend.frames(seconds), frontend.frames(hop_seconds or seconds)
        if frames < 1 or hop < 1:
            raise ValueError(f"chunks of {seconds} s every {hop_seconds or seconds} s are shorter than one "
                             f"{frontend.name} frame (1/{frontend.frames_per_second} s)")
        return cls(frames, hop, frontend.frames_per_second)

    @property
    def seconds(self) -> float:
        return self.frames / self.frames_per_second

    def split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`split_chunks` with this chunking."""
        return split_chunks(features, self.frames, self.hop)

    def count(self, clip_frames: int) -> int:
        """How many chunks :meth:`split` cuts from a clip of ``clip_frames`` frames."""
        return chunk_count(clip_frames, self.frames, self.hop)

    def to_seconds(self, spans: torch.Tensor) -> torch.Tensor:
        """Frame spans → seconds (float64, on the CPU)."""
        return spans.cpu().double() / self.frames_per_second


def chunk_count(clip_frames: int, chunk_frames: int, hop_frames: int) -> int:
    """Chunks of a clip of ``clip_frames`` frames under :func:`split_chunks`'s remainder rule."""
    return len([s for s in range(0, clip_frames, hop_frames)
                if 2 * min(chunk_frames, clip_frames - s) >= chunk_frames]) or 1


def split_chunks(features: torch.Tensor, chunk_frames: int, hop_frames: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B × M × T features → (N × M × chunk_frames chunks, N clip indices, N × 2 [start, end) frame spans).

    Chunks start every ``hop_frames``. A chunk that runs past the clip's end is kept, zero-padded with its
    span ending at the clip's end, only when at least half of it is in the clip: a shorter remainder is
    dropped (a 10 s clip's 1001 mel64 frames give five 2 s chunks, not a sixth of one real frame and 199
    of padding, which would be trained on and scored as if it were audio). The alternative, an end-aligned
    last chunk, would count most of the chunk before it twice. A clip shorter than half a chunk still
    gives one chunk.
    """
    if chunk_frames <= 0 or hop_frames <= 0:
        raise ValueError(f"chunk_frames and hop_frames must be positive, got {chunk_frames}, {hop_frames}")
    b, m, t = features.shape
    n = chunk_count(t, chunk_frames, hop_frames)
    padded_len = (n - 1) * hop_frames + chunk_frames
    padded = torch.nn.functional.pad(features, (0, max(0, padded_len - t)))[..., :padded_len]
    chunks = padded.unfold(2, chunk_frames, hop_frames)  # B × M × n × chunk
    chunks = chunks.permute(0, 2, 1, 3).reshape(b * n, m, chunk_frames)
    starts = torch.arange(n, device=features.device) * hop_frames
    spans = torch.stack([starts, torch.clamp(starts + chunk_frames, max=t)], dim=1).repeat(b, 1)
    clip_index = torch.arange(b, device=features.device).repeat_interleave(n)
    return chunks, clip_index, spans
