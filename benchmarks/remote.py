"""Training from a dataset at a URL: clients compared, then our stream from local disk vs HTTP on loopback.

    python -m benchmarks.remote [--clips 512] [--repeats 2] [--skip-clients]

Clients: byte-range reads of every FLAC member of the set (about 200 kB each) from aiohttp's static server on
127.0.0.1, directly and behind the proxy of tests/servers.py adding 20 ms a request, by urllib3, requests,
fsspec's HTTPFileSystem and obstore: one at a time, 16 threads at once, and each library's own batch call
(fsspec cat_ranges, obstore get_ranges); best of 3 by wall time; MB/s and this process's CPU ms per member
(the server runs in another process), the cost that competes with DALI's decoding for the cores.

Stream: one epoch of TrainStream (kaldi_fbank, batch 32, 2 DALI threads, SpecAugment and mixup, every clip
once) in a fresh process per variant: from the local directory, and from HTTP on loopback (the static server
directly at 0 ms; through the fault proxy at 20 and 50 ms, and at 20 ms with 1 % of requests failed by a 503
or a body cut in half). Variants interleaved, best of ``--repeats``; reported clips/s, the ratio to local and
requests per clip (retries included). The servers share the machine's cores with the stream.
Writes benchmarks/results/remote.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from benchmarks.common import dataset, run_module, write_result

BATCH = 32
THREADS = 2
VARIANTS = {"local": None, "http 0 ms": (0.0, 0.0), "http 20 ms": (0.02, 0.0), "http 50 ms": (0.05, 0.0),
            "http 20 ms, 1 % faults": (0.02, 0.01)}  # (added latency s, fault rate)


def _clients(base: str, members: list[tuple[str, int, int]]) -> dict[str, dict]:
    import fsspec
    import obstore
    import requests
    import urllib3
    from obstore.store import HTTPStore

    total = sum(n for _, _, n in members)
    pm = urllib3.PoolManager(maxsize=16)
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=16))
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    store = HTTPStore.from_url(base, client_options={"allow_http": True})

    def header(o: int, n: int) -> dict[str, str]:
        return {"Range": f"bytes={o}-{o + n - 1}"}

    one: dict[str, Callable[[tuple[str, int, int]], bytes]] = {
        "urllib3": lambda m: pm.request("GET", f"{base}/{m[0]}", headers=header(m[1], m[2])).data,
        "requests": lambda m: session.get(f"{base}/{m[0]}", headers=header(m[1], m[2])).content,
        "fsspec http": lambda m: fs.cat_file(f"{base}/{m[0]}", start=m[1], end=m[1] + m[2]),
        "obstore": lambda m: obstore.get_range(store, m[0], start=m[1], length=m[2]),
    }

    def by_shard() -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {}
        for s, o, n in members:
            out.setdefault(s, []).append((o, n))
        return out

    batch = {
        "fsspec http": lambda: fs.cat_ranges([f"{base}/{s}" for s, _, _ in members], [o for _, o, _ in members],
                                             [o + n for _, o, n in members]),
        "obstore": lambda: [b for s, r in by_shard().items() for b in
                            obstore.get_ranges(store, s, starts=[o for o, _ in r], lengths=[n for _, n in r])],
    }
    pool = ThreadPoolExecutor(16)

    def timed(fn: Callable[[], list]) -> tuple[float, float]:
        c0, w0 = time.process_time(), time.perf_counter()
        got = sum(len(b) for b in fn())
        assert got == total, (got, total)
        return time.perf_counter() - w0, time.process_time() - c0

    res: dict[str, dict] = {}
    for name, f in one.items():
        f(members[0])  # connect first
        ways = {"one at a time": lambda f=f: [f(m) for m in members],
                "16 threads": lambda f=f: list(pool.map(f, members))}
        if name in batch:
            ways["batch call"] = batch[name]
        for way, fn in ways.items():
            wall, cpu = min(timed(fn) for _ in range(3))
            res.setdefault(name, {})[way] = {"MB_s": round(total / wall / 1e6, 1),
                                             "cpu_ms_per_member": round(cpu / len(members) * 1e3, 3)}
    pool.shutdown()
    return res


def clients(data: Path) -> dict[str, dict]:
    from tests.servers import serve
    from trainer.data.manifest import read_manifest

    table = read_manifest(data / "shards")
    members = [(table.shard(i), int(table.offset[i]), int(table.size[i])) for i in range(len(table))]
    out = {}
    with serve("static", str(data / "shards")) as static:
        out["direct"] = _clients(static, members)
        with serve("proxy", static, "--latency", "0.02") as proxy:
            out["20 ms"] = _clients(proxy, members)
    return out


def run_one(spec: str, cache: str) -> dict:
    """One epoch, every clip once, in this (fresh) process."""
    import torch

    from trainer.data.augment import AugmentConfig
    from trainer.data.datasets import load_records
    from trainer.data.features import build_frontend
    from trainer.data.settings import FeatureConfig, LoaderSettings, RemoteSettings
    from trainer.data.streams import TrainStream

    torch.set_num_threads(THREADS)
    records = load_records(spec, RemoteSettings(cache_dir=cache))[0]
    stream = TrainStream(records, 10, LoaderSettings(BATCH, THREADS, 2), build_frontend(FeatureConfig("kaldi_fbank")),
                         AugmentConfig(freqm=48, timem=192, mixup=0.5), 0, 0, 1, torch.device("cpu"), weighted=False)
    start, clips = time.perf_counter(), 0
    for batch in stream:
        clips += len(batch["keys"])
    seconds = time.perf_counter() - start
    return {"clips": clips, "seconds": seconds, "clips_per_s": clips / seconds,
            "requests_per_clip": getattr(stream._read, "requests", 0) / clips}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=512, help="10 s synthetic clips (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="interleaved rounds; each variant takes its best (default: %(default)s)")
    ap.add_argument("--skip-clients", action="store_true", help="only the stream, not the HTTP clients compared")
    ap.add_argument("--one", nargs=2, metavar=("SPEC", "CACHE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(*a.one)))
        return
    from tests.servers import serve, stats

    data = dataset(a.clips)
    result: dict = {"clips": a.clips, "batch_size": BATCH, "dali_threads": THREADS, "repeats": a.repeats}
    if not a.skip_clients:
        result["clients"] = clients(dataset(128))
        print(json.dumps(result["clients"], indent=1), flush=True)
    runs = []
    with contextlib.ExitStack() as stack:
        static = stack.enter_context(serve("static", str(data)))
        urls = {}
        for name, how in VARIANTS.items():
            if how is None:
                urls[name] = str(data / "shards")
            elif how == (0.0, 0.0):
                urls[name] = f"{static}/shards"
            else:
                proxy = stack.enter_context(serve("proxy", static, "--latency", str(how[0]), "--faults", str(how[1])))
                urls[name] = f"{proxy}/shards"
        cache = stack.enter_context(__import__("tempfile").TemporaryDirectory(prefix="remote-bench-"))
        for _ in range(a.repeats):
            for name, spec in urls.items():
                before = stats(spec.rsplit("/", 1)[0]) if VARIANTS[name] and VARIANTS[name][1] else None
                out = run_module("remote", "--one", spec, cache, capture_output=True, text=True, check=True)
                run = {"variant": name, **json.loads(out.stdout.strip().splitlines()[-1])}
                if before is not None:
                    after = stats(spec.rsplit("/", 1)[0])
                    run["faults"] = {k: after[k] - before[k] for k in ("503", "dropped")}
                runs.append(run)
                print(f"{name}: {run['clips_per_s']:6.1f} clips/s, {run['requests_per_clip']:.2f} requests/clip"
                      + (f", faults {run['faults']}" if "faults" in run else ""), flush=True)
    best = {name: max((r for r in runs if r["variant"] == name), key=lambda r: r["clips_per_s"]) for name in VARIANTS}
    for name, r in best.items():
        r["of_local"] = round(r["clips_per_s"] / best["local"]["clips_per_s"], 3)
    result.update(results=list(best.values()), all_runs=runs)
    write_result("remote", result)


if __name__ == "__main__":
    main()
