"""Tag audio files with a trained run: top-k clip labels and a per-chunk timeline.

    python -m trainer.predict --checkpoint runs/demo [--weights best|wa] [--top-k 5] [--chunk-seconds 2] \
        [--json] FILES...

There is no second feature path: each input is decoded as the shard builder decodes it
(:mod:`trainer.data.audio`: any libsndfile format, channel mean, soxr to 16 kHz, PCM16 FLAC) into a
temporary directory, and an :class:`EvalStream` reads those FLAC files as it reads shard members, with
the run's resolved feature config (``config.yaml``; run.py saves it after filling in the dataset's
normalisation stats). A file longer than ``features.clip_seconds`` is cut into consecutive windows of
that length, the last one zero-padded as a short training clip is; its clip probabilities are the mean
over windows weighted by the seconds of audio in each. The timeline applies the model to
``chunk_seconds`` chunks of each window's features (:class:`Chunking`, as PSL training does), so
chunks restart at every window boundary (10 s clips, 3 s chunks: 0–3, 3–6, 6–9, 9–10, 10–13 …).
A missing or unreadable file is reported by name after the others' results, and the exit status is 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from trainer.config import ConfigError
from trainer.data.audio import SAMPLE_RATE, AudioError, encode_flac, load_audio, to_pcm16
from trainer.data.chunks import Chunking
from trainer.data.manifest import ShardRecord, Vocabulary
from trainer.data.settings import LoaderSettings
from trainer.data.streams import EvalStream
from trainer.runs import Run, load_run

LOADER = LoaderSettings(batch_size=16)  # windows per batch; a file is a few windows


@dataclass
class Chunk:
    start: float  # seconds from the start of the file
    end: float
    probs: np.ndarray  # C


@dataclass
class FilePrediction:
    path: str
    duration: float  # seconds
    probs: np.ndarray  # C, clip probabilities (window mean)
    chunks: list[Chunk]


def _encode_windows(path: str, file_index: int, clip_samples: int, tmp: Path) -> list[ShardRecord]:
    """Decode ``path`` and write one 16 kHz PCM16 FLAC per clip window; one record each."""
    if not Path(path).is_file():
        raise AudioError(f"{path}: no such file")
    pcm = to_pcm16(load_audio(path))
    if not len(pcm):
        raise AudioError(f"{path}: no audio samples")
    records = []
    for w, start in enumerate(range(0, len(pcm), clip_samples)):
        window = pcm[start:start + clip_samples]
        flac = tmp / f"{file_index:05d}_{w:05d}.flac"
        flac.write_bytes(encode_flac(window))
        records.append(ShardRecord(key=f"{file_index}-{w}-{Path(path).stem}", shard=str(flac), offset=0,
                                   size=flac.stat().st_size, labels=(), duration=len(window) / SAMPLE_RATE))
    return records


@torch.no_grad()
def predict_files(run: Run, paths: Sequence[str], chunk_seconds: float = 2.0
                  ) -> tuple[list[FilePrediction], list[tuple[str, str]]]:
    """Predictions for the readable files in input order, and (path, error) for the others."""
    chunking = Chunking.of(run.frontend, chunk_seconds)
    clip_samples = run.frontend.clip_samples
    errors: list[tuple[str, str]] = []
    windows: dict[int, list[ShardRecord]] = {}
    with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
        for i, path in enumerate(paths):
            try:
                windows[i] = _encode_windows(path, i, clip_samples, Path(tmp))
            except AudioError as e:  # its message names the file
                errors.append((path, str(e)))
            except OSError as e:
                errors.append((path, f"{path}: cannot read: {e}"))
        records = [r for recs in windows.values() for r in recs]
        clip_probs: dict[str, np.ndarray] = {}
        chunk_rows: dict[str, list[tuple[float, float, np.ndarray]]] = {}
        if records:
            stream = EvalStream(records, len(run.vocab), LOADER, run.frontend, 0, 1, run.device)
            for batch in stream:
                x = batch["features"]
                probs, _ = run.model(x)
                chunks, clip_index, spans = chunking.split(x)
                cprobs, _ = run.model(chunks)
                cprobs, clip_index = cprobs.cpu().numpy(), clip_index.cpu().numpy()
                spans = chunking.to_seconds(spans).numpy()
                for b, key in enumerate(batch["keys"]):
                    clip_probs[key] = probs[b].cpu().numpy()
                    chunk_rows[key] = [(float(spans[j, 0]), float(spans[j, 1]), cprobs[j])
                                       for j in np.flatnonzero(clip_index == b)]

    results = []
    for i, recs in windows.items():
        durations = np.array([r.duration for r in recs])
        probs = np.average(np.stack([clip_probs[r.key] for r in recs]), axis=0, weights=durations)
        chunks = []
        for w, r in enumerate(recs):
            offset = w * clip_samples / SAMPLE_RATE
            # chunks that start in the window's zero padding describe no audio; the first always stays
            chunks += [Chunk(offset + s, offset + min(e, r.duration), p) for s, e, p in chunk_rows[r.key]
                       if s < r.duration]
        results.append(FilePrediction(paths[i], float(durations.sum()), probs.astype(np.float32), chunks))
    return results, errors


def top_labels(probs: np.ndarray, vocab: Vocabulary, k: int) -> list[dict]:
    """The ``k`` most probable classes, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"index": int(i), "mid": vocab.mids[i], "name": vocab.names[i], "prob": round(float(probs[i]), 4)}
            for i in order]


