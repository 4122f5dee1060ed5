"""Multi-model ensemble: average the clip probabilities of several runs on the same clips.

    python -m trainer.ensemble RUN_DIR [RUN_DIR ...] [--out DIR]

Each run directory holds predictions/eval_best.npz with arrays probs (N × C), targets (N × C) and
keys (N), and class_labels_indices.csv (class display names; without it classes are numbered).

Offline, the saved predictions are aligned by key and averaged (:func:`mean_predictions`); inline, a
:class:`MeanEnsemble` averages live models' outputs on the same batch (a PSL ensemble teacher), which
needs no key at all.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .data.manifest import VOCABULARY, Vocabulary
from .metrics import keys_digest, tagging_metrics
from .rundir import RunDir


def _align(keys: Sequence[str], other_keys: Sequence[str], name: str) -> np.ndarray:
    """Row indices that put ``other_keys`` in the order of ``keys``; an error names missing keys."""
    index = {k: i for i, k in enumerate(other_keys)}
    if len(index) != len(other_keys):
        raise ValueError(f"{name}: duplicate keys")
    missing = [k for k in keys if k not in index]
    extra = len(other_keys) - (len(keys) - len(missing))
    if missing or extra:
        raise ValueError(f"{name}: {len(missing)} keys missing (e.g. {missing[:5]}), {extra} extra keys")
    return np.array([index[k] for k in keys], dtype=np.int64)


def mean_predictions(predictions: Sequence[tuple[Sequence[str], np.ndarray]]) -> tuple[list[str], np.ndarray]:
    """Average probabilities of several (keys, probs N × C) sets, aligned by key to the first set's order."""
    if not predictions:
        raise ValueError("mean_predictions: no predictions")
    keys = [str(k) for k in predictions[0][0]]
    total = np.zeros(np.shape(predictions[0][1]), dtype=np.float64)
    for i, (k, p) in enumerate(predictions):
        total += np.asarray(p, dtype=np.float64)[_align(keys, [str(x) for x in k], f"predictions #{i}")]
    return keys, total / len(predictions)


class MeanEnsemble(nn.Module):
    """Models with the same outputs (classes, and frames per input: every backbone here pools time by 32)
    as one: forward(features) → (mean clip probs, mean frame probs) of the members, in float32 (members
    may run in another precision under autocast)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("MeanEnsemble: no members")
        self.members = nn.ModuleList(members)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clips, frames = zip(*(m(features) for m in self.members))
        return _mean(clips), _mean(frames)


def _mean(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([x.float() for x in outputs]).mean(0)


def _load(run_dir: Path) -> dict[str, np.ndarray]:
    path = RunDir(run_dir).predictions("eval", "best")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _class_names(run_dirs: Sequence[Path], num_classes: int) -> list[str]:
    """Display names from the runs' vocabularies, which must agree (same classes in the same order)."""
    vocabs = [Vocabulary.load(RunDir(d).vocabulary) for d in run_dirs if RunDir(d).vocabulary.is_file()]
    if not vocabs:
        return [f"class_{i}" for i in range(num_classes)]
    if len({v.digest() for v in vocabs}) > 1:
        raise ValueError(f"the runs' {VOCABULARY} files differ: their probabilities can't be averaged")
    return list(vocabs[0].names)


def ensemble(run_dirs: Sequence[Path], out: Path) -> dict:
    runs = [_load(d) for d in run_dirs]
    keys, probs = mean_predictions([(r["keys"], r["probs"]) for r in runs])
    targets = runs[0]["targets"][_align(keys, [str(k) for k in runs[0]["keys"]], str(run_dirs[0]))]
    for d, r in zip(run_dirs[1:], runs[1:]):
        if not np.array_equal(r["targets"][_align(keys, [str(k) for k in r["keys"]], str(d))], targets):
            raise ValueError(f"{d}: targets differ from {run_dirs[0]} for the same keys")
    names = _class_names(run_dirs, probs.shape[1])

    rows = []
    for d, r in zip(run_dirs, runs):
        m = tagging_metrics(r["probs"], r["targets"], names)
        rows.append({"model": str(d), "mAP": m["mAP"], "mAUC": m["mAUC"], "dprime": m["dprime"]})
    result = tagging_metrics(probs, targets, names)
    rows.append({"model": "ensemble", "mAP": result["mAP"], "mAUC": result["mAUC"], "dprime": result["dprime"]})

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "ensemble_result.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "mAP", "mAUC", "dprime"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {"runs": [str(d) for d in run_dirs], "keys_digest": keys_digest(keys), **result}
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories with predictions/eval_best.npz")
    parser.add_argument("--out", type=Path, default=Path("ensemble"), help="output directory (default: ./ensemble)")
    args = parser.parse_args(argv)
    try:
        s = ensemble(args.run_dirs, args.out)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"ensemble of {len(args.run_dirs)} models on {s['num_samples']} clips: "
          f"mAP {s['mAP']:.4f}  mAUC {s['mAUC']:.4f}  d' {s['dprime']:.3f}  → {args.out}")


if __name__ == "__main__":
    main()
