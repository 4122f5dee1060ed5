"""Datasets at URLs (trainer/data/remote.py) against real servers on 127.0.0.1 (tests/servers.py): the small
files cached per node and revalidated, clips by byte range through injected faults, one clear error for a
dataset that cannot be reached, and a training run from HTTP and from S3 with the local run's losses."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from runkit import launch, tiny_config
from tests.servers import gcs_bucket, s3_bucket, serve, stats
from tests.shardkit import make_dataset
from tools import verify_shards
from tools import build_shards as build_shards_module
from tools.build_shards import main as build_shards
from trainer.data.augment import AugmentConfig
from trainer.data.corrupt import CorruptLog
from trainer.data.datasets import load_records
from trainer.data.features import build_frontend
from trainer.data.shard_bytes import ShardBytes
from trainer.data.remote import RemoteBytes, RemoteError, Stores
from trainer.data.settings import FeatureConfig, LoaderSettings, RemoteSettings
from trainer.data.streams import EvalStream, TrainStream

FEAT = build_frontend(FeatureConfig(frontend="mel64", clip_seconds=1.0))
CPU = torch.device("cpu")
QUICK = RemoteSettings(connections=4, retries=8, timeout=10.0)


def cached(cache: Path, **settings) -> RemoteSettings:
    return dataclasses.replace(QUICK, cache_dir=str(cache), **settings)


@pytest.fixture(scope="module")
def served(tmp_path_factory, built_shards):
    """(local root, static server URL, faulty proxy URL): ``ds`` a 3-shard dataset of 24 short clips; the proxy
    adds 5 ms and fails 20 % of requests (503 or a body cut in half). It asks for ``built_shards`` so that the
    session's fixtures, whose builders fork worker processes, are made before any test here starts obstore's
    threads (a process forked with them running can hang)."""
    root = tmp_path_factory.mktemp("served")
    make_dataset(root / "ds", n=24, num_shards=3, seconds=0.5)
    with serve("static", str(root)) as static, serve("proxy", static, "--latency", "0.005", "--faults", "0.2") as proxy:
        yield root, static, proxy


def test_small_files_are_cached_once_and_refetched_when_the_remote_changes(served, tmp_path):
    root, static, _ = served
    local = load_records(str(root / "ds"))
    with serve("proxy", static) as counted:  # a clean proxy only to count requests
        remote = load_records(f"{counted}/ds", remote=cached(tmp_path))
        first = stats(counted)["requests"]
        again = load_records(f"{counted}/ds", remote=cached(tmp_path))
        second = stats(counted)["requests"] - first
    assert remote[0].columns().keys() == local[0].columns().keys()
    assert all(np.array_equal(a, b) for a, b in zip(remote[0].columns().values(), local[0].columns().values()))
    assert remote[0].shards == [f"{counted}/ds/{Path(s).name}" for s in local[0].shards]
    assert remote[1] == local[1] and remote[2] == local[2]
    # first: a HEAD per small file and per shard, and a GET for each file present; again: the HEADs only
    assert second == 5 + 3 and first == second + 3  # manifest, vocabulary, dataset.json (no weights.csv)
    (copy,) = (tmp_path / "datasets").iterdir()
    assert (copy / "url").read_text().strip() == f"{counted}/ds"
    # weights.csv appears remotely: fetched, and used
    changed = tmp_path / "changed"
    shutil.copytree(root / "ds", changed / "ds")
    (changed / "ds" / "weights.csv").write_text("".join(f"{i + 1}.0\n" for i in range(24)))
    with serve("static", str(changed)) as other:
        table = load_records(f"{other}/ds", remote=cached(tmp_path))[0]
        assert table.weight.tolist() == [float(i + 1) for i in range(24)]
        (changed / "ds" / "weights.csv").write_text("".join(f"{i + 2}.0\n" for i in range(24)))
        assert load_records(f"{other}/ds", remote=cached(tmp_path))[0].weight[0] == 2.0


def test_unreachable_dataset_and_missing_shard_are_one_error_naming_the_url(served, tmp_path):
    root, static, _ = served
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ds"
    with pytest.raises(RemoteError, match=rf"^{url}: cannot read the dataset .*tried 2 times"):
        load_records(url, remote=RemoteSettings(retries=1, timeout=2.0, cache_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=rf"{static}/nothing/manifest.jsonl: not found"):
        load_records(f"{static}/nothing", remote=cached(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"shard ds-000006\.tar is not in {static}/ds/manifest.jsonl"):
        load_records(f"{static}/ds/ds-{{000006..000007}}.tar", remote=cached(tmp_path))
    shutil.copytree(root / "ds", tmp_path / "lacking" / "ds")
    (tmp_path / "lacking" / "ds" / "ds-000002.tar").unlink()
    with serve("static", str(tmp_path / "lacking")) as lacking:
        with pytest.raises(FileNotFoundError, match=rf"missing shard {lacking}/ds/ds-000002\.tar"):
            load_records(f"{lacking}/ds", remote=cached(tmp_path))
    with pytest.raises(ValueError, match=r"may not hold credentials") as e:
        load_records("https://user:s3cret@127.0.0.1/ds", cached(tmp_path))
    assert "s3cret" not in str(e.value)


def test_members_by_range_through_faults_equal_the_local_bytes(served, tmp_path):
    root, _, proxy = served
    local = load_records(str(root / "ds"))[0]
    remote = load_records(f"{proxy}/ds", remote=cached(tmp_path))[0]
    reader, disk = RemoteBytes(QUICK), ShardBytes()
    for i in range(len(remote)):  # the whole dataset asked for ahead, in manifest order: coalesced
        reader.will_need(remote.shard(i), int(remote.offset[i]), int(remote.size[i]))
    for i in range(len(remote)):
        assert reader(remote[i]).tobytes() == disk(local[i]).tobytes()
    assert reader.requests < len(remote)  # 3 shards' members in a few requests, retries included
    # nothing asked ahead: one request per member (and its retries)
    fresh = RemoteBytes(QUICK)
    assert all(fresh(remote[i]).tobytes() == disk(local[i]).tobytes() for i in range(len(remote)))
    assert fresh.requests >= len(remote)
    faults = stats(proxy)
    assert faults["503"] > 0 and faults["dropped"] > 0, faults
    # a member past the end of its shard fails for good, naming the URL, and again without a request
    rec = remote[0]
    with pytest.raises(RemoteError, match=rf"{rec.shard}"):
        fresh.member(rec.shard, rec.offset + 10**7, 100)
    n = fresh.requests
    with pytest.raises(RemoteError, match=rf"{rec.shard}"):
        fresh.member(rec.shard, rec.offset + 10**7, 100)
    assert fresh.requests == n


def test_stalled_requests_time_out_and_are_retried_and_local_shards_mix_in(served):
    root, static, _ = served
    local = load_records(str(root / "ds"))[0]
    disk = ShardBytes()
    with serve("proxy", static, "--stalls", "0.3", "--seed", "2") as stalling:
        reader = RemoteBytes(RemoteSettings(connections=2, retries=8, timeout=1.0))
        for i in range(8):
            rec = local[i]
            url = f"{stalling}/ds/{Path(rec.shard).name}"
            assert reader.member(url, rec.offset, rec.size).tobytes() == disk(rec).tobytes()
            assert reader(rec).tobytes() == disk(rec).tobytes()  # a local path: read from the file
        assert stats(stalling)["stalled"] > 0 and reader.requests == 8 + stats(stalling)["stalled"]


def test_streams_from_a_faulty_server_equal_the_local_ones(served, tmp_path):
    root, _, proxy = served
    loader = LoaderSettings(4, num_threads=1, readahead=2, remote=QUICK)

    def streams(spec: str, cache: Path | None = None):
        recs = load_records(spec, remote=cached(cache) if cache else QUICK)[0]
        train = TrainStream(recs, 5, loader, FEAT, AugmentConfig(mixup=0.5), 3, 0, 1, CPU, num_samples=16)
        return list(train), list(EvalStream(recs, 5, loader, FEAT, 0, 1, CPU))

    (lt, le), (rt, re_) = streams(str(root / "ds")), streams(f"{proxy}/ds", tmp_path)
    for a, b in zip(lt + le, rt + re_, strict=True):
        assert a["keys"] == b["keys"] and torch.equal(a["features"], b["features"]) \
            and torch.equal(a["labels"], b["labels"])


def test_a_clip_that_cannot_be_read_goes_the_corrupt_clip_way(served, tmp_path):
    """A member whose shard is gone after the start is skipped, logged with its URL and error, and replaced."""
    root, _, _ = served
    gone = tmp_path / "gone"
    shutil.copytree(root / "ds", gone / "ds")
    with serve("static", str(gone)) as static:
        recs = load_records(f"{static}/ds", remote=cached(tmp_path / "cache"))[0]
        (gone / "ds" / "ds-000001.tar").unlink()
        log = CorruptLog(tmp_path / "corrupt.jsonl", total=len(recs), max_fraction=0.5)
        train = TrainStream(recs, 5, LoaderSettings(4, num_threads=1, remote=QUICK), FEAT, AugmentConfig(), 3, 0, 1,
                            CPU, num_samples=16, corrupt=log)
        with pytest.warns(UserWarning, match="skipping corrupt training sample"):
            batches = list(train)
    assert len(batches) == 4 and all(len(b["keys"]) == 4 for b in batches)
    rows = [json.loads(line) for line in (tmp_path / "corrupt.jsonl").read_text().splitlines()]
    lost = {recs.key(i) for i in range(len(recs)) if recs.shard(i).endswith("ds-000001.tar")}
    assert rows and {r["key"] for r in rows} <= lost
    assert all(r["shard"] == f"{static}/ds/ds-000001.tar" and "not found" in r["error"].lower() for r in rows)
    assert not lost & {k for b in batches for k in b["keys"]}


def test_builder_uploads_each_shard_when_finished_manifest_last_and_resumes(synthetic_dir, built_shards, tmp_path,
                                                                            monkeypatch):
    """``build_shards --out s3://…``: each shard (tar and index) is handed to the uploader as soon as it is
    finished, while the next is built; the manifest goes last; an upload that fails stops the run before the
    manifest (a reader never sees the dataset), and the next run sends what is missing."""
    stage = tmp_path / "stage"  # the bucket is the session's: a prefix no other test writes to
    sent, seen_at_finish, failed = [], [], []
    upload, build = Stores.upload, build_shards_module.build

    def failing_upload(self, src, url):
        if src.name == "syntrain-000001.tar" and not failed:
            failed.append(src.name)
            raise RemoteError(f"{url}: injected failure")
        sent.append(src.name)
        return upload(self, src, url)

    def watched_build(opts, progress=True, finished=None):
        def spy(tar, idx):  # the shards finished so far, when each is handed over
            seen_at_finish.append(sorted(p.name for p in opts.out.glob("*.tar")))
            finished(tar, idx)
        return build(opts, progress, spy)

    monkeypatch.setattr(Stores, "upload", failing_upload)
    monkeypatch.setattr(build_shards_module, "build", watched_build)
    args = [str(synthetic_dir / "unbalanced.json"), "--out", "s3://audio/builder/syntrain", "--stage", str(stage),
            "--labels", str(synthetic_dir / "class_labels_indices.csv"), "--workers", "1", "--shard-samples", "16",
            "--no-progress"]
    with s3_bucket(monkeypatch) as s3:
        assert build_shards(args) == 2  # shard 1's upload failed: no manifest sent
        assert seen_at_finish == [[f"syntrain-{i:06d}.tar" for i in range(n)] for n in (1, 2, 3)]
        assert "manifest.jsonl" not in sent and sent.index("syntrain-000000.tar") < sent.index("syntrain-000002.tar")
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="audio", Prefix="builder/syntrain/").get("Contents", [])}
        assert "builder/syntrain/manifest.jsonl" not in keys and "builder/syntrain/syntrain-000001.tar" not in keys
        sent.clear()
        assert build_shards(args) == 0  # run again: nothing rebuilt, the missing shard, then the rest, manifest last
        assert sent[0] == "syntrain-000001.tar" and sent[-1] == "manifest.jsonl" and "syntrain-000000.tar" not in sent
        remote = load_records("s3://audio/builder/syntrain", cached(tmp_path / "cache"))
        local = load_records(str(built_shards["train"]))
        assert all(np.array_equal(a, b) for a, b in zip(remote[0].columns().values(), local[0].columns().values()))
        assert remote[1] == local[1] and len(remote[0].shards) == 3
        sent.clear()
        assert build_shards(args) == 0  # and again: only the manifest re-sent
        assert sent == ["manifest.jsonl"]


def test_gcs_dataset_reads_as_the_local_one(built_shards, tmp_path, monkeypatch):
    """gs:// through obstore's GCS client against fake-gcs-server: the small files, the clips by range and
    tools.verify_shards (uploads are not tested here: the emulator refuses the XML API's PUT)."""
    local = load_records(str(built_shards["eval"]))
    with gcs_bucket(monkeypatch, tmp_path) as upload:
        for path in built_shards["eval"].iterdir():
            if path.is_file():
                upload(path, f"sets/syneval/{path.name}")
        remote = load_records("gs://audio/sets/syneval", cached(tmp_path / "cache"))
        assert all(np.array_equal(a, b) for a, b in zip(remote[0].columns().values(), local[0].columns().values()))
        assert remote[1] == local[1] and remote[0].shards == ["gs://audio/sets/syneval/syneval-000000.tar"]
        reader, disk = RemoteBytes(QUICK), ShardBytes()
        for i in range(len(remote[0])):
            reader.will_need(remote[0].shard(i), int(remote[0].offset[i]), int(remote[0].size[i]))
        assert [reader(remote[0][i]).tobytes() for i in range(16)] == [disk(local[0][i]).tobytes() for i in range(16)]
        assert verify_shards.verify("gs://audio/sets/syneval", remote=cached(tmp_path / "cache")) == ([], 16)
        with pytest.raises(FileNotFoundError, match="gs://audio/sets/nothing/manifest.jsonl: not found"):
            load_records("gs://audio/sets/nothing", cached(tmp_path / "cache"))


def _losses(run: Path) -> list[tuple[int, float]]:
    with open(run / "steps.csv") as f:
        return [(int(r["global_step"]), float(r["loss"])) for r in csv.DictReader(f)]


@pytest.mark.timeout(1200)  # three tiny runs: about 9 min on 2 cores with a load average of 12
def test_training_from_http_through_faults_and_from_s3_repeats_the_local_losses(built_shards, synthetic_dir,
                                                                                tmp_path, monkeypatch):
    """``accelerate launch trainer/run.py`` on the fixture shards from disk, from the loopback HTTP server
    behind the fault proxy (latency, 503s, bodies cut) and from moto's S3 server: the same per-step losses,
    no clip lost, and the S3 secret in no log or saved file."""
    runs = tmp_path / "runs"
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, runs)
    launch("trainer/run.py", str(config), "run.name=local")
    top = built_shards["train"].parent
    names = {split: built_shards[split].name for split in ("train", "eval")}
    cache = f"data.remote.cache_dir={tmp_path / 'cache'}"
    with serve("static", str(top)) as static, \
            serve("proxy", static, "--latency", "0.01", "--faults", "0.1", "--seed", "1") as proxy:
        launch("trainer/run.py", str(config), "run.name=http", cache, "data.remote.retries=10",
               f"data.train=[{proxy}/{names['train']}]", f"data.eval=[{proxy}/{names['eval']}]")
        faults = stats(proxy)
    assert faults["503"] + faults["dropped"] > 0, faults
    assert _losses(runs / "http") == _losses(runs / "local") and len(_losses(runs / "local")) == 6
    assert not (runs / "http" / "corrupt_samples.jsonl").exists()

    secret = "t0p-s3cret-for-the-test"
    with s3_bucket(monkeypatch, secret) as s3:
        for path in top.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), "audio", f"sets/{path.relative_to(top)}")
        proc = launch("trainer/run.py", str(config), "run.name=s3", cache,
                      f"data.train=[s3://audio/sets/{names['train']}]", f"data.eval=[s3://audio/sets/{names['eval']}]")
    assert _losses(runs / "s3") == _losses(runs / "local")
    assert secret not in proc.stdout + proc.stderr
    for path in (runs / "s3").rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json", ".jsonl", ".csv", ".log", ".txt"):
            assert secret not in path.read_text(errors="replace"), path


