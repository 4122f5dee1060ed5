"""GPU checks, skipped without CUDA (`pytest -m gpu`; bash benchmarks/gpu_check.sh runs them with the
benchmarks on a GPU machine and writes one report): DALI's GPU ops load, batches on the device for both
front-ends, GPU vs CPU feature parity, DALI's outputs safe from a slow consumer, a stream on a second GPU,
training steps of the demo and PSLA recipes (no ImageNet download), resume, and no device sync in a
steady-state weak or PSL step."""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import pytest
import torch

from runkit import REPO, count_reads, repo_pythonpath, tiny_config
from tests.shardkit import make_dataset
from trainer.data.datasets import load_records
from trainer.data.features import build_frontend
from trainer.data.settings import AugmentConfig, FeatureConfig, LoaderSettings
from trainer.data.streams import EvalStream, TrainStream, check_gpu_frontend

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
FRONTENDS = ("kaldi_fbank", "mel64")
GPU_CPU_LIMITS = {"kaldi_fbank": (1e-3, 0.05), "mel64": (0.1, 3.0)}  # mean and max, normalised units / dB


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu") / "ds"
    make_dataset(root, n=12, num_shards=2, seconds=2.0)
    return load_records(str(root))[0]


def _frontend(name):
    return build_frontend(FeatureConfig(frontend=name, clip_seconds=2.0))


@pytest.mark.parametrize("name", FRONTENDS)
def test_dali_gpu_frontend_loads_and_trains_batches_on_cuda(clips, name):
    check_gpu_frontend(_frontend(name), CUDA)
    stream = TrainStream(clips, 5, LoaderSettings(4, num_threads=2), _frontend(name),
                         AugmentConfig(freqm=8, timem=20, mixup=0.5), 0, 0, 1, CUDA)
    batch = next(iter(stream))
    assert batch["features"].device.type == "cuda" and batch["labels"].device.type == "cuda"
    assert batch["features"].shape[:2] == (4, _frontend(name).num_mels) and torch.isfinite(batch["features"]).all()


@pytest.mark.parametrize("name", FRONTENDS)
def test_gpu_features_match_cpu_features(clips, name):
    """kaldi_fbank: DALI's spectrogram on the GPU, the same torch mel as on the CPU; mel64: DALI's mel filter
    bank and dB on the GPU against torch's on the CPU. The sizes are printed for the report."""
    feats = {}
    for device in (CPU, CUDA):
        feats[device.type] = {k: f for b in EvalStream(clips, 5, LoaderSettings(4), _frontend(name), 0, 1, device)
                              for k, f in zip(b["keys"], b["features"].cpu())}
    d = torch.stack([(feats["cuda"][k] - feats["cpu"][k]).abs() for k in feats["cpu"]])
    print(f"{name} GPU vs CPU: mean {d.mean():.2e} max {d.max():.2e}")
    limits = GPU_CPU_LIMITS[name]
    assert d.mean() < limits[0] and d.max() < limits[1]


@pytest.mark.parametrize("name", FRONTENDS)
def test_waveform_mixup_on_cuda_matches_the_cpu_path(clips, name):
    """With waveform mixup DALI moves the decoded samples to the device and the torch tail mixes them and
    computes the features there: the CPU stream's batches (same seed, same draws) up to the FFTs' rounding."""
    aug = AugmentConfig(freqm=8, timem=20, mixup=0.5, mixup_domain="waveform")
    batches = {}
    for device in (CPU, CUDA):
        stream = TrainStream(clips, 5, LoaderSettings(4, num_threads=2), _frontend(name), aug, 3, 0, 1, device,
                             num_samples=12)
        batches[device.type] = list(stream)
    assert batches["cuda"][0]["features"].device.type == "cuda"
    assert len(batches["cpu"]) == len(batches["cuda"]) == 3
    diffs = []
    for cpu, cuda in zip(batches["cpu"], batches["cuda"]):
        assert cpu["keys"] == cuda["keys"]
        assert torch.allclose(cpu["labels"], cuda["labels"].cpu(), atol=1e-6)
        diffs.append((cuda["features"].cpu() - cpu["features"]).abs())
    d = torch.cat(diffs)
    print(f"{name} waveform mixup, GPU vs CPU: mean {d.mean():.2e} max {d.max():.2e}")
    limits = GPU_CPU_LIMITS[name]
    assert d.mean() < limits[0] and d.max() < limits[1]


