"""TrainStream / EvalStream: batches of features, labels and keys, decoded and featurised by DALI.

Each sample's FLAC bytes are read straight from its tar shard through the manifest's offset/size
(one pread per member from a file kept open per shard) and handed to DALI by an external_source batch
iterator; DALI decodes and crops/pads, and the front-end's features come from DALI on the GPU when the
stream's device is CUDA (with waveform mixup, from the torch tail on the device, after the mix), or from a
torch tail on worker threads on a CPU (features.py says which step runs where). The order of samples is a
pure function of (seed, epoch, rank) and augmentation of (seed, epoch, step, rank), so resuming skips the
consumed batches without decoding them, and batches are the same whatever the number of worker threads.

A sample DALI cannot decode is found by decoding the failed batches' samples again with soundfile. In
training it is skipped (with a :class:`CorruptLog`) or stops the run naming it; its place in a batch goes
to the first decodable sample of a sequence drawn for that slot from (seed, epoch, step, rank, slot), so
batches stay full and depend only on which samples are corrupt, not on when that was found: a resumed run
repeats the uninterrupted one. Evaluation leaves a corrupt clip out and reports it (:attr:`EvalStream.missing`).
Which records each batch holds is its plan's, in plain Python: trainer/data/plans.py (:class:`TrainPlan`,
:class:`EvalPlan`).
"""
from __future__ import annotations

import io
import queue
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Hashable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch

from trainer.data.audio import SAMPLE_RATE, encode_flac
from trainer.data.augment import Augmenter, to_device
from trainer.data.corrupt import CorruptLog
from trainer.data.features import FrontEnd
from trainer.data.plans import EvalPlan, TrainPlan
from trainer.data.records import RecordTable, ShardRecord
from trainer.data.remote import RemoteBytes, is_url
from trainer.data.seeding import AUGMENT, numpy_rng
from trainer.data.settings import AugmentConfig, LoaderSettings, dali_threads
from trainer.data.shard_bytes import ShardBytes


