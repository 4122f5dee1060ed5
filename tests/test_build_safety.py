"""What the shard builder and the readers refuse or survive (issue 22): a second build into one --out, a worker
killed mid-build, lying or oversized audio, keys with whitespace, malformed vocabularies, a shard truncated
under a reader."""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import tools.build_shards as bs
from runkit import REPO, repo_pythonpath
from tools.shard_writer import read_index
from tools.sources import DUPLICATE_KEY, LOW_RATE, TOO_LONG
from tools.verify_shards import main as verify_main
from trainer.data.audio import (MIN_SOURCE_RATE, AudioTooLong, SampleRateTooLow, iter_windows, load_audio)
from trainer.data.locks import LockHeld, hold_lock
from trainer.data.manifest import Vocabulary, read_manifest

ENV = {**os.environ, "PYTHONPATH": repo_pythonpath(os.environ)}


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _blocked_in_open(pid: int) -> bool:
    """Whether ``pid`` sleeps in open()/openat(): a reader waiting for a FIFO's writer."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] in ("2", "257")
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").glob("*") for c in (task / "children").read_text().split()]


def test_second_build_stops_and_a_killed_worker_stops_the_build_resumably(synthetic_dir, tmp_path):
    """Real processes: build A (2 workers) sticks on a FIFO posing as a clip; build B into the same --out stops at
    once naming A; SIGKILL of A's worker on the FIFO stops A with an error naming that worker and input (a
    multiprocessing.Pool hung forever); the rerun resumes, keeping A's finished shards."""
    entries = json.loads((synthetic_dir / "unbalanced.json").read_text())["data"]
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    for e in entries[:20] + [None] + entries[20:]:
        if e is None:  # the FIFO: a worker opening it waits for a writer that never comes
            ytid = "fifo"
            os.mkfifo(audio / "fifo.wav")
            labels = entries[0]["labels"]
        else:
            src = synthetic_dir / e["wav"]
            ytid, labels = src.stem, e["labels"]
            (audio / src.name).symlink_to(src)
        rows.append(f'{ytid}, 0.000, 10.000, "{labels}"\n')
    csv = tmp_path / "segments.csv"
    csv.write_text("YTID, start_seconds, end_seconds, positive_labels\n" + "".join(rows))
    out = tmp_path / "shards" / "ds"
    cmd = [sys.executable, "-m", "tools.build_shards", str(csv), "--audio-dir", str(audio), "--out", str(out),
           "--labels", str(synthetic_dir / "class_labels_indices.csv"), "--workers", "2", "--shard-samples", "4",
           "--no-progress"]
    a = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        _wait(lambda: (out / "ds-000003.tar").exists() or a.poll() is not None, 120, "build A's first 4 shards")
        assert a.poll() is None, a.communicate()
        b = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
        assert b.returncode == 2, b.stderr
        assert f"build of {out} is in use by another process" in b.stderr and f"pid {a.pid}," in b.stderr, b.stderr

        # the workers start from a forkserver: they are the build's grandchildren
        children += [pid for child in _children(a.pid) for pid in _children(child)]
        assert len(children) == 2, children
        _wait(lambda: any(_blocked_in_open(c) for c in children), 60, "a worker blocked on the FIFO")
        stuck = next(c for c in children if _blocked_in_open(c))
        os.kill(stuck, signal.SIGKILL)
        _, err = a.communicate(timeout=30)  # the bounded time: Pool never returned
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
        for c in children:  # a worker blocked on the FIFO outlives a killed parent
            try:
                os.kill(c, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert a.returncode == 3, err
    assert f"(pid {stuck}) died (signal SIGKILL" in err and str(audio / "fifo.wav") in err, err
    assert not (out / "ds-000004.tar").exists()  # the one the FIFO was to close
    kept = (out / "ds-000000.tar").stat().st_mtime_ns

    (audio / "fifo.wav").unlink()
    (audio / "fifo.wav").symlink_to(synthetic_dir / entries[0]["wav"])
    rerun = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1] == "41 inputs, 41 written, 0 rejected"
    assert (out / "ds-000000.tar").stat().st_mtime_ns == kept  # resumed, not rebuilt
    assert len(read_manifest(out)) == 41
    assert not list(out.glob(".*.tmp")) and not list((out / bs.STATE_DIR).glob(".*.tmp"))


