"""verify_shards catches corruption; shard_stats computes the PSLA fbank statistics; both on a dataset at a URL
(the loopback servers of tests/servers.py)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from tests.servers import s3_bucket, serve
from tools import shard_stats, verify_shards
from tools.audio_io import decode_flac
from trainer.data.manifest import MANIFEST_CACHE, read_manifest, source_stats
from trainer.data.record_cache import save_cache
from trainer.data.records import RecordTable


@pytest.fixture
def dataset(built_shards, tmp_path) -> Path:
    d = tmp_path / "syntrain"
    shutil.copytree(built_shards["train"], d)
    return d


def test_clean_dataset_passes(dataset, capsys):
    assert verify_shards.verify(dataset) == ([], 40)
    assert verify_shards.main([str(dataset)]) == 0
    assert "OK, 40 samples verified" in capsys.readouterr().out


@pytest.mark.parametrize("cut", ["mid_member", "block_boundary"])
def test_truncated_tar_is_reported(dataset, cut, capsys):
    tar = dataset / "syntrain-000001.tar"
    last = read_manifest(dataset)[31]  # the last sample of shard 1
    data = tar.read_bytes()
    size = last.offset + last.size // 2 if cut == "mid_member" else last.offset - 512  # drop the last flac member
    tar.write_bytes(data[:size])
    problems, _ = verify_shards.verify(dataset)
    assert problems and all("syntrain-000001" in p or "manifest" in p for p in problems)
    assert any(last.key in p for p in problems)
    assert verify_shards.main([str(dataset)]) == 1
    assert "syntrain-000001.tar" in capsys.readouterr().out


def test_flipped_byte_in_flac_member_names_the_key(dataset):
    rec = read_manifest(dataset)[5]
    tar = dataset / rec.shard
    data = bytearray(tar.read_bytes())
    data[rec.offset + rec.size // 2] ^= 0x10
    tar.write_bytes(bytes(data))
    problems, _ = verify_shards.verify(dataset)
    assert problems and all(f"{rec.shard}: {rec.key}:" in p for p in problems), problems


def test_index_mismatch_is_reported(dataset):
    idx = dataset / "syntrain-000000.idx"
    lines = idx.read_text().splitlines()
    f = lines[3].split()
    f[1] = str(int(f[1]) + 512)
    lines[3] = " ".join(f)
    idx.write_text("\n".join(lines) + "\n")
    problems, _ = verify_shards.verify(dataset)
    assert len(problems) == 1 and problems[0].startswith("syntrain-000000.idx:4: syn_un_000003:")


def test_manifest_mismatch_is_reported(dataset):
    path = dataset / "manifest.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[20])
    rec["size"] += 1
    lines[20] = json.dumps(rec)
    del lines[30]
    path.write_text("\n".join(lines) + "\n")
    (dataset / "weights.csv").write_text("".join(f"{w}\n" for w in range(39)))
    problems, _ = verify_shards.verify(dataset)
    assert any(p.startswith(f"{rec['shard']}: {rec['key']}: manifest says flac") for p in problems)
    assert any("not in the manifest" in p for p in problems)
    assert any(p.startswith("dataset.json") for p in problems)


def test_cache_that_disagrees_with_its_manifest_is_reported(dataset):
    """A cache made from the present files (sizes and mtimes match) whose records differ: bit rot, or a hand
    edit that kept both. The loader would trust it, so the verifier compares it with the text."""
    records = list(read_manifest(dataset))
    records[7] = dataclasses.replace(records[7], offset=records[7].offset + 512)
    save_cache(dataset / MANIFEST_CACHE, RecordTable.from_records(records), source_stats(dataset))
    problems, _ = verify_shards.verify(dataset)
    assert len(problems) == 1 and problems[0].startswith(f"{MANIFEST_CACHE}: its records differ"), problems


def test_shard_stats_matches_direct_fbank(dataset, capsys):
    """The stats are those of the trainer's kaldi_fbank log-mel, which equals Kaldi's fbank without its
    per-frame DC removal (tests/test_features.py); Kaldi's own fbank (with it) is within 1 %."""
    records = read_manifest(dataset)
    values = {True: [], False: []}
    for r in records[:8]:
        with open(dataset / r.shard, "rb") as f:
            f.seek(r.offset)
            pcm, _ = decode_flac(f.read(r.size))
        w = torch.from_numpy(pcm / 32768.0).float()[None]
        for remove_dc in values:
            values[remove_dc].append(torchaudio.compliance.kaldi.fbank(
                w - w.mean(), htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                num_mel_bins=128, dither=0.0, frame_shift=10, remove_dc_offset=remove_dc).double().flatten())
    # 8 of 40 with a fixed seed: check against the same subset the tool picks
    chosen = sorted(np.random.default_rng(0).choice(40, 8, replace=False))
    stats = shard_stats.fbank_stats(dataset, [records[i] for i in chosen], max_samples=8)
    direct = shard_stats.fbank_stats(dataset, records[:8], max_samples=8)
    same, kaldi = torch.cat(values[False]), torch.cat(values[True])
    assert direct["mean"] == pytest.approx(same.mean().item(), rel=1e-6)
    assert direct["std"] == pytest.approx(same.std(unbiased=False).item(), rel=1e-5)
    assert direct["mean"] == pytest.approx(kaldi.mean().item(), rel=1e-2)
    assert direct["std"] == pytest.approx(kaldi.std(unbiased=False).item(), rel=1e-2)
    assert shard_stats.main([str(dataset), "--max-samples", "8"]) == 0
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["feature_stats"]["kaldi_fbank"]["mean"] == pytest.approx(stats["mean"])
    assert info["num_written"] == 40  # the rest of dataset.json is kept
    assert "kaldi_fbank mean" in capsys.readouterr().out



