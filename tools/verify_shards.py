"""Check a built dataset end to end: tar integrity, every sample decodes, manifest and .idx agree.

    python -m tools.verify_shards shards/NAME | https://host/NAME | s3://bucket/NAME | gs://bucket/NAME

Exits non-zero after listing every problem, each naming the file and, where there is one, the key. A dataset
at a URL has its small files fetched as the loader fetches them (trainer/data/remote.py), and each shard the
manifest names is downloaded with its index into a temporary directory, checked and deleted, one at a time;
its problems name the shard's URL.
A dataset made by tools.enhance_labels (shards linked from another dataset) passes when each manifest
record's labels are its sample's ``.json`` labels plus its rows of ``enhancement.csv``.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from tools.added_labels import read_added_labels
from tools.audio_io import SAMPLE_RATE, decode_flac, flac_md5_matches
from tools.shard_writer import TAR_BLOCK, Member, read_index, scan_tar, split_name
from trainer.data.datasets import broken_link
from trainer.data.manifest import DATASET_INFO, ENHANCEMENT, MANIFEST_CACHE, read_manifest, source_stats
from trainer.data.record_cache import load_cache
from trainer.data.records import ShardRecord
from trainer.data.remote import RemoteError, Stores, cache_root, fetch_dataset, is_url, locate
from trainer.data.settings import RemoteSettings


def _check_tar(tar: Path, records: list[ShardRecord], added: dict[str, list[int]]) -> tuple[list[str], int]:
    """Problems found in one shard, and the number of samples it holds (``added``: key -> labels the manifest
    has beyond the sample's .json, from enhancement.csv)."""
    problems: list[str] = []
    say = problems.append
    members, error = scan_tar(tar)
    if error:
        at = f"{split_name(members[-1].name)[0]}: unreadable tar after {members[-1].name}" if members else "unreadable tar"
        say(f"{tar.name}: {at}: {error}")
    if not members:
        return problems or [f"{tar.name}: no members"], 0
    # tarfile stops quietly at a truncation on a block boundary; a finished tar ends in two zero blocks.
    end = max(m.offset + -(-m.size // TAR_BLOCK) * TAR_BLOCK for m in members)
    with open(tar, "rb") as f:
        f.seek(end)
        if f.read(2 * TAR_BLOCK) != bytes(2 * TAR_BLOCK):
            say(f"{tar.name}: truncated: no end-of-archive marker after the last member")
        samples: dict[str, dict[str, Member]] = collections.OrderedDict()
        for m in members:
            key, ext = split_name(m.name)
            if ext in samples.setdefault(key, {}):
                say(f"{tar.name}: {key}: member {m.name} appears twice")
            samples[key][ext] = m
        by_key = {r.key: r for r in records}
        for key, parts in samples.items():
            if set(parts) != {"flac", "json"}:
                say(f"{tar.name}: {key}: members {sorted(parts)}, expected flac and json")
                continue
            data = {}
            for ext, m in parts.items():
                f.seek(m.offset)
                data[ext] = f.read(m.size)
                if len(data[ext]) != m.size:
                    say(f"{tar.name}: {key}: {m.name} truncated ({len(data[ext])} of {m.size} bytes)")
            if len(data["flac"]) != parts["flac"].size or len(data["json"]) != parts["json"].size:
                continue
            try:
                meta = json.loads(data["json"])
            except ValueError as e:
                say(f"{tar.name}: {key}: {key}.json is not JSON: {e}")
                meta = {}
            try:
                pcm, sr = decode_flac(data["flac"])
            except Exception as e:  # libsndfile raises several types for corrupt streams
                say(f"{tar.name}: {key}: {key}.flac does not decode: {e}")
                continue
            if not flac_md5_matches(data["flac"], pcm):
                say(f"{tar.name}: {key}: {key}.flac decodes to samples that fail its MD5 (corrupt)")
            if sr != SAMPLE_RATE or pcm.ndim != 1:
                say(f"{tar.name}: {key}: {key}.flac is {sr} Hz with shape {pcm.shape}, expected {SAMPLE_RATE} Hz mono")
            rec = by_key.get(key)
            if rec is None:
                say(f"{tar.name}: {key}: sample not in the manifest")
                continue
            if (rec.offset, rec.size) != (parts["flac"].offset, parts["flac"].size):
                say(f"{tar.name}: {key}: manifest says flac at {rec.offset}+{rec.size}, "
                    f"tar has {parts['flac'].offset}+{parts['flac'].size}")
            if meta and meta.get("key") != key:
                say(f"{tar.name}: {key}: {key}.json names key {meta.get('key')!r}")
            elif meta and sorted(list(meta.get("labels", ())) + added.get(key, [])) != sorted(rec.labels):
                plus = f" plus {ENHANCEMENT}'s {sorted(added[key])}" if key in added else ""
                say(f"{tar.name}: {key}: {key}.json labels {meta.get('labels')}{plus} differ from the manifest's "
                    f"{list(rec.labels)}")
            if abs(len(pcm) / SAMPLE_RATE - rec.duration) > 1e-6:
                say(f"{tar.name}: {key}: decodes to {len(pcm) / SAMPLE_RATE} s, manifest says {rec.duration} s")
    for key in sorted(by_key.keys() - samples.keys()):
        say(f"{tar.name}: {key}: in the manifest but not in the tar")
    idx = tar.with_suffix(".idx")
    if not idx.is_file():
        say(f"{idx.name}: missing{broken_link(idx)}")
    else:
        try:
            indexed = read_index(idx)
        except ValueError as e:
            say(str(e))
        else:
            actual = [[parts[e] for e in sorted(parts)] for parts in samples.values()]
            if len(indexed) != len(actual):
                say(f"{idx.name}: indexes {len(indexed)} samples, {tar.name} has {len(actual)}")
            for line, (a, b) in enumerate(zip(indexed, actual), 2):
                if a != b:
                    fmt = lambda ms: " ".join(f"{m.name}@{m.offset}+{m.size}" for m in ms)  # noqa: E731
                    say(f"{idx.name}:{line}: {split_name(b[0].name)[0]}: index has {fmt(a)}, tar has {fmt(b)}")
    return problems, len(samples)


def _check_remote(url: str, records: list[ShardRecord], added: dict[str, list[int]], stores: Stores
                  ) -> tuple[list[str], int]:
    """:func:`_check_tar` on the shard at ``url`` and its index, downloaded into a temporary directory (in the
    node's cache directory: a shard may not fit /tmp) and deleted after; problems name the URL."""
    folder, name = url.rsplit("/", 1)
    root = cache_root(stores.settings)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".verify-", dir=root) as tmp:
        tar = Path(tmp) / name
        try:
            stores.download(url, tar)
        except RemoteError as e:
            return [f"{url}: missing" if isinstance(e.__cause__, FileNotFoundError) else str(e)], 0
        idx = tar.with_suffix(".idx")
        try:
            stores.download(f"{folder}/{idx.name}", idx)
        except RemoteError as e:
            if not isinstance(e.__cause__, FileNotFoundError):
                return [str(e)], 0  # a missing index is one of _check_tar's problems
        problems, n = _check_tar(tar, records, added)
    return [f"{folder}/{p.replace(f'{tmp}/', '')}" for p in problems], n


def verify(dataset: str | Path, progress: bool = False, remote: RemoteSettings = RemoteSettings()
           ) -> tuple[list[str], int]:
    """All problems in a dataset (a directory or a URL; empty when it is sound), and the number of samples
    checked."""
    url = str(dataset).rstrip("/") if is_url(str(dataset)) else None
    stores = Stores(remote)
    problems: list[str] = []
    if url is not None:
        try:
            d = fetch_dataset(url, stores)
        except RemoteError as e:  # unreachable, or no manifest there
            return [str(e)], 0
    else:
        d = Path(dataset)
    try:
        records = read_manifest(d, cache=False)  # the text itself; the cache is checked against it below
    except (FileNotFoundError, ValueError) as e:
        problems.append(str(e))
        records = []
    cached = load_cache(d / MANIFEST_CACHE, source_stats(d)) if records else None  # a stale one is rebuilt anyway
    if cached is not None and cached != records:
        problems.append(f"{MANIFEST_CACHE}: its records differ from manifest.jsonl and weights.csv although it was "
                        "made from these very files; delete it and the loader rebuilds it")
    by_shard: dict[str, list[ShardRecord]] = collections.defaultdict(list)
    for key, n in collections.Counter(r.key for r in records).items():
        if n > 1:
            problems.append(f"manifest.jsonl: {key}: appears {n} times")
    for r in records:
        by_shard[r.shard].append(r)
    added: dict[str, list[int]] = collections.defaultdict(list)
    if (d / ENHANCEMENT).is_file():
        try:
            for row in read_added_labels(d / ENHANCEMENT):
                added[row.key].append(row.index)
        except ValueError as e:
            problems.append(str(e))
        for key in sorted(added.keys() - {r.key for r in records}):
            problems.append(f"{ENHANCEMENT}: {key}: not in the manifest")
    # a local directory's tars (listed: one the manifest leaves out is found too); at a URL, the manifest's; and
    # shards the manifest names by URL (tools.enhance_labels of a dataset at a URL)
    tars: dict[str, Path | str] = {t.name: t for t in d.glob("*.tar")} if url is None else {}
    tars.update({name: locate(url, name) for name in by_shard if url is not None or is_url(name)})
    for shard in sorted(by_shard.keys() - tars.keys()):
        problems.append(f"{shard}: named in the manifest but missing")
    total = 0
    for name, tar in tqdm(sorted(tars.items()), unit="shard", disable=not progress):
        if isinstance(tar, str):
            found, n = _check_remote(tar, by_shard.get(name, []), added, stores)
        elif not tar.is_file():
            found, n = [f"{tar.name}: missing{broken_link(tar)}"], 0
        else:
            found, n = _check_tar(tar, by_shard.get(name, []), added)
        problems += found
        total += n
    info = d / DATASET_INFO
    if info.is_file() and records and json.loads(info.read_text()).get("num_written") != len(records):
        problems.append(f"{DATASET_INFO}: num_written disagrees with the manifest's {len(records)} records")
    return problems, total


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.verify_shards", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="a directory built by tools.build_shards, or its URL")
    a = p.parse_args(argv)
    problems, total = verify(a.dataset, progress=True)
    for msg in problems:
        print(msg)
    if problems:
        print(f"{a.dataset}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{a.dataset}: OK, {total} samples verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
