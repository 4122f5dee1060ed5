import torch

from trainer.data.augment import Augmenter
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
