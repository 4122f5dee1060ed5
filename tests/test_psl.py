"""Inline pseudo strong labels: the teacher stays frozen, the loss mixes teacher and weak targets as
configured, a mismatched teacher is refused (an ensemble member by name), a 2-process PSL run resumes
exactly, and an ensemble teacher is the mean of its members."""
from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from runkit import launch, tiny_config
from test_run import _step_losses
from trainer.config import ConfigError, Config, load_config
from trainer.data.chunks import Chunking
from trainer.data.datasets import resolve_splits
from trainer.data.features import build_frontend
from trainer.data.manifest import VOCABULARY, Vocabulary
from trainer.data.settings import FeatureConfig
from trainer.data.streams import EvalStream
from trainer.data.strong_labels import load_strong_labels
from trainer.ensemble import mean_predictions
from trainer.evaluate import Predictions, predict_chunks
from trainer.losses import psl_loss
from trainer.models import build_model
from trainer.models.settings import ModelConfig
from trainer.psl import ChunkedTeacherStudent
from trainer.runs import build_teacher, load_run

CPU = torch.device("cpu")
MOBILENET = ModelConfig(name="mobilenetv2", width_mult=0.35)


def _models():
    torch.manual_seed(0)
    return build_model(MOBILENET, 5), build_model(MOBILENET, 5)


def _vocab(mids: list[str]) -> Vocabulary:
    return Vocabulary(tuple(mids), tuple(f"class {m}" for m in mids))


VOCAB = _vocab([f"/m/{i}" for i in range(5)])


def _saved_run(run_dir: Path, model: ModelConfig, vocab: Vocabulary = VOCAB, frontend: str = "mel64") -> Path:
    """A finished run as build_teacher reads it: config.yaml, vocabulary and (untrained) best weights."""
    cfg = Config()
    cfg.data.train, cfg.model, cfg.features.frontend = ["x"], model, frontend
    (run_dir / "models").mkdir(parents=True)
    cfg.save(run_dir / "config.yaml")
    vocab.save(run_dir / VOCABULARY)
    torch.save(build_model(model, len(vocab.mids)).state_dict(), run_dir / "models" / "best.pt")
    return run_dir


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


