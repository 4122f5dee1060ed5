"""trainer.tagger on the shared tiny trained run (mel64, 4 s clips): the API on files and arrays equals
trainer.predict's output, its features are the evaluation stream's, long inputs are windowed, embeddings
feed the classifier; and whole-dataset tagging through the training data path on 1 and 2 processes, and of a
dataset at a URL (the loopback server of tests/servers.py)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from runkit import launch
from tests.shardkit import write_stereo_tone
from trainer.data.audio import SAMPLE_RATE, AudioError, load_audio
from trainer.data.datasets import load_records
from trainer.data.features import build_frontend
from trainer.data.settings import FeatureConfig, LoaderSettings
from trainer.data.streams import EvalStream
from trainer.predict import main
from trainer.tagger import Tagger, tag_dataset


@pytest.fixture(scope="module")
def tagger(two_process_run: Path) -> Tagger:
    return Tagger.from_run(two_process_run, batch_size=4)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tagger_audio")
    rng = np.random.default_rng(1)
    write_stereo_tone(d / "tone.wav", rng)
    chirp = 0.4 * np.sin(2 * np.pi * (200 + 300 * np.arange(16000 * 10) / 16000) * np.arange(16000 * 10) / 16000)
    sf.write(d / "long.flac", chirp + 0.05 * rng.standard_normal(chirp.size), 16000, subtype="PCM_16")
    return {"tone": d / "tone.wav", "long": d / "long.flac"}


def test_api_on_files_and_arrays_equals_predict(tagger: Tagger, two_process_run: Path, audio: dict[str, Path],
                                                capsys: pytest.CaptureFixture) -> None:
    files = [str(audio["tone"]), str(audio["long"])]
    assert main(["--checkpoint", str(two_process_run), "--json", "--top-k", "6", "--chunk-seconds", "1.5", *files]) == 0
    doc = json.loads(capsys.readouterr().out)
    on_files, errors = tagger.predict(files, chunk_seconds=1.5)
    assert errors == [] and [p.source for p in on_files] == files
    raw = [sf.read(f, dtype="float32") for f in files]  # 44.1 kHz stereo and 16 kHz mono, as stored
    on_arrays = [tagger.predict([x], sample_rate=sr, chunk_seconds=1.5)[0][0] for x, sr in raw]
    for f, p, a in zip(doc["files"], on_files, on_arrays):
        # the same decode, downmix and resampling (in other batches: float rounding apart)
        np.testing.assert_allclose(a.probs, p.probs, rtol=0, atol=1e-6)
        assert a.duration == p.duration and f["duration"] == round(p.duration, 3)
        assert {t["index"]: t["prob"] for t in f["top"]} == {i: round(float(p.probs[i]), 4) for i in range(6)}
        assert [(c["start"], c["end"]) for c in f["timeline"]] == [(round(c.start, 3), round(c.end, 3)) for c in p.chunks]
        for c, pc, ac in zip(f["timeline"], p.chunks, a.chunks):
            np.testing.assert_allclose(ac.probs, pc.probs, rtol=0, atol=1e-6)
            assert [t["prob"] for t in c["top"]] == [round(float(x), 4) for x in np.sort(pc.probs)[::-1]]
    # 10 s in 4 s windows (4, 4, 2 s of audio), 1.5 s chunks restarting at each window
    assert [c["start"] for c in doc["files"][1]["timeline"]] == [0, 1.5, 3, 4, 5.5, 7, 8, 9.5]
    assert tagger.tag(files)[1].top(2) == [(tagger.names[i], float(on_files[1].probs[i]))
                                           for i in np.argsort(-on_files[1].probs)[:2]]


def test_long_input_is_the_seconds_weighted_mean_of_its_windows(tagger: Tagger, audio: dict[str, Path]) -> None:
    wave = load_audio(audio["long"])
    clip = tagger.frontend.clip_samples
    pieces = [wave[s:s + clip] for s in range(0, len(wave), clip)]
    assert [len(p) for p in pieces] == [clip, clip, clip // 2]
    whole = tagger.tag([wave], sample_rate=SAMPLE_RATE)[0]
    parts = tagger.tag(pieces, sample_rate=SAMPLE_RATE)  # in one batch of three windows
    np.testing.assert_allclose(whole.probs, np.average([p.probs for p in parts], axis=0, weights=[2, 2, 1]),
                               rtol=1e-6, atol=1e-7)


def test_embeddings_are_what_the_classifier_sees(tagger: Tagger, audio: dict[str, Path]) -> None:
    wave = load_audio(audio["long"])
    clip = tagger.frontend.clip_samples
    [emb] = tagger.embed([wave[:clip]], sample_rate=SAMPLE_RATE)
    frames = 401 // 32 + 1  # mel64: 401 frames of 4 s; time downsampled by 32
    assert emb.frames.shape == (frames, emb.clip.shape[0]) and emb.clip.shape[0] > 8
    np.testing.assert_allclose(emb.frame_times, np.arange(frames) * 0.32)
    np.testing.assert_allclose(emb.clip, emb.frames.mean(axis=0), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        probs, _ = tagger.model.head(torch.from_numpy(emb.frames.T[None]))
    np.testing.assert_allclose(probs[0].numpy(), tagger.tag([wave[:clip]], sample_rate=SAMPLE_RATE)[0].probs, atol=1e-6)
    [long] = tagger.embed([wave], sample_rate=SAMPLE_RATE)  # frames that start in the last window's padding go
    assert long.frame_times[-1] < 10.0 and len(long.frame_times) == 2 * frames + 7


@pytest.mark.parametrize("frontend", ["mel64", "kaldi_fbank"])
def test_features_equal_the_evaluation_streams(built_shards: dict[str, Path], frontend: str) -> None:
    """The tagger's features of decoded shard members are those EvalStream computes from the FLAC bytes."""
    records = load_records(str(built_shards["eval"]))[0]
    fe = build_frontend(FeatureConfig(frontend=frontend, clip_seconds=10.0))
    stream = {k: x for b in EvalStream(records, 6, LoaderSettings(4, num_threads=1), fe, 0, 1, torch.device("cpu"))
              for k, x in zip(b["keys"], b["features"])}
    tagger = Tagger(fe, None, torch.nn.Identity(), torch.device("cpu"))
    for i in range(len(records)):
        with open(records.shard(i), "rb") as f:
            f.seek(int(records.offset[i]))
            pcm, _ = sf.read(io.BytesIO(f.read(int(records.size[i]))), dtype="int16")
        assert len(pcm) <= fe.clip_samples
        padded = torch.zeros(1, fe.clip_samples, dtype=torch.int16)
        padded[0, :len(pcm)] = torch.from_numpy(pcm)
        ours = tagger.features(padded, torch.tensor([len(pcm)]))[0]
        torch.testing.assert_close(ours, stream[records.key(i)], rtol=0, atol=2e-4)