def test_lock_names_its_holder_and_is_released_with_the_process(tmp_path):
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from trainer.data.locks import hold_lock
        with hold_lock({str(lock)!r}, "thing"):
            print("held", flush=True)
            sys.stdin.readline()
        """)], cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LockHeld, match=rf"thing is in use by another process \(host .*, pid {holder.pid}, started"):
            with hold_lock(lock, "thing"):
                pass
    finally:
        holder.kill()  # a crash leaves no stale lock: the kernel releases it
        holder.wait()
    with hold_lock(lock, "thing"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def _wav_with_rate(path: Path, rate: int, frames: int = 400) -> Path:
    """A 16-bit mono WAV whose header claims ``rate`` Hz."""
    sf.write(path, (np.random.default_rng(0).standard_normal(frames) * 3000).astype(np.int16), 16000)
    b = bytearray(path.read_bytes())
    b[24:32] = struct.pack("<II", rate, rate * 2)  # sample rate, byte rate
    path.write_bytes(bytes(b))
    return path


def test_audio_header_checks_before_decoding(tmp_path):
    liar = _wav_with_rate(tmp_path / "liar.wav", 1)  # 844 bytes that were a 400 s clip (6.4 M samples)
    assert liar.stat().st_size == 844
    with pytest.raises(SampleRateTooLow, match=rf"liar.wav: sample rate 1 Hz .* below {MIN_SOURCE_RATE} Hz"):
        load_audio(liar)
    with pytest.raises(SampleRateTooLow):
        next(iter_windows(liar, 10.0))
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(16000 * 3, np.int16), 16000)
    with pytest.raises(AudioTooLong, match=r"long.wav: 3.0 s long, above the limit of 2 s"):
        load_audio(long, max_seconds=2)
    assert len(load_audio(long, max_seconds=3)) == 48000


def test_iter_windows_equal_load_audio_in_bounded_pieces(tmp_path):
    path = tmp_path / "a.wav"
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (44100 * 7 + 123, 2)).astype(np.float32)
    sf.write(path, x, 44100, subtype="FLOAT")
    whole = load_audio(path)
    windows = list(iter_windows(path, 2.0, 1.5))
    assert [s for s, _ in windows] == [0.0, 1.5, 3.0, 4.5, 6.0]  # the one at 6.0 reaches the end: the last
    for start, w in windows:
        i = int(start * 16000)
        np.testing.assert_array_equal(w, whole[i:i + 32000])
    assert [len(w) for _, w in windows[:-1]] == [32000] * 4 and 0 < len(windows[-1][1]) < 32000
    assert np.array_equal(np.concatenate([w for _, w in iter_windows(path, 3.0)]), whole)
    short = tmp_path / "s.wav"
    sf.write(short, np.zeros(16000, np.int16), 16000)  # exactly one window: no second one inside it
    assert [(s, len(w)) for s, w in iter_windows(short, 1.0, 0.5)] == [(0.0, 16000)]


def test_builder_rejects_low_rate_and_long_clips_with_reasons(synthetic_dir, tmp_path, capsys):
    vocab = Vocabulary.load(synthetic_dir / "class_labels_indices.csv")
    good = json.loads((synthetic_dir / "unbalanced.json").read_text())["data"][:2]
    liars = [_wav_with_rate(tmp_path / f"liar{i}.wav", 1) for i in range(3)]
    sf.write(tmp_path / "long.wav", np.zeros(16000 * 12, np.int16), 16000)  # the synthetic clips are 10 s
    data = [{"wav": str(synthetic_dir / e["wav"]), "labels": e["labels"]} for e in good] + \
        [{"wav": p.name, "labels": vocab.mids[0]} for p in liars] + [{"wav": "long.wav", "labels": vocab.mids[0]}]
    (tmp_path / "src.json").write_text(json.dumps({"data": data}))
    out = tmp_path / "shards" / "ds"
    assert bs.main([str(tmp_path / "src.json"), "--out", str(out), "--labels",
                    str(synthetic_dir / "class_labels_indices.csv"), "--workers", "1", "--no-progress",
                    "--max-duration", "11", "--max-reject-fraction", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        "6 inputs, 2 written, 4 rejected (sample rate too low: 3, too long: 1)"
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == [LOW_RATE] * 3 + [TOO_LONG]
    assert "1 Hz" in rejects[0]["detail"] and "above the limit of 11 s" in rejects[3]["detail"]
    assert json.loads((out / "dataset.json").read_text())["options"]["max_duration"] == 11


def test_keys_with_whitespace_are_cleaned_and_the_idx_parses(synthetic_dir, tmp_path, capsys):
    vocab = Vocabulary.load(synthetic_dir / "class_labels_indices.csv")
    clip = synthetic_dir / json.loads((synthetic_dir / "unbalanced.json").read_text())["data"][0]["wav"]
    for name in ("my clip.wav", "tab\there.wav", "my_clip.wav"):  # the last collides with the first, cleaned
        shutil.copy(clip, tmp_path / name)
    data = [{"wav": n, "labels": vocab.mids[0]} for n in ("my clip.wav", "tab\there.wav", "my_clip.wav")]
    (tmp_path / "src.json").write_text(json.dumps({"data": data}))
    out = tmp_path / "shards" / "ds"
    assert bs.main([str(tmp_path / "src.json"), "--out", str(out), "--labels",
                    str(synthetic_dir / "class_labels_indices.csv"), "--workers", "1", "--no-progress",
                    "--max-reject-fraction", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "3 inputs, 2 written, 1 rejected (duplicate key: 1)"
    assert [r.key for r in read_manifest(out)] == ["my_clip", "tab_here"]
    assert [[m.name for m in s] for s in read_index(out / "ds-000000.idx")] == \
        [["my_clip.flac", "my_clip.json"], ["tab_here.flac", "tab_here.json"]]
    reject = json.loads((out / "rejects.jsonl").read_text())
    assert reject["reason"] == DUPLICATE_KEY and reject["detail"] == "key my_clip is already that of my clip.wav"
    assert verify_main([str(out)]) == 0


@pytest.mark.parametrize("rows, error", [
    ("0,/m/a,A\n1,/m/a,B\n", r":3: mid '/m/a' is already that of line 2"),
    ("0,/m/a,A\n1,/m/b,A\n", r":3: display_name 'A' is already that of line 2"),
    ("0,/m/a,A\n1,/m/b\n", r":3: expected 3 fields"),
    ("0,/m/a,A\n1,/m/b,B,extra\n", r":3: expected 3 fields"),
    ("0,/m/a,A\nx,/m/b,B\n", r":3: index 'x' is not an integer"),
    ("0,/m/a,A\n0,/m/b,B\n", r":3: index 0 appears twice"),
    ("0,/m/a,A\n1,,B\n", r":3: empty mid"),
    ("0,/m/a,A\n2,/m/b,B\n", r"indices must be 0..N-1"),
])
def test_bad_vocabulary_is_refused_by_loader_and_builder(synthetic_dir, tmp_path, capsys, rows, error):
    path = tmp_path / "class_labels_indices.csv"
    path.write_text("index,mid,display_name\n" + rows)
    with pytest.raises(ValueError, match=f"{path}{error}" if error.startswith(":") else error):
        Vocabulary.load(path)
    assert bs.main([str(synthetic_dir / "unbalanced.json"), "--out", str(tmp_path / "out" / "ds"), "--labels",
                    str(path), "--workers", "1", "--no-progress"]) == 2
    assert str(path) in capsys.readouterr().err


def test_shard_truncated_under_a_reader_is_an_error_naming_it_not_a_bus_error(built_shards, tmp_path):
    """A real process reads a member, the test truncates the shard under it, the next read must fail cleanly
    (the memory-mapped reader died of SIGBUS, exit -7 / 135 from a shell)."""
    shutil.copytree(built_shards["train"], tmp_path / "ds")
    records = list(read_manifest(tmp_path / "ds"))
    shard = tmp_path / "ds" / records[0].shard
    in_shard = [r for r in records if r.shard == records[0].shard]
    first, last = in_shard[0], in_shard[-1]
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from trainer.data.shard_bytes import ShardBytes
        read = ShardBytes()
        read.member({str(shard)!r}, {first.offset}, {first.size}).sum()
        read.will_need({str(shard)!r}, {last.offset}, {last.size})
        print("read", flush=True)
        sys.stdin.readline()
        print(int(read.member({str(shard)!r}, {last.offset}, {last.size}).sum()))
        """)], cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "read\n"
        os.truncate(shard, last.offset)
        _, err = reader.communicate("go\n", timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 1, (reader.returncode, err)
    assert f"shard {shard}: a member at {last.offset}+{last.size} runs past the end of the file " \
           f"({last.offset} bytes)" in err


def test_training_stream_names_a_shard_truncated_under_it(built_shards, tmp_path):
    """Through DALI: the member read that fails inside the pipeline's source goes through the corrupt-sample path
    with the reason naming the shard, rather than a bus error."""
    import torch

    from trainer.data.datasets import load_records
    from trainer.data.features import build_frontend
    from trainer.data.settings import AugmentConfig, FeatureConfig, LoaderSettings
    from trainer.data.streams import TrainStream

    shutil.copytree(built_shards["train"], tmp_path / "ds")
    table = load_records(str(tmp_path / "ds"))[0]
    stream = TrainStream(table, 6, LoaderSettings(4, 1, 1, readahead=0),
                         build_frontend(FeatureConfig(frontend="mel64", clip_seconds=0.5)), AugmentConfig(), 0, 0, 1,
                         torch.device("cpu"), weighted=False, num_samples=len(table))
    batches = iter(stream)
    next(batches)
    for shard in sorted(set(table.shards)):
        os.truncate(shard, 2048)
    # data.on_corrupt: fail (corrupt=None) stops here; skip would log each such sample (naming the shard and this
    # reason) and stop past data.max_corrupt_fraction
    with pytest.raises(RuntimeError, match=r"in shard .*syntrain-00000\d\.tar: .* a member at \d+\+\d+ runs past "
                                           r"the end of the file \(2048 bytes\)"):
        for _ in batches:
            pass


def test_parts_lock_only_themselves(synthetic_dir, tmp_path):
    """--part I holds .build/NAME-pI.lock: another part builds beside it, the same part is refused."""
    out = tmp_path / "ds"
    opts = {"source": synthetic_dir / "eval.json", "out": out, "labels": synthetic_dir / "class_labels_indices.csv",
            "num_parts": 2, "shard_samples": 4}
    (out / bs.STATE_DIR).mkdir(parents=True)
    with hold_lock(out / bs.STATE_DIR / "ds-p0.lock", "test"):  # a separate open file: it conflicts like a process
        with pytest.raises(LockHeld, match=f"the build of {out} part 0 is in use by another process"):
            bs.build(bs.BuildOptions(part=0, **opts), progress=False)
        assert bs.build(bs.BuildOptions(part=1, **opts), progress=False).num_written == 8
