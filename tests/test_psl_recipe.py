"""PSL's recipe as its code runs it (RicherMans/PSL): batches of chunks drawn one per clip with epochs counted
in chunks, plain Adam at a constant rate, the recipes' fields as their comments credit to PSL, equal budgets for
the demo's students, and clip scores both ways (whole-clip forward, max / mean over chunks)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from conftest import CLASSES
from trainer import results
from trainer.config import load_config
from trainer.data.chunks import Chunking, chunk_count, split_chunks
from trainer.evaluate import clip_scores, pool_chunks, predict_clips, training_chunking
from trainer.optim import build_optimizer, build_scheduler
from trainer.psl import ChunkedTeacherStudent, draws_per_epoch
from trainer.settings import OptimConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TWO_S = Chunking(frames=200, hop=200, frames_per_second=100)


class Recorder(torch.nn.Module):
    """A student that records its input; its clip output is the mean over time of the first C mel bins."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.classes, self.seen = classes, []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append(x)
        frames = torch.sigmoid(x[:, : self.classes, :]).transpose(1, 2)  # B × T × C
        return frames.mean(dim=1), frames


def test_chunk_count_is_split_chunks_rule():
    for t in (1, 99, 100, 150, 199, 1000, 1001, 1099, 1100):
        for chunk, hop in ((200, 200), (100, 50), (1000, 1000), (300, 300)):
            assert chunk_count(t, chunk, hop) == split_chunks(torch.zeros(1, 1, t), chunk, hop)[1].numel()


def test_an_epoch_counts_chunks_as_psl():
    assert draws_per_epoch(133, TWO_S, 1001, 1) == 665  # 5 chunks of 2 s per 10 s clip, each once
    assert draws_per_epoch(133, TWO_S, 1001, 2) == 333
    assert draws_per_epoch(133, TWO_S, 1001, 9) == 133  # k ≥ n: every chunk of every draw
    assert draws_per_epoch(133, Chunking(1000, 1000, 100), 1001, 1) == 133  # 10 s: the clip
    assert draws_per_epoch(133, TWO_S, 1001, None) is None  # all chunks per draw: a pass over the clips


def test_one_random_chunk_from_each_clip():
    """32 clips give a batch of 32 chunks, one from each clip, each a real 2 s span of its own clip; the pick
    varies with the generator and reaches every position."""
    clips = torch.randn(32, 4, 1001)
    chunker = ChunkedTeacherStudent(None, TWO_S, chunks_per_clip=1)
    all_chunks, all_index, _ = split_chunks(clips, 200, 200)
    positions = set()
    for seed in range(8):
        student = Recorder()
        out = chunker(student, clips, torch.zeros(32, 3), generator=torch.Generator().manual_seed(seed))
        assert out.clip_index.tolist() == list(range(32)) and out.student.shape == (32, 3)
        (seen,) = student.seen
        for i in range(32):
            match = [j for j in range(5) if torch.equal(seen[i], all_chunks[5 * i + j])]
            assert len(match) == 1 and all_index[5 * i + match[0]] == i
            positions.add(match[0])
    assert positions == set(range(5))


def test_psl_adam_at_a_constant_rate():
    cfg = OptimConfig(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0, lrscheduler_start=None)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.Adam) and not g["amsgrad"]
    assert (g["lr"], g["weight_decay"], g["betas"], g["eps"]) == (1e-3, 0.0, (0.9, 0.999), 1e-8)  # torch's defaults
    sched = build_scheduler(opt, cfg, steps_per_epoch=3)
    lrs = []
    for _ in range(300):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1e-3] * 300


@pytest.mark.parametrize("name", ["psl_balanced_chunk_2sec", "psl_balanced_chunk_5sec", "psl_balanced_chunk_10sec",
                                  "teacher_student_chunk_2sec", "demo_psl_2s", "demo_psl_10s", "demo_weak_10s",
                                  "demo_oracle_2s"])