def _pick_per_clip(clip_index: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The selection as it was made before it became arithmetic: one unique() and one nonzero() per clip (each a
    device sync on a GPU)."""
    keep = []
    for clip in torch.unique(clip_index):
        idx = torch.nonzero(clip_index == clip).flatten()
        keep.append(idx[torch.argsort(scores[idx])[:k]])
    return torch.sort(torch.cat(keep)).values


@pytest.mark.parametrize("clips, frames, k", [(3, 500, 2), (8, 1001, 3), (1, 300, 5), (5, 1000, 1)])
def test_chunk_selection_is_the_per_clip_selection_without_a_loop(clips, frames, k):
    """The chunking's regular layout lets chunks_per_clip be chosen arithmetically on the host and copied to the
    device once: the same chunks as choosing clip by clip from the same draws."""
    chunker = ChunkedTeacherStudent(None, Chunking(frames=100, hop=100, frames_per_second=100), chunks_per_clip=k)
    _, clip_index, _ = chunker.chunking.split(torch.zeros(clips, 4, frames))
    per_clip = len(clip_index) // clips
    for seed in range(5):
        keep = chunker._pick(clips, per_clip, CPU, torch.Generator().manual_seed(seed))
        scores = torch.rand(len(clip_index), generator=torch.Generator().manual_seed(seed))
        assert keep.tolist() == _pick_per_clip(clip_index, scores, k).tolist()
    assert torch.bincount(clip_index[keep]).tolist() == [min(k, per_clip)] * clips


@pytest.mark.parametrize("channels_last, compile", [(True, False), (False, True)])
def test_teacher_gets_the_students_memory_format_and_compile_setting(tmp_path, monkeypatch, channels_last, compile):
    """run.py passes train.channels_last / train.compile to build_teacher: the teacher, run on the same chunks
    every step, gets the student's memory format and compiled kernels. (The small models' weights are all 1×1 or
    single-channel, the same in either format, so the conversion itself is what is observed.)"""
    formats = []
    to = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        formats.append(kwargs.get("memory_format"))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    teacher = build_teacher(str(_saved_run(tmp_path / "t", MOBILENET)), FeatureConfig(frontend="mel64"), VOCAB, CPU,
                            channels_last=channels_last, compile=compile)
    assert isinstance(teacher, torch._dynamo.eval_frame.OptimizedModule) == compile
    assert (torch.channels_last in formats) == channels_last
    run_py = (Path(__file__).resolve().parents[1] / "trainer" / "run.py").read_text()
    assert re.search(r"build_teacher\([^)]*cfg\.train\.channels_last,\s*cfg\.train\.compile\)", run_py)


def test_teacher_with_other_features_is_refused(tmp_path):
    teacher = _saved_run(tmp_path / "teacher", MOBILENET, frontend="kaldi_fbank")
    with pytest.raises(ConfigError, match=r"^psl\.teacher: .*features"):
        build_teacher(str(teacher), FeatureConfig(frontend="mel64"), VOCAB, CPU)


def test_ensemble_teacher_is_the_frozen_mean_of_its_members(tmp_path):
    """Members of other architectures, each rebuilt from its own config: the chunk targets and the frame
    probabilities are exactly the mean of the members' own outputs, and nothing of theirs trains."""
    dirs = [_saved_run(tmp_path / "mobilenet", MOBILENET),
            _saved_run(tmp_path / "efficientnet", ModelConfig(name="efficientnet_b0"))]
    teacher = build_teacher([str(d) for d in dirs], FeatureConfig(frontend="mel64"), VOCAB, CPU)
    before = copy.deepcopy(teacher.state_dict())
    chunking = Chunking(frames=100, hop=100, frames_per_second=100)
    student, _ = _models()
    x = torch.randn(2, 64, 300)
    out = ChunkedTeacherStudent(teacher, chunking)(student.train(), x, torch.zeros(2, 5))
    psl_loss(out, 1.0).backward()
    assert not any(m.training for m in teacher.modules())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    chunks = chunking.split(x)[0]
    with torch.no_grad():
        (clip_a, frames_a), (clip_b, frames_b) = (load_run(d, device=CPU).model(chunks) for d in dirs)
        _, frames = teacher(chunks)
    assert torch.equal(out.teacher, (clip_a + clip_b) / 2)
    assert torch.equal(frames, (frames_a + frames_b) / 2)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("mismatch", ["features", "vocabulary"])
def test_ensemble_member_with_other_features_or_vocabulary_is_refused_by_name(tmp_path, mismatch):
    good = _saved_run(tmp_path / "good", MOBILENET)
    other = {"features": {"frontend": "kaldi_fbank"}, "vocabulary": {"vocab": _vocab(list(reversed(VOCAB.mids)))}}
    bad = _saved_run(tmp_path / "bad", MOBILENET, **other[mismatch])
    with pytest.raises(ConfigError, match=rf"^psl\.teacher\[1\]: .*{bad.name}.*{mismatch}"):
        build_teacher([good, bad], FeatureConfig(frontend="mel64"), VOCAB, CPU)


def test_teacher_list_in_config(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    base = [f"data.train=[{tmp_path}]", "psl.chunk_seconds=2"]
    assert load_config(None, base + [f"psl.teacher=[{a},{b}]"]).psl.teacher == [str(a), str(b)]
    assert load_config(None, base + [f"psl.teacher={a}"]).psl.teacher == str(a)  # one directory stays one
    (tmp_path / "psl.yaml").write_text(f"data: {{train: [{tmp_path}]}}\npsl: {{chunk_seconds: 2, teacher: [{a}]}}\n")
    assert load_config(tmp_path / "psl.yaml").psl.teacher == [str(a)]
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=rf"^psl\.teacher\[1\]: {re.escape(str(missing))} does not exist"):
        load_config(None, base + [f"psl.teacher=[{a},{missing}]"])
    with pytest.raises(ConfigError, match=r"^psl\.teacher: an empty list"):
        load_config(None, base + ["psl.teacher=[]"])
    with pytest.raises(ConfigError, match=r"^psl\.chunk_seconds: required"):
        load_config(None, [f"data.train=[{tmp_path}]", f"psl.teacher=[{a},{b}]"])
    with pytest.raises(ConfigError, match=r"^psl\.oracle: .* not both"):
        load_config(None, base + [f"psl.teacher=[{a},{b}]", "psl.oracle=o.tsv"], check_paths=False)


