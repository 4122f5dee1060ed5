"""Use a trained tagger from Python: clip probabilities, a per-chunk timeline and embeddings of files or arrays.

    from trainer.tagger import Tagger
    tagger = Tagger.from_run("runs/demo")              # or weights="wa"; or an export directory
    tagger.tag(["dog.wav"])[0].top(5)                   # [(name, probability), ...]
    tagger.tag([samples], sample_rate=44100)            # arrays: samples, or samples × channels
    tagger.timeline(["street.flac"], chunk_seconds=2)   # per chunk, as trainer.predict prints it
    tagger.embed(["dog.wav"])[0].clip                   # the pooled features before the classifier

Inputs reach the front-end as the training shards did: files are decoded by :func:`load_audio` (any format
libsndfile reads, channel mean, soxr to 16 kHz), arrays are mixed down and resampled by the same rule, and
both are quantised to 16-bit samples (:func:`to_pcm16`), which is what a shard's PCM16 FLAC holds. The
features come from the run's own front-end tail (:meth:`FrontEnd.finish`, on the tagger's device) given the
samples as DALI's decoder gives them to it, so a clip's features are those the evaluation stream computes
from its shard member (tests/test_tagger.py compares the two).

A signal longer than ``features.clip_seconds`` is cut into consecutive windows of that length, the last one
zero-padded as a short training clip is; its clip probabilities (and clip embedding) are the mean over
windows weighted by the seconds of audio in each. The timeline applies the model to ``chunk_seconds``
chunks of each window's features (:class:`Chunking`, as PSL training does), so chunks restart at every
window boundary (10 s clips, 3 s chunks: 0–3, 3–6, 6–9, 9–10, 10–13 …). Windows of all inputs are batched
together (``batch_size`` windows per forward pass).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from trainer.data.atomic import atomic_write, temp_path
from trainer.data.audio import SAMPLE_RATE, AudioError, from_array, load_audio, to_pcm16
from trainer.data.chunks import Chunking
from trainer.data.datasets import load_records
from trainer.data.features import FrontEnd, build_frontend
from trainer.data.manifest import VOCABULARY, Vocabulary
from trainer.data.records import RecordTable
from trainer.data.settings import FeatureConfig, LoaderSettings
from trainer.data.streams import EvalStream
from trainer.evaluate import Pooling, pool_chunks
from trainer.models import FRAME_STRIDE, build_model, load_weights
from trainer.models.settings import ModelConfig
from trainer.rundir import RunDir
from trainer.runs import load_run

Audio = Union[str, Path, np.ndarray]
EXPORT_CONFIG = "config.json"  # an export's front-end and model settings (trainer.export writes it)
EXPORT_WEIGHTS = "model.safetensors"
MAX_SECONDS = 3600.0  # the longest input tagged by default: an hour


@dataclass
class Chunk:
    start: float  # seconds from the start of the input
    end: float
    probs: np.ndarray  # C


@dataclass
class Embedding:
    clip: np.ndarray  # D: the frame embeddings' mean over time (window mean, weighted as the probabilities)
    frames: np.ndarray  # T × D: one per FRAME_STRIDE feature frames, those that start in the audio
    frame_times: np.ndarray  # T: each frame embedding's start, seconds from the start of the input


@dataclass
class Prediction:
    source: str  # the path, or "array {i}"
    duration: float  # seconds
    probs: np.ndarray  # C, clip probabilities (window mean)
    names: tuple[str, ...] = field(repr=False)  # the class names, in the order of probs
    chunks: Optional[list[Chunk]] = None  # with chunk_seconds: the timeline
    embedding: Optional[Embedding] = None  # with embeddings=True

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable classes as (name, probability), most probable first."""
        return [(self.names[i], float(self.probs[i])) for i in np.argsort(-self.probs, kind="stable")[:k]]


@dataclass
class _Window:
    item: int  # index of the input
    index: int  # window number within the input
    pcm: np.ndarray  # int16, at most clip_samples
    results: dict = field(default_factory=dict)