class _Stream:
    """The DALI pipeline over the batches of record indices its :attr:`plan` (trainer/data/plans.py) lays out: a
    :class:`TrainPlan` (:class:`TrainStream`) or an :class:`EvalPlan` (:class:`EvalStream`).

    ``records``: a :class:`RecordTable` (what ``trainer.data.datasets`` loads), or any sequence of
    :class:`ShardRecord`, turned into one.
    """

    plan: TrainPlan | EvalPlan

    def __init__(self, records: Sequence[ShardRecord], vocab_size: int, loader: LoaderSettings, frontend: FrontEnd,
                 rank: int, world_size: int, device: torch.device) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.records = records if isinstance(records, RecordTable) else RecordTable.from_records(records)
        self.vocab_size = vocab_size
        self.loader = loader
        self.frontend = frontend
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self._gpu = self.device.type == "cuda"
        if self._gpu and self.device.index is None:  # the creating thread's device, not what the feed thread sees
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._stream: Any = None  # CUDA: the consumer's stream, on which DALI's outputs and the tail are ordered
        self._read = RemoteBytes(loader.remote) if any(map(is_url, self.records.shards)) else ShardBytes()
        self._pipe: Any = None  # one DALI pipeline for the stream's life, rebuilt only when the plan changes
        self._queued: deque[tuple[Hashable, list[int]]] = deque()  # batches DALI has taken, not yet returned
        # CPU: each batch's tail (spectrum, mel, augmentation) runs on a worker thread with single-threaded
        # torch ops, one batch per worker, as many workers as the caller's torch threads: batches are
        # finished side by side and ahead of the caller, who trains on one while the next are computed
        # (one batch over torch's intra-op threads scaled poorly: DALI's threads and spinning OpenMP workers
        # fought over the cores). On the GPU the tail is a few kernels, run inline by the feed thread on the
        # consumer's stream: its host work (reading, feeding DALI, launching) overlaps the step, its kernels queue
        # behind the step's.
        self._workers = 0 if self._gpu else torch.get_num_threads()
        self._pool: ThreadPoolExecutor | None = None
        self._background = self._gpu
        self._waveforms = False  # whether DALI hands the tail samples on a GPU too (waveform mixup)
        # DALI's threads: on a CPU the training step and the tail workers keep torch's threads busy; on a GPU
        # the step needs the one thread that drives it
        self.num_threads = dali_threads(loader.num_threads, self._workers or 1)

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
        return to_device(self.records.multi_hot(idx, self.vocab_size), self.device)

    def _features(self, start: int, stop: int) -> Iterator[tuple[int, list[int], torch.Tensor, torch.Tensor]]:
        """(batch number, record indices, B × mel × frames features, B × classes labels) on the device for batches
        ``start`` to ``stop`` of the current pass, after :meth:`_post`. On CPU up to ``workers`` batches beyond
        the one handed out are in the works; on the GPU a background thread feeds DALI and runs the tail,
        up to ``loader.prefetch`` batches ahead, while the caller's step runs."""
        batches = self._batches_in_order(start, stop)
        if not self._background:
            return batches
        if self._gpu:
            self._stream = torch.cuda.current_stream(self.device)
            batches = self._on_device(batches)
        return _ahead(batches, self.loader.prefetch)

    def _on_device(self, items: Iterator[Any]) -> Iterator[Any]:
        """``items`` produced with the stream's device and the consumer's stream current (in the feed thread:
        a new thread starts on device 0 and the default stream)."""
        torch.cuda.set_device(self.device)
        with torch.cuda.stream(self._stream):
            yield from items

    def _batches_in_order(self, start: int, stop: int) -> Iterator[tuple[int, list[int], torch.Tensor, torch.Tensor]]:
        ahead: deque[tuple[int, list[int], Future]] = deque()
        for i in range(start, stop):
            # one thread drives the pipeline, in order; the workers only see torch tensors
            out, idx = self._run(i) if self.plan.batch(i) else (None, [])
            ahead.append((i, idx, self._submit(self._tail, i, out, idx)))
            if len(ahead) > self._workers:
                j, idx, job = ahead.popleft()
                yield j, idx, *job.result()
        while ahead:
            j, idx, job = ahead.popleft()
            yield j, idx, *job.result()

    def _tail(self, i: int, out: list[torch.Tensor] | None, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if out is None:  # an eval rank's empty batch; DALI cannot run an empty batch
            return torch.zeros(0, self.frontend.num_mels, self.frontend.num_frames, device=self.device), \
                self._labels([])
        return self._post(i, out, self._labels(idx))

    def _post(self, i: int, out: Sequence[torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i``'s features and labels from DALI's outputs ``out`` and the labels ``y`` (training: with
        augmentation)."""
        return self.frontend.finish(out), y

    def _run(self, i: int) -> tuple[list[torch.Tensor], list[int]]:
        """DALI's outputs for batch ``i`` and the record indices they hold: from the standing pipeline when
        it is the next one queued (the usual case, also across epochs), else from a new pipeline planned from
        ``i``; a failed batch has its corrupt samples excluded and is planned again."""
        while True:
            if self._pipe is None or not self._queued or self._queued[0][0] != self.plan.key(i):
                self._pipe = None  # stops the old pipeline's threads and frees its prefetched batches first
                self._queued.clear()
                self._pipe = self._pipeline(self.plan.plan(i))
            try:
                out = self._pipe.run(self._stream)  # on a GPU: ready on, and bound to, the consumer's stream
            except Exception as e:  # DALI reports a failed decode for the whole batch
                taken = [idx for _, idx in self._queued] or [self.plan.batch(i)]
                self._pipe = None
                self._queued.clear()
                self.plan.exclude(self._blame(taken, e), i)
                continue
            return [self._to_torch(o) for o in out], self._queued.popleft()[1]

    def _pipeline(self, plan: Iterator[tuple[Hashable, list[int]]]) -> Any:
        try:
            from nvidia.dali import fn, pipeline_def, types
        except ImportError as e:
            raise ImportError(f"NVIDIA DALI does not load ({e}): install the build for torch's CUDA "
                              f"{torch.version.cuda}: pip install -e '.[cuda13]' (torch cu13x) or '.[cuda12]'") from e

        def source() -> Iterator[list[np.ndarray]]:
            for key, idx in self._read_ahead(plan):
                self._queued.append((key, idx))
                yield [self._member(i) for i in idx]

        device_id = self.device.index if self._gpu else None

        @pipeline_def(batch_size=self.loader.batch_size, num_threads=self.num_threads, device_id=device_id,
                      prefetch_queue_depth=self.loader.prefetch, exec_dynamic=True)
        def graph() -> Any:
            flac = fn.external_source(source=source, batch=True, dtype=types.UINT8, cycle=False)
            return self.frontend.graph(flac, self._gpu, self._waveforms)

        pipe = graph()
        pipe.build()
        return pipe

    def _member(self, i: int) -> np.ndarray:
        r = self.records
        return self._read.member(r.shard(i), int(r.offset[i]), int(r.size[i]))

    def _read_ahead(self, plan: Iterator[tuple[Hashable, list[int]]]) -> Iterator[tuple[Hashable, list[int]]]:
        """The plan, with each batch's members handed to the kernel to read ``loader.readahead`` batches before
        DALI takes the batch: on a cold page cache they are read while the batches before them decode, instead
        of in page faults of DALI's feeding thread one member at a time."""
        depth = self.loader.readahead
        window: deque[tuple[Hashable, list[int]]] = deque()
        r = self.records
        for key, idx in plan:
            if depth:
                for i in idx:
                    self._read.will_need(r.shard(i), int(r.offset[i]), int(r.size[i]))
            window.append((key, idx))
            if len(window) > depth:
                yield window.popleft()
        yield from window

    def _to_torch(self, tl: Any) -> torch.Tensor:
        """A DALI output batch as one torch tensor (fixed clip length: one dense tensor). On a CPU without a copy
        (it showed in the CPU profile): with the dynamic executor the buffer belongs to the returned batch until
        it is freed. On a GPU copied, on the consumer's stream, into memory torch's allocator owns, so DALI's
        buffer is read only by that copy and never by kernels still queued when DALI reuses it."""
        from nvidia.dali.plugin.pytorch.torch_utils import feed_ndarray, to_torch_type, to_torch_tensor
        from nvidia.dali.tensors import TensorGPU

        t = tl.as_tensor()
        if not isinstance(t, TensorGPU):  # everything on a CPU; a GPU pipeline's CPU outputs (lengths)
            return to_torch_tensor(t, copy=False)
        out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=self.device)
        return feed_ndarray(t, out, cuda_stream=self._stream)

    def _blame(self, batches: list[list[int]], error: Exception) -> dict[int, str]:
        """The samples of the failing batch (and those prefetched with it) that soundfile cannot decode
        either, with its error; when none, DALI failed for another reason: raise that, naming the batch."""
        bad = {}
        for i in dict.fromkeys(i for idx in batches for i in idx):
            try:
                sf.read(io.BytesIO(self._member(i).tobytes()))
            except Exception as e:  # libsndfile raises several types for corrupt streams
                bad[i] = str(e)
        if bad:
            return bad
        keys = self.records.keys(batches[0])
        raise RuntimeError(f"DALI failed on a batch of {len(keys)} samples ({keys[:4]}…, shards "
                           f"{sorted({self.records.shard(i) for i in batches[0]})}), none of them corrupt: "
                           f"{error}") from error


class TrainStream(_Stream):
    """Training batches of a :class:`TrainPlan` (weighted or uniform sampling, resumable mid-epoch), augmented.

    ``corrupt`` None: a sample that fails to decode stops the run, naming it (``data.on_corrupt: fail``);
    a :class:`CorruptLog`: it is skipped, logged there and replaced (``skip``).
    """

    def __init__(self, records: Sequence[ShardRecord], vocab_size: int, loader: LoaderSettings, frontend: FrontEnd,
                 augment: AugmentConfig, seed: int, rank: int, world_size: int, device: torch.device,
                 weighted: bool = True, num_samples: int | None = None, corrupt: CorruptLog | None = None) -> None:
        super().__init__(records, vocab_size, loader, frontend, rank, world_size, device)
        self.plan = TrainPlan(self.records, loader.batch_size, seed, rank, world_size, weighted, num_samples, corrupt)
        self.augment = Augmenter(augment, frontend)
        self._waveforms = self.augment.mixes_waveforms

    def __len__(self) -> int:
        return len(self.plan)

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``; setting the current epoch again keeps a resumed position."""
        self.plan.set_epoch(epoch)

    def batches(self, epoch: int | None = None) -> np.ndarray:
        """This rank's record indices of ``epoch`` (default: the current one), one row per batch, as drawn."""
        return self.plan.batches(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch (nothing once it is consumed: call set_epoch to move on)."""
        for i, idx, x, y in self._features(self.plan.position, len(self)):
            self.plan.position = i + 1
            yield {"features": x, "labels": y, "keys": self.records.keys(idx)}

    def _post(self, i: int, out: Sequence[torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rng = numpy_rng(self.plan.seed, AUGMENT, self.plan.epoch, i, self.rank)
        out, y = self.augment.mix_waveforms(out, y, rng)  # waveform mixup, before the tail's features
        return self.augment(self.frontend.finish(out), y, rng)

    def state_dict(self) -> dict[str, int]:
        """Where the stream is; the seed is the run's, held by the caller."""
        return self.plan.state_dict()

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.plan.load_state_dict(sd)


class EvalStream(_Stream):
    """Evaluation batches of an :class:`EvalPlan`: manifest order, every sample exactly once across ranks, never
    padded; a clip that fails to decode is left out and reported in :attr:`missing` (key → shard and error)."""

    def __init__(self, records: Sequence[ShardRecord], vocab_size: int, loader: LoaderSettings, frontend: FrontEnd,
                 rank: int, world_size: int, device: torch.device) -> None:
        super().__init__(records, vocab_size, loader, frontend, rank, world_size, device)
        self.plan = EvalPlan(self.records, loader.batch_size, rank, world_size)

    @property
    def missing(self) -> dict[str, str]:
        return self.plan.missing

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, idx, x, y in self._features(0, len(self.plan)):
            yield {"features": x, "labels": y, "keys": self.records.keys(idx)}


_DONE = object()


def _ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` produced by a background thread, at most ``depth`` ahead of the caller, in order; the
    producer's exception is raised here. When the caller stops early the producer is stopped and joined
    before anything else touches the stream."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
            q.put(e)

    thread = threading.Thread(target=produce, name="stream-feed", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


def check_gpu_frontend(frontend: FrontEnd, device: torch.device) -> str:
    """Run ``frontend``'s GPU graph once on a second of silence, so that DALI's GPU ops (its spectrogram loads
    cuFFT) are known to load before a run starts; a failure is one error saying what is missing, not a
    batch of samples blamed. Returns the DALI build and the CUDA libraries this process then has loaded."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        path = Path(tmp) / "silence.flac"
        path.write_bytes(encode_flac(np.zeros(SAMPLE_RATE, dtype=np.int16)))
        rec = ShardRecord("silence", str(path), 0, path.stat().st_size, (), 1.0)
        try:
            next(iter(EvalStream([rec], 1, LoaderSettings(1, num_threads=1, prefetch=1), frontend, 0, 1, device)))
        except Exception as e:
            raise RuntimeError(f"DALI's GPU front-end ({frontend.name}) cannot run on {device}: {e}\n"
                               f"{cuda_build_hint()}") from e
    return f"{dali_build()}, torch CUDA {torch.version.cuda}; loaded {', '.join(loaded_cuda_libraries()) or '?'}"


DALI_BUILDS = ("nvidia-dali-cuda130", "nvidia-dali-cuda120")  # pip's names of DALI's builds, by CUDA major


def dali_build() -> str:
    """The installed DALI build's pip name and version (e.g. ``nvidia-dali-cuda130 2.4.0``), or 'no DALI'."""
    from importlib.metadata import PackageNotFoundError, version

    for name in DALI_BUILDS:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return "no DALI"


def loaded_cuda_libraries(names: Sequence[str] = ("libcufft", "libcudart")) -> list[str]:
    """The files of the shared libraries ``names`` this process has mapped (``/proc/self/maps``; Linux): which
    cuFFT DALI's spectrogram and which CUDA runtime are in use, wherever the loader found them."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = {fields[5] for fields in (line.split(maxsplit=5) for line in maps) if len(fields) == 6}
    return sorted(p for p in paths if Path(p).name.startswith(tuple(names)))


def cuda_build_hint() -> str:
    """What to install when DALI's GPU ops fail: the DALI build for torch's CUDA major."""
    major = (torch.version.cuda or "?").split(".")[0]
    build = dali_build()
    want = f"nvidia-dali-cuda{major}0"
    if not build.startswith(want):  # the builds share files: the other one goes first
        return (f"torch is built for CUDA {torch.version.cuda} and the DALI build is {build}: install {want} "
                f"(pip uninstall -y {' '.join(DALI_BUILDS)}; pip install -e '.[cuda{major}]')")
    libs = {"12": "libcufft.so.11 (pip install nvidia-cufft-cu12)", "13": "libcufft.so.12 (pip install nvidia-cufft)"}
    return (f"{build} matches torch's CUDA {torch.version.cuda}; it loads {libs.get(major, 'cuFFT')}; check that "
            "the driver supports that CUDA major (nvidia-smi)")
