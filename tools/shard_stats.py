"""Dataset statistics: class histogram, durations, and the log-mel mean/std used to normalise inputs.

    python -m tools.shard_stats shards/NAME [--max-samples 2000]
    python -m tools.shard_stats s3://bucket/NAME      # or https://host/NAME, gs://bucket/NAME

The feature statistics are PSLA's dataset_mean/std, computed by the trainer's own ``kaldi_fbank``
front-end (the log-mel before normalisation, over each clip's own frames) on a deterministic subset of
clips, so they describe exactly the features they normalise (Kaldi's fbank with its per-frame DC removal
gives values within 1 % of these). They are stored in dataset.json as
"feature_stats": {"kaldi_fbank": {"mean", "std"}}.

A dataset at a URL is read where it is (trainer/data/remote.py: the small files fetched into the node's cache,
the clips by byte range) and its dataset.json is uploaded back; where the server takes no uploads (a plain
HTTP server) the statistics are printed and the tool exits 1 naming the URL that could not be written.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from tools.audio_io import decode_flac
from trainer.data.atomic import atomic_write
from trainer.data.features import KaldiFbank, build_frontend
from trainer.data.manifest import DATASET_INFO, VOCABULARY, Vocabulary, read_manifest
from trainer.data.records import ShardRecord
from trainer.data.remote import RemoteBytes, RemoteError, Stores, cache_root, fetch_dataset, is_url, locate
from trainer.data.settings import FeatureConfig, RemoteSettings
from trainer.data.shard_bytes import ShardBytes

AHEAD = 64  # clips asked for ahead when reading by range


def fbank_stats(dataset_dir: Path | str, records: list[ShardRecord], max_samples: int, seed: int = 0,
                remote: RemoteSettings = RemoteSettings()) -> dict:
    """Mean and std of every kaldi_fbank log-mel value over up to ``max_samples`` clips chosen with ``seed``
    (``records`` as in the manifest: shard names relative to ``dataset_dir``, a directory or a URL)."""
    if len(records) > max_samples:
        records = [records[i] for i in sorted(np.random.default_rng(seed).choice(len(records), max_samples, False))]
    frontend = build_frontend(FeatureConfig(frontend=KaldiFbank.name))
    records = [dataclasses.replace(r, shard=locate(str(dataset_dir), r.shard)) for r in records]
    read = RemoteBytes(remote) if any(is_url(r.shard) for r in records) else ShardBytes()
    total, total_sq, count = 0.0, 0.0, 0
    for i, r in enumerate(records):
        if i % AHEAD == 0:  # the next clips' ranges requested together (a no-op hint on local files)
            for ahead in records[i:i + AHEAD]:
                read.will_need(ahead.shard, ahead.offset, ahead.size)
        pcm, _ = decode_flac(read(r))
        if len(pcm) < 400:  # shorter than one 25 ms frame: no fbank frame
            continue
        fb = frontend.log_mel(torch.from_numpy(pcm)).double()
        total, total_sq, count = total + fb.sum().item(), total_sq + (fb * fb).sum().item(), count + fb.numel()
    if not count:
        raise ValueError(f"{dataset_dir}: no clip long enough for fbank statistics")
    mean = total / count
    return {"mean": mean, "std": float(np.sqrt(max(total_sq / count - mean * mean, 0.0))), "num_clips": len(records)}


def shard_stats(dataset: str | Path, max_samples: int = 2000, remote: RemoteSettings = RemoteSettings()) -> dict:
    """Compute the statistics, store the feature stats in dataset.json (uploaded back for a dataset at a URL)
    and return everything; ``"not_written"`` holds the reason when dataset.json could not be stored, else
    None."""
    url = str(dataset).rstrip("/") if is_url(str(dataset)) else None
    stores = Stores(remote)
    d = fetch_dataset(url, stores) if url is not None else Path(dataset)
    records = read_manifest(d)
    vocab = Vocabulary.load(d / VOCABULARY)
    counts = np.zeros(len(vocab), dtype=int)
    for r in records:
        counts[list(r.labels)] += 1
    durations = np.array([r.duration for r in records])
    feats = fbank_stats(url or d, records, max_samples, remote=remote)
    info_path = d / DATASET_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info["feature_stats"] = {KaldiFbank.name: feats}
    text = json.dumps(info, indent=1) + "\n"
    not_written = None
    if url is None:
        with atomic_write(info_path) as f:
            f.write(text)
    else:
        with tempfile.TemporaryDirectory(prefix=".stats-", dir=cache_root(remote)) as tmp:
            (Path(tmp) / DATASET_INFO).write_text(text)
            try:
                stores.upload(Path(tmp) / DATASET_INFO, f"{url}/{DATASET_INFO}")
            except RemoteError as e:
                not_written = str(e)
    return {"class_counts": counts.tolist(), "names": list(vocab.names), "num_clips": len(records),
            "duration": {"min": float(durations.min()), "mean": float(durations.mean()),
                         "max": float(durations.max()), "hours": float(durations.sum() / 3600)},
            "kaldi_fbank": feats, "written_to": f"{url or d}/{DATASET_INFO}", "not_written": not_written}


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.shard_stats", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="a directory built by tools.build_shards, or its URL")
    p.add_argument("--max-samples", type=int, default=2000,
                   help="clips used for the fbank mean/std (default: %(default)s)")
    p.add_argument("--top", type=int, default=20, help="classes shown in the histogram (default: %(default)s)")
    a = p.parse_args(argv)
    try:
        s = shard_stats(a.dataset, a.max_samples)
    except (FileNotFoundError, ValueError, RemoteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'class':>5}  {'clips':>6}  name")
    for c in np.argsort(-np.array(s["class_counts"]), kind="stable")[: a.top]:
        print(f"{c:>5}  {s['class_counts'][c]:>6}  {s['names'][c]}")
    dur, fb = s["duration"], s["kaldi_fbank"]
    print(f"{s['num_clips']} clips, {dur['hours']:.2f} h; duration min/mean/max {dur['min']:.2f}/{dur['mean']:.2f}/"
          f"{dur['max']:.2f} s")
    print(f"kaldi_fbank mean {fb['mean']:.4f} std {fb['std']:.4f} over {fb['num_clips']} clips "
          + ("(not stored)" if s["not_written"] else f"(written to {s['written_to']})"))
    if s["not_written"]:
        print(f"error: could not store the statistics in {s['written_to']}: {s['not_written']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
