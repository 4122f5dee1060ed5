"""Records as columns: the table, its binary cache beside manifest.jsonl (fresh, stale, rebuilt, written by
several processes at once), the vectorised hold-out, and batches equal to those of a list of ShardRecord."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.shardkit import make_dataset
from trainer.data.datasets import holdout_mask, in_holdout, load_records, resolve_splits
from trainer.data.features import build_frontend
from trainer.data.manifest import MANIFEST, MANIFEST_CACHE, read_manifest, source_stats
from trainer.data.record_cache import load_cache
from trainer.data.records import RecordTable, ShardRecord
from trainer.data.sampling import train_order
from trainer.data.settings import AugmentConfig, DataConfig, FeatureConfig, LoaderSettings, dali_threads
from trainer.data.shard_bytes import ShardBytes
from trainer.data.streams import TrainStream

FEAT = build_frontend(FeatureConfig(frontend="mel64", clip_seconds=0.5))
CPU = torch.device("cpu")


@pytest.fixture
def ds(tmp_path) -> Path:
    root = tmp_path / "ds"
    make_dataset(root, n=23, num_shards=3, num_classes=5, seconds=0.4)
    # weights.csv overrides the manifest's weights, as the builder's does
    (root / "weights.csv").write_text("".join(f"{0.25 + (i * 7919 % 13) / 5!r}\n" for i in range(23)))
    return root


def parsed_records(root: Path) -> list[ShardRecord]:
    """The list path of the starting commit: every manifest line a ShardRecord, weights from weights.csv,
    shard paths absolute."""
    lines = [line for line in (root / MANIFEST).read_text().splitlines() if line.strip()]
    weights = [float(w) for w in (root / "weights.csv").read_text().split()]
    return [dataclasses.replace(ShardRecord.from_json(line), shard=str(root / json.loads(line)["shard"]), weight=w)
            for line, w in zip(lines, weights)]


def test_table_round_trip_and_columns():
    records = [ShardRecord("a", "s0.tar", 512, 100, (3, 1), 1.5, 0.5),
               ShardRecord("bé_ü", "s1.tar", 1024, 7, (), 0.25),  # no labels, a key that is not ASCII
               ShardRecord("c", "s0.tar", 2048, 9, (4,), 10.0, 2.0)]
    t = RecordTable.from_records(records)
    assert list(t) == records and len(t) == 3 and t[-1] == records[2] and t[1].key == "bé_ü"
    assert t.shards == ["s0.tar", "s1.tar"] and t.shard_index.tolist() == [0, 1, 0]
    assert t.keys([2, 0]) == ["c", "a"] and t.find(["c", "bé_ü", "nope"]) == {"c": 2, "bé_ü": 1}
    np.testing.assert_array_equal(t.multi_hot([2, 1, 0, 2], 5), [[0, 0, 0, 0, 1], [0] * 5, [0, 1, 0, 1, 0],
                                                                 [0, 0, 0, 0, 1]])
    assert list(t.take(np.array([2, 0]))) == [records[2], records[0]] and list(t[1:]) == records[1:]
    assert list(t.take(np.array([False, True, True]))) == records[1:]
    both = RecordTable.concat([t, RecordTable.from_records(records[:2])])
    assert list(both) == records + records[:2] and both.shards == ["s0.tar", "s1.tar"] * 2
    assert len(RecordTable.from_records([])) == 0
    assert list(RecordTable.concat([t, t.take(np.array([], int))])) == records
    with pytest.raises(IndexError):
        t[3]


def test_cache_is_written_once_and_mapped(ds):
    assert not (ds / MANIFEST_CACHE).exists()
    first = read_manifest(ds)  # parsed, and the cache written beside the manifest
    assert (ds / MANIFEST_CACHE).is_file() and first.offset.flags.writeable
    again = read_manifest(ds)
    assert not again.offset.flags.writeable  # a read-only map of the cache: nothing parsed
    assert again == first and list(again) == list(read_manifest(ds, cache=False))
    assert [r.weight for r in again] == [float(w) for w in (ds / "weights.csv").read_text().split()]
    assert [p.name for p in ds.iterdir() if p.name.endswith(".tmp")] == []


def test_stale_cache_is_detected_and_rebuilt(ds):
    read_manifest(ds)
    lines = (ds / MANIFEST).read_text().splitlines()
    rec = json.loads(lines[3])
    rec["labels"], rec["key"] = [0, 2, 4], "renamed"  # another size
    lines[3] = json.dumps(rec)
    (ds / MANIFEST).write_text("\n".join(lines) + "\n")
    table = read_manifest(ds)
    assert table[3].key == "renamed" and table[3].labels == (0, 2, 4) and table.find(["renamed"]) == {"renamed": 3}
    assert load_cache(ds / MANIFEST_CACHE, source_stats(ds)) == table  # rebuilt for the new manifest

    # the same size, only the mtime tells: an offset digit changed
    rec["offset"] += 1 if rec["offset"] % 10 != 9 else -1
    lines[3] = json.dumps(rec)
    before = os.stat(ds / MANIFEST)
    (ds / MANIFEST).write_text("\n".join(lines) + "\n")
    assert os.stat(ds / MANIFEST).st_size == before.st_size
    os.utime(ds / MANIFEST, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert read_manifest(ds)[3].offset == rec["offset"]

    # weights.csv changed, then removed: the manifest's own weights
    (ds / "weights.csv").write_text("".join(f"{i + 1.0}\n" for i in range(23)))
    assert read_manifest(ds).weight.tolist() == [i + 1.0 for i in range(23)]
    (ds / "weights.csv").unlink()
    assert read_manifest(ds).weight.tolist() == [json.loads(line)["weight"] for line in lines]


def test_damaged_cache_is_rebuilt(ds):
    good = read_manifest(ds)
    data = (ds / MANIFEST_CACHE).read_bytes()
    for damaged in (data[:len(data) // 2], b"", b"x" * 100, data[:20]):
        (ds / MANIFEST_CACHE).write_bytes(damaged)
        os.utime(ds / MANIFEST_CACHE)
        assert read_manifest(ds) == good
        assert load_cache(ds / MANIFEST_CACHE, source_stats(ds)) == good


def test_ranks_rebuilding_the_cache_at_once(ds):
    """Every process that finds the cache missing writes it under a name of its own and renames it into place:
    all of them read the same table, one complete cache is left and no temporary file."""
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        tables = list(pool.map(read_manifest, [ds] * 8))
    expected = read_manifest(ds, cache=False)
    assert all(t == expected for t in tables)
    assert load_cache(ds / MANIFEST_CACHE, source_stats(ds)) == expected
    assert sorted(p.name for p in ds.iterdir() if "cache" in p.name) == [MANIFEST_CACHE]


def test_builder_writes_a_fresh_cache(built_shards):
    for d in built_shards.values():
        cached = load_cache(d / MANIFEST_CACHE, source_stats(d))
        assert cached is not None and cached == read_manifest(d, cache=False)


@pytest.mark.parametrize("fraction", [0.0, 1e-9, 0.01, 0.3, 0.5, 1.0])
def test_vectorised_holdout_is_the_sha1_rule(fraction):
    keys = [f"clip{i:06d}_{i * 37 % 1000}" for i in range(5000)] + ["é", ""]
    table = RecordTable.from_records(ShardRecord(k, "s.tar", 0, 1, (), 1.0) for k in keys)
    rule = [int.from_bytes(hashlib.sha1(k.encode()).digest()[:8], "big") < fraction * 2**64 for k in keys]
    assert holdout_mask(table, fraction).tolist() == rule == [in_holdout(k, fraction) for k in keys]
    h = int(table.key_hash[0])  # fractions whose threshold lands on (a float next to) a key's hash
    for f in (h / 2**64, np.nextafter(h / 2**64, 0), np.nextafter(h / 2**64, 1)):
        assert holdout_mask(table, float(f))[0] == (h < f * 2**64) == in_holdout(keys[0], float(f))


def test_splits_from_tables(ds, tmp_path):
    make_dataset(tmp_path / "b", n=9, num_shards=2, seconds=0.3, prefix="bb")
    splits = resolve_splits(DataConfig(train=[str(ds), str(tmp_path / "b" / "bb-000001.tar")], valid_fraction=0.3))
    every = parsed_records(ds) + [r for r in load_records(str(tmp_path / "b"))[0] if r.shard.endswith("1.tar")]
    assert list(splits.train) == [r for r in every if not in_holdout(r.key, 0.3)]
    assert list(splits.valid) == [r for r in every if in_holdout(r.key, 0.3)]
    assert all(Path(splits.train.shard(i)).is_file() for i in range(len(splits.train)))


@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_columnar_batches_equal_the_record_list_path(ds, rank, world):
    """For a (seed, epoch, rank), the stream over the cached table hands out exactly the batches (keys, labels,
    weights) that the starting commit's list of ShardRecord gave: train_order over the list's weights, keys
    and multi-hot labels record by record."""
    records = parsed_records(ds)
    read_manifest(ds)  # the cache is written: the stream below reads the mapped columns
    table = load_records(str(ds))[0]
    assert not table.offset.flags.writeable and list(table) == records
    batch, seed, epoch, samples = 4, 11, 1, 30
    order = train_order([r.weight for r in records], samples, True, batch, seed, epoch, rank, world)
    expected = order.view(-1, batch).tolist()
    for source in (table, records):
        stream = TrainStream(source, 5, LoaderSettings(batch, 1, 1), FEAT, AugmentConfig(), seed, rank, world, CPU,
                             num_samples=samples)
        stream.set_epoch(epoch)
        assert stream.batches().tolist() == expected
        got = list(stream)
        assert len(got) == len(expected)
        for idx, b in zip(expected, got):
            assert b["keys"] == [records[i].key for i in idx]
            labels = torch.zeros(len(idx), 5)
            for row, i in enumerate(idx):
                labels[row, list(records[i].labels)] = 1.0
            assert torch.equal(b["labels"], labels)
            assert stream.records.weight[idx].tolist() == [records[i].weight for i in idx]


def test_read_ahead_hints_the_planned_members_and_changes_no_batch(ds, monkeypatch):
    hinted = []
    real = ShardBytes.will_need
    monkeypatch.setattr(ShardBytes, "will_need", lambda self, *a: (hinted.append(a), real(self, *a))[1])
    table = load_records(str(ds))[0]
    runs = []
    for depth in (0, 3):
        hinted.clear()
        stream = TrainStream(table, 5, LoaderSettings(4, 1, 1, readahead=depth), FEAT, AugmentConfig(mixup=0.5),
                             5, 0, 1, CPU, num_samples=24)
        runs.append(list(stream))
        if depth:
            planned = {(table.shard(i), int(table.offset[i]), int(table.size[i])) for b in stream.batches() for i in b}
            assert planned <= set(hinted)
        else:
            assert hinted == []
    for a, b in zip(*runs):
        assert a["keys"] == b["keys"] and torch.equal(a["features"], b["features"])


def test_auto_dali_threads(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert dali_threads("auto", step_threads=1) == 15  # one process driving a GPU
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert dali_threads("auto", step_threads=1) == 3
    assert dali_threads("auto", step_threads=4) == 1  # CPU training: torch's threads take the whole share
    assert dali_threads(6, step_threads=4) == 6
