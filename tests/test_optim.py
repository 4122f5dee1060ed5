import pytest
import torch

from trainer.settings import OptimConfig
from trainer.optim import build_optimizer, build_scheduler


def _lrs(cfg, steps_per_epoch, total):
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_optimizer_is_psla_adam():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig())
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.Adam)
    assert (g["lr"], g["weight_decay"], g["betas"]) == (1e-3, 5e-7, (0.95, 0.999))


def test_warmup_is_linear():
    lrs = _lrs(OptimConfig(lr=1.0, warmup_steps=4, lrscheduler_start=100), 10, 6)
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_decay_epochs_match_psla_multisteplr():
    # PSLA: MultiStepLR(range(start, 1000, 5)) stepped after each 1-based epoch → with start=3,
    # step=2, epochs 1-3 at lr, epochs 4-5 at lr/2, epochs 6-7 at lr/4: first decayed epoch is start + 1.
    cfg = OptimConfig(lr=1.0, warmup_steps=0, lrscheduler_start=3, lrscheduler_step=2, lrscheduler_decay=0.5)
    lrs = _lrs(cfg, steps_per_epoch=2, total=14)
    per_epoch = lrs[::2]
    assert per_epoch == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25, 0.25])
    # The same epochs with torch's MultiStepLR as PSLA uses it.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ms = torch.optim.lr_scheduler.MultiStepLR(opt, list(range(3, 1000, 2)), gamma=0.5)
    psla = []
    for _ in range(7):
        psla.append(opt.param_groups[0]["lr"])
        opt.step()
        ms.step()
    assert per_epoch == pytest.approx(psla)


def test_scheduler_resumes_from_state_dict():
    cfg = OptimConfig(lr=1.0, warmup_steps=3, lrscheduler_start=1, lrscheduler_step=1)
    full = _lrs(cfg, 2, 8)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg, 2)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched2 = build_scheduler(opt2, cfg, 2)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(full[5])
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(full[6])
