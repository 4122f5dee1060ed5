"""Shard builder throughput on a synthetic set: clips/s in total and per core.

    python benchmarks/build_shards.py [--clips 300] [--workers 1 2] [--data DIR]

Clips are 10 s, in the generator's mix of formats (60% 16 kHz PCM16 WAV, the rest 44.1/48 kHz,
stereo, FLAC, Vorbis), so the figure includes decoding, soxr VHQ resampling and FLAC encoding.
Writes benchmarks/results/build_shards.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.build_shards import BuildOptions, build  # noqa: E402
from tools.make_synthetic import make_synthetic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "build_shards.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=300)
    p.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    p.add_argument("--data", type=Path, help="an existing tools.make_synthetic directory to reuse")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or Path(tmp) / "synthetic"
        if a.data is None:
            make_synthetic(data, clips=a.clips, eval_clips=0, classes=10, seed=0)
        n = len(json.loads((data / "train.json").read_text())["data"])
        rows = []
        for workers in a.workers:
            opts = BuildOptions(source=data / "train.json", out=Path(tmp) / f"w{workers}" / "bench",
                                labels=data / "class_labels_indices.csv", workers=workers)
            t0 = time.perf_counter()
            result = build(opts, progress=False)
            seconds = time.perf_counter() - t0
            assert result.num_written == n, result.summary()
            rows.append({"workers": workers, "clips": n, "seconds": round(seconds, 3),
                         "clips_per_s": round(n / seconds, 1), "clips_per_s_per_core": round(n / seconds / workers, 1),
                         "audio_x_realtime": round(n * 10.0 / seconds, 1)})
    print(f"{'workers':>7} {'clips':>6} {'seconds':>8} {'clips/s':>8} {'clips/s/core':>12} {'x realtime':>10}")
    for r in rows:
        print(f"{r['workers']:>7} {r['clips']:>6} {r['seconds']:>8.2f} {r['clips_per_s']:>8.1f} "
              f"{r['clips_per_s_per_core']:>12.1f} {r['audio_x_realtime']:>10.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "build_shards", "cpu_count": os.cpu_count(),
                                   "machine": platform.processor() or platform.machine(),
                                   "python": platform.python_version(), "results": rows}, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
