"""The whole benchmark suite in one command, then benchmarks/results/REPORT.md and throughput.png.

    python -m benchmarks.run_all [--clips 192] [--skip NAME ...] [--report-only]

Runs, each as its own process with its quick defaults (about 31 minutes on 2 cores, most of it the starting
commit's 2 M-record start-ups in scale): loader, readahead, remote, scaling (reads loader.json), memory,
train_step, build_shards, scale. Each writes benchmarks/results/<name>.json with the machine, versions and commit. The
synthetic data sets (and scale's manifests) are generated once into benchmarks/.cache.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, dataset, run_module

SUITE = ("loader", "readahead", "remote", "scaling", "memory", "train_step", "build_shards", "scale")  # scaling reads loader.json
OWN_DATA = ("readahead", "remote", "scale")  # sets of their own size: --clips is not theirs
TARGETS = {"psla": 1.5, "wds": 1.2}  # ours ≥ this × the baseline's clips/s


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _loader_table(res: list[dict]) -> tuple[list[str], list[tuple[str, int, dict]]]:
    cells = [(f, t, {r["loader"]: r for r in res if (r["frontend"], r["threads"]) == (f, t)})
             for f in sorted({r["frontend"] for r in res}) for t in sorted({r["threads"] for r in res})]
    gpu = any(r["loader"] == "ours_gpu" for r in res)
    lines = ["| front-end | threads | ours | PSLA-style | webdataset | floor (decode only) | ours/PSLA (≥1.5) "
             "| ours/wds (≥1.2) |" + (" ours, stream on the GPU |" if gpu else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for f, t, r in cells:
        ratios = []
        for base, target in TARGETS.items():
            x = r["ours"]["clips_per_s"] / r[base]["clips_per_s"]
            ratios.append(f"{x:.2f}× {'met' if x >= target else '**not met**'}")
        lines.append(f"| {f} | {t} | {r['ours']['clips_per_s']:.1f} | {r['psla']['clips_per_s']:.1f} | "
                     f"{r['wds']['clips_per_s']:.1f} | {r['floor']['clips_per_s']:.1f} | {' | '.join(ratios)} |"
                     + (f" {r['ours_gpu']['clips_per_s']:.1f} |" if gpu else ""))
    lines += ["", "Peak RSS (MB, process + DataLoader workers):", "",
              "| front-end | threads | ours | PSLA-style | webdataset | floor |", "|---|---|---|---|---|---|"]
    for f, t, r in cells:
        lines.append(f"| {f} | {t} | " + " | ".join(f"{r[k]['peak_rss_mb']:.0f}" for k in ("ours", "psla", "wds", "floor"))
                     + " |")
    return lines, cells


def _readahead_table(res: dict) -> list[str]:
    r = {(x["cache"], x["readahead"]): x for x in res["results"]}
    depths = sorted({d for _, d in r})
    lines = [f"### Cold page cache: read-ahead (ours, kaldi_fbank, {res['dali_threads']} DALI threads, batch "
             f"{res['batch_size']}; one epoch over {res['clips']} clips, {res['shard_bytes'] / 1e6:.0f} MB of shards, "
             "each clip once)", "",
             "cold: the shards evicted from the page cache before the process starts; warm: read in full first. "
             f"Best of {res['repeats']} interleaved rounds by clips/s; major faults = reads that waited for the disk; "
             "feeder wait = seconds DALI's feeding thread spent faulting the clips' pages in. Commit "
             f"{res['environment']['commit'][:10]}.", "",
             "| page cache | " + " | ".join(f"readahead {d}: clips/s | major faults | feeder wait s" for d in depths)
             + " |", "|---|" + "---|---|---|" * len(depths)]
    for cache in ("cold", "warm"):
        lines.append(f"| {cache} | " + " | ".join(f"{r[cache, d]['clips_per_s']:.1f} | {r[cache, d]['major_faults']} | "
                                                   f"{r[cache, d]['feeder_wait_s']:.3f}" for d in depths) + " |")
    return lines + [""]


def _scale_table(res: dict) -> list[str]:
    r = {(x["code"], x["records"]): x for x in res["results"]}
    sizes = sorted({n for _, n in r})
    base = {code: r[code, sizes[0]]["added_rss_mb"] for code in ("before", "after")}
    lines = [f"## Start-up at scale (config → first batch; before = commit {res['before_commit']}, after = "
             f"{res['environment']['commit'][:10]})", "",
             "Synthetic manifests pointing at the real FLAC members of the 192-clip set, AudioSet balanced-train "
             "label sets over 527 classes with PSLA weights; full_as.yaml's data path (kaldi_fbank, SpecAugment, "
             "mixup, 1 % hold-out, batch 32). Added RSS: at the first batch, over the process before the config "
             f"(DALI pipeline and tail buffers included); records' share: over the {sizes[0]:,}-record row. Each "
             f"cell the fastest of {res['repeats']} alternating runs; clips/s over the {res['batches']} batches "
             "after the first.", "",
             "| records | start-up s, before | after | added RSS MB, before | after | records' share MB, before "
             "| after | clips/s, before | after | manifest.cache build s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        b, a = r["before", n], r["after", n]
        lines.append(f"| {n:,} | {b['startup_s']:.2f} | {a['startup_s']:.2f} | {b['added_rss_mb']:.0f} | "
                     f"{a['added_rss_mb']:.0f} | {b['added_rss_mb'] - base['before']:.0f} | "
                     f"{a['added_rss_mb'] - base['after']:.0f} | {b['clips_per_s']:.1f} | {a['clips_per_s']:.1f} | "
                     f"{res['cache_build_s'][str(n)]:.1f} |")
    return lines + ["", "![start-up at scale](scale.png)", ""]


def plot(cells: list[tuple[str, int, dict]], out: Path) -> None:
    """Grouped bars: clips/s per loader, one panel per front-end, one bar per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frontends = sorted({f for f, _, _ in cells})
    threads = sorted({t for _, t, _ in cells})
    loaders = [name for name in ("ours", "psla", "wds", "floor", "ours_gpu") if name in cells[0][2]]
    names = {"ours": "ours (DALI)", "psla": "PSLA-style", "wds": "webdataset", "floor": "floor", "ours_gpu": "ours, GPU"}
    fig, axes = plt.subplots(1, len(frontends), figsize=(5 * len(frontends), 4), sharey=True)
    width = 0.8 / len(threads)
    for ax, f in zip(axes, frontends):
        for k, t in enumerate(threads):
            r = next(r for ff, tt, r in cells if (ff, tt) == (f, t))
            ax.bar([i + k * width for i in range(len(loaders))], [r[name]["clips_per_s"] for name in loaders],
                   width, label=f"{t} thread{'s' if t > 1 else ''}")
        ax.set_xticks([i + width * (len(threads) - 1) / 2 for i in range(len(loaders))],
                      [names[name] for name in loaders])
        ax.set_title(f"{f}" + ("" if "ours_gpu" in loaders else " (CPU only)"))
        ax.set_ylabel("clips/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _remote_table(res: dict) -> list[str]:
    lines = [f"## Dataset at a URL (ours, kaldi_fbank, {res['dali_threads']} DALI threads, batch {res['batch_size']}; "
             f"one epoch over {res['clips']} clips, each once; best of {res['repeats']} interleaved rounds)", "",
             "HTTP from aiohttp's static server on 127.0.0.1, directly (0 ms) or through the fault proxy of "
             "tests/servers.py adding latency to every request and failing 1 % of them (503 or a body cut in half). "
             "The servers share the cores with the stream. Target: ≥ 90 % of local at 20 ms.", "",
             "| source | clips/s | of local | requests per clip |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['clips_per_s']:.1f} | {r['of_local']:.0%} | {r['requests_per_clip']:.2f} |"
              for r in res["results"]]
    if res.get("clients"):
        lines += ["", "Clients, byte-range reads of every member of a 128-clip set (MB/s · CPU ms per member):", "",
                  "| server | client | one at a time | 16 threads | batch call |", "|---|---|---|---|---|"]
        for where, clients in res["clients"].items():
            for name, ways in clients.items():
                cells = [f"{ways[w]['MB_s']:.0f} · {ways[w]['cpu_ms_per_member']:.2f}" if w in ways else "–"
                         for w in ("one at a time", "16 threads", "batch call")]
                lines.append(f"| {where} | {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def report() -> Path:
    env = next((r["environment"] for r in map(_load, SUITE) if r), {})
    busy = max((r["environment"].get("cpu_busy_without_us", 0.0) for r in map(_load, SUITE) if r), default=0.0)
    lines = ["# Benchmark report", "",
             f"**CPU numbers**: {env.get('cpu')}, {env.get('cores')} cores, GPU: {env.get('gpu') or 'none'} "
             f"(the DALI GPU path exists but is not measured here). torch {env.get('torch')}, DALI "
             f"{env.get('dali')}, Python {env.get('python')}, commit {str(env.get('commit'))[:10]}. "
             f"Other processes kept up to {busy:.0%} of the cores busy when a benchmark ended "
             "(`cpu_busy_without_us` in each JSON); on this shared machine that has moved single numbers by "
             "±15% in other runs, so loaders run interleaved and each takes its best of the rounds.", ""]
    loader = _load("loader")
    if loader:
        table, cells = _loader_table(loader["results"])
        lines += [f"## Loader throughput (clips/s, batch {loader['batch_size']}, {loader['clips']} synthetic 10 s "
                  f"clips × {loader['epochs']} epochs)", "",
                  "Same clips, same cores, same output (B × mel × frames normalised features with SpecAugment; "
                  "ours and PSLA-style also mixup). threads = DataLoader workers, or for ours DALI threads and as "
                  "many tail worker threads (spectrum, mel, augmentation; one batch each): at 1 thread ours runs "
                  "on two threads, so the 2-thread rows are the same-cores comparison.", ""] + table + [""]
        plot(cells, RESULTS / "throughput.png")
        lines += ["![throughput](throughput.png)", ""]
    ahead = _load("readahead")
    if ahead:
        lines += _readahead_table(ahead)
    remote = _load("remote")
    if remote:
        lines += _remote_table(remote)
    steps = _load("train_step")
    if steps:
        lines += [f"## Training step (clips/s, on {steps.get('device', 'cpu').upper()})", "",
                  f"Steps fed by the stream and by in-memory batches take turns in blocks of "
                  f"{steps['results'][0].get('block', 1)}. Stall = 1 − stream/memory clips/s (on a CPU the "
                  "stream's decoding and tail workers share the cores with the step); wait = share of the "
                  "stream-fed time spent in next().", "",
                  "| workload | config | model | front-end | variant | batch | fed by our stream | batches in memory "
                  "| data stall | wait in next() |", "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['workload']} | {r.get('config', '')} | {r.get('model', '')} | {r.get('frontend', '')} | "
                  f"{r.get('variant', 'fp32')} | {r['batch_size']} | {r['stream_clips_per_s']:.2f} | "
                  f"{r['memory_clips_per_s']:.2f} | {r['stall_fraction']:.1%} | {r['stream_wait_fraction']:.1%} |"
                  for r in steps["results"]] + [""]
    mem = _load("memory")
    if mem:
        lines += ["## Memory over a long run (RSS MB)", "",
                  f"Our stream alone (batch {mem.get('loader_batch_size', 32)}) and weak training steps fed by it "
                  f"(batch {mem.get('train_batch_size', 16)}; an \"epoch\" is 12 steps there).", "",
                  "| run | clips | after epoch 1 | at the end | max, epoch ends of 1st half | of 2nd half |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r.get('run', r.get('frontend'))} | {r['clips']} | {r['rss_start_mb']:.0f} | {r['rss_end_mb']:.0f} | "
                  f"{r['rss_max_first_half_mb']:.0f} | {r['rss_max_second_half_mb']:.0f} |"
                  for r in mem["results"]] + [""]
    scale = _load("scaling")
    if scale:
        lines += [f"## Scaling (ours, {scale['frontend']}, {scale['dali_threads']} DALI threads)", "",
                  "| set size | records | epoch seconds | clips/s | per-clip cost vs ×1 |", "|---|---|---|---|---|"]
        lines += [f"| ×{r['scale']} | {r['records']} | {r['seconds']:.2f} | {r['clips_per_s']:.1f} | "
                  f"{r['cost_per_clip_vs_1x']:.2f} |" for r in scale["sizes"]]
        if scale.get("processes"):
            lines += ["", "| ours, cores split as | clips/s |", "|---|---|"]
            lines += [f"| {r['processes']} process{'es' if r['processes'] > 1 else ''} × {r['threads_each']} "
                      f"thread{'s' if r['threads_each'] > 1 else ''} | {r['clips_per_s']:.1f} |"
                      for r in scale["processes"]]
        lines += ["", "| loader | front-end | 1 thread | 2 threads | speed-up |", "|---|---|---|---|---|"]
        lines += [f"| {r['loader']} | {r['frontend']} | {r['clips_per_s_1']:.1f} | {r['clips_per_s_2']:.1f} | "
                  f"×{r['speedup']:.2f} |" for r in scale["threads"]] + [""]
    big = _load("scale")
    if big:
        lines += _scale_table(big)
    build = _load("build_shards")
    if build:
        lines += ["## Shard builder (10 s clips in mixed formats → 16 kHz FLAC shards)", "",
                  "| workers | clips | seconds | clips/s | clips/s per core | × real time |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['workers']} | {r['clips']} | {r['seconds']:.2f} | {r['clips_per_s']:.1f} | "
                  f"{r['clips_per_s_per_core']:.1f} | {r['audio_x_realtime']:.0f} |" for r in build["results"]] + [""]
    out = RESULTS / "REPORT.md"
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=192,
                    help="10 s synthetic clips of the shared set (default: %(default)s)")
    ap.add_argument("--skip", nargs="*", default=[], choices=SUITE, metavar="NAME",
                    help=f"benchmarks not run, of {', '.join(SUITE)} (default: none)")
    ap.add_argument("--report-only", action="store_true", help="rewrite REPORT.md/PNG from the existing JSONs")
    a = ap.parse_args()
    if not a.report_only:
        dataset(a.clips)
        for name in SUITE:
            if name in a.skip:
                continue
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            run_module(name, *(() if name in OWN_DATA else ("--clips", str(a.clips))), check=True)
            print(f"== {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"wrote {report()}")


if __name__ == "__main__":
    main()
