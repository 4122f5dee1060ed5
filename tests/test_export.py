"""trainer.export: the traceable front-ends equal the training tail on decoded audio, and the ONNX graph (run by
onnxruntime) gives the tagger's probabilities and embeddings for both front-ends: mel64 on the shared tiny
trained run, kaldi_fbank on a hand-built run; the safetensors weights load back; the model card."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import soundfile as sf
import torch

from trainer.config import Config
from trainer.data.datasets import load_records
from trainer.data.features import build_frontend
from trainer.data.manifest import VOCABULARY, Vocabulary
from trainer.data.settings import DataConfig, FeatureConfig
from trainer.export import main
from trainer.models import build_model
from trainer.models.settings import ModelConfig
from trainer.tagger import Tagger

PARITY = 1e-3  # max abs difference of probabilities, ONNX vs torch


@pytest.fixture(scope="module")
def clips(built_shards: dict[str, Path]) -> list[np.ndarray]:
    """The eval set's decoded clips, float32 at 16 kHz."""
    records = load_records(str(built_shards["eval"]))[0]
    out = []
    for i in range(len(records)):
        with open(records.shard(i), "rb") as f:
            f.seek(int(records.offset[i]))
            out.append(sf.read(io.BytesIO(f.read(int(records.size[i]))), dtype="float32")[0])
    return out


@pytest.mark.parametrize("frontend", ["mel64", "kaldi_fbank"])
def test_traceable_front_end_equals_the_training_tail(clips: list[np.ndarray], frontend: str) -> None:
    fe = build_frontend(FeatureConfig(frontend=frontend, clip_seconds=10.0))
    pcm = torch.zeros(len(clips), fe.clip_samples, dtype=torch.int16)
    for row, x in enumerate(clips):
        pcm[row, :len(x)] = torch.from_numpy(np.round(x * 32768.0).astype(np.int16))  # the FLAC's samples
    length = torch.tensor([len(x) for x in clips])
    tail = fe.finish(fe.decoded(pcm, length))
    traced = fe.traceable(pcm.float(), length.float())
    # dB for mel64, normalised units for kaldi_fbank; float rounding of whole-batch sums apart, equal
    torch.testing.assert_close(traced, tail, rtol=0, atol=1e-3)


def _export(run: Path, out: Path, *args: str) -> Path:
    assert main([str(run), "--out", str(out / "model.onnx"), *args]) == 0
    return out


def _parity(export_dir: Path, tagger: Tagger, clips: list[np.ndarray]) -> float:
    """Max abs difference of probabilities between onnxruntime and the tagger: a batch of clips cut to one
    length (two windows), and one clip of its own length; embeddings checked alongside."""
    session = onnxruntime.InferenceSession(str(export_dir / "model.onnx"))
    n = tagger.frontend.clip_samples * 3 // 2
    batch = np.stack([np.pad(x, (0, max(0, n - len(x))))[:n] for x in clips[:4]])
    worst = 0.0
    for wave in (batch, clips[5][None, :tagger.frontend.clip_samples - 1234]):
        probs, embedding = session.run(None, {"waveform": wave})
        ours = tagger.predict(list(wave), sample_rate=16000, embeddings=True)[0]
        assert probs.shape == (len(wave), len(tagger.vocab))
        np.testing.assert_allclose(embedding, [p.embedding.clip for p in ours], rtol=1e-3, atol=1e-3)
        worst = max(worst, float(np.abs(probs - [p.probs for p in ours]).max()))
    print(f"{tagger.frontend.name}: ONNX vs torch, max |probability difference| {worst:.2e}")
    return worst


def test_trained_run_export(two_process_run: Path, clips: list[np.ndarray], tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    out = _export(two_process_run, tmp_path / "export", "--weights", "wa")
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "class_labels_indices.csv", "config.json",
                                                    "model.onnx", "model.safetensors"]
    assert Vocabulary.load(out / VOCABULARY) == Vocabulary.load(two_process_run / VOCABULARY)
    tagger = Tagger.from_run(two_process_run, weights="wa")
    exported = Tagger.from_run(out)  # detects the export: safetensors and config.json, no pickle
    x = [clips[0], clips[1][:20000]]
    np.testing.assert_array_equal([p.probs for p in exported.tag(x, 16000)], [p.probs for p in tagger.tag(x, 16000)])
    assert _parity(out, tagger, clips) <= PARITY

    card = (out / "MODEL_CARD.md").read_text()
    summary = json.loads((two_process_run / "summary.json").read_text())
    for text in ("## Training data", "Dataset `syntrain`: 40 clips", "Animal; Domestic animals, pets; Dog", "weak (clip-level) labels",
                 "weight average of epochs 1–2", "mel64", "## Results", f"{summary['best_single']['num_samples']} clips",
                 summary["best_single"]["keys_digest"], f"{summary['weight_averaged']['mAP']:.4f}",
                 "s chunks (", "## Vocabulary", "6 classes", "## Intended use and limits"):
        assert text in card, text

    capsys.readouterr()
    assert main([str(two_process_run), "--out", str(out / "model.onnx")]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_kaldi_fbank_export(clips: list[np.ndarray], tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = Config(data=DataConfig(train=["/nowhere"]), features=FeatureConfig(frontend="kaldi_fbank", clip_seconds=5.0),
                 model=ModelConfig(name="mobilenetv2", width_mult=0.35))
    (run / "models").mkdir(parents=True)
    cfg.save(run / "config.yaml")
    Vocabulary(tuple(f"/m/{i}" for i in range(4)), tuple(f"Class {i}" for i in range(4))).save(run / VOCABULARY)
    torch.manual_seed(0)
    model = build_model(cfg.model, 4)
    torch.nn.init.normal_(model.classifier[1].weight, std=0.5)
    # BatchNorm statistics of these clips' features: a fresh model's activations fade out through its layers,
    # every probability would be 0.5 whatever the input
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    fe = build_frontend(cfg.features)
    pcm = torch.zeros(len(clips), fe.clip_samples, dtype=torch.int16)
    for row, x in enumerate(clips):
        pcm[row, :len(x)] = torch.from_numpy(np.round(x[:fe.clip_samples] * 32768.0).astype(np.int16))
    with torch.no_grad():
        model.train()(fe.finish(fe.decoded(pcm, torch.tensor([min(len(x), fe.clip_samples) for x in clips]))))
    torch.save(model.state_dict(), run / "models" / "best.pt")
    out = _export(run, tmp_path / "export")
    tagger = Tagger.from_run(run)
    assert np.ptp([p.probs for p in tagger.tag(clips, 16000)], axis=0).min() > 0.01  # the input matters
    assert _parity(out, tagger, clips) <= PARITY
