"""The shard builder: round trip, readers (webdataset, DALI), weights, rejects, resume, parallelism, parts, CSV forms."""
from __future__ import annotations

import filecmp
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import tools.build_shards as bs
from tools import audioset
from tools.audio_io import decode_flac, load_audio, to_pcm16
from tools.shard_writer import read_index
from tools.sources import MISSING_FILE, NO_LABELS, TOO_SHORT, UNKNOWN_LABEL, UNREADABLE, DUPLICATE_KEY, read_source
from trainer.data.manifest import MANIFEST_CACHE, Vocabulary, read_manifest, source_stats
from trainer.data.record_cache import load_cache



def _opts(synthetic_dir: Path, out: Path, **kw) -> bs.BuildOptions:
    kw.setdefault("shard_samples", 8)
    return bs.BuildOptions(source=synthetic_dir / "unbalanced.json", out=out,
                           labels=synthetic_dir / "class_labels_indices.csv", **kw)


def _dataset_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file())


def _assert_same_dataset(a: Path, b: Path) -> None:
    assert _dataset_files(a) == _dataset_files(b)
    for name in _dataset_files(a):
        if name == MANIFEST_CACHE:  # it records its manifest's mtime: the same records, each cache fresh for its own
            cached = [load_cache(d / name, source_stats(d)) for d in (a, b)]
            assert cached[0] is not None and cached[0] == cached[1], name
        else:
            assert filecmp.cmp(a / name, b / name, shallow=False), name


def test_round_trip_samples_equal_written_pcm16(synthetic_dir, built_shards):
    records = read_manifest(built_shards["train"])
    entries = json.loads((synthetic_dir / "unbalanced.json").read_text())["data"]
    kinds = set()
    for rec, entry in zip(records, entries):
        src = synthetic_dir / entry["wav"]
        info = sf.info(str(src))
        kinds.add((info.samplerate, info.channels, src.suffix))
        with open(built_shards["train"] / rec.shard, "rb") as f:
            f.seek(rec.offset)
            pcm, sr = decode_flac(f.read(rec.size))
        assert sr == 16000 and pcm.ndim == 1
        assert len(pcm) == round(info.frames * 16000 / info.samplerate) == 160000
        np.testing.assert_array_equal(pcm, to_pcm16(load_audio(src)))
        assert rec.duration == len(pcm) / 16000
    assert {(44100, 2, ".wav"), (48000, 2, ".flac"), (16000, 1, ".ogg"), (16000, 1, ".wav")} <= kinds


def test_resampled_stereo_is_mono_mean(tmp_path):
    t = np.arange(44100) / 44100
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 44100, subtype="FLOAT")
    x = load_audio(tmp_path / "s.wav")
    assert x.shape == (16000,)
    t16 = np.arange(16000) / 16000
    np.testing.assert_allclose(x[1000:-1000], 0.3 * np.sin(2 * np.pi * 440 * t16)[1000:-1000], atol=1e-3)


@pytest.mark.parametrize("fmt,subtype,sr", [("MP3", "MPEG_LAYER_III", 44100), ("WAV", "PCM_24", 48000),
                                            ("OGG", "VORBIS", 22050), ("FLAC", "PCM_16", 8000)])
def test_other_formats_load_as_16k_mono(tmp_path, fmt, subtype, sr):
    path = tmp_path / f"x.{fmt.lower()}"
    t = np.arange(2 * sr) / sr
    sf.write(path, np.stack([0.3 * np.sin(2 * np.pi * 300 * t)] * 2, 1), sr, format=fmt, subtype=subtype)
    x = load_audio(path)
    assert abs(len(x) - 32000) <= 1200  # MP3 adds encoder padding
    assert 0.15 < np.sqrt(np.mean(x[4000:-4000] ** 2)) < 0.25  # the tone survives: RMS of 0.3 sine is 0.21