def test_bad_inputs_are_named(tagger: Tagger, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        tagger.tag([np.zeros(16000, np.float32)])
    with pytest.raises(AudioError, match="array 1: audio contains NaN"):
        tagger.tag([np.zeros(800, np.float32), np.full(800, np.nan, np.float32)], sample_rate=8000)
    with pytest.raises(AudioError, match=f"{tmp_path / 'gone.wav'}: no such file"):
        tagger.tag([str(tmp_path / "gone.wav")])
    results, errors = tagger.predict([np.zeros(0, np.float32), np.ones(4000, np.int16)], sample_rate=8000,
                                     skip_errors=True)
    assert [r.source for r in results] == ["array 1"] and results[0].duration == 0.5
    assert errors == [("array 0", "array 0: no audio samples")]


def test_dataset_tagging_identical_on_one_and_two_processes(tagger: Tagger, two_process_run: Path,
                                                             built_shards: dict[str, Path], tmp_path: Path) -> None:
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"tags{n}"
        launch("trainer/predict.py", "--checkpoint", str(two_process_run), "--dataset", str(built_shards["eval"]),
               "--out", str(outs[n]), "--embeddings", processes=n)
    records = load_records(str(built_shards["eval"]))[0]
    one, two = ({name: np.load(outs[n] / f"{name}.npy") for name in ("keys", "probs", "embeddings")} for n in (1, 2))
    assert list(one["keys"]) == list(two["keys"]) == records.keys(range(len(records)))  # each clip once, in order
    np.testing.assert_allclose(one["probs"], two["probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one["embeddings"], two["embeddings"], rtol=1e-5, atol=1e-6)
    assert one["probs"].shape == (16, 6) and one["embeddings"].shape[0] == 16
    info = json.loads((outs[2] / "info.json").read_text())
    assert info["num_clips"] == info["num_tagged"] == 16 and info["missing"] == {}
    assert sorted(p.name for p in outs[2].iterdir()) == ["class_labels_indices.csv", "embeddings.npy", "info.json",
                                                         "keys.npy", "probs.npy"]
    with pytest.raises(FileExistsError, match="is not an empty directory"):  # before any collective step
        tag_dataset(tagger, str(built_shards["eval"]), outs[1], accelerator=None)
    assert np.array_equal(np.load(outs[1] / "keys.npy"), one["keys"])  # untouched


def test_dataset_at_a_url_is_tagged_as_the_local_one(tagger: Tagger, built_shards: dict[str, Path],
                                                     served_shards: str, tmp_path: Path, monkeypatch) -> None:
    from accelerate import Accelerator

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    accelerator = Accelerator(cpu=True)
    local = tag_dataset(tagger, str(built_shards["eval"]), tmp_path / "local", accelerator)
    remote = tag_dataset(tagger, f"{served_shards}/syneval", tmp_path / "remote", accelerator)
    assert remote["num_tagged"] == local["num_tagged"] == 16 and remote["dataset"] == f"{served_shards}/syneval"
    for name in ("keys", "probs"):
        assert np.array_equal(np.load(tmp_path / "remote" / f"{name}.npy"), np.load(tmp_path / "local" / f"{name}.npy"))