def _calibrated_init(config: Path, overrides: list[str], out: Path) -> Path:
    """Untrained weights for ``config`` whose BatchNorm statistics are those of its training features. From
    torchvision's (mean 0, variance 1) a 2-step run's activations vanish layer by layer: every chunk gets the
    same probabilities to 1e-8, and chunk mAPs would compare rounding noise."""
    cfg = load_config(config, overrides, check_paths=False)
    data = resolve_splits(cfg.data)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model, len(data.vocab)).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # the cumulative mean over the batches below
    frontend = build_frontend(data.feature_config(cfg.features))
    with torch.no_grad():
        for batch in EvalStream(data.train, len(data.vocab), cfg.data.loader(8), frontend, 0, 1, CPU):
            model(batch["features"])
    torch.save(model.state_dict(), out)
    return out


def _teacher_run(config: Path, name: str, *overrides: str) -> Path:
    """A finished tiny teacher run (1 process, 1 epoch of 2 steps) from calibrated initial weights."""
    init = _calibrated_init(config, list(overrides), config.parent / f"{name}_init.pt")
    launch("trainer/run.py", str(config), f"run.name={name}", f"model.init={init}", *overrides)
    return config.parent / "runs" / name


@pytest.fixture(scope="module")
def teacher_config(built_shards, synthetic_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("teachers")
    return tiny_config(tmp / "teacher.yaml", built_shards, synthetic_dir, tmp / "runs", data={"eval": []},
                       evaluation={"strong_labels": None}, optim={"epochs": 1},  # no eval split: quicker
                       train={"steps_per_epoch": 2, "wa_start": 1, "trackers": []})


@pytest.fixture(scope="module")
def teacher(teacher_config) -> Path:
    return _teacher_run(teacher_config, "teacher")


@pytest.fixture(scope="module")
def teachers(teacher_config, teacher) -> list[Path]:
    """Two teachers of other architectures: MobileNetV2 at width 0.35 and 0.5."""
    return [teacher, _teacher_run(teacher_config, "teacher_wide", "model.width_mult=0.5", "run.seed=4")]


def test_ensemble_teacher_run_reports_the_ensembles_pseudo_labels(teachers, built_shards, synthetic_dir, tmp_path):
    """A 1-process PSL run taught by two runs: summary.json names both, and chunk_level.teacher is the chunk
    mAP of the mean of the members' chunk probabilities, not either member's own."""
    psl = {"psl": {"teacher": [str(t) for t in teachers], "alpha": 1.0, "chunk_seconds": 1.0},
           "optim": {"epochs": 1}, "train": {"steps_per_epoch": 2, "wa_start": 1, "trackers": []}}
    config = tiny_config(tmp_path / "psl.yaml", built_shards, synthetic_dir, tmp_path / "runs", **psl)
    proc = launch("trainer/run.py", str(config), "run.name=psl")
    run = tmp_path / "runs" / "psl"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher"] == [str(t) for t in teachers]
    assert f"teacher from {teachers[0]} + {teachers[1]}" in proc.stdout + proc.stderr

    cfg = load_config(run / "config.yaml", check_paths=False)
    data = resolve_splits(cfg.data)
    frontend = build_frontend(cfg.features)
    stream = EvalStream(data.eval, len(data.vocab), cfg.data.loader(cfg.evaluation.batch_size), frontend, 0, 1, CPU)
    strong = load_strong_labels(cfg.evaluation.strong_labels, data.vocab)
    chunking = Chunking.of(frontend, cfg.evaluation.chunk_seconds)
    accelerator = Accelerator(cpu=True)
    members = [predict_chunks(load_run(t, device=CPU).model, stream, accelerator, strong, chunking) for t in teachers]
    keys, probs = mean_predictions([(m.keys, m.probs) for m in members])  # in the first member's key order
    names = list(data.vocab.names)
    expected = Predictions(keys, probs, members[0].targets).metrics(names)
    reported = summary["chunk_level"]["teacher"]["mAP"]
    assert reported == pytest.approx(expected["mAP"], abs=1e-6)
    assert all(abs(reported - m.metrics(names)["mAP"]) > 1e-3 for m in members), "no member alone"


def test_two_process_psl_run_resumes_exactly(teacher, built_shards, synthetic_dir, tmp_path):
    runs = tmp_path / "runs"
    psl = {"psl": {"teacher": str(teacher), "alpha": 1.0, "chunk_seconds": 1.0},
           "train": {"steps_per_epoch": 3, "wa_start": 1, "trackers": [], "save_every_steps": 2}}
    config = tiny_config(tmp_path / "psl.yaml", built_shards, synthetic_dir, runs, **psl)
    launch("trainer/run.py", str(config), "run.name=psl_full", processes=2)
    launch("trainer/run.py", str(config), "run.name=psl_cut", "train.stop_after_steps=5", processes=2)
    launch("trainer/run.py", str(config), "run.name=psl_cut", "run.resume=true", processes=2)
    assert _step_losses(runs / "psl_cut") == _step_losses(runs / "psl_full")
    summary = json.loads((runs / "psl_cut" / "summary.json").read_text())
    assert "teacher" in summary["chunk_level"]  # pseudo-label quality at chunk level is reported
    assert summary["teacher"] == [str(teacher)]
    metrics = (runs / "psl_cut" / "metrics.csv").read_text().splitlines()
    assert "clips_per_s_without_teacher" in metrics[0]  # the teacher's cost is logged separately


def test_hard_targets_threshold_the_teacher():
    student, teacher = _models()
    torch.nn.init.normal_(teacher.classifier[1].weight, std=0.5)  # a fresh head says 0.5 everywhere
    teacher.classifier[1].bias.data = torch.linspace(-1.0, 1.0, 5)
    chunking = Chunking(frames=100, hop=100, frames_per_second=100)
    x, y = torch.randn(2, 64, 300), torch.zeros(2, 5)
    soft = ChunkedTeacherStudent(teacher, chunking)(student.eval(), x, y).teacher
    threshold = soft.median().item()
    hard = ChunkedTeacherStudent(teacher, chunking, threshold=threshold)(student.eval(), x, y).teacher
    assert torch.equal(hard, (soft >= threshold).float()) and 0 < hard.sum() < hard.numel()


def test_oracle_labels_chunks_from_strong_annotations():
    from trainer.psl import ChunkOracle

    strong = {"a": [(0.5, 1.2, 0), (3.9, 4.1, 2)], "b": [(0.0, 10.0, 4)]}
    chunker = ChunkedTeacherStudent(None, Chunking(frames=200, hop=200, frames_per_second=100),
                                    oracle=ChunkOracle(strong, 5))
    student, _ = _models()
    out = chunker(student.eval(), torch.randn(2, 64, 1001), torch.zeros(2, 5), keys=["a", "b"])
    expected = torch.zeros(10, 5)
    expected[0, 0] = 1.0  # 0.5-1.2 s lies in chunk 0-2 s
    expected[1, 2] = expected[2, 2] = 1.0  # 3.9-4.1 s overlaps 2-4 s and 4-6 s
    expected[5:, 4] = 1.0  # b's event covers all five chunks
    assert torch.equal(out.teacher, expected)
    with pytest.raises(KeyError, match="no strong labels for training clip c"):
        chunker(student.eval(), torch.randn(1, 64, 400), torch.zeros(1, 5), keys=["c"])


def test_psl_config_errors():
    base = ["data.train=[x]", "features.frontend=mel64", "psl.chunk_seconds=2"]
    with pytest.raises(ConfigError, match=r"^psl\.oracle: .* not both"):
        load_config(None, base + ["psl.teacher=t", "psl.oracle=o.tsv"], check_paths=False)
    with pytest.raises(ConfigError, match=r"^psl\.oracle: true chunk labels cannot follow mixup"):
        load_config(None, base + ["psl.oracle=o.tsv", "augment.mixup=0.5"], check_paths=False)
    with pytest.raises(ConfigError, match=r"^psl\.targets: 'hard' thresholds a teacher"):
        load_config(None, base + ["psl.targets=hard"], check_paths=False)


def test_oracle_student_with_early_stopping(built_shards, synthetic_dir, tmp_path):
    """A run learning from the oracle's true chunk labels, stopped when valid mAP stops improving: it trains
    exactly until PSL's early-stopping rule first holds on its own metrics.csv, and averages what it trained."""
    config = tiny_config(tmp_path / "oracle.yaml", built_shards, synthetic_dir, tmp_path / "runs",
                         augment={"mixup": 0.0}, optim={"lr": 1e-3, "epochs": 5, "warmup_steps": 2},
                         psl={"oracle": str(synthetic_dir / "unbalanced_strong.tsv"), "chunk_seconds": 1.0},
                         train={"steps_per_epoch": 2, "wa_start": 1, "trackers": [], "early_stop_patience": 1})
    launch("trainer/run.py", str(config))
    run = tmp_path / "runs" / "tiny"
    with open(run / "metrics.csv") as f:
        history = [float(r["valid_mAP"]) for r in csv.DictReader(f)]

    def first_best(n: int) -> int:  # 0-based epoch of the first best valid mAP among the first n
        return max(range(n), key=lambda i: (history[i], -i))

    stop = next((n for n in range(1, 6) if n - 1 - first_best(n) >= 1), 5)  # patience 1
    summary = json.loads((run / "summary.json").read_text())
    assert len(history) == summary["epochs_trained"] == stop
    assert summary["stopped_early"] == (stop < 5)
    assert summary["weight_averaged"]["epochs"] == [1, stop]
    assert summary["optimizer_steps"] == 2 * stop
    # The best single model scored both ways: whole clip (best_single), max and mean over its 1 s training chunks.
    pooled = summary["best_single_chunk_pooled"]
    assert pooled["chunk_seconds"] == 1.0
    preds = {p: Predictions.load(run / "predictions" / f"{summary['result_split']}_best_chunk_{p}.npz")
             for p in ("max", "mean")}
    assert (preds["max"].probs >= preds["mean"].probs - 1e-6).all()
    for p in ("max", "mean"):
        with open(run / f"best_single_chunk_{p}_result.csv") as f:
            assert float(next(csv.DictReader(f))["mAP"]) == pytest.approx(pooled[p]["mAP"])


def test_bce_clamps_probabilities_outside_0_1_and_keeps_nan():
    from trainer.losses import bce

    # attention pooling's free head weights can push a clip probability above 1: torch's BCE raises there
    probs, targets = torch.tensor([[1.3, 0.5], [-0.2, 1e-9]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(RuntimeError):
        F.binary_cross_entropy(probs, targets)
    loss = bce(probs, targets)
    expected = -(torch.log(torch.tensor(1 - 1e-7)) + torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(1 - 1e-7))
                 + torch.log(torch.tensor(1e-7))) / 4
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    p = torch.rand(4, 3) * 0.98 + 0.01
    t = (torch.rand(4, 3) > 0.5).float()
    assert bce(p, t).item() == pytest.approx(F.binary_cross_entropy(p, t).item(), rel=1e-5)  # inside (0, 1): the same
    assert torch.isnan(bce(torch.tensor([float("nan")]), torch.tensor([1.0])))