def _env():
    env = dict(os.environ, PYTHONPATH=repo_pythonpath(os.environ))
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _run(config, *overrides):
    env = _env()
    proc = subprocess.run([sys.executable, "trainer/run.py", str(config), "train.device=cuda", *overrides], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _losses(run):
    with open(run / "steps.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("recipe", ["demo.yaml", "full_as.yaml"])
def test_twenty_steps_of_each_recipe_on_cuda(built_shards, synthetic_dir, tmp_path, recipe):
    data = [f"data.train=[{built_shards['train']}]", f"data.eval=[{built_shards['eval']}]", "data.valid=[]",
            "data.valid_fraction=0.2", "data.global_batch_size=8", "evaluation.batch_size=8",
            "evaluation.strong_labels=null", "model.pretrained=null"]  # no ImageNet download on an offline machine
    _run(REPO / "configs" / recipe, f"run.dir={tmp_path}", "run.name=r", *data, "train.steps_per_epoch=20",
         "optim.epochs=1", "train.wa_start=1", "train.wa_end=1", "train.trackers=[]", "data.num_samples=200")
    losses = _losses(tmp_path / "r")
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)


def test_resume_on_cuda_repeats_the_losses(built_shards, synthetic_dir, tmp_path):
    """cudnn.benchmark may pick other kernels in the resumed process: losses agree to float rounding."""
    config = tiny_config(tmp_path / "c.yaml", built_shards, synthetic_dir, tmp_path / "runs",
                         train={"steps_per_epoch": 3, "wa_start": 1, "trackers": [], "save_every_steps": 2})
    _run(config, "run.name=full")
    _run(config, "run.name=cut", "train.stop_after_steps=5")
    _run(config, "run.name=cut", "run.resume=true")
    assert _losses(tmp_path / "runs" / "cut") == pytest.approx(_losses(tmp_path / "runs" / "full"), rel=1e-3)


@pytest.mark.parametrize("recipe", ["weak", "psl"])
def test_no_device_sync_in_steady_state_steps(built_shards, synthetic_dir, tmp_path, recipe):
    """9 more steps between the same log steps cost the one extra flush's sync, not one a step: weak steps, and
    PSL steps (teacher and student on 1 s chunks, 2 random chunks per clip). The counts go to the report."""
    runs = tmp_path / "runs"
    sections = {"train": {"wa_start": 1, "trackers": [], "log_every": 9, "device": "cuda"},
                "optim": {"epochs": 1, "lr": 1e-3, "warmup_steps": 2}}
    if recipe == "psl":
        teacher = tiny_config(tmp_path / "t.yaml", built_shards, synthetic_dir, runs,
                              train={"steps_per_epoch": 2, "wa_start": 1, "trackers": []})
        _run(teacher, "run.name=teacher", "optim.epochs=1")
        sections["psl"] = {"teacher": str(runs / "teacher"), "chunk_seconds": 1.0, "chunks_per_clip": 2}
    config = tiny_config(tmp_path / "c.yaml", built_shards, synthetic_dir, runs, **sections)
    syncs = [count_reads(config, steps, _env())["cuda syncs"] for steps in (9, 18)]
    print(f"CUDA syncs ({recipe}): {syncs[0]} with 9 steps, {syncs[1]} with 18 (one flush each 9)")
    assert syncs[1] - syncs[0] <= 1, syncs


def test_dali_outputs_survive_a_slow_consumer(clips):
    """DALI runs ahead of a consumer whose stream is kept busy (a long sleep kernel before each batch is read):
    the batches it reads are the ones a prompt consumer reads, so no DALI buffer is reused while kernels queued
    on the consumer's stream still read it."""
    def batches(slow):
        stream = TrainStream(clips, 5, LoaderSettings(4, num_threads=2, prefetch=3), _frontend("mel64"),
                             AugmentConfig(freqm=8, timem=20, mixup=0.5), 7, 0, 1, CUDA, num_samples=24)
        out = []
        for batch in stream:
            if slow:
                torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued ahead of the read
            out.append((batch["keys"], (batch["features"] * 1).cpu()))
        return out

    prompt, slow = batches(False), batches(True)
    assert len(prompt) == len(slow) == 6
    for (keys_a, a), (keys_b, b) in zip(prompt, slow):
        assert keys_a == keys_b and torch.equal(a, b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_stream_on_the_second_gpu_stays_there(clips):
    """A rank's stream on cuda:1, made while cuda:0 is current: DALI, the feed thread and the tail all use
    cuda:1 (the feed thread sets its device; pinned copies and DALI's device id follow it)."""
    torch.cuda.set_device(0)
    stream = TrainStream(clips, 5, LoaderSettings(4, num_threads=2), _frontend("mel64"),
                         AugmentConfig(freqm=8, timem=20, mixup=0.5), 0, 0, 1, torch.device("cuda", 1))
    batch = next(iter(stream))
    assert batch["features"].device == batch["labels"].device == torch.device("cuda", 1)
    assert torch.cuda.current_device() == 0