def test_tar_members_are_deterministic_and_index_matches_wds2idx(built_shards, tmp_path):
    d = built_shards["train"]
    tars = sorted(d.glob("*.tar"))
    assert [t.name for t in tars] == ["syntrain-000000.tar", "syntrain-000001.tar", "syntrain-000002.tar"]
    with tarfile.open(tars[0]) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:2]] == ["syn_un_000001.flac", "syn_un_000001.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    from wds2idx import IndexCreator  # DALI's own index tool is the reference for the format

    with IndexCreator(str(tars[0]), str(tmp_path / "ref.idx"), verbose=False) as ic:
        ic.create_index()
    assert (tmp_path / "ref.idx").read_text() == tars[0].with_suffix(".idx").read_text()


def test_vanilla_webdataset_reads_keys_and_labels(built_shards):
    import webdataset as wds

    d = built_shards["train"]
    records = read_manifest(d)
    urls = [str(p) for p in sorted(d.glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [r.key for r in records]
    for s, r in zip(samples, records):
        meta = json.loads(s["json"])
        assert tuple(meta["labels"]) == r.labels and meta["key"] == r.key
        assert len(sf.read(io.BytesIO(s["flac"]), dtype="int16")[0]) == round(r.duration * 16000)


def test_dali_reads_shards_with_our_index(built_shards):
    from nvidia.dali import fn, pipeline_def

    d = built_shards["train"]
    records = read_manifest(d)
    tars = sorted(d.glob("*.tar"))

    @pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def pipe():
        flac, meta = fn.readers.webdataset(paths=[str(t) for t in tars], index_paths=[str(t.with_suffix(".idx")) for t in tars],
                                           ext=["flac", "json"], random_shuffle=False, name="reader")
        return flac, meta

    p = pipe()
    p.build()
    got = []
    for _ in range(len(records) // 8):
        flac, meta = p.run()
        for i in range(len(meta)):
            m = json.loads(bytes(np.array(meta.at(i))))
            pcm = sf.read(io.BytesIO(bytes(np.array(flac.at(i)))), dtype="int16")[0]
            got.append((m["key"], tuple(m["labels"]), len(pcm)))
    assert got == [(r.key, r.labels, round(r.duration * 16000)) for r in records]


def test_weights_follow_psla_formula_on_real_balanced_labels():
    vocab = audioset.vocabulary()
    sets = [[vocab.index[m] for m in mids] for mids in audioset.label_sets("balanced_train")]
    assert len(sets) == 22160
    counts = np.zeros(len(vocab))
    for s in sets:
        counts[s] += 1
    for offset in (0.01, 100.0):
        weights = bs.psla_weights(sets, len(vocab), offset)
        expected = [float(np.sum(1000.0 / (counts[s] + offset))) for s in sets]
        np.testing.assert_allclose(weights, expected, rtol=1e-12)
    assert counts[vocab.index["/m/04rlf"]] == 6244  # Music, as the data README states
    # first row: --PJHxphWEs "/m/09x0r,/t/dd00088"
    speech, other = counts[vocab.index["/m/09x0r"]], counts[vocab.index["/t/dd00088"]]
    assert bs.psla_weights(sets, len(vocab))[0] == pytest.approx(1000 / (speech + 0.01) + 1000 / (other + 0.01))


def test_weights_csv_matches_manifest_labels(built_shards):
    d = built_shards["train"]
    records = read_manifest(d)
    info = json.loads((d / "dataset.json").read_text())
    counts = np.array(info["class_counts"])
    for r in records:
        assert r.weight == pytest.approx(sum(1000 / (counts[c] + 0.01) for c in r.labels), rel=1e-12)
    assert info["num_written"] == len(records) == 40 and info["num_shards"] == 3


def _reject_source(synthetic_dir: Path, tmp: Path) -> Path:
    """A PSLA datafile with 4 good inputs and one input for each reject reason."""
    vocab = Vocabulary.load(synthetic_dir / "class_labels_indices.csv")
    good = json.loads((synthetic_dir / "unbalanced.json").read_text())["data"][:4]
    (tmp / "dup").mkdir()
    shutil.copy(synthetic_dir / good[0]["wav"], tmp / "dup" / Path(good[0]["wav"]).name)
    (tmp / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    sf.write(tmp / "short.wav", np.zeros(800, np.int16), 16000)  # 0.05 s
    data = [{"wav": str(synthetic_dir / e["wav"]), "labels": e["labels"]} for e in good] + [
        {"wav": "missing.wav", "labels": vocab.mids[0]},
        {"wav": "corrupt.wav", "labels": vocab.mids[0]},
        {"wav": "short.wav", "labels": vocab.mids[0]},
        {"wav": str(synthetic_dir / good[1]["wav"]), "labels": "/m/not_a_class"},
        {"wav": str(synthetic_dir / good[2]["wav"]), "labels": ""},
        {"wav": "dup/" + Path(good[0]["wav"]).name, "labels": vocab.mids[1]},
    ]
    src = tmp / "mixed.json"
    src.write_text(json.dumps({"data": data}))
    return src


def test_every_reject_reason_is_recorded_and_counts_add_up(synthetic_dir, tmp_path, capsys):
    src = _reject_source(synthetic_dir, tmp_path)
    out = tmp_path / "shards" / "mixed"
    argv = [str(src), "--out", str(out), "--labels", str(synthetic_dir / "class_labels_indices.csv"),
            "--workers", "1", "--no-progress"]
    assert bs.main(argv + ["--max-reject-fraction", "1"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary == ("10 inputs, 4 written, 6 rejected (duplicate key: 1, missing file: 1, no labels: 1, "
                       "too short: 1, unknown label: 1, unreadable audio: 1)")
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == [MISSING_FILE, UNREADABLE, TOO_SHORT, UNKNOWN_LABEL, NO_LABELS,
                                              DUPLICATE_KEY]
    assert rejects[0]["source"] == "missing.wav" and "corrupt.wav" in rejects[1]["detail"]
    info = json.loads((out / "dataset.json").read_text())
    assert info["num_written"] + info["num_rejected"] == info["num_inputs"] == 10
    # the first of two clips with one key is kept, with its own labels
    assert [r.key for r in read_manifest(out)] == [Path(e["wav"]).stem for e in
                                                   json.loads(src.read_text())["data"][:4]]


def test_reject_fraction_above_limit_exits_nonzero(synthetic_dir, tmp_path, capsys):
    src = _reject_source(synthetic_dir, tmp_path)
    out = tmp_path / "shards" / "mixed"
    rc = bs.main([str(src), "--out", str(out), "--labels", str(synthetic_dir / "class_labels_indices.csv"),
                  "--workers", "1", "--no-progress", "--max-reject-fraction", "0.5"])
    assert rc == 1
    assert "60.0% of inputs rejected" in capsys.readouterr().err


def test_resume_after_interruption_gives_identical_shards(synthetic_dir, tmp_path, monkeypatch):
    ref = _opts(synthetic_dir, tmp_path / "ref" / "ds")
    bs.build(ref, progress=False)

    # A build killed mid-shard: the unfinished shard's temp tar is left behind.
    killed = _opts(synthetic_dir, tmp_path / "killed" / "ds")
    calls = {"n": 0}
    real_encode = bs._encode

    def dying_encode(job):
        calls["n"] += 1
        if calls["n"] == 21:
            raise KeyboardInterrupt
        return real_encode(job)

    monkeypatch.setattr(bs, "_encode", dying_encode)
    with pytest.raises(KeyboardInterrupt):
        bs.build(killed, progress=False)
    monkeypatch.setattr(bs, "_encode", real_encode)
    assert sorted(p.name for p in killed.out.glob("*.tar")) == ["ds-000000.tar", "ds-000001.tar"]
    (killed.out / ".ds-000002.tar.tmp").write_bytes(b"\0" * 1000)  # as a SIGKILL would leave it
    finished = killed.out / "ds-000000.tar"
    mtime = finished.stat().st_mtime_ns
    bs.build(killed, progress=False)
    assert finished.stat().st_mtime_ns == mtime  # finished shards are kept, not rebuilt
    _assert_same_dataset(ref.out, killed.out)

    # The last shard deleted after a complete build is rebuilt the same.
    (killed.out / "ds-000004.tar").unlink()
    bs.build(killed, progress=False)
    _assert_same_dataset(ref.out, killed.out)

    with pytest.raises(SystemExit, match="other inputs or options"):
        bs.build(_opts(synthetic_dir, killed.out, shard_samples=5), progress=False)


def test_resume_after_sigkill_gives_identical_shards(synthetic_dir, tmp_path):
    ref = _opts(synthetic_dir, tmp_path / "ref" / "ds", shard_samples=4)
    bs.build(ref, progress=False)
    out = tmp_path / "killed" / "ds"
    cmd = [sys.executable, "-m", "tools.build_shards", str(ref.source), "--out", str(out), "--labels",
           str(ref.labels), "--workers", "1", "--shard-samples", "4", "--no-progress"]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "ds-000002.tar").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert not (out / "ds-000009.tar").exists(), "the build finished before it could be killed"
    assert subprocess.run(cmd, cwd=repo, capture_output=True).returncode == 0
    _assert_same_dataset(ref.out, out)


def test_two_workers_equal_one(synthetic_dir, tmp_path):
    one = _opts(synthetic_dir, tmp_path / "w1" / "ds", workers=1, shuffle=True, seed=3)
    two = _opts(synthetic_dir, tmp_path / "w2" / "ds", workers=2, shuffle=True, seed=3)
    bs.build(one, progress=False)
    bs.build(two, progress=False)
    _assert_same_dataset(one.out, two.out)
    assert [r.key for r in read_manifest(one.out)] != sorted(r.key for r in read_manifest(one.out))


def test_shard_size_in_bytes_bounds_shards(synthetic_dir, tmp_path):
    assert bs.parse_size("256MB") == 256_000_000 and bs.parse_size("1MiB") == 2**20
    opts = _opts(synthetic_dir, tmp_path / "ds", shard_samples=None, shard_size=bs.parse_size("2MB"))
    bs.build(opts, progress=False)
    tars = sorted(opts.out.glob("*.tar"))
    assert len(tars) > 2
    assert all(t.stat().st_size <= 2_000_000 + 10240 for t in tars)  # + the tar end-of-archive record


def test_parts_are_disjoint_cover_and_merge(synthetic_dir, tmp_path):
    full = _opts(synthetic_dir, tmp_path / "full" / "ds")
    bs.build(full, progress=False)
    out = tmp_path / "parts" / "ds"
    keys = []
    for part in range(3):
        assert not (out / "manifest.jsonl").exists()
        res = bs.build(_opts(synthetic_dir, out, part=part, num_parts=3), progress=False)
        part_records = read_manifest_part(out, part, 3)
        assert {r.shard.split("-")[1] for r in part_records} == {f"p{part}"}
        keys.append({r.key for r in part_records})
        assert res.num_written == len(part_records)
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    full_records = {r.key: r for r in read_manifest(full.out)}
    assert keys[0] | keys[1] | keys[2] == set(full_records)
    merged = read_manifest(out)  # written by the last part to finish
    assert len(merged) == len(full_records)
    for r in merged:
        assert r.labels == full_records[r.key].labels and r.weight == pytest.approx(full_records[r.key].weight)
    from tools.verify_shards import verify

    assert verify(out) == ([], len(full_records))


def read_manifest_part(out: Path, part: int, num_parts: int):
    from trainer.data.records import ShardRecord

    text = (out / f"manifest.p{part}-of-{num_parts}.jsonl").read_text()
    return [ShardRecord.from_json(line) for line in text.splitlines()]


OFFICIAL_CSV = """\
# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5
# YTID, start_seconds, end_seconds, positive_labels
abc, 30.000, 40.000, "/m/09x0r,/m/04rlf"
def, 0.000, 10.000, "/m/04rlf"
ghi, 10.000, 20.000, "/m/0jbk"
gone, 0.000, 10.000, "/m/0jbk"
"""


def test_audioset_csv_both_forms_and_name_forms(tmp_path):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    tone = (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    sf.write(audio / "abc_30.000_40.000.wav", tone, 16000)
    sf.write(audio / "sub" / "Ydef.flac", tone, 16000)
    sf.write(audio / "ghi.ogg", tone, 16000)
    (tmp_path / "official.csv").write_text(OFFICIAL_CSV)
    header_form = "YTID,start_seconds,end_seconds,positive_labels\n" + "\n".join(
        line.replace(", ", ",") for line in OFFICIAL_CSV.splitlines()[3:]) + "\n"
    (tmp_path / "header.csv").write_text(header_form)
    vocab = audioset.vocabulary()
    official = read_source(tmp_path / "official.csv", vocab, audio)
    assert official == read_source(tmp_path / "header.csv", vocab, audio)
    assert [(it.key, it.reject) for it in official] == [
        ("abc_30000_40000", None), ("def", None), ("ghi", None), ("gone_0000_10000", MISSING_FILE)]
    assert official[0].mids == ("/m/09x0r", "/m/04rlf") and official[1].source == "sub/Ydef.flac"

    out = tmp_path / "shards" / "as"
    assert bs.main([str(tmp_path / "official.csv"), "--audio-dir", str(audio), "--out", str(out), "--workers", "1",
                    "--no-progress", "--max-reject-fraction", "0.3"]) == 0
    assert [r.key for r in read_manifest(out)] == ["abc_30000_40000", "def", "ghi"]
    assert read_index(out / "as-000000.idx")[1][0].name == "def.flac"


def test_psl_tsv_source(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.int16), 16000)
    sf.write(tmp_path / "b.wav", np.zeros(16000, np.int16), 16000)
    (tmp_path / "list.tsv").write_text("filename\tlabels\tduration\na.wav\t0;137\t1.0\nb.wav\t9999\t1.0\n")
    vocab = audioset.vocabulary()
    items = read_source(tmp_path / "list.tsv", vocab)
    assert items[0].labels == (0, 137) and items[0].key == "a" and items[0].reject is None
    assert items[1].reject == UNKNOWN_LABEL


def test_missing_vocabulary_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--labels .*nope\.csv: no such file"):
        bs.load_vocabulary(tmp_path / "nope.csv")