def test_dataset_at_a_url_is_verified_shard_by_shard(served_shards, dataset, tmp_path, monkeypatch, capsys):
    """Every shard downloaded, checked and deleted; problems name the shard's URL."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert verify_shards.verify(f"{served_shards}/syntrain") == ([], 40)
    rec = read_manifest(dataset)[5]
    data = bytearray((dataset / rec.shard).read_bytes())
    data[rec.offset + rec.size // 2] ^= 0x10
    (dataset / rec.shard).write_bytes(bytes(data))
    (dataset / "syntrain-000001.idx").unlink()
    (dataset / "syntrain-000002.tar").unlink()
    with serve("static", str(tmp_path)) as url:
        problems, n = verify_shards.verify(f"{url}/syntrain")
        assert verify_shards.main([f"{url}/syntrain/"]) == 1
    base = f"{url}/syntrain"
    assert n == 32 and problems[-1] == f"{base}/syntrain-000002.tar: missing", problems
    assert f"{base}/syntrain-000001.idx: missing" in problems
    assert problems[:-2] and all(p.startswith(f"{base}/{rec.shard}: {rec.key}:") for p in problems[:-2]), problems
    assert f"{base}/{rec.shard}: {rec.key}:" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "cache" / "audiotag").iterdir()] == ["datasets"]  # downloads deleted
    problems, _ = verify_shards.verify(f"{url}/syntrain")  # the server is gone
    assert len(problems) == 1 and problems[0].startswith(f"{base}: cannot read the dataset"), problems


def test_shard_stats_of_a_dataset_at_a_url(served_shards, dataset, tmp_path, monkeypatch, capsys):
    """The same statistics as from the directory; stored back into an S3 bucket, only printed (exit 1) from a
    plain HTTP server, which takes no uploads."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    local = shard_stats.shard_stats(dataset, max_samples=4)
    remote = shard_stats.shard_stats(f"{served_shards}/syntrain", max_samples=4)
    assert remote["kaldi_fbank"] == local["kaldi_fbank"] and remote["class_counts"] == local["class_counts"]
    assert remote["not_written"] and remote["written_to"] == f"{served_shards}/syntrain/dataset.json"
    assert shard_stats.main([f"{served_shards}/syntrain", "--max-samples", "4"]) == 1
    assert f"could not store the statistics in {served_shards}/syntrain/dataset.json" in capsys.readouterr().err
    info = json.loads((dataset / "dataset.json").read_text())
    del info["feature_stats"]  # written by the local run above
    (dataset / "dataset.json").write_text(json.dumps(info))
    with s3_bucket(monkeypatch) as s3:
        for path in dataset.iterdir():
            if path.is_file():
                s3.upload_file(str(path), "audio", f"sets/syntrain/{path.name}")
        assert shard_stats.main(["s3://audio/sets/syntrain", "--max-samples", "4"]) == 0
        info = json.loads(s3.get_object(Bucket="audio", Key="sets/syntrain/dataset.json")["Body"].read())
    assert info["feature_stats"]["kaldi_fbank"] == local["kaldi_fbank"] and info["num_written"] == 40
