"""Datasets at URLs (trainer/data/remote.py) against real servers on 127.0.0.1 (tests/servers.py): the small
files cached per node and revalidated, clips by byte range through injected faults, one clear error for a
dataset that cannot be reached, and a training run from HTTP and from S3 with the local run's losses."""
from __future__ import annotations

import contextlib
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
from tests.servers import moto_s3, serve, stats
from tests.shardkit import make_dataset
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


@contextlib.contextmanager
def s3_bucket(monkeypatch, secret: str = "testing"):
    """moto's S3 server with a bucket ``audio``; the credentials in this process's environment (the standard
    chain, which launched runs inherit)."""
    import boto3

    with moto_s3() as endpoint:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="audio")
        yield s3


def test_builder_uploads_to_s3_manifest_last_and_resumes(synthetic_dir, built_shards, tmp_path, monkeypatch):
    sent = []
    upload = Stores.upload
    monkeypatch.setattr(Stores, "upload", lambda self, src, url: (sent.append(src.name), upload(self, src, url))[1])
    args = [str(synthetic_dir / "eval.json"), "--out", "s3://audio/sets/syneval", "--stage", str(tmp_path / "stage"),
            "--labels", str(synthetic_dir / "class_labels_indices.csv"), "--workers", "1", "--shard-samples", "16",
            "--no-progress"]
    with s3_bucket(monkeypatch):
        assert build_shards(args) == 0
        assert sent[-1] == "manifest.jsonl" and {n for n in sent[:2]} == {"syneval-000000.tar", "syneval-000000.idx"}
        remote = load_records("s3://audio/sets/syneval", cached(tmp_path / "cache"))
        local = load_records(str(built_shards["eval"]))
        assert all(np.array_equal(a, b) for a, b in zip(remote[0].columns().values(), local[0].columns().values()))
        assert remote[1] == local[1] and remote[0].shards == ["s3://audio/sets/syneval/syneval-000000.tar"]
        sent.clear()
        assert build_shards(args) == 0  # run again (as after a kill): nothing rebuilt, only the manifest re-sent
        assert sent == ["manifest.jsonl"]


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
