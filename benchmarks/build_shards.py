"""Shard builder throughput on a synthetic set: clips/s in total and per core.

    python -m benchmarks.build_shards [--clips 192] [--workers 1 2] [--data DIR]

Clips are 10 s, in the generator's mix of formats (60% 16 kHz PCM16 WAV, the rest 44.1/48 kHz,
stereo, FLAC, Vorbis), so the figure includes decoding, soxr VHQ resampling and FLAC encoding.
Without --data it uses the benchmarks' cached synthetic set (benchmarks/common.py).
Writes benchmarks/results/build_shards.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import dataset, write_result
from tools.build_shards import BuildOptions, build


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=192, help="10 s synthetic clips built (default: %(default)s)")
    p.add_argument("--workers", type=int, nargs="+", default=sorted({1, len(os.sched_getaffinity(0))}),
                   help="worker counts to time (default: 1 and this machine's cores)")
    p.add_argument("--data", type=Path, help="an existing tools.make_synthetic directory to reuse")
    a = p.parse_args()
    data = a.data or dataset(a.clips) / "synthetic"
    with tempfile.TemporaryDirectory() as tmp:
        n = len(json.loads((data / "unbalanced.json").read_text())["data"])
        rows = []
        for workers in a.workers:
            opts = BuildOptions(source=data / "unbalanced.json", out=Path(tmp) / f"w{workers}" / "bench",
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
    write_result("build_shards", {"results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