def to_json(run_dir: str, weights: str, chunk_seconds: float, results: list[FilePrediction],
            errors: list[tuple[str, str]], vocab: Vocabulary, k: int) -> dict:
    """One JSON-ready document: per file its top-k labels and timeline, then the files that failed."""
    return {
        "checkpoint": str(run_dir), "weights": weights, "chunk_seconds": chunk_seconds,
        "files": [{"path": r.path, "duration": round(r.duration, 3), "top": top_labels(r.probs, vocab, k),
                   "timeline": [{"start": round(c.start, 3), "end": round(c.end, 3),
                                 "top": top_labels(c.probs, vocab, k)} for c in r.chunks]}
                  for r in results],
        "errors": [{"path": p, "error": e} for p, e in errors],
    }


def format_text(doc: dict) -> str:
    """The human-readable form of a :func:`to_json` document."""
    lines = []
    for f in doc["files"]:
        lines.append(f"{f['path']}  ({f['duration']:.2f} s)")
        lines += [f"  {t['prob']:.3f}  {t['name']}" for t in f["top"]]
        lines.append(f"  timeline ({doc['chunk_seconds']:g} s chunks):")
        for c in f["timeline"]:
            labels = ", ".join(f"{t['name']} {t['prob']:.2f}" for t in c["top"])
            lines.append(f"    {c['start']:7.2f}-{c['end']:<7.2f}  {labels}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory (holds config.yaml, models/)")
    p.add_argument("--weights", choices=("best", "wa"), default="best",
                   help="best single epoch or the weight-averaged model (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=5, help="labels shown per file and per chunk (default: %(default)s)")
    p.add_argument("--chunk-seconds", type=float, default=2.0,
                   help="timeline chunk length in seconds (default: %(default)s s)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("files", nargs="+", help="audio files in any format libsndfile reads")
    args = p.parse_args(argv)
    if args.top_k < 1 or args.chunk_seconds <= 0:
        p.error("--top-k and --chunk-seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run = load_run(args.checkpoint, args.weights)
    except (ConfigError, OSError, ValueError) as e:
        print(f"predict: cannot load run {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    results, errors = predict_files(run, args.files, args.chunk_seconds)
    doc = to_json(args.checkpoint, args.weights, args.chunk_seconds, results, errors, run.vocab, args.top_k)
    print(json.dumps(doc, indent=2) if args.json else format_text(doc))
    for path, error in errors:
        print(f"predict: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