def test_a_run_whose_dataset_cannot_be_reached_stops_with_one_error_naming_the_url(built_shards, synthetic_dir,
                                                                                  tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/syntrain"
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, tmp_path / "runs")
    proc = launch("trainer/run.py", str(config), f"data.train=[{url}]", f"data.remote.cache_dir={tmp_path / 'cache'}",
                  "data.remote.retries=1", check=False)
    assert proc.returncode != 0
    # the run's one line (accelerate adds its own traceback of the launcher after it)
    assert f"error: {url}: cannot read the dataset" in proc.stderr and "RemoteError" not in proc.stderr, \
        proc.stderr[-3000:]


def test_shard_cache_serves_later_epochs_from_disk_within_its_cap(served, tmp_path):
    root, static, _ = served
    local = load_records(str(root / "ds"))[0]
    disk = ShardBytes()
    sizes = sorted(p.stat().st_size for p in (root / "ds").glob("*.tar"))
    with serve("proxy", static) as counted:
        for cap, kept in ((sum(sizes), 3), (sizes[-1], 1)):
            cache = tmp_path / f"cap{cap}"
            remote = load_records(f"{counted}/ds", remote=cached(cache, cache_bytes=cap))[0]
            reader = RemoteBytes(cached(cache, cache_bytes=cap))
            first = [reader(remote[i]).tobytes() for i in range(len(remote))]  # by range; shards fetched meanwhile
            reader.cache.wait()
            files = list((cache / "shards").iterdir())
            assert len(files) == kept and sum(p.stat().st_size for p in files) <= cap
            n = stats(counted)["requests"]
            again = RemoteBytes(cached(cache, cache_bytes=cap))  # another process of the node, a later epoch
            assert [again(remote[i]).tobytes() for i in range(len(remote))] == first \
                == [disk(local[i]).tobytes() for i in range(len(local))]
            if kept == 3:  # everything from disk: not one request
                assert stats(counted)["requests"] == n
            again.cache.wait()
