"""Fill in AudioSet's missing labels (PSLA's label enhancement) as a new dataset that links to the input's shards.

    python -m tools.enhance_labels shards/NAME --out shards/NAME_enhanced [--ontology]
        [--model runs/RUN [--weights best|wa] --percentile P|mean [--related-only]] [--weight-offset X]

Steps, one or both:

- ``--ontology``: every ancestor of each label along AudioSet's ontology (shipped in tools/audioset) is
  added. Ancestors outside the dataset's vocabulary (the ontology's abstract classes, or classes a smaller
  vocabulary leaves out) cannot be, and are counted per class in dataset.json.
- ``--model RUN --percentile P``: the run predicts every clip through the evaluation path (its own front-end,
  normalisation and evaluation batch size; one process, on the GPU when there is one). For each class the threshold is the P-th percentile (linear
  interpolation, numpy's default, as PSLA computes it) of the run's scores on the clips labelled with the class,
  or their mean with ``--percentile mean``; the class is added to every clip scoring at or above it.
  ``--related-only`` keeps only classes that are ancestors or descendants of one of the clip's labels.

Thresholds and ancestor/descendant relations are computed from the input's labels; a label both steps would
add is added once, as "ontology".

The output directory holds relative symbolic links to the input's shards and indexes, pointing at the files
themselves (an enhanced input's links are followed), so no audio is copied and the two directories keep
working when moved together (the input may be a URL, ``https://``, ``s3://`` or ``gs://``: the output, a local
directory, then names the input's shards by URL, read by byte range); ``manifest.jsonl`` with the new labels,
``weights.csv`` (PSLA weights of the new labels), the vocabulary, the input's ``rejects.jsonl``, ``dataset.json`` (the input's, with class counts
updated and this enhancement appended to ``enhancements``) and ``enhancement.csv`` (every added label: key,
class, reason, and for the model step score and threshold; an enhanced input's rows come first). It is written
under a hidden name beside --out and renamed into place, so --out appears complete or not at all.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from accelerate import Accelerator

from tools import audioset
from tools.added_labels import AddedLabel, read_added_labels, write_added_labels
from tools.audioset import Ontology
from tools.build_shards import class_counts, write_labels
from trainer.data.atomic import atomic_write, temp_path
from trainer.data.datasets import index_path, load_records
from trainer.data.manifest import DATASET_INFO, ENHANCEMENT, REJECTS, VOCABULARY, Vocabulary
from trainer.data.records import ShardRecord
from trainer.data.remote import RemoteError, Stores, fetch_dataset, is_url
from trainer.data.settings import RemoteSettings
from trainer.data.streams import EvalStream
from trainer.evaluate import predict_clips
from trainer.rundir import RunDir
from trainer.runs import load_run

ONTOLOGY, MODEL = "ontology", "model"  # the reasons in enhancement.csv
VERSION = "1"
MOST_AFFECTED = 5  # classes named in the summary line


@dataclass
class EnhanceOptions:
    dataset: Path | str  # a directory, or a URL
    out: Path
    ontology: bool = False
    model: Path | None = None  # a run directory
    weights: str = "best"  # the run's models/{weights}.pt
    percentile: float | str | None = None  # 0-100, or "mean"; required with model
    related_only: bool = False
    weight_offset: float | None = None  # None: the input's (dataset.json), else PSLA's 0.01


@dataclass
class EnhanceResult:
    out: Path
    num_shards: int  # linked from the input
    num_clips: int
    clips_changed: int
    labels_before: int
    added: dict[str, int]  # reason -> labels added
    added_per_class: list[dict[str, int]]  # per class index: reason -> labels added
    names: Sequence[str]
    outside_vocabulary: int  # ancestors the ontology step could not add
    not_predicted: int  # clips the run could not predict (they do not decode)

    def summary(self) -> str:
        total = sum(self.added.values())
        s = (f"{self.num_clips} clips, {self.clips_changed} changed; {total} labels added ("
             + ", ".join(f"{reason}: {n}" for reason, n in self.added.items())
             + f"), {self.labels_before / max(self.num_clips, 1):.2f} -> "
               f"{(self.labels_before + total) / max(self.num_clips, 1):.2f} labels per clip")
        if ONTOLOGY in self.added:
            s += f"; {self.outside_vocabulary} ancestor labels outside the vocabulary skipped"
        if MODEL in self.added and self.not_predicted:
            s += f"; {self.not_predicted} clips not predicted (they do not decode)"
        per_class = [sum(d.values()) for d in self.added_per_class]
        top = [c for c in np.argsort(-np.array(per_class), kind="stable")[:MOST_AFFECTED] if per_class[c]]
        if top:
            s += "; most affected: " + ", ".join(f'"{self.names[c]}" +{per_class[c]}' for c in top)
        return s


def ontology_additions(label_sets: Sequence[Sequence[int]], vocab: Vocabulary, onto: Ontology
                       ) -> tuple[list[list[int]], collections.Counter, list[str]]:
    """Per clip, the ancestors of its labels that are in the vocabulary and not among its labels (sorted); how
    many clips each ancestor outside the vocabulary would have gone to; the vocabulary's classes the ontology
    lacks (they have no ancestors to add)."""
    unknown = [m for m in vocab.mids if m not in onto]
    above = [onto.ancestors(m) if m in onto else set() for m in vocab.mids]
    added, outside = [], collections.Counter()
    for labels in label_sets:
        ancestors = set().union(*(above[c] for c in labels))
        added.append(sorted({vocab.index[m] for m in ancestors if m in vocab.index} - set(labels)))
        outside.update(m for m in ancestors if m not in vocab.index)
    return added, outside, unknown


def class_thresholds(scores: np.ndarray, labelled: np.ndarray, percentile: float | str) -> np.ndarray:
    """Per class, the ``percentile``-th percentile (or with "mean", the mean) of ``scores`` (clips × classes) over
    the clips ``labelled`` (a boolean mask of the same shape) with that class; NaN for a class no clip has."""
    thresholds = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        s = scores[labelled[:, c], c].astype(np.float64)
        if s.size:
            thresholds[c] = s.mean() if percentile == "mean" else np.percentile(s, percentile)
    return thresholds


def related_classes(vocab: Vocabulary, onto: Ontology) -> np.ndarray:
    """Classes × classes: [a, b] is true when b is an ancestor or a descendant of a in the ontology."""
    related = np.zeros((len(vocab), len(vocab)), dtype=bool)
    for a, mid in enumerate(vocab.mids):
        if mid in onto:
            for m in onto.ancestors(mid) | onto.descendants(mid):
                if m in vocab.index:
                    related[a, vocab.index[m]] = True
    return related


def model_additions(scores: np.ndarray, labelled: np.ndarray, thresholds: np.ndarray,
                    related: np.ndarray | None = None) -> np.ndarray:
    """Clips × classes to add: a score at or above the class's threshold on a clip not labelled with the class
    (a NaN score or threshold adds nothing); with ``related``, only classes related to one of the clip's labels."""
    with np.errstate(invalid="ignore"):
        add = (scores >= thresholds[None, :]) & ~labelled
    if related is not None:
        add &= (labelled.astype(np.float32) @ related.astype(np.float32)) > 0  # BLAS; counts stay exact
    return add


