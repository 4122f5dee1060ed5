"""Front-end parity: DALI features (through EvalStream) vs torchaudio on real-looking audio.

Achieved on tests/shardkit.realistic_audio (harmonics + noise + DC + silence gaps, clips shorter and
longer than clip_seconds), normalised units for kaldi_fbank (÷ std 4.5699), dB for mel64:
- kaldi_fbank vs kaldi.fbank without per-frame DC removal: mean 1.1e-8, max 1.3e-5 (exact mel matrix)
- kaldi_fbank vs kaldi.fbank with it (the real PSLA reference): mean 8.3e-3, max 2.07; the large
  errors sit in the lowest mel bins of silent gaps, where Kaldi's per-frame DC removal zeroes the
  frame but the clip-mean-removed DC offset remains (bins ≥ 3: max 0.73). DALI cannot remove a
  per-frame DC (see features.py).
- mel64 vs MelSpectrogram + AmplitudeToDB(top_db=120): mean 1.1e-7 dB, max 7.6e-6 dB (CPU path)
"""
import io

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from tests.shardkit import make_dataset
from trainer.data.datasets import load_records
from trainer.data.features import FRONTENDS, build_frontend
from trainer.data.settings import FeatureConfig, LoaderSettings
from trainer.data.streams import EvalStream

CLIP = 2.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat") / "ds"
    make_dataset(root, n=8, num_shards=2, seconds=CLIP)
    return load_records(str(root))[0]


def decoded(rec):
    with open(rec.shard, "rb") as f:
        f.seek(rec.offset)
        wave, sr = sf.read(io.BytesIO(f.read(rec.size)), dtype="float32")
    assert sr == 16000
    return torch.from_numpy(wave)


def fit(x, n):
    return x[..., :n] if x.shape[-1] >= n else torch.nn.functional.pad(x, (0, n - x.shape[-1]))


def ours(records, frontend, **kw):
    frontend = build_frontend(FeatureConfig(frontend=frontend, clip_seconds=CLIP, **kw))
    out = {}
    for b in EvalStream(records, 5, LoaderSettings(batch_size=3), frontend, 0, 1, torch.device("cpu")):
        out.update(zip(b["keys"], b["features"]))
    return out


def kaldi_ref(wave, remove_dc=True, frames=250):
    w = fit(wave - wave.mean(), int(CLIP * 16000))
    fb = torchaudio.compliance.kaldi.fbank(w[None], htk_compat=True, use_energy=False, window_type="hanning",
                                           num_mel_bins=128, dither=0.0, frame_shift=10,
                                           remove_dc_offset=remove_dc).T
    return (fit(fb, frames) - (-4.6476)) / 4.5699


def test_dims():
    assert FRONTENDS["kaldi_fbank"].frames_per_second == FRONTENDS["mel64"].frames_per_second == 100
    assert (FRONTENDS["kaldi_fbank"].num_mels, FRONTENDS["mel64"].num_mels) == (128, 64)
    mini = build_frontend(FeatureConfig(frontend="mini_mel32"))  # the demo's miniature: a quarter of the features
    assert (mini.num_mels, mini.frames_per_second, mini.num_frames, mini.frames(2.0)) == (32, 50, 501, 100)


def test_kaldi_fbank_parity(dataset):
    got = ours(dataset, "kaldi_fbank", target_frames=250)
    exact, real, high = [], [], []
    for rec in dataset:
        wave = decoded(rec)
        assert got[rec.key].shape == (128, 250)
        exact.append((got[rec.key] - kaldi_ref(wave, remove_dc=False)).abs())
        d = (got[rec.key] - kaldi_ref(wave)).abs()
        real.append(d)
        high.append(d[3:])
    exact, real, high = torch.stack(exact), torch.stack(real), torch.stack(high)
    print(f"kaldi no-DC: mean {exact.mean():.2e} max {exact.max():.2e}; with DC: mean {real.mean():.2e} "
          f"max {real.max():.2e}; bins>=3 max {high.max():.2e}")
    assert exact.mean() < 1e-6 and exact.max() < 1e-3
    assert real.mean() < 0.02 and high.max() < 1.0 and real.max() < 3.0


def test_kaldi_padding_and_norm(dataset):
    got = ours(dataset, "kaldi_fbank", norm_mean=-5.0, norm_std=2.0)  # default target_frames 1056
    rec = dataset[0]
    fb = (kaldi_ref(decoded(rec), remove_dc=False, frames=1056) * 4.5699 - 4.6476 + 5.0) / 2.0
    assert got[rec.key].shape == (128, 1056)
    assert (got[rec.key] - fb).abs().max() < 2e-3
    assert torch.allclose(got[rec.key][:, 200:], torch.full((128, 856), 2.5))  # zero log-mel padding


@pytest.mark.parametrize("name, mels, hop", [("mel64", 64, 160), ("mini_mel32", 32, 320)])
def test_mel_parity(dataset, name, mels, hop):
    got = ours(dataset, name)
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, win_length=512, hop_length=hop, n_mels=mels)
    to_db = torchaudio.transforms.AmplitudeToDB(top_db=120)
    diffs = []
    for rec in dataset:
        ref = to_db(mel(fit(decoded(rec), int(CLIP * 16000))[None]))[0]
        assert got[rec.key].shape == ref.shape == (mels, 1 + int(CLIP * 16000) // hop)
        diffs.append((got[rec.key] - ref).abs())
    d = torch.stack(diffs)
    print(f"{name}: mean {d.mean():.2e} dB, max {d.max():.2e} dB")
    assert d.mean() < 1e-4 and d.max() < 5e-3


@pytest.mark.parametrize("name", sorted(FRONTENDS))
def test_mel_blocks_are_found_on_the_host(name):
    """The mel blocks' bounds are found on the CPU filter bank and only the blocks are copied to the device: built
    for the meta device (no data, so nothing could be read back from it) they have the CPU blocks' bounds and
    shapes, and the CPU blocks hold every non-zero weight of the filter bank."""
    from trainer.data.features import _mel_blocks

    frontend = build_frontend(FeatureConfig(frontend=name))
    cpu, meta = _mel_blocks(frontend, torch.device("cpu")), _mel_blocks(frontend, torch.device("meta"))
    assert [(lo, hi, w.shape) for lo, hi, w in meta] == [(lo, hi, w.shape) for lo, hi, w in cpu]
    assert all(w.device.type == "meta" for _, _, w in meta)
    m = frontend.mel_matrix()
    assert sum(float(w.abs().sum()) for _, _, w in cpu) == pytest.approx(float(m.abs().sum()), rel=1e-6)
