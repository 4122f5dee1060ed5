"""trainer.predict on a hand-built run directory (small MobileNetV2, mel64) and generated audio files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.shardkit import write_stereo_tone
from trainer.config import Config
from trainer.data.audio import AudioError
from trainer.data.manifest import VOCABULARY, Vocabulary
from trainer.data.settings import DataConfig, FeatureConfig
from trainer.models import build_model
from trainer.models.settings import ModelConfig
from trainer.predict import main
from trainer.tagger import Tagger

CLASSES = 5
CLIP_SECONDS = 5.0  # the 12 s file spans three windows, the last one partial


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    cfg = Config(data=DataConfig(train=["/nowhere"]),
                 features=FeatureConfig(frontend="mel64", clip_seconds=CLIP_SECONDS),
                 model=ModelConfig(name="mobilenetv2", width_mult=0.35))
    cfg.save(run / "config.yaml")
    Vocabulary(tuple(f"/m/{i}" for i in range(CLASSES)), tuple(f"Class {i}" for i in range(CLASSES))
               ).save(run / VOCABULARY)
    torch.manual_seed(0)
    model = build_model(cfg.model, CLASSES)
    head = model.classifier[1]
    torch.nn.init.normal_(head.weight, std=0.5)  # a fresh head outputs ~0.5 everywhere; spread it out
    head.bias.data = torch.linspace(-2.0, 2.0, CLASSES)
    (run / "models").mkdir()
    torch.save(model.state_dict(), run / "models" / "best.pt")
    return run


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    write_stereo_tone(d / "tone.wav", rng)
    long = np.clip(0.2 * rng.standard_normal(16000 * 12), -1, 1)
    sf.write(d / "long.flac", long, 16000, subtype="PCM_16")
    sf.write(d / "long.wav", long, 16000, subtype="PCM_16")  # the same samples in another container
    (d / "bad.wav").write_bytes(b"RIFF not really a wave file")
    return {p.stem + p.suffix: p for p in d.iterdir()}


def _check_labels(top: list[dict], k: int) -> None:
    assert len(top) == k
    probs = [t["prob"] for t in top]
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert probs == sorted(probs, reverse=True)
    assert all(t["name"] == f"Class {t['index']}" and t["mid"] == f"/m/{t['index']}" for t in top)


def test_json_output(run_dir: Path, audio: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    files = [audio["tone.wav"], audio["long.flac"], audio["long.wav"]]
    assert main(["--checkpoint", str(run_dir), "--top-k", "3", "--chunk-seconds", "2", "--json",
                 *map(str, files)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["errors"] == [] and doc["weights"] == "best"
    assert [f["path"] for f in doc["files"]] == list(map(str, files))
    for f, duration in zip(doc["files"], (3.0, 12.0, 12.0)):
        assert f["duration"] == pytest.approx(duration, abs=1e-3)
        _check_labels(f["top"], 3)
        spans = [(c["start"], c["end"]) for c in f["timeline"]]
        assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(duration, abs=1e-3)
        assert all(a[1] == pytest.approx(b[0]) for a, b in zip(spans, spans[1:]))  # no gaps, no overlaps
        assert all(0 < e - s <= 2.0 + 1e-6 for s, e in spans)
        for c in f["timeline"]:
            _check_labels(c["top"], 3)
    # chunks restart at each 5 s window: 0-2, 2-4, 4-5 | 5-7, 7-9, 9-10 | 10-12
    assert [c["start"] for c in doc["files"][1]["timeline"]] == [0, 2, 4, 5, 7, 9, 10]
    assert doc["files"][1]["top"] == doc["files"][2]["top"]  # same samples, same features, any container


class _Loudness(torch.nn.Module):
    """A tagger's model whose class scores follow the loudness of the lowest mel bins, frame by frame."""

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, :CLASSES] / 20.0 + 2.0

    def head(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.sigmoid(frames.transpose(1, 2))
        return p.mean(dim=1), p

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.embed(features))