def predict_scores(run_dir: Path, weights: str, records: Sequence[ShardRecord], vocab: Vocabulary
                   ) -> tuple[np.ndarray, dict[str, str]]:
    """The run's clip probabilities (records × classes; a NaN row for a clip that does not decode) through
    trainer.evaluate.predict_clips, and the clips left out (key -> shard and error)."""
    run_vocab = Vocabulary.load(RunDir(run_dir).vocabulary)  # before the model, whose head it sizes
    if run_vocab.digest() != vocab.digest():
        raise ValueError(f"{RunDir(run_dir).vocabulary} (digest {run_vocab.digest()}, {len(run_vocab)} classes) is not the "
                         f"dataset's vocabulary (digest {vocab.digest()}, {len(vocab)} classes): the run's outputs "
                         "mean other classes")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    run = load_run(run_dir, weights, accelerator.device)
    cfg = run.config
    stream = EvalStream(records, len(vocab), cfg.data.loader(cfg.evaluation.batch_size), run.frontend, 0, 1,
                        run.device)
    preds = predict_clips(run.model, stream, accelerator)
    row = {k: i for i, k in enumerate(preds.keys)}
    scores = np.full((len(records), len(vocab)), np.nan, dtype=np.float32)
    for i, r in enumerate(records):
        if r.key in row:
            scores[i] = preds.probs[row[r.key]]
    return scores, dict(stream.missing)


def check_out(out: Path, dataset: Path | None) -> None:
    """--out must be new or an empty directory (no run overwrites results), and not the input (a directory;
    None for a URL)."""
    if dataset is not None and out.resolve() == dataset.resolve():
        raise ValueError(f"--out {out} is the input dataset; name a new directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty directory; name a new one")