class Tagger:
    """A trained model with its front-end and vocabulary, in eval mode on ``device``."""

    def __init__(self, frontend: FrontEnd, vocab: Vocabulary, model: nn.Module, device: torch.device,
                 batch_size: int = 16, max_seconds: float = MAX_SECONDS) -> None:
        if batch_size < 1 or not max_seconds > 0:
            raise ValueError(f"batch_size and max_seconds must be positive, got {batch_size} and {max_seconds}")
        self.frontend = frontend
        self.vocab = vocab
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.max_seconds = max_seconds  # a longer input is refused: its decode and windows are held whole

    @property
    def names(self) -> tuple[str, ...]:
        return self.vocab.names

    @classmethod
    def from_run(cls, path: str | Path, weights: str = "best", device: str | torch.device = "auto",
                 batch_size: int = 16) -> "Tagger":
        """A run directory's ``models/{weights}.pt`` (best or wa) with its resolved config and vocabulary, or an
        export directory (:meth:`from_export`, whose weights are the ones exported)."""
        if not RunDir(path).config.is_file() and (Path(path) / EXPORT_CONFIG).is_file():
            return cls.from_export(path, device, batch_size)
        run = load_run(path, weights, _device(device))
        return cls(run.frontend, run.vocab, run.model, run.device, batch_size)

    @classmethod
    def from_export(cls, path: str | Path, device: str | torch.device = "auto", batch_size: int = 16) -> "Tagger":
        """An export directory (``python -m trainer.export``): config.json, model.safetensors and the vocabulary;
        no pickles are read."""
        path = Path(path)
        try:
            cfg = json.loads((path / EXPORT_CONFIG).read_text())
            features, model_cfg = FeatureConfig(**cfg["features"]), ModelConfig(**cfg["model"])
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path / EXPORT_CONFIG}: not an export's config ({e})") from None
        vocab = Vocabulary.load(path / VOCABULARY)
        model = build_model(model_cfg, len(vocab), load_pretrained=False)
        load_weights(model, path / EXPORT_WEIGHTS)
        return cls(build_frontend(features), vocab, model, _device(device), batch_size)

    def tag(self, inputs: Sequence[Audio], sample_rate: Optional[int] = None) -> list[Prediction]:
        """Clip probabilities of each input (paths, or arrays at ``sample_rate``); AudioError names a bad one."""
        return self.predict(inputs, sample_rate)[0]

    def timeline(self, inputs: Sequence[Audio], sample_rate: Optional[int] = None,
                 chunk_seconds: float = 2.0) -> list[list[Chunk]]:
        """Probabilities per ``chunk_seconds`` chunk of each input."""
        return [p.chunks for p in self.predict(inputs, sample_rate, chunk_seconds=chunk_seconds)[0]]

    def embed(self, inputs: Sequence[Audio], sample_rate: Optional[int] = None) -> list[Embedding]:
        """Clip and frame embeddings (the features before the classifier) of each input."""
        return [p.embedding for p in self.predict(inputs, sample_rate, embeddings=True)[0]]

    @torch.no_grad()
    def predict(self, inputs: Sequence[Audio], sample_rate: Optional[int] = None, chunk_seconds: Optional[float] = None,
                embeddings: bool = False, skip_errors: bool = False, clip_score: Pooling = "whole",
                ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Everything at once: predictions for the inputs in order, with the timeline when ``chunk_seconds`` is
        given and embeddings when asked. An input that cannot be read raises AudioError naming it, or with
        ``skip_errors`` is left out and listed as (source, error) after the predictions. ``clip_score``: an
        input's clip probabilities from the model's clip output (``whole``, PSL's evaluation), or the ``max`` /
        ``mean`` over its ``chunk_seconds`` chunks (PSL's inference tool takes the max), as summary.json's
        ``best_single_chunk_pooled``."""
        if isinstance(inputs, (str, Path, np.ndarray)):
            raise TypeError("inputs: a list of paths or arrays (one input is a list of one)")
        if clip_score not in ("whole", "max", "mean"):
            raise ValueError(f"clip_score: 'whole', 'max' or 'mean', got {clip_score!r}")
        if clip_score != "whole" and chunk_seconds is None:
            raise ValueError(f"clip_score {clip_score!r} pools over chunks: give chunk_seconds")
        chunking = Chunking.of(self.frontend, chunk_seconds) if chunk_seconds is not None else None
        results: list[Prediction] = []
        errors: list[tuple[str, str]] = []
        pending: list[tuple[int, str, list[_Window]]] = []  # inputs whose windows are queued
        queue: list[_Window] = []
        for item, x in enumerate(inputs):
            source = f"array {item}" if isinstance(x, np.ndarray) else str(x)
            try:
                pcm = to_pcm16(_load(x, sample_rate, source, self.max_seconds))
            except AudioError as e:  # its message names the input
                if not skip_errors:
                    raise
                errors.append((source, str(e)))
                continue
            except OSError as e:
                if not skip_errors:
                    raise AudioError(f"{source}: cannot read: {e}") from e
                errors.append((source, f"{source}: cannot read: {e}"))
                continue
            clip = self.frontend.clip_samples
            windows = [_Window(item, w, pcm[s:s + clip]) for w, s in enumerate(range(0, len(pcm), clip))]
            pending.append((item, source, windows))
            queue += windows
            while len(queue) >= self.batch_size:
                self._run(queue[:self.batch_size], chunking, embeddings)
                queue = queue[self.batch_size:]
                results += self._finished(pending, chunking, embeddings, done=False)
        for start in range(0, len(queue), self.batch_size):
            self._run(queue[start:start + self.batch_size], chunking, embeddings)
        results += self._finished(pending, chunking, embeddings, done=True)
        if clip_score != "whole":
            for pred in results:
                chunk_probs = torch.from_numpy(np.stack([c.probs for c in pred.chunks]))
                pred.probs = pool_chunks(chunk_probs, torch.zeros(len(chunk_probs), dtype=torch.long), 1,
                                         clip_score)[0].numpy()
        return results, errors

    def features(self, pcm: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """B × clip_samples int16 samples (zero past each clip's ``length``) → the front-end's features."""
        return self.frontend.finish(self.frontend.decoded(pcm.to(self.device), length.to(self.device)))

    def _run(self, batch: list[_Window], chunking: Optional[Chunking], embeddings: bool) -> None:
        """One forward pass over ``batch``; each window's outputs go to its ``results``."""
        clip = self.frontend.clip_samples
        pcm = torch.zeros(len(batch), clip, dtype=torch.int16)
        for row, w in enumerate(batch):
            pcm[row, :len(w.pcm)] = torch.from_numpy(w.pcm)
        x = self.features(pcm, torch.tensor([len(w.pcm) for w in batch]))
        frames = self.model.embed(x)
        probs, _ = self.model.head(frames)
        for w, p in zip(batch, probs.float().cpu().numpy()):
            w.results["probs"] = p
        if embeddings:
            for w, f in zip(batch, frames.float().transpose(1, 2).cpu().numpy()):
                w.results["frames"] = f
        if chunking is not None:
            chunks, clip_index, spans = chunking.split(x)
            cprobs = self.model(chunks)[0].float().cpu().numpy()
            clip_index, spans = clip_index.cpu().numpy(), chunking.to_seconds(spans).numpy()
            for b, w in enumerate(batch):
                w.results["chunks"] = [(float(spans[j, 0]), float(spans[j, 1]), cprobs[j])
                                       for j in np.flatnonzero(clip_index == b)]

    def _finished(self, pending: list[tuple[int, str, list[_Window]]], chunking: Optional[Chunking],
                  embeddings: bool, done: bool) -> list[Prediction]:
        """Predictions of the leading inputs whose windows have all run (all of them when ``done``), taken
        out of ``pending``."""
        out = []
        while pending and (done or all(w.results for w in pending[0][2])):
            _, source, windows = pending.pop(0)
            out.append(self._combine(source, windows, chunking, embeddings))
        return out

    def _combine(self, source: str, windows: list[_Window], chunking: Optional[Chunking],
                 embeddings: bool) -> Prediction:
        seconds = np.array([len(w.pcm) / SAMPLE_RATE for w in windows])
        window_seconds = self.frontend.clip_samples / SAMPLE_RATE
        probs = np.average(np.stack([w.results["probs"] for w in windows]), axis=0, weights=seconds)
        pred = Prediction(source, float(seconds.sum()), probs.astype(np.float32), self.names)
        if chunking is not None:
            # chunks that start in a window's zero padding describe no audio; the first always stays
            pred.chunks = [Chunk(w.index * window_seconds + s, w.index * window_seconds + min(e, d), p)
                           for w, d in zip(windows, seconds) for s, e, p in w.results["chunks"] if s < d]
        if embeddings:
            frame_seconds = FRAME_STRIDE / self.frontend.frames_per_second
            clip = np.average(np.stack([w.results["frames"].mean(axis=0) for w in windows]), axis=0, weights=seconds)
            frames, times = [], []
            for w, d in zip(windows, seconds):
                starts = np.arange(len(w.results["frames"])) * frame_seconds
                keep = starts < d
                frames.append(w.results["frames"][keep])
                times.append(w.index * window_seconds + starts[keep])
            pred.embedding = Embedding(clip.astype(np.float32), np.concatenate(frames), np.concatenate(times))
        return pred


def _device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load(x: Audio, sample_rate: Optional[int], source: str, max_seconds: float) -> np.ndarray:
    """A path decoded by :func:`load_audio`, or an array mixed down and resampled by the same rule
    (:func:`from_array`); float32 mono at 16 kHz, not empty, at most ``max_seconds`` long (refused before it is
    decoded, so a lying header costs no memory)."""
    if isinstance(x, np.ndarray):
        if sample_rate is None:
            raise ValueError("sample_rate: required with arrays (the rate of their samples)")
        wave = from_array(x, sample_rate, source, max_seconds)
    else:
        if not Path(x).is_file():
            raise AudioError(f"{x}: no such file")
        wave = load_audio(x, max_seconds=max_seconds)
    if not len(wave):
        raise AudioError(f"{source}: no audio samples")
    return wave


@torch.no_grad()
def tag_dataset(tagger: Tagger, spec: str, out: str | Path, accelerator: Accelerator, embeddings: bool = False) -> dict:
    """Tag every clip of a built dataset (a directory or a shard pattern inside one, or either at a URL: clips read
    by byte range, trainer/data/remote.py) through the training data
    path (:class:`EvalStream`: DALI, each clip cropped or padded to ``clip_seconds``), on all of
    ``accelerator``'s processes; collective. ``out`` (new, or an empty directory) receives, in manifest
    order, ``keys.npy``, ``probs.npy`` (N × C) and with ``embeddings`` ``embeddings.npy`` (N × D, the clip
    embeddings), the model's vocabulary (the columns of probs) and ``info.json`` (counts, and the clips that
    did not decode, by key with their error). Each clip is tagged by one process; the output appears under its
    name complete, or not at all."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory; tagging never overwrites results")
    records, vocab, _ = load_records(spec)
    tmp = temp_path(out)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed earlier attempt's parts
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank, world = accelerator.process_index, accelerator.num_processes
    stream = EvalStream(records, len(vocab), LoaderSettings(tagger.batch_size), tagger.frontend, rank, world,
                        tagger.device)
    keys, probs, clips = [], [], []
    for batch in stream:
        if not batch["keys"]:  # a rank's empty last batch
            continue
        frames = tagger.model.embed(batch["features"])
        keys += batch["keys"]
        probs.append(tagger.model.head(frames)[0].float().cpu().numpy())
        clips.append(frames.mean(dim=2).float().cpu().numpy())
    with atomic_write(tmp / f"part-{rank:05d}.npz", "wb") as f:
        np.savez(f, keys=np.array(keys, dtype=str), probs=_rows(probs), clips=_rows(clips),
                 missing=np.array(json.dumps(stream.missing)))
    accelerator.wait_for_everyone()
    info = {}
    if accelerator.is_main_process:
        info = _merge_parts(tmp, records, tagger.vocab, spec, embeddings)
        os.replace(tmp, out)  # onto a missing or empty directory
    accelerator.wait_for_everyone()
    return info


def _rows(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros((0, 0), dtype=np.float32)


def _merge_parts(tmp: Path, records: RecordTable, vocab: Vocabulary, spec: str, embeddings: bool) -> dict:
    """The ranks' parts in ``tmp`` → the output files, in manifest order; every clip exactly once, tagged or
    listed as missing (RuntimeError otherwise)."""
    parts = [np.load(p, allow_pickle=False) for p in sorted(tmp.glob("part-*.npz"))]
    keys = [str(k) for p in parts for k in p["keys"]]
    missing = {k: e for p in parts for k, e in json.loads(str(p["missing"])).items()}
    position = {k: i for i, k in enumerate(records.keys(range(len(records))))}
    if len(set(keys)) != len(keys) or len(keys) + len(missing) != len(records) or set(keys) & set(missing):
        raise RuntimeError(f"{spec}: {len(keys)} clips tagged ({len(set(keys))} distinct) and {len(missing)} "
                           f"missing, for {len(records)} in the dataset")
    order = np.argsort([position[k] for k in keys], kind="stable")
    np.save(tmp / "keys.npy", np.array(keys, dtype=str)[order])
    np.save(tmp / "probs.npy", np.concatenate([p["probs"] for p in parts if len(p["keys"])])[order])
    if embeddings:
        np.save(tmp / "embeddings.npy", np.concatenate([p["clips"] for p in parts if len(p["keys"])])[order])
    for p in sorted(tmp.glob("part-*.npz")):
        p.unlink()
    vocab.save(tmp / VOCABULARY)
    info = {"dataset": spec, "num_clips": len(records), "num_tagged": len(keys), "missing": missing,
            "classes": len(vocab), "vocabulary_digest": vocab.digest(), "embeddings": embeddings}
    (tmp / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
