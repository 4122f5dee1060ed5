"""What a PSL student is taught: a teacher's pseudo labels on the students' own training clips, scored against
the generator's true labels, on clean and on SpecAugment-masked features (the training stream masks the
features before the teacher labels the chunks).

    python -m tools.experiments.pseudo_labels runs/TEACHER [--split balanced] [--draws 3]

Prints, per chunk length (10 s and 2 s): mAP of the teacher's chunk probabilities against the true chunk labels
(data/demo/{split}_strong.tsv), the mean probability it gives present and absent classes, and the same with
the teacher run's own augment settings applied (``--draws`` random masks per clip); and, as a baseline, the
clip's weak label copied to each chunk (what weak-label chunk training learns from). For 10 s chunks the true
chunk label is the clip's true label; the weak labels of the clean world are those.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from accelerate import Accelerator

from trainer.config import load_config
from trainer.data.augment import Augmenter
from trainer.data.chunks import Chunking
from trainer.data.datasets import resolve_splits
from trainer.data.features import build_frontend
from trainer.data.streams import EvalStream
from trainer.data.strong_labels import chunk_targets, events_for_key, load_strong_labels
from trainer.metrics import tagging_metrics
from trainer.runs import build_teacher


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("teacher", help="a finished run directory")
    p.add_argument("--split", default="balanced",
                   help="the demo split whose clips are labelled, shards/demo_SPLIT (default: %(default)s)")
    p.add_argument("--draws", type=int, default=3,
                   help="random masks per clip for the masked rows (default: %(default)s)")
    a = p.parse_args(argv)
    cfg = load_config(f"{a.teacher}/config.yaml", [f"data.train=[shards/demo_{a.split}]", f"data.eval=[]",
                                                   "data.valid=[shards/demo_valid]"], check_paths=False)
    data = resolve_splits(cfg.data)
    cfg.features = data.feature_config(cfg.features)
    frontend = build_frontend(cfg.features)
    acc = Accelerator(cpu=True)
    vocab = data.vocab
    teacher = build_teacher(a.teacher, cfg.features, vocab, acc.device)
    strong = load_strong_labels(f"data/demo/{a.split}_strong.tsv", vocab)
    stream = EvalStream(data.train, len(vocab), cfg.data.loader(32), frontend, 0, 1, acc.device)
    augment = Augmenter(cfg.augment, frontend)
    rng = np.random.default_rng(0)
    rows: dict[tuple[float, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    with torch.inference_mode():
        for b, batch in enumerate(stream):
            if b == len(stream):
                break
            x, y = batch["features"], batch["labels"]
            views = [("clean", x)] + [("masked", augment(x, y, rng)[0]) for _ in range(a.draws)]
            for seconds in (10.0, 2.0):
                chunking = Chunking.of(frontend, seconds)
                for view, feats in views:
                    chunks, clip_index, spans = chunking.split(feats)
                    probs = teacher(chunks)[0].float().numpy()
                    spans_s, ci = chunking.to_seconds(spans).numpy(), clip_index.numpy()
                    for i, key in enumerate(batch["keys"]):
                        sel = np.flatnonzero(ci == i)
                        t = chunk_targets(events_for_key(strong, key), spans_s[sel], probs.shape[1])
                        rows.setdefault((seconds, view), []).extend(zip(probs[sel], t))
                        if view == "clean":  # what weak-label chunk training (weak-2s) is taught instead
                            weak = np.broadcast_to(y[i].float().cpu().numpy(), t.shape)
                            rows.setdefault((seconds, "weak label copied"), []).extend(zip(weak, t))
    names = list(vocab.names)
    print(f"teacher {a.teacher} on the {a.split} split ({len(stream.records)} clips), augment {cfg.augment}")
    print("| chunk | targets | chunks | mAP vs true chunk labels | mean p, present | mean p, absent |")
    print("|---|---|---|---|---|---|")
    for (seconds, view), r in rows.items():
        probs, t = np.stack([p for p, _ in r]), np.stack([t for _, t in r])
        m = tagging_metrics(probs, t, names)["mAP"]
        present, absent = probs[t > 0].mean(), probs[t == 0].mean()
        print(f"| {seconds:g} s | {view} | {len(r)} | {m:.3f} | {present:.3f} | {absent:.3f} |")


if __name__ == "__main__":
    main()