def enhance(opts: EnhanceOptions) -> EnhanceResult:
    """Add labels to ``opts.dataset`` by the chosen steps and write the result to ``opts.out``."""
    if not (opts.ontology or opts.model):
        raise ValueError("nothing to do: choose --ontology, --model RUN --percentile P, or both")
    if opts.model is not None:
        if opts.percentile is None:
            raise ValueError("--model needs --percentile (5, 10, 25, 50 or mean)")
        if opts.percentile != "mean" and not 0 <= float(opts.percentile) <= 100:
            raise ValueError(f"--percentile {opts.percentile} must be within [0, 100] or 'mean'")
    elif opts.related_only or opts.percentile is not None:
        raise ValueError("--percentile and --related-only apply to the model step: add --model RUN")
    url = str(opts.dataset).rstrip("/") if is_url(str(opts.dataset)) else None
    stores = Stores(RemoteSettings())
    # the input's small files: its directory, or their copies in the node's cache (the manifest's ones too)
    root = fetch_dataset(url, stores) if url is not None else Path(opts.dataset).resolve()
    if not (root / VOCABULARY).is_file():
        raise FileNotFoundError(f"{opts.dataset}: no {VOCABULARY}; expected a dataset directory built by "
                                "tools.build_shards")
    check_out(opts.out, None if url else root)
    # absolute shard paths, every shard and index checked; or shard URLs, every shard answering
    records, vocab, info = load_records(url or str(root))
    n, num_classes = len(records), len(vocab)
    labelled = np.zeros((n, num_classes), dtype=bool)
    for i, r in enumerate(records):
        labelled[i, list(r.labels)] = True
    onto = audioset.ontology() if opts.ontology or opts.related_only else None
    steps: list[str] = []
    reason = np.zeros((n, num_classes), dtype=np.int8)  # 0: not added, else 1 + the index of its step in steps
    step: dict = {"tool": "tools.enhance_labels", "version": VERSION, "steps": steps}
    outside: collections.Counter = collections.Counter()
    not_predicted: dict[str, str] = {}

    if opts.ontology:
        added, outside, unknown = ontology_additions([r.labels for r in records], vocab, onto)
        steps.append(ONTOLOGY)
        for i, classes in enumerate(added):
            reason[i, classes] = len(steps)
        step[ONTOLOGY] = {
            "ancestors_outside_vocabulary": {m: {"name": onto.name(m), "clips": k} for m, k in sorted(outside.items())},
            "classes_not_in_ontology": unknown,
        }
    if opts.model is not None:
        scores, not_predicted = predict_scores(opts.model, opts.weights, records, vocab)
        predicted = ~np.isnan(scores).any(axis=1)
        thresholds = class_thresholds(scores, labelled & predicted[:, None], opts.percentile)
        add = model_additions(scores, labelled, thresholds,
                              related_classes(vocab, onto) if opts.related_only else None)
        steps.append(MODEL)
        reason[add & (reason == 0)] = len(steps)
        step[MODEL] = {
            "run": str(opts.model.resolve()), "weights": opts.weights, "percentile": opts.percentile,
            "related_only": opts.related_only,
            "thresholds": [None if np.isnan(t) else float(t) for t in thresholds],
            "classes_without_labelled_clips": [vocab.mids[c] for c in np.flatnonzero(np.isnan(thresholds))],
            "not_predicted": not_predicted,
        }

    rows = []
    for i, c in zip(*np.nonzero(reason)):  # clip by clip in manifest order, classes in index order
        why = steps[reason[i, c] - 1]
        rows.append(AddedLabel(records[i].key, int(c), vocab.mids[c], vocab.names[c], why,
                               float(scores[i, c]) if why == MODEL else None,
                               float(thresholds[c]) if why == MODEL else None))
    per_class = [{why: int((reason[:, c] == k).sum()) for k, why in enumerate(steps, 1)} for c in range(num_classes)]
    result = EnhanceResult(
        out=opts.out, num_shards=len({r.shard for r in records}), num_clips=n,
        clips_changed=int(reason.any(axis=1).sum()), labels_before=int(labelled.sum()),
        added={why: int((reason == k).sum()) for k, why in enumerate(steps, 1)}, added_per_class=per_class,
        names=vocab.names, outside_vocabulary=sum(outside.values()), not_predicted=len(not_predicted))
    step.update(clips=n, clips_changed=result.clips_changed, labels_before=result.labels_before,
                labels_added=result.added,
                labels_added_per_class=[{"index": c, "mid": vocab.mids[c], "display_name": vocab.names[c], **d}
                                        for c, d in enumerate(per_class) if any(d.values())])
    new_labels = [tuple(r.labels) + tuple(int(c) for c in np.flatnonzero(reason[i])) for i, r in enumerate(records)]
    prior = read_added_labels(root / ENHANCEMENT) if (root / ENHANCEMENT).is_file() else []
    _write(opts, root, url, stores, records, new_labels, vocab, info, prior + rows, step)
    return result


