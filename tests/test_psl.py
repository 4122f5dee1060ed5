"""Inline pseudo strong labels: the teacher stays frozen, the loss mixes teacher and weak targets as
configured, a mismatched teacher is refused, and a 2-process PSL run resumes exactly."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from runkit import launch, tiny_config
from test_run import _step_losses
from trainer.config import ConfigError, Config, load_config
from trainer.data.chunks import Chunking
from trainer.data.manifest import Vocabulary
from trainer.losses import psl_loss
from trainer.models import build_model
from trainer.models.settings import ModelConfig
from trainer.psl import ChunkedTeacherStudent
from trainer.runs import build_teacher


def _models():
    torch.manual_seed(0)
    cfg = ModelConfig(name="mobilenetv2", width_mult=0.35)
    return build_model(cfg, 5), build_model(cfg, 5)


def test_teacher_gets_no_gradients_and_keeps_its_weights():
    student, teacher = _models()
    before = copy.deepcopy(teacher.state_dict())
    chunker = ChunkedTeacherStudent(teacher, Chunking(frames=200, hop=200, frames_per_second=100))
    student.train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    x, y = torch.randn(3, 64, 1001), (torch.rand(3, 5) > 0.5).float()
    out = chunker(student, x, y)
    assert out.student.shape == out.teacher.shape == (3 * 5, 5)  # 5 full 2 s chunks; the 0.01 s remainder is dropped
    assert out.clip_index.tolist() == [c for c in range(3) for _ in range(5)]
    assert torch.equal(out.weak, y[out.clip_index])
    psl_loss(out, 1.0).backward()
    opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics included: the teacher runs in eval mode


def test_alpha_zero_is_weak_training_and_one_is_pure_teacher_targets():
    student, teacher = _models()
    chunker = ChunkedTeacherStudent(teacher, Chunking(frames=100, hop=100, frames_per_second=100))
    x, y = torch.randn(2, 64, 300), (torch.rand(2, 5) > 0.5).float()
    out = chunker(student.eval(), x, y)
    s, t, w = out.student, out.teacher, y[out.clip_index]

    def bce(p, q):  # by hand: −[q log p + (1 − q) log(1 − p)], mean over chunks and classes
        return -(q * p.log() + (1 - q) * (1 - p).log()).mean()

    assert psl_loss(out, 0.0).item() == pytest.approx(bce(s, w).item(), rel=1e-5)
    assert psl_loss(out, 1.0).item() == pytest.approx(bce(s, t).item(), rel=1e-5)
    assert psl_loss(out, 0.5).item() == pytest.approx(0.5 * bce(s, t).item() + 0.5 * bce(s, w).item(), rel=1e-5)


def test_k_random_chunks_per_clip():
    _, teacher = _models()
    chunker = ChunkedTeacherStudent(teacher, Chunking(frames=100, hop=100, frames_per_second=100), chunks_per_clip=2)
    student, _ = _models()
    out = chunker(student.eval(), torch.randn(3, 64, 500), torch.zeros(3, 5), generator=torch.Generator().manual_seed(1))
    assert out.clip_index.tolist() == [0, 0, 1, 1, 2, 2]


def test_teacher_with_other_features_is_refused(tmp_path):
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    teacher_cfg = Config()
    teacher_cfg.data.train = ["x"]
    teacher_cfg.features.frontend = "kaldi_fbank"
    teacher_cfg.save(teacher_dir / "config.yaml")
    cfg = load_config(None, ["data.train=[x]", "features.frontend=mel64", f"psl.teacher={teacher_dir}",
                             "psl.chunk_seconds=2"], check_paths=False)
    with pytest.raises(ConfigError, match="psl.teacher: .*features"):
        build_teacher(cfg.psl.teacher, cfg.features, Vocabulary(tuple(f"/m/{i}" for i in range(5)),
                                                                 tuple(map(str, range(5)))), torch.device("cpu"))


def test_two_process_psl_run_resumes_exactly(built_shards, synthetic_dir, tmp_path):
    runs = tmp_path / "runs"
    teacher = tiny_config(tmp_path / "teacher.yaml", built_shards, synthetic_dir, runs,
                          train={"steps_per_epoch": 2, "wa_start": 1, "trackers": []})
    launch("trainer/run.py", str(teacher), "run.name=teacher", "optim.epochs=1")
    psl = {"psl": {"teacher": str(runs / "teacher"), "alpha": 1.0, "chunk_seconds": 1.0},
           "train": {"steps_per_epoch": 3, "wa_start": 1, "trackers": [], "save_every_steps": 2}}
    config = tiny_config(tmp_path / "psl.yaml", built_shards, synthetic_dir, runs, **psl)
    launch("trainer/run.py", str(config), "run.name=psl_full", processes=2)
    launch("trainer/run.py", str(config), "run.name=psl_cut", "train.stop_after_steps=5", processes=2)
    launch("trainer/run.py", str(config), "run.name=psl_cut", "run.resume=true", processes=2)
    assert _step_losses(runs / "psl_cut") == _step_losses(runs / "psl_full")
    summary = (runs / "psl_cut" / "summary.json").read_text()
    assert '"teacher"' in summary  # pseudo-label quality at chunk level is reported
    metrics = (runs / "psl_cut" / "metrics.csv").read_text().splitlines()
    assert "clips_per_s_without_teacher" in metrics[0]  # the teacher's cost is logged separately
