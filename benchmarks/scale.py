"""Start-up at AudioSet scale: config → first batch, and the memory it adds, from 10 k to 2 M records.

    python -m benchmarks.scale [--sizes 10000 100000 1000000 2000000] [--repeats 2] [--batches 20]

Data (prepared once, cached in benchmarks/.cache/scale-N, git-ignored): a dataset directory per size whose
manifest has N records pointing at the real FLAC members of the 192-clip synthetic shard set (links to its
shards, records repeated round-robin with new keys), labelled with AudioSet's balanced-train label sets over
the 527 classes, in list order, with their PSLA weights (tools.build_shards.psla_weights); then the loader
builds manifest.cache (timed: what the first start on a dataset built before the cache existed pays).

Each measurement is a fresh process that first imports torch, DALI and the trainer, then does what
trainer/run.py does for its data: load the config (full_as.yaml's data path: kaldi_fbank, SpecAugment, mixup,
1 % validation hold-out, batch 32, 2 DALI threads), resolve the splits, build the training and validation
streams and take the first training batch. "added RSS" is the process's RSS then minus before the config
(DALI's pipeline and the CPU tail's buffers included; the 10 k row is mostly that); "peak added" uses VmHWM.
clips/s: the next ``--batches`` batches. "before" runs the starting commit (trainer/ exported with git
archive into benchmarks/.cache), "after" this checkout; they alternate, and each takes its fastest of
``--repeats``. Writes benchmarks/results/scale.json and scale.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache"
BEFORE = "c0779cd"  # the commit before records became columns
SIZES = (10_000, 100_000, 1_000_000, 2_000_000)


def _status_mb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def measure(config: Path, batches: int) -> dict:
    """Config → first batch in this fresh process, against whichever trainer/ is on the path (so the same
    function measures the starting commit: it uses only what both versions have)."""
    import torch
    import nvidia.dali  # noqa: F401  loaded before the baseline: a library, not the records' cost

    from trainer.config import load_config
    from trainer.data.corrupt import CorruptLog
    from trainer.data.datasets import resolve_splits
    from trainer.data.features import build_frontend
    from trainer.data.settings import LoaderSettings
    from trainer.data.streams import EvalStream, TrainStream

    cpu = torch.device("cpu")
    before = _status_mb()
    start = time.perf_counter()
    cfg = load_config(config)
    data = resolve_splits(cfg.data)
    split = time.perf_counter()
    frontend = build_frontend(data.feature_config(cfg.features))
    threads = cfg.data.num_threads
    with tempfile.TemporaryDirectory() as tmp:
        corrupt = CorruptLog(Path(tmp) / "corrupt_samples.jsonl", len(data.train), cfg.data.max_corrupt_fraction)
        train = TrainStream(data.train, len(data.vocab), LoaderSettings(cfg.data.batch_size, threads, 2), frontend,
                            cfg.augment, cfg.run.seed, 0, 1, cpu, weighted=cfg.data.weighted, corrupt=corrupt)
        EvalStream(data.valid, len(data.vocab), LoaderSettings(cfg.evaluation.batch_size, threads, 2), frontend, 0,
                   1, cpu)
        it = iter(train)
        next(it)
        first = time.perf_counter()
        at_first = _status_mb()
        clips = sum(len(next(it)["keys"]) for _ in range(batches))
        rate = clips / (time.perf_counter() - first)
    return {"train": len(data.train), "valid": len(data.valid), "startup_s": first - start,
            "records_s": split - start, "added_rss_mb": at_first["VmRSS"] - before["VmRSS"],
            "added_anon_mb": at_first["RssAnon"] - before["RssAnon"],
            "added_file_mb": at_first["RssFile"] - before["RssFile"],
            "peak_added_mb": at_first["VmHWM"] - before["VmRSS"], "clips_per_s": rate}


# ---- data preparation (only ever run by the current checkout) -------------------------------------------


def scale_dataset(n: int) -> tuple[Path, float]:
    """The N-record dataset (built once) and the seconds its manifest.cache took to build."""
    from benchmarks.common import dataset
    from tools import audioset
    from tools.build_shards import psla_weights
    from trainer.data.manifest import (DATASET_INFO, MANIFEST, VOCABULARY, WEIGHTS, read_manifest, write_manifest,
                                       write_weights)
    from trainer.data.records import ShardRecord

    root = CACHE / f"scale-{n}"
    done = root / "done.json"
    if done.is_file():
        return root, json.loads(done.read_text())["cache_build_s"]
    base = dataset(192) / "shards"
    root.mkdir(parents=True, exist_ok=True)
    for path in list(base.glob("*.tar")) + list(base.glob("*.idx")):
        link = root / path.name
        if not link.is_symlink():
            link.symlink_to(path)
    members = list(read_manifest(base))
    vocab = audioset.vocabulary()
    vocab.save(root / VOCABULARY)
    sets = [tuple(sorted({vocab.index[m] for m in s})) for s in audioset.label_sets("balanced_train")]
    labels = [sets[i % len(sets)] for i in range(n)]
    weights = psla_weights(labels, len(vocab))
    write_manifest(root / MANIFEST, (ShardRecord(f"{m.key}_{i:07d}", m.shard, m.offset, m.size, labels[i], m.duration,
                                                 weights[i]) for i, m in ((i, members[i % len(members)])
                                                                          for i in range(n))))
    write_weights(root / WEIGHTS, weights)
    (root / DATASET_INFO).write_text(json.dumps({"name": root.name, "num_written": n}) + "\n")
    start = time.perf_counter()
    read_manifest(root)  # parses manifest.jsonl and writes manifest.cache, as a first start would
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"cache_build_s": seconds}))
    return root, seconds


def config(root: Path) -> Path:
    path = CACHE / f"{root.name}.yaml"
    path.write_text(json.dumps({  # YAML is a superset of JSON
        "run": {"name": "scale", "dir": str(CACHE / "runs")},
        "data": {"train": [str(root)], "valid_fraction": 0.01, "batch_size": 32, "num_threads": 2},
        "evaluation": {"batch_size": 100},
        "features": {"frontend": "kaldi_fbank", "target_frames": 1056},
        "augment": {"freqm": 48, "timem": 192, "mixup": 0.5}}, indent=1))
    return path


def before_code() -> Path:
    """trainer/ of the starting commit, exported once."""
    out = CACHE / f"before-{BEFORE}"
    if not (out / "trainer").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", "--format=tar", BEFORE, "trainer"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        with tempfile.TemporaryFile() as f:
            f.write(archive)
            f.seek(0)
            with tarfile.open(fileobj=f) as tar:
                tar.extractall(out)
    return out


def run_child(code: Path, cfg: Path, batches: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", str(cfg), str(batches)],
                         cwd=code, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{code}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for code, style in (("before", "o--"), ("after", "s-")):
        pts = sorted((r["records"], r) for r in rows if r["code"] == code)
        x = [n for n, _ in pts]
        axes[0].plot(x, [r["startup_s"] for _, r in pts], style, label=f"{code} ({BEFORE})" if code == "before"
                     else "after (columns + cache)")
        axes[1].plot(x, [r["added_rss_mb"] for _, r in pts], style, label=code)
    axes[0].axhline(5, color="grey", lw=0.8, ls=":")
    axes[1].axhline(300, color="grey", lw=0.8, ls=":")
    for ax, title in zip(axes, ("config → first batch (s)", "added RSS at the first batch (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("manifest records")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                    help=f"records per manifest (default: {' '.join(map(str, SIZES))})")
    ap.add_argument("--repeats", type=int, default=2,
                    help="alternating runs; each takes its fastest (default: %(default)s)")
    ap.add_argument("--batches", type=int, default=20, help="batches timed after the first (default: %(default)s)")
    ap.add_argument("--one", nargs=2, metavar=("CONFIG", "BATCHES"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(Path(a.one[0]), int(a.one[1]))))
        return
    sys.path.insert(0, str(REPO))  # also when run as a file, as the children are
    from benchmarks.common import RESULTS, write_result

    codes = {"before": before_code(), "after": REPO}
    prepared = {n: scale_dataset(n) for n in a.sizes}
    runs = []
    for _ in range(a.repeats):
        for n in a.sizes:
            for code, root in codes.items():
                r = {"code": code, "records": n, **run_child(root, config(prepared[n][0]), a.batches)}
                runs.append(r)
                print(f"{code:6} {n:>9,d} records: first batch after {r['startup_s']:6.2f} s (records "
                      f"{r['records_s']:6.2f} s), added RSS {r['added_rss_mb']:7.0f} MB "
                      f"(peak {r['peak_added_mb']:7.0f}), then {r['clips_per_s']:6.1f} clips/s", flush=True)
    best = [min((r for r in runs if (r["code"], r["records"]) == key), key=lambda r: r["startup_s"])
            for key in dict.fromkeys((r["code"], r["records"]) for r in runs)]
    plot(best, RESULTS / "scale.png")
    write_result("scale", {"before_commit": BEFORE, "batches": a.batches, "repeats": a.repeats,
                           "cache_build_s": {str(n): s for n, (_, s) in prepared.items()},
                           "results": best, "all_runs": runs})


if __name__ == "__main__":
    main()
