import numpy as np
import pytest
import torch
import torchaudio

from trainer.data.augment import Augmenter, mix
from trainer.data.features import build_frontend
from trainer.data.seeding import AUGMENT, numpy_rng
from trainer.data.settings import AugmentConfig, FeatureConfig

FE = build_frontend(FeatureConfig())


def rng(seed, epoch, step):
    """The stream's generator for batch ``step`` of ``epoch`` on rank 0."""
    return numpy_rng(seed, AUGMENT, epoch, step, 0)


def batch(b=8, c=5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 128, 300, generator=g) + 3.0  # away from 0 so masks are visible
    y = torch.zeros(b, c)
    y[torch.arange(b), torch.arange(b) % c] = 1.0
    return x, y


def test_specaugment_masks_and_shapes():
    x, y = batch()
    out, yo = Augmenter(AugmentConfig(freqm=48, timem=192), FE)(x, y, rng(1, 0, 0))
    assert out.shape == x.shape and torch.equal(yo, y)
    zero = out == 0
    freq_rows = zero.all(dim=2).sum(dim=1)  # fully masked mel rows per clip
    time_cols = zero.all(dim=1).sum(dim=1)
    assert (freq_rows < 48).all() and (time_cols < 192).all()
    assert freq_rows.sum() > 0 and time_cols.sum() > 0
    unmasked = ~zero
    assert torch.equal(out[unmasked], x[unmasked])


def test_mixup_mixes_labels_consistently():
    x, y = batch()
    aug = Augmenter(AugmentConfig(mixup=1.0, mixup_alpha=10.0), FE)
    out, yo = aug(x, y, rng(2, 0, 3))
    assert torch.allclose(yo.sum(1), torch.ones(8))  # convex combinations of one-hot rows
    assert (yo.max(1).values < 1).sum() > 0  # some clips really mixed
    # the features are the same convex combination: recover λ, partner from the labels
    for i in range(8):
        if yo[i].max() < 1:
            lam = yo[i, i % 5].item()
            j = int(torch.nonzero((yo[i] > 0) & (torch.arange(5) != i % 5))[0])
            partners = [k for k in range(8) if k % 5 == j]
            assert any(torch.allclose(out[i], lam * x[i] + (1 - lam) * x[k], atol=1e-5) for k in partners)


def test_batch_mixup_gain_shift_and_determinism():
    x, y = batch()
    cfg = AugmentConfig(batch_mixup_alpha=0.4, time_shift=0.5, gain_db=6.0, freqm=10, timem=20, mixup=0.5)
    a = Augmenter(cfg, FE)
    o1, y1 = a(x, y, rng(5, 1, 7))
    o2, y2 = Augmenter(cfg, FE)(x, y, rng(5, 1, 7))
    o3, _ = a(x, y, rng(5, 1, 8))
    assert torch.equal(o1, o2) and torch.equal(y1, y2)
    assert not torch.equal(o1, o3)
    assert torch.allclose(y1.sum(1), torch.ones(8))


def test_gain_is_a_shift_and_roll_preserves_content():
    x, y = batch()
    out, _ = Augmenter(AugmentConfig(gain_db=6.0), FE)(x, y, rng(0, 0, 0))
    d = out - x
    assert torch.allclose(d, d[:, :1, :1].expand_as(d), atol=1e-5)
    assert d.abs().max() <= 6.0 * 0.2302585 / FE.norm_std + 1e-5
    out, _ = Augmenter(AugmentConfig(time_shift=1.0), FE)(x, y, rng(0, 0, 0))
    assert torch.allclose(out.sort(dim=2).values, x.sort(dim=2).values)


def test_off_is_identity():
    x, y = batch()
    out, yo = Augmenter(AugmentConfig(), FE)(x, y, rng(0, 0, 0))
    assert out is x and yo is y


# ---- waveform mixup (mixup_domain: waveform) ----

CLIP = 1.0


def clips():
    """Three decoded clips in 16-bit samples, shorter than, longer than and as long as the clip, with DC."""
    from tests.shardkit import realistic_audio

    return [torch.from_numpy(np.round(realistic_audio(seed, sec) * 32767).astype(np.int16))
            for seed, sec in ((1, 0.7), (2, 1.3), (3, 1.0))]


def fit(x, n):
    return x[..., :n] if x.shape[-1] >= n else torch.nn.functional.pad(x, (0, n - x.shape[-1]))


def dali_outputs(frontend, waves):
    """What the front-end's CPU DALI graph gives for these decoded clips: the samples fitted to the clip
    (and for kaldi_fbank each clip's mean over its whole decoded length, and that length)."""
    pcm = torch.stack([fit(w, frontend.clip_samples) for w in waves])
    if frontend.name == "mel64":
        return [pcm]
    return [pcm, torch.stack([w.double().mean().float() for w in waves]), torch.tensor([[len(w)] for w in waves])]


