"""What every benchmark shares: the cached synthetic data set, the machine/version record, result files.

Data: ``python -m tools.make_synthetic`` (10 s clips in mixed formats and rates) built into FLAC shards by
``python -m tools.build_shards``, plus 16 kHz PCM16 wav copies for the PSLA-style loader, cached under
benchmarks/.cache/data-<clips> (git-ignored) and reused by later runs.
"""
from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import soundfile as sf

from trainer.data.datasets import load_records
from trainer.data.shard_bytes import ShardBytes

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache"
# AUDIOTAG_BENCHMARK_RESULTS: another folder (benchmarks/gpu_check.sh keeps a GPU run's results with its report)
RESULTS = Path(os.environ.get("AUDIOTAG_BENCHMARK_RESULTS") or REPO / "benchmarks" / "results")


def dataset(clips: int) -> Path:
    """A built synthetic set of ``clips`` training clips: ``<dir>/shards`` (dataset) and ``<dir>/wav``."""
    root = CACHE / f"data-{clips}"
    if (root / "done").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    subprocess.run([py, "-m", "tools.make_synthetic", "--out", str(root / "synthetic"), "--clips", str(clips),
                    "--valid-clips", "1", "--eval-clips", "8", "--classes", "10", "--seed", "0"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([py, "-m", "tools.build_shards", str(root / "synthetic" / "unbalanced.json"), "--out",
                    str(root / "shards"), "--labels", str(root / "synthetic" / "class_labels_indices.csv"),
                    "--workers", str(len(os.sched_getaffinity(0))), "--shard-samples", str(max(1, clips // 4)),
                    "--no-progress"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    (root / "wav").mkdir(exist_ok=True)
    read = ShardBytes()
    for r in load_records(str(root / "shards"))[0]:
        wave, sr = sf.read(io.BytesIO(read(r)), dtype="int16")
        sf.write(root / "wav" / f"{r.key}.wav", wave, sr, subtype="PCM_16")
    (root / "done").write_text("")
    return root


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Machine, versions and commit, so a result file says what it measured."""
    import torch

    try:
        import nvidia.dali as dali
        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "trainer/data"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    return {"cpu": _cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "dali": dali_version, "python": platform.python_version(),
            "commit": commit, "trainer_data_dirty": dirty, "load_average": os.getloadavg(),
            "cpu_busy_without_us": cpu_busy(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all cores busy over ``seconds`` while this process sleeps: other tenants' load, which on a
    shared machine moves every number here (the suite takes the best of interleaved repeats against it)."""
    def ticks() -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    (t0, i0), _, (t1, i1) = ticks(), time.sleep(seconds), ticks()
    return round(1 - (i1 - i0) / max(1, t1 - t0), 3)


def rss_mb() -> float:
    """This process's resident set now (not the peak), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_module(name: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """``python -m benchmarks.NAME ARGS`` in a fresh process, from the repository root."""
    return subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=REPO, **kwargs)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """benchmarks/results/<name>.json with the environment record; load average read at the end too."""
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "environment": environment(), **payload}, indent=1) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    return out