def test_recipes_are_what_their_comments_credit_to_psl(name):
    cfg = load_config(CONFIGS / f"{name}.yaml", check_paths=False)
    o = cfg.optim
    assert (o.lr, o.betas, o.weight_decay, o.warmup_steps, o.lrscheduler_start, o.grad_clip) == \
        (1e-3, (0.9, 0.999), 0.0, 0, None, None)  # plain Adam, no schedule, warm-up or clipping
    a = cfg.augment
    assert (a.freqm, a.timem, a.mixup, a.batch_mixup_alpha, a.time_shift, a.gain_db) == (0, 0, 0.0, 0.0, 0.0, 0.0)
    assert cfg.model.name == "mobilenetv2" and cfg.model.pretrained is None
    assert (cfg.model.dropout, cfg.model.conv_init) == (0.3, "xavier_uniform")
    assert cfg.data.global_batch_size == 32 and not cfg.data.weighted and cfg.psl.chunks_per_clip == 1
    assert cfg.data.valid == cfg.data.train  # selection on the training clips
    if name.startswith("psl_") or name.startswith("teacher_student"):
        assert (o.epochs, cfg.train.early_stop_patience, cfg.data.num_samples) == (300, 15, None)


def test_psl_init_is_xavier_uniform_for_every_convolution():
    from trainer.models import build_model
    from trainer.models.settings import ModelConfig

    torch.manual_seed(0)
    psl = build_model(ModelConfig(width_mult=0.35, conv_init="xavier_uniform"), 5)
    ours = build_model(ModelConfig(width_mult=0.35), 5)
    convs = [m.weight for m in psl.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len([m for m in ours.features.modules() if isinstance(m, torch.nn.Conv2d)]) > 30
    for w in convs:
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(w)
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound
    assert torch.equal(psl.classifier[1].bias, torch.zeros(5)) and psl.classifier[0].p == 0.2
    stem = next(m for m in ours.features.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert stem.abs().max() > (6 / sum(torch.nn.init._calculate_fan_in_and_fan_out(stem))) ** 0.5  # kaiming's: wider


def test_demo_students_get_equal_budgets():
    names = ["demo_weak_10s", "demo_weak_2s", "demo_psl_10s", "demo_psl_5s", "demo_psl_2s", "demo_ts_2s",
             "demo_oracle_2s"]
    budgets = {n: (c.data.num_samples, c.data.global_batch_size, c.optim.epochs, c.train.early_stop_patience)
               for n in names for c in [load_config(CONFIGS / f"{n}.yaml", check_paths=False)]}
    assert len(set(budgets.values())) == 1, budgets


def test_max_and_mean_over_chunks_beside_the_whole_clip():
    """A 1 s event in one 2 s chunk of a 10 s clip: the whole-clip forward dilutes it, the max over chunks
    keeps it, the mean over equal chunks of a mean-over-time model is the whole clip's score."""
    x = torch.full((2, 3, 1000), -6.0)
    x[0, 1, 400:500] = 6.0  # clip 0, class 1: an event in the third chunk
    model = Recorder()
    whole = clip_scores(model, x)
    chunk_probs = torch.sigmoid(x[:, :3].reshape(2, 3, 5, 200)).mean(-1).permute(0, 2, 1)  # B × chunks × C
    assert torch.allclose(clip_scores(model, x, "max", TWO_S), chunk_probs.amax(1))
    assert torch.allclose(clip_scores(model, x, "mean", TWO_S), whole, atol=1e-6)
    assert clip_scores(model, x, "max", TWO_S)[0, 1] == pytest.approx(0.5, abs=0.01)  # half its chunk
    assert whole[0, 1] == pytest.approx(0.1, abs=0.01)  # a tenth of the clip: diluted 5×
    with pytest.raises(ValueError, match="needs a chunking"):
        clip_scores(model, x, "max")


def test_clip_scores_pool_over_the_training_chunk_length():
    from trainer.data.features import build_frontend
    from trainer.data.settings import FeatureConfig
    from trainer.settings import PSLConfig

    frontend = build_frontend(FeatureConfig(frontend="mel64"))  # 10 s clips: 1001 frames
    assert training_chunking(frontend, PSLConfig(chunk_seconds=2), 10.0) == Chunking(200, 200, 100)
    assert training_chunking(frontend, PSLConfig(chunk_seconds=2, chunk_hop=1), 10.0) == Chunking(200, 100, 100)
    whole = training_chunking(frontend, PSLConfig(), 10.0)  # trained on clips: one chunk, the clip
    assert whole == Chunking(1000, 1000, 100) and whole.count(frontend.num_frames) == 1


def test_pool_chunks_follows_clip_index_in_any_order():
    probs = torch.tensor([[0.1, 0.9], [0.5, 0.2], [0.3, 0.4], [0.7, 0.0]])
    index = torch.tensor([1, 0, 1, 0])
    assert torch.allclose(pool_chunks(probs, index, 2, "max"), torch.tensor([[0.7, 0.2], [0.3, 0.9]]))
    assert torch.allclose(pool_chunks(probs, index, 2, "mean"), torch.tensor([[0.6, 0.1], [0.2, 0.65]]))
    with pytest.raises(ValueError, match="'max' or 'mean'"):
        pool_chunks(probs, index, 2, "median")


def test_predict_clips_pools_over_the_stream():
    x = torch.randn(3, 3, 1001)
    stream = [{"keys": ["b", "a"], "features": x[:2], "labels": torch.ones(2, 3)},
              {"keys": ["c"], "features": x[2:], "labels": torch.zeros(1, 3)}]
    model = Recorder()
    preds = predict_clips(model, stream, Accelerator(cpu=True), "max", TWO_S)
    assert preds.keys == ["a", "b", "c"]
    expected = clip_scores(model, x, "max", TWO_S).numpy()
    assert preds.probs == pytest.approx(expected[[1, 0, 2]], abs=1e-6)


def test_optimizer_steps_from_the_step_log(tmp_path):
    log = tmp_path / "steps.csv"
    for epoch, steps in ((1, 5), (2, 5), (3, 2)):  # a run stopped mid-epoch 3
        for step in range(1, steps + 1):
            results.append_row(log, {"epoch": epoch, "step": step, "global_step": 0, "lr": 1e-3, "loss": 0.5})
    assert results.optimizer_steps(log, 1) == 12
    assert results.optimizer_steps(log, 2) == 3 + 3 + 1


def test_demo_table_states_both_clip_scores_both_label_sets_and_each_rows_budget(built_shards, synthetic_dir, tmp_path,
                                                                                 monkeypatch):
    """The demo's table from two finished rows: whole-clip, max and mean clip mAP, against the eval labels and
    (rescored from the saved predictions) the true labels of the same clips, optimizer steps, epochs, and the
    passes over the row's own chunks (1 s chunks of 4 s clips, one per draw: a quarter of a clip pass)."""
    from runkit import tiny_config
    from tools import demo
    from trainer.data.datasets import resolve_splits
    from trainer.data.manifest import Vocabulary, read_manifest
    from trainer.metrics import tagging_metrics

    monkeypatch.chdir(tmp_path)
    truth = demo.World().shards("eval_clean")  # the true labels: here the eval shards themselves
    truth.parent.mkdir()
    truth.symlink_to(built_shards["eval"])
    eval_table = read_manifest(truth)
    keys = [eval_table.key(i) for i in range(len(eval_table))][::-1]  # any order
    targets = eval_table.multi_hot(list(range(len(eval_table)))[::-1], CLASSES)
    probs = np.random.default_rng(0).random(targets.shape).astype(np.float32)
    expected = tagging_metrics(probs, targets, list(Vocabulary.load(truth / "class_labels_indices.csv").names))["mAP"]
    rows = {"demo_weak_10s": {}, "demo_psl_2s": {"chunk_seconds": 1.0, "chunks_per_clip": 1}}
    for i, (name, psl) in enumerate(rows.items()):
        run = tmp_path / "runs" / f"{name}_seed0"
        (run / "predictions").mkdir(parents=True)
        for file in ("eval_best.npz", "eval_best_chunk_max.npz", "eval_best_chunk_mean.npz"):
            np.savez(run / "predictions" / file, keys=np.array(keys), probs=probs)
        config = tiny_config(tmp_path / f"{name}.yaml", built_shards, synthetic_dir, tmp_path / "runs", psl=psl,
                             data={"batch_size": None, "global_batch_size": 8})
        load_config(config).save(run / "config.yaml")
        metric = {"mAP": 0.5 + i / 10, "dprime": 1.0}
        (run / "summary.json").write_text(json.dumps({
            "best_single": metric, "chunk_level": {"best_single": {"mAP": 0.3}}, "epochs_trained": 3,
            "optimizer_steps": 30, "best_single_chunk_pooled": {"chunk_seconds": psl.get("chunk_seconds", 4.0),
                                                                "max": {"mAP": 0.7}, "mean": {"mAP": 0.4}}}))
    clips = len(resolve_splits(load_config(tmp_path / "demo_psl_2s.yaml").data).train)
    text, stats = demo.table(list(rows), [0])
    lines = text.splitlines()
    assert "max over chunks (AudioSet-like / true eval labels)" in lines[0] and "optimizer steps" in lines[0]
    assert "passes over its chunks" in lines[0]
    t = f"{expected:.3f}"
    assert lines[2] == (f"| weak-10s | 0.500 / {t} | 0.700 / {t} (4 s) | 0.400 / {t} (4 s) | 1.000 | 0.300 | 30 | 3 | "
                        f"{30 * 8 / clips:.1f} |")
    assert lines[3] == (f"| PSL-2s | 0.600 / {t} | 0.700 / {t} (1 s) | 0.400 / {t} (1 s) | 1.000 | 0.300 | 30 | 3 | "
                        f"{30 * 8 / (4 * clips):.1f} |")
    assert stats["demo_psl_2s"]["max"] == (0.7, 0.0) and stats["demo_psl_2s"]["true_max"] == (expected, 0.0)
    shipped = tmp_path / "runs" / "demo_weak_10s_seed0" / "config.yaml"  # a shipped teacher's data is not built
    shipped.write_text(shipped.read_text().replace(str(built_shards["train"]), str(tmp_path / "not_built")))
    assert demo.table(list(rows), [0])[0].splitlines()[2].endswith("| 30 | 3 | – |")
    # the missing-label sweep from the same runs: per seed whose three rows finished, the gain over weak-10s
    from tools.experiments import missing_sweep

    ten = tmp_path / "runs" / "demo_psl_10s_seed0"
    shutil.copytree(tmp_path / "runs" / "demo_weak_10s_seed0", ten)
    (ten / "summary.json").write_text(json.dumps({"best_single": {"mAP": 0.8}}))
    lines = missing_sweep.sweep(["audioset", "0"], [0, 1], ratios=[30]).splitlines()
    assert lines[2:] == ["| audioset | PSL-10s − weak-10s | AudioSet-like | +0.300 (0) | +0.300 ± 0.000 |",
                         "| audioset | PSL-10s − weak-10s | true | +0.000 (0) | +0.000 ± 0.000 |",
                         "| audioset | PSL-2s − weak-10s | AudioSet-like | +0.100 (0) | +0.100 ± 0.000 |",
                         "| audioset | PSL-2s − weak-10s | true | +0.000 (0) | +0.000 ± 0.000 |"]  # no other world ran


def test_demo_worlds_keep_their_data_shards_and_runs_apart():
    from tools.demo import World

    default, none, clean = World(), World(missing="0"), World(kind="clean")
    assert (default.data, default.shards("eval"), default.runs) == (Path("data/demo"), Path("shards/demo_eval"),
                                                                   Path("runs"))
    assert default.overrides("demo_psl_2s", 1200) == []  # the configs' own paths
    assert none.shards("eval_clean") == Path("shards/demo_missing-0_eval_clean") and "eval_clean" in none.splits
    assert "eval_clean" not in clean.splits and clean.generate(10, 5)[-2:] == ["--world", "clean"]
    assert none.generate(10, 5)[-2:] == ["--missing", "0"]
    teacher, oracle = none.overrides("demo", 1200), none.overrides("demo_oracle_2s", 1200)
    assert "data.train=[shards/demo_missing-0_unbalanced]" in teacher and "run.dir=runs/demo_missing-0" in teacher
    assert "psl.oracle=data/demo_missing-0/balanced_strong.tsv" in oracle
    assert "data.valid=[shards/demo_missing-0_balanced]" in oracle
    assert not any(o.startswith("data.num_samples") for o in teacher)
    # a bigger teacher split: its own world, the default teacher's steps (an epoch of --clips draws) over more clips
    ratio = World(teacher_ratio=30)
    assert ratio.runs == Path("runs/demo_ratio-30") and ratio.generate(10, 5)[-4:-2] == ["--teacher-ratio", "30"]
    assert "data.num_samples=1200" in ratio.overrides("demo", 1200)
    assert not any(o.startswith("data.num_samples") for o in ratio.overrides("demo_psl_2s", 1200))
    assert World(missing="half", teacher_ratio=30).data == Path("data/demo_missing-half_ratio-30")


def test_a_run_with_one_chunk_per_clip_counts_its_epoch_in_chunks(built_shards, synthetic_dir, tmp_path):
    """PSL's recipe end to end on one process: one 1 s chunk from each clip of a batch, an epoch of every
    training clip once per chunk it has (4 s clips: 4 chunks), selection on the training clips themselves."""
    from runkit import launch, tiny_config
    from trainer.data.datasets import resolve_splits

    train = [str(built_shards["train"])]
    config = tiny_config(tmp_path / "psl.yaml", built_shards, synthetic_dir, tmp_path / "runs",
                         data={"valid": train, "eval": [], "batch_size": 16}, augment={"freqm": 0, "timem": 0, "mixup": 0.0},
                         evaluation={"strong_labels": None}, optim={"epochs": 1, "warmup_steps": 0,
                                                                    "lrscheduler_start": None},
                         psl={"chunk_seconds": 1.0, "chunks_per_clip": 1},
                         train={"steps_per_epoch": None, "wa_start": 1, "trackers": []})
    launch("trainer/run.py", str(config))
    run = tmp_path / "runs" / "tiny"
    clips = len(resolve_splits(load_config(config).data).train)
    assert clips == 40  # data.valid given: nothing held out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["optimizer_steps"] == -(-clips * 4 // 16) == len(results.read_rows(run / "steps.csv"))
    assert summary["best_single_chunk_pooled"]["chunk_seconds"] == 1.0


def test_the_shipped_teacher_is_copied_to_the_default_worlds_run_only(tmp_path, monkeypatch):
    """The demo's shipped teacher (teachers/demo_seed{S}) becomes runs/demo_seed{S} where no such run exists; a
    teacher the user trained there is kept, and other worlds train their own."""
    from tools.demo import TEACHER_FILES, World, shipped_teacher

    monkeypatch.chdir(tmp_path)
    shipped = Path("teachers/demo_seed0")
    for name in TEACHER_FILES + ("PROVENANCE.json",):
        (shipped / name).parent.mkdir(parents=True, exist_ok=True)
        (shipped / name).write_text(name)
    assert shipped_teacher(World(), 0) == shipped
    assert (Path("runs/demo_seed0/models/best.pt").read_text(), Path("runs/demo_seed0/summary.json").read_text()) \
        == ("models/best.pt", "summary.json")
    assert shipped_teacher(World(), 1) is None  # none shipped for seed 1
    assert shipped_teacher(World(missing="0"), 0) is None and not Path("runs/demo_missing-0").exists()
    own = Path("runs/demo_seed0")
    (own / "PROVENANCE.json").unlink()
    (own / "models/best.pt").write_text("the user's own teacher")
    assert shipped_teacher(World(), 0) is None and (own / "models/best.pt").read_text() == "the user's own teacher"
