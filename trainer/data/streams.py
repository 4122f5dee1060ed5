"""TrainStream / EvalStream: batches of features, labels and keys, decoded and featurised by DALI.

Each sample's FLAC bytes are read straight from its tar shard through the manifest's offset/size
(one read-only memory map per shard, kept open) and handed to DALI by an external_source batch
iterator; DALI decodes and crops/pads, and the front-end's features come from DALI on the GPU when the
stream's device is CUDA, or from a torch tail on worker threads on a CPU (features.py says which step
runs where). The order of samples is a pure function of (seed, epoch, rank) and augmentation of
(seed, epoch, step, rank), so resuming skips the consumed batches without decoding them, and batches
are the same whatever the number of worker threads.
"""
from __future__ import annotations

import io
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Hashable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch

from trainer.data.augment import Augmenter
from trainer.data.features import FrontEnd
from trainer.data.manifest import ShardBytes, ShardRecord
from trainer.data.sampling import eval_order, train_batches_per_rank, train_order
from trainer.data.seeding import AUGMENT, numpy_rng
from trainer.data.settings import AugmentConfig, LoaderSettings


class _Stream:
    """What both streams share: the DALI pipeline over planned batches of record indices."""

    def __init__(self, records: Sequence[ShardRecord], vocab_size: int, loader: LoaderSettings, frontend: FrontEnd,
                 rank: int, world_size: int, device: torch.device) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.records = list(records)
        self.vocab_size = vocab_size
        self.loader = loader
        self.frontend = frontend
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self._gpu = self.device.type == "cuda"
        self._read = ShardBytes()
        self._pipe: Any = None  # one DALI pipeline for the stream's life, rebuilt only when the plan changes
        self._queued: deque[Hashable] = deque()  # keys of the batches DALI has taken and not yet returned
        # CPU: each batch's tail (spectrum, mel, augmentation) runs on a worker thread with single-threaded
        # torch ops, one batch per worker, as many workers as the caller's torch threads: batches are
        # finished side by side and ahead of the caller, who trains on one while the next are computed
        # (one batch over torch's intra-op threads scaled poorly: DALI's threads and spinning OpenMP workers
        # fought over the cores). On the GPU the tail is a few kernels, run inline.
        self._workers = 0 if self._gpu else torch.get_num_threads()
        self._pool: ThreadPoolExecutor | None = None

    def _submit(self, fn: Any, *args: Any) -> Future:
        """``fn(*args)`` on a tail worker (CPU) or right here (GPU), as a future."""
        if not self._workers:
            done: Future = Future()
            done.set_result(fn(*args))
            return done
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="tail",
                                            initializer=torch.set_num_threads, initargs=(1,))
        return self._pool.submit(fn, *args)

    def _labels(self, idx: Sequence[int]) -> torch.Tensor:
        y = np.zeros((len(idx), self.vocab_size), dtype=np.float32)
        for row, i in enumerate(idx):
            y[row, list(self.records[i].labels)] = 1.0
        return torch.from_numpy(y).to(self.device)

    def _features(self, batches: list[list[int]], start: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(batch number, B × mel × frames features, B × classes labels) on the device for ``batches[start:]``,
        after :meth:`_post`; on CPU up to ``workers`` batches beyond the one handed out are in the works."""
        ahead: deque[tuple[int, Future]] = deque()
        for i in range(start, len(batches)):
            # one thread drives the pipeline, in order; the workers only see torch tensors
            out = [self._to_torch(o) for o in self._run(self._key(i), batches, i)] if batches[i] else None
            ahead.append((i, self._submit(self._tail, i, out, batches[i])))
            if len(ahead) > self._workers:
                j, job = ahead.popleft()
                yield j, *job.result()
        while ahead:
            j, job = ahead.popleft()
            yield j, *job.result()

    def _tail(self, i: int, out: list[torch.Tensor] | None, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if out is None:  # an eval rank's empty last batch; DALI cannot run an empty batch
            return torch.zeros(0, self.frontend.num_mels, self.frontend.num_frames, device=self.device), \
                self._labels([])
        return self._post(i, self.frontend.finish(out), self._labels(idx))

    def _post(self, i: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What a stream does to batch ``i`` after the features (training: augmentation)."""
        return x, y

    def _key(self, i: int) -> Hashable:
        """Identity of batch ``i`` of the current pass, as the plan names it."""
        raise NotImplementedError

    def _plan(self, start: int) -> Iterator[tuple[Hashable, list[int]]]:
        """(key, record indices) from batch ``start`` of the current pass on, running on into the passes
        that follow, so DALI's prefetch crosses pass boundaries instead of the pipeline being rebuilt."""
        raise NotImplementedError

    def _run(self, key: Hashable, batches: list[list[int]], i: int) -> tuple[Any, ...]:
        """DALI's outputs for batch ``key``: from the standing pipeline when it is the next one queued
        (the usual case, also across epochs), else from a new pipeline planned from ``i``."""
        if self._pipe is None or not self._queued or self._queued[0] != key:
            self._pipe = None  # stops the old pipeline's threads and frees its prefetched batches first
            self._queued.clear()
            self._pipe = self._pipeline(self._plan(i))
        try:
            out = self._pipe.run()
        except Exception as e:  # DALI reports a failed decode for the whole batch
            self._pipe = None
            self._queued.clear()
            self._blame(batches[i:i + self.loader.prefetch + 1], e)
        self._queued.popleft()
        return out

    def _pipeline(self, plan: Iterator[tuple[Hashable, list[int]]]) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        def source() -> Iterator[list[np.ndarray]]:
            for key, idx in plan:
                self._queued.append(key)
                yield [self._read(self.records[i]) for i in idx]

        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if self._gpu else None

        @pipeline_def(batch_size=self.loader.batch_size, num_threads=self.loader.num_threads, device_id=device_id,
                      prefetch_queue_depth=self.loader.prefetch, exec_dynamic=True)
        def graph() -> Any:
            flac = fn.external_source(source=source, batch=True, dtype=types.UINT8, cycle=False)
            return self.frontend.graph(flac, self._gpu)

        pipe = graph()
        pipe.build()
        return pipe

    def _to_torch(self, tl: Any) -> torch.Tensor:
        """A DALI output batch as one torch tensor, without a copy (it showed in the CPU profile): with the
        dynamic executor the output buffer belongs to the returned batch until it is freed."""
        from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

        with self.device:  # a CUDA tensor is handed over on this device's current stream
            return to_torch_tensor(tl.as_tensor(), copy=False)  # fixed clip length: one dense tensor

    def _blame(self, batches: list[list[int]], error: Exception) -> None:
        """Re-check the failing batch (and those prefetched with it) with soundfile; raise naming the sample."""
        for idx in batches:
            for i in idx:
                rec = self.records[i]
                try:
                    sf.read(io.BytesIO(self._read(rec).tobytes()))
                except Exception as bad:
                    raise RuntimeError(f"corrupt FLAC member {rec.key}.flac in shard {rec.shard}: {bad}") from error
        keys = [self.records[i].key for i in batches[0]]
        raise RuntimeError(f"DALI failed on a batch of {len(keys)} samples ({keys[:4]}…, shards "
                           f"{sorted({self.records[i].shard for i in batches[0]})}): {error}") from error


class TrainStream(_Stream):
    """Training batches: PSLA weighted (or uniform) sampling, augmentation, resumable mid-epoch."""

    def __init__(self, records: Sequence[ShardRecord], vocab_size: int, loader: LoaderSettings, frontend: FrontEnd,
                 augment: AugmentConfig, seed: int, rank: int, world_size: int, device: torch.device,
                 weighted: bool = True, num_samples: int | None = None) -> None:
        super().__init__(records, vocab_size, loader, frontend, rank, world_size, device)
        self.seed = seed
        self.weighted = weighted  # PSLA: draws ∝ the records' weights, with replacement
        self.epoch = 0
        self.position = 0  # batches of this epoch handed to the caller
        self.num_samples = num_samples or len(self.records)
        self.augment = Augmenter(augment, frontend)
        self._weights = torch.tensor([r.weight for r in self.records], dtype=torch.double)

    def __len__(self) -> int:
        return train_batches_per_rank(self.num_samples, self.loader.batch_size, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``; setting the current epoch again keeps a resumed position."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's record indices of ``epoch`` (default: the current one), batch by batch."""
        order = train_order(self._weights, self.num_samples, self.weighted, self.loader.batch_size,
                            self.seed, self.epoch if epoch is None else epoch, self.rank, self.world_size)
        return order.view(-1, self.loader.batch_size).tolist()

    def _key(self, i: int) -> Hashable:
        return self.seed, self.epoch, i

    def _plan(self, start: int) -> Iterator[tuple[Hashable, list[int]]]:
        epoch = self.epoch
        while True:
            batches = self.batches(epoch)
            for i in range(start, len(batches)):
                yield (self.seed, epoch, i), batches[i]
            epoch, start = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch (nothing once it is consumed: call set_epoch to move on)."""
        batches = self.batches()
        for i, x, y in self._features(batches, self.position):
            self.position = i + 1
            yield {"features": x, "labels": y, "keys": [self.records[j].key for j in batches[i]]}

    def _post(self, i: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.augment(x, y, numpy_rng(self.seed, AUGMENT, self.epoch, i, self.rank))

    def state_dict(self) -> dict[str, int]:
        """Where the stream is; the seed is the run's, held by the caller."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.epoch, self.position = int(sd["epoch"]), int(sd["position"])


class EvalStream(_Stream):
    """Evaluation batches in manifest order: every sample exactly once across ranks, never padded."""

    def __init__(self, records: Sequence[ShardRecord], vocab_size: int, loader: LoaderSettings, frontend: FrontEnd,
                 rank: int, world_size: int, device: torch.device) -> None:
        super().__init__(records, vocab_size, loader, frontend, rank, world_size, device)
        self._batches = [b.tolist() for b in eval_order(len(self.records), loader.batch_size, rank, world_size)]

    def __len__(self) -> int:
        return len(self._batches)

    def _key(self, i: int) -> Hashable:
        return i

    def _plan(self, start: int) -> Iterator[tuple[Hashable, list[int]]]:
        while True:  # every pass is the same
            for i in range(start, len(self._batches)):
                if self._batches[i]:
                    yield i, self._batches[i]
            start = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i, x, y in self._features(self._batches, 0):
            yield {"features": x, "labels": y, "keys": [self.records[j].key for j in self._batches[i]]}