def psla_mix(waves, i, j, lam, n):
    """PSLA's mixed waveform (in [-1, 1]), by hand: each clip's mean removed, mixed, the mix's mean removed
    over the mixed length (the longer clip's, within the n-sample clip)."""
    a, b = (fit(w.double() / 32768 - w.double().mean() / 32768, n) for w in (waves[i], waves[j]))
    mix = lam * a + (1 - lam) * b
    m = min(max(len(waves[i]), len(waves[j])), n)
    mix[:m] -= mix[:m].mean()
    return mix.float()


def kaldi_ref(frontend, wave):
    fb = torchaudio.compliance.kaldi.fbank(wave[None], htk_compat=True, use_energy=False, window_type="hanning",
                                           num_mel_bins=128, dither=0.0, frame_shift=10, remove_dc_offset=False).T
    return (fit(fb, frontend.num_frames) - frontend.norm_mean) / frontend.norm_std


def mel64_ref(wave):
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, win_length=512, hop_length=160, n_mels=64)
    return torchaudio.transforms.AmplitudeToDB(top_db=120)(mel(wave[None]))[0]


PARTNER, LAM = torch.tensor([1, 0, 0]), torch.tensor([0.7, 0.4, 1.0])  # clip 2 not mixed


@pytest.mark.parametrize("name", ["kaldi_fbank", "mel64"])
def test_waveform_mixup_is_the_features_of_the_mixed_waveform(name):
    """finish(mix_waveforms(outputs)) against the reference features (torchaudio's) of the waveform mixed by
    hand: PSLA's mean removals for kaldi_fbank (Kaldi's per-frame DC removal off, as the front-end), the
    samples as they are for mel64; an unmixed clip's features are exactly those without mixup."""
    frontend = build_frontend(FeatureConfig(frontend=name, clip_seconds=CLIP, target_frames=120 if name == "kaldi_fbank"
                                            else None))
    waves = clips()
    out = dali_outputs(frontend, waves)
    got = frontend.finish(frontend.mix_waveforms(out, PARTNER, LAM))
    n = frontend.clip_samples
    for i in range(2):
        j, lam = int(PARTNER[i]), float(LAM[i])
        if name == "kaldi_fbank":
            ref = kaldi_ref(frontend, psla_mix(waves, i, j, lam, n))  # normalised units
        else:
            ref = mel64_ref(lam * fit(waves[i].float(), n) / 32768 + (1 - lam) * fit(waves[j].float(), n) / 32768)
        d = (got[i] - ref).abs()
        print(f"{name} clip {i}: mean {d.mean():.2e} max {d.max():.2e}")
        assert d.mean() < 1e-5 and d.max() < 1e-3
    assert torch.equal(got[2], frontend.finish(out)[2])


@pytest.mark.parametrize("name", ["kaldi_fbank", "mel64"])
def test_waveform_mixup_draws_first_and_mixes_labels_with_the_same_lambda(name):
    """The Augmenter draws (partner, λ) first, as the feature mode draws them (rate, Beta, partner), mixes the
    front-end's outputs and the labels with them, and leaves the features unmixed afterwards."""
    frontend = build_frontend(FeatureConfig(frontend=name, clip_seconds=CLIP))
    waves = clips() * 2
    out = dali_outputs(frontend, waves)
    _, y = batch(b=len(waves))
    cfg = AugmentConfig(mixup=0.5, mixup_domain="waveform")
    aug = Augmenter(cfg, frontend)
    g, expected = rng(4, 1, 2), rng(4, 1, 2)
    mixed_out, ym = aug.mix_waveforms(out, y, g)
    mixed = expected.random(6) < 0.5
    lam = torch.from_numpy(np.where(mixed, expected.beta(10.0, 10.0, 6), 1.0)).float()
    partner = torch.from_numpy(expected.integers(0, 6, 6))
    assert 0 < mixed.sum() < 6
    assert g.random() == expected.random()  # nothing else drawn
    for a, b in zip(mixed_out, frontend.mix_waveforms(out, partner, lam)):
        assert torch.equal(a, b)
    assert torch.allclose(ym, lam[:, None] * y + (1 - lam[:, None]) * y[partner], atol=1e-6)
    x = frontend.finish(mixed_out)
    xo, yo = aug(x, ym, g)
    assert xo is x and yo is ym  # no feature mixup on top
    same, yo = Augmenter(AugmentConfig(mixup=0.5), frontend).mix_waveforms(out, y, g)
    assert same is out and yo is y  # features mode: nothing done before the features


def test_feature_mixup_draws_as_before():
    """Feature mode's draws, in the order they always had (rate, Beta, partner): its batches are unchanged."""
    x, y = batch()
    expected = rng(6, 2, 1)
    mixed = expected.random(8) < 0.5
    lam = np.where(mixed, expected.beta(10.0, 10.0, 8), 1.0)
    want = mix(x, y, expected.integers(0, 8, 8), lam)
    got = Augmenter(AugmentConfig(mixup=0.5), FE)(x, y, rng(6, 2, 1))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