def test_clip_score_max_or_mean_over_the_timelines_chunks(run_dir: Path) -> None:
    """clip_score: a file's labels from the whole-window output (default), or the max / mean over its chunks
    (PSL's inference): each class's score is then exactly the max / mean of the timeline's chunk scores, and a
    short loud burst weighs more in the max than in the whole window."""
    base = Tagger.from_run(run_dir, device="cpu")
    tagger = Tagger(base.frontend, base.vocab, _Loudness(), torch.device("cpu"))
    rng = np.random.default_rng(0)
    wave = 0.001 * rng.standard_normal(16000 * 5)
    wave[16000:24000] = 0.5 * rng.standard_normal(8000)  # 0.5 s burst at 1 s
    timeline = tagger.predict([wave], 16000, chunk_seconds=1.0)[0][0]
    chunks = np.stack([c.probs for c in timeline.chunks])
    for how, reduce in (("max", np.max), ("mean", np.mean)):
        pooled = tagger.predict([wave], 16000, chunk_seconds=1.0, clip_score=how)[0][0]
        assert pooled.probs == pytest.approx(reduce(chunks, axis=0), abs=1e-6)
        assert [c.start for c in pooled.chunks] == [c.start for c in timeline.chunks]
    assert (chunks.max(axis=0) > timeline.probs + 0.05).all()  # the whole window dilutes the burst
    with pytest.raises(ValueError, match="give chunk_seconds"):
        tagger.predict([wave], 16000, clip_score="max")
    with pytest.raises(ValueError, match="'whole', 'max' or 'mean'"):
        tagger.predict([wave], 16000, chunk_seconds=1.0, clip_score="median")


def test_clip_score_on_the_command_line(run_dir: Path, audio: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["--checkpoint", str(run_dir), "--clip-score", "max", "--json", str(audio["long.flac"])]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["clip_score"] == "max" and doc["chunk_seconds"] == 2.0
    best = max(t["prob"] for c in doc["files"][0]["timeline"] for t in c["top"])
    assert doc["files"][0]["top"][0]["prob"] == pytest.approx(best, abs=1e-4)  # the top label: its best chunk's


def test_text_output_and_wa_missing(run_dir: Path, audio: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["--checkpoint", str(run_dir), "--top-k", "2", str(audio["tone.wav"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{audio['tone.wav']}  (3.00 s)") and "timeline (2 s chunks):" in out
    assert main(["--checkpoint", str(run_dir), "--weights", "wa", str(audio["tone.wav"])]) == 2
    assert "wa.pt" in capsys.readouterr().err


def test_bad_files_named_after_good_results(run_dir: Path, audio: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.ogg"
    proc = subprocess.run([sys.executable, "-m", "trainer.predict", "--checkpoint", str(run_dir), "--json",
                           str(missing), str(audio["bad.wav"]), str(audio["tone.wav"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert [f["path"] for f in doc["files"]] == [str(audio["tone.wav"])]
    assert [e["path"] for e in doc["errors"]] == [str(missing), str(audio["bad.wav"])]
    assert f"{missing}: no such file" in proc.stderr
    assert f"{audio['bad.wav']}: cannot decode audio" in proc.stderr


def test_lying_headers_and_long_inputs_are_refused_before_decoding(run_dir: Path, audio: dict[str, Path],
                                                                  tmp_path: Path, capsys: pytest.CaptureFixture
                                                                  ) -> None:
    """A WAV whose header claims 1 Hz (844 bytes that would be 400 s at 16 kHz) and a file above --max-seconds are
    listed as errors naming them; arrays get the same checks."""
    liar = tmp_path / "liar.wav"
    sf.write(liar, np.zeros(400, np.int16), 1, subtype="PCM_16")
    assert main(["--checkpoint", str(run_dir), "--json", "--max-seconds", "10", str(liar),
                         str(audio["long.flac"]), str(audio["tone.wav"])]) == 1
    out, err = capsys.readouterr()
    assert [f["path"] for f in json.loads(out)["files"]] == [str(audio["tone.wav"])]
    assert f"{liar}: sample rate 1 Hz" in err and f"{audio['long.flac']}: 12.0 s long, above the limit of 10 s" in err
    tagger = Tagger.from_run(run_dir)
    tagger.max_seconds = 2.0
    with pytest.raises(AudioError, match="array 0: 3.0 s long"):
        tagger.tag([np.zeros(48000, np.float32)], sample_rate=16000)
    with pytest.raises(AudioError, match="array 0: sample rate 1 Hz"):
        tagger.tag([np.zeros(4, np.float32)], sample_rate=1)
