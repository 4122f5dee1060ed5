"""Tag audio files with a trained run: top-k clip labels and a per-chunk timeline; or tag a whole dataset.

    python -m trainer.predict --checkpoint runs/demo [--weights best|wa] [--top-k 5] [--chunk-seconds 2] \
        [--json] FILES...
    accelerate launch -m trainer.predict --checkpoint runs/demo --dataset shards/X --out DIR [--embeddings]
    accelerate launch -m trainer.predict --checkpoint runs/demo --dataset s3://bucket/X --out DIR

A command line over :class:`trainer.tagger.Tagger`, which says how inputs are decoded, windowed and chunked
(``--checkpoint`` may also be an export directory of ``python -m trainer.export``). A missing or unreadable
file is reported by name after the others' results, and the exit status is 1. ``--dataset`` tags every clip
of a built dataset through the training data path on all launched processes (:func:`tag_dataset`) and
writes keys, probabilities and, with ``--embeddings``, clip embeddings as ``.npy`` files to a new directory.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from trainer.config import ConfigError
from trainer.data.manifest import Vocabulary
from trainer.tagger import MAX_SECONDS, Prediction, Tagger, tag_dataset


def top_labels(probs: np.ndarray, vocab: Vocabulary, k: int) -> list[dict]:
    """The ``k`` most probable classes, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"index": int(i), "mid": vocab.mids[i], "name": vocab.names[i], "prob": round(float(probs[i]), 4)}
            for i in order]


def to_json(run_dir: str, weights: str, chunk_seconds: float, results: list[Prediction],
            errors: list[tuple[str, str]], vocab: Vocabulary, k: int, clip_score: str = "whole") -> dict:
    """One JSON-ready document: per file its top-k labels and timeline, then the files that failed."""
    return {
        "checkpoint": str(run_dir), "weights": weights, "chunk_seconds": chunk_seconds, "clip_score": clip_score,
        "files": [{"path": r.source, "duration": round(r.duration, 3), "top": top_labels(r.probs, vocab, k),
                   "timeline": [{"start": round(c.start, 3), "end": round(c.end, 3),
                                 "top": top_labels(c.probs, vocab, k)} for c in r.chunks]}
                  for r in results],
        "errors": [{"path": p, "error": e} for p, e in errors],
    }


def format_text(doc: dict) -> str:
    """The human-readable form of a :func:`to_json` document."""
    lines = []
    for f in doc["files"]:
        score = "" if doc["clip_score"] == "whole" else f", {doc['clip_score']} over its {doc['chunk_seconds']:g} s chunks"
        lines.append(f"{f['path']}  ({f['duration']:.2f} s{score})")
        lines += [f"  {t['prob']:.3f}  {t['name']}" for t in f["top"]]
        lines.append(f"  timeline ({doc['chunk_seconds']:g} s chunks):")
        for c in f["timeline"]:
            labels = ", ".join(f"{t['name']} {t['prob']:.2f}" for t in c["top"])
            lines.append(f"    {c['start']:7.2f}-{c['end']:<7.2f}  {labels}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory (holds config.yaml, models/) or export directory")
    p.add_argument("--weights", choices=("best", "wa"), default="best",
                   help="best single epoch or the weight-averaged model (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=5, help="labels shown per file and per chunk (default: %(default)s)")
    p.add_argument("--chunk-seconds", type=float, default=2.0,
                   help="timeline chunk length in seconds (default: %(default)s s)")
    p.add_argument("--clip-score", choices=("whole", "max", "mean"), default="whole",
                   help="a file's labels from the model's clip output (whole, PSL's evaluation) or the max / mean over "
                        "its --chunk-seconds chunks (PSL's inference takes the max; give the chunk length the model "
                        "trained on) (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                   help="longest file tagged, in seconds; a longer one is listed as an error (default: %(default)g s)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--dataset", help="tag every clip of this built dataset (a directory, a shard pattern, or a URL: "
                   "https://, s3://, gs://)")
    p.add_argument("--out", help="with --dataset: a new (or empty) directory for the .npy files")
    p.add_argument("--embeddings", action="store_true", help="with --dataset: also write clip embeddings")
    p.add_argument("files", nargs="*", help="audio files in any format libsndfile reads")
    args = p.parse_args(argv)
    if args.top_k < 1 or not args.chunk_seconds > 0 or not args.max_seconds > 0:
        p.error("--top-k, --chunk-seconds and --max-seconds must be positive")
    if bool(args.dataset) == bool(args.files):
        p.error("give audio files or --dataset, not both")
    if bool(args.dataset) != bool(args.out) or (args.embeddings and not args.dataset):
        p.error("--dataset needs --out, and --out and --embeddings go with --dataset")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    accelerator = None
    if args.dataset:
        from accelerate import Accelerator

        accelerator = Accelerator()
    try:
        tagger = Tagger.from_run(args.checkpoint, args.weights, accelerator.device if accelerator else "auto")
    except (ConfigError, OSError, ValueError) as e:
        print(f"predict: cannot load run {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    if accelerator is not None:
        try:
            info = tag_dataset(tagger, args.dataset, args.out, accelerator, args.embeddings)
        except (OSError, ValueError) as e:
            print(f"predict: {e}", file=sys.stderr)
            return 2
        if accelerator.is_main_process:  # the one that merged the ranks' parts
            print(f"{info['num_tagged']} of {info['num_clips']} clips of {args.dataset} tagged into {args.out}"
                  + (f"; {len(info['missing'])} did not decode (listed in info.json)" if info["missing"] else ""))
        return 0
    tagger.max_seconds = args.max_seconds
    results, errors = tagger.predict(args.files, chunk_seconds=args.chunk_seconds, skip_errors=True,
                                     clip_score=args.clip_score)
    doc = to_json(args.checkpoint, args.weights, args.chunk_seconds, results, errors, tagger.vocab, args.top_k,
                  args.clip_score)
    print(json.dumps(doc, indent=2) if args.json else format_text(doc))
    for path, error in errors:
        print(f"predict: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