def _write(opts: EnhanceOptions, root: Path, url: str | None, stores: Stores, records: Sequence[ShardRecord],
           labels: Sequence[tuple[int, ...]], vocab: Vocabulary, info: dict, rows: list[AddedLabel],
           step: dict) -> None:
    """The output directory, built under a hidden name beside --out and renamed into place (``url``: the input's,
    whose small files are in ``root``, a cache)."""
    final = Path(os.path.realpath(opts.out.parent)) / opts.out.name  # where the links resolve from once renamed
    tmp = temp_path(opts.out)
    if tmp.exists():  # left by a run killed before its rename
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        linked: set[Path] = set()
        out_records = []
        for r, new in zip(records, labels):
            if is_url(r.shard):  # a shard at a URL is named by it: no link to make
                out_records.append(replace(r, labels=new))
                continue
            shard = Path(r.shard)
            if shard not in linked:
                linked.add(shard)
                for target in (shard, index_path(shard)):
                    name = target.relative_to(root)
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(os.path.relpath(os.path.realpath(target), (final / name).parent), tmp / name)
            out_records.append(replace(r, shard=str(shard.relative_to(root)), labels=new))
        offset = opts.weight_offset if opts.weight_offset is not None else info.get("weight_offset", 0.01)
        write_labels(tmp, vocab, out_records, offset)
        write_added_labels(tmp / ENHANCEMENT, rows)
        if url is not None:
            try:
                stores.download(f"{url}/{REJECTS}", tmp / REJECTS)
            except RemoteError as e:
                if not isinstance(e.__cause__, FileNotFoundError):
                    raise
        elif (root / REJECTS).is_file():
            shutil.copyfile(root / REJECTS, tmp / REJECTS)
        step = dict(step, source=url or os.path.relpath(root, final))
        info = dict(info, name=opts.out.name, weight_offset=offset,
                    class_counts=class_counts((r.labels for r in out_records), len(vocab)),
                    enhancements=info.get("enhancements", []) + [step])
        with atomic_write(tmp / DATASET_INFO) as f:
            f.write(json.dumps(info, indent=1) + "\n")
        check_out(opts.out, None if url else root)  # still free after the prediction
        os.replace(tmp, opts.out)  # renaming onto an empty directory replaces it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _percentile(text: str) -> float | str:
    if text == "mean":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number in [0, 100] or 'mean'") from None


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.enhance_labels", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="a dataset directory built by tools.build_shards, or its URL")
    p.add_argument("--out", type=Path, required=True, help="the new dataset directory shards/NAME (new or empty)")
    p.add_argument("--ontology", action="store_true", help="add every missing ancestor of each label")
    p.add_argument("--model", type=Path, metavar="RUN", help="a trained run directory whose predictions add labels")
    p.add_argument("--weights", choices=("best", "wa"), default="best",
                   help="the run's best or weight-averaged model (default: %(default)s)")
    p.add_argument("--percentile", type=_percentile, metavar="P",
                   help="per class, add where the score reaches the P-th percentile of the labelled clips' scores "
                        "(PSLA: 5, 10, 25, 50, or mean)")
    p.add_argument("--related-only", action="store_true",
                   help="the model adds only ancestors or descendants of a clip's labels")
    p.add_argument("--weight-offset", type=float,
                   help="PSLA weight 1000/(count+offset) (default: the input's, from its dataset.json)")
    a = p.parse_args(argv)
    if a.out.name in ("", ".", ".."):
        p.error("--out must name the dataset directory, e.g. shards/NAME")
    opts = EnhanceOptions(dataset=a.dataset if is_url(a.dataset) else Path(a.dataset), out=a.out,
                          ontology=a.ontology, model=a.model, weights=a.weights, percentile=a.percentile,
                          related_only=a.related_only, weight_offset=a.weight_offset)
    try:
        result = enhance(opts)
    except (OSError, ValueError, RemoteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    shards = "names by URL" if is_url(a.dataset) else "links to"
    print(f"wrote {opts.out}: {shards} the {result.num_shards} shards of {opts.dataset} (no audio copied), "
          f"manifest, weights, {ENHANCEMENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
