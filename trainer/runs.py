"""Finished runs read back: a run directory's resolved config, vocabulary and weights, rebuilt as a model.

Predict tags files with one; a PSL run's frozen teacher is one, or the mean of several, checked against the
student's data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from trainer.checkpointing import weights_path
from trainer.config import Config, ConfigError, load_config
from trainer.data.features import FrontEnd, build_frontend
from trainer.data.manifest import Vocabulary
from trainer.data.settings import FeatureConfig
from trainer.ensemble import MeanEnsemble
from trainer.models import build_model, load_weights
from trainer.rundir import RunDir
from trainer.settings import teacher_members

@dataclass
class Run:
    """A trained run ready to predict: its resolved config, front-end, vocabulary and model (eval mode, on device)."""

    config: Config
    frontend: FrontEnd
    vocab: Vocabulary
    model: nn.Module
    device: torch.device


def load_run(run_dir: str | Path, weights: str = "best", device: torch.device | None = None) -> Run:
    """``run_dir``'s config.yaml, vocabulary and ``models/{weights}.pt``."""
    run = RunDir(run_dir)
    cfg = load_config(run.config, check_paths=False)
    vocab = Vocabulary.load(run.vocabulary)
    path = run.weights(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file; did that run finish training?")
    model = build_model(cfg.model, len(vocab), load_pretrained=False)
    load_weights(model, path)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Run(cfg, build_frontend(cfg.features), vocab, model.to(device).eval(), device)


def build_teacher(teacher: str | Path | Sequence[str | Path], features: FeatureConfig, vocab: Vocabulary,
                  device: torch.device, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """The frozen teacher of a PSL run (``psl.teacher``): one run directory's best model, built from its own
    config, or for a list of directories the mean of theirs (members may differ in architecture). Every
    member's features and vocabulary must be the student's (ConfigError naming the member otherwise).
    ``channels_last`` / ``compile``: the student's ``train.channels_last`` / ``train.compile``, so the teacher,
    which runs on the same chunks every step, gets the same memory format and compiled kernels."""
    models = [_teacher_member(key, run_dir, features, vocab) for key, run_dir in teacher_members(teacher)]
    model = (models[0] if len(models) == 1 else MeanEnsemble(models)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile else model


def _teacher_member(key: str, run_dir: Path, features: FeatureConfig, vocab: Vocabulary) -> nn.Module:
    teacher_cfg = load_config(RunDir(run_dir).config, check_paths=False)
    if teacher_cfg.features != features:
        raise ConfigError(f"{key}: {run_dir} was trained on features {teacher_cfg.features}, "
                          f"this run uses {features}; the teacher would label features it never saw")
    teacher_vocab = RunDir(run_dir).vocabulary
    if Vocabulary.load(teacher_vocab).digest() != vocab.digest():
        raise ConfigError(f"{key}: {teacher_vocab} is not the data's vocabulary; its outputs mean other classes")
    model = build_model(teacher_cfg.model, len(vocab), load_pretrained=False)
    load_weights(model, weights_path(run_dir))
    return model
