"""Run configuration: YAML files with dotted command-line overrides, validated up front.

Every section is a dataclass; an unknown key, a wrong type or a missing dataset is one clear error
naming the dotted key. The resolved config is saved in the run directory with every run.
"""
from __future__ import annotations

import dataclasses
import glob
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config problem, always naming the dotted key it is about."""


@dataclass
class RunConfig:
    name: str = "run"
    dir: str = "runs"  # the run directory is {dir}/{name}
    seed: int = 0
    resume: Union[bool, str] = False  # true: latest checkpoint of this run; a path: that checkpoint


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # dataset dirs or brace-expanded shard patterns
    valid: list[str] = field(default_factory=list)  # empty: hold out valid_fraction of train
    valid_fraction: float = 0.1
    eval: list[str] = field(default_factory=list)
    select_on: Literal["valid", "eval"] = "valid"  # the split that picks the best epoch
    strong_labels: Optional[str] = None  # AudioSet strong-format TSV for chunk-level evaluation
    eval_chunk_seconds: float = 2.0  # chunk length of the chunk-level evaluation
    batch_size: int = 32
    eval_batch_size: int = 64
    weighted: bool = True  # PSLA balanced sampling: draws ∝ weights.csv, with replacement
    num_samples: Optional[int] = None  # draws per epoch; default: training set size
    num_threads: int = 2  # DALI CPU threads per process
    prefetch: int = 2  # DALI prefetch queue depth


@dataclass
class FeatureConfig:
    frontend: Literal["kaldi_fbank", "mel64"] = "kaldi_fbank"
    clip_seconds: float = 10.0  # waveforms are padded or cropped to this before features
    target_frames: Optional[int] = None  # kaldi_fbank: pad/crop frames (PSLA 1056, AST 1024)
    norm_mean: Optional[float] = None  # None: the front-end default (PSLA's -4.6476 for kaldi_fbank)
    norm_std: Optional[float] = None


@dataclass
class AugmentConfig:
    freqm: int = 0  # SpecAugment frequency mask width (PSLA 48)
    timem: int = 0  # SpecAugment time mask width (PSLA 192)
    mixup: float = 0.0  # PSLA mixup rate: the fraction of clips mixed with another
    mixup_alpha: float = 10.0  # λ ~ Beta(alpha, alpha)
    batch_mixup_alpha: float = 0.0  # >0: every clip mixed with a permuted partner, λ ~ Beta(α, α)
    time_shift: float = 0.0  # max random roll, seconds
    gain_db: float = 0.0  # max random gain, ± dB


@dataclass
class ModelConfig:
    name: Literal["mobilenetv2", "efficientnet_b0", "efficientnet_b2"] = "mobilenetv2"
    width_mult: float = 1.0
    att_heads: int = 4  # EfficientNet attention pooling heads (0: mean pooling)
    dropout: float = 0.2
    init: Optional[str] = None  # a local checkpoint (a run directory or a weights file)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    epochs: int = 10
    warmup_steps: int = 1000
    lrscheduler_start: int = 10  # epoch from which the lr decays ...
    lrscheduler_step: int = 5  # ... every this many epochs ...
    lrscheduler_decay: float = 0.5  # ... by this factor (PSLA)
    weight_decay: float = 5e-7
    betas: tuple[float, float] = (0.95, 0.999)
    grad_clip: Optional[float] = None
    grad_accum: int = 1


@dataclass
class TrainConfig:
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    cpu_threads: Optional[int] = None  # torch threads per process on CPU; None: cores / local processes
    steps_per_epoch: Optional[int] = None  # cap, for demos and tests
    save_every_steps: int = 0  # 0: only at epoch ends
    wa_start: int = 1  # weight averaging over epochs wa_start..wa_end (1-based, inclusive)
    wa_end: Optional[int] = None  # default: the last epoch
    log_every: int = 10
    stop_after_steps: Optional[int] = None  # tests: exit abruptly after this many steps, as a kill would
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class PSLConfig:
    teacher: Optional[str] = None  # a run directory whose best checkpoint is the frozen teacher
    alpha: float = 1.0  # loss = alpha * BCE(student, teacher) + (1 - alpha) * BCE(student, weak labels)
    chunk_seconds: Optional[float] = None  # None: train on whole clips
    chunk_hop: Optional[float] = None  # default: chunk_seconds
    chunks_per_clip: Optional[int] = None  # None: all chunks; k: k random chunks per clip


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    psl: PSLConfig = field(default_factory=PSLConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def save(self, path: str | Path) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where YAML is looser (int→float, list→tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _type_name(tp: Any) -> str:
    return " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(tp))


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise ConfigError(f"{prefix}{k}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, values[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(values[f.name], tp, f"{prefix}{f.name}")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=3e-4`` → (["optim", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{key.strip()}: cannot read {raw!r} as YAML ({getattr(e, 'problem', e)}); quote strings "
                          f"with braces inside a list, e.g. {key.strip()}='[\"shards/x/x-{{000000..000009}}.tar\"]'") from None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config; ``inherit: other.yaml`` (relative to this file) is read first and overridden here."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: inherit cycle")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    parent = raw.pop("inherit", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: inherit: expected a file name, got {parent!r}")
    return _merge(_read_yaml(path.parent / parent, seen + (path,)), raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] = (), check_paths: bool = True) -> Config:
    raw: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{text}: {k} is not a section")
        node[keys[-1]] = value
    cfg = _build(Config, raw, "")
    _validate(cfg, check_paths)
    return cfg


def _validate(cfg: Config, check_paths: bool) -> None:
    positive = {
        "data.batch_size": cfg.data.batch_size,
        "data.eval_batch_size": cfg.data.eval_batch_size,
        "data.num_threads": cfg.data.num_threads,
        "optim.epochs": cfg.optim.epochs,
        "optim.lr": cfg.optim.lr,
        "optim.grad_accum": cfg.optim.grad_accum,
        "features.clip_seconds": cfg.features.clip_seconds,
    }
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{key}: must be positive, got {v}")
    if not 1 <= cfg.train.wa_start <= (cfg.train.wa_end or cfg.optim.epochs) <= cfg.optim.epochs:
        raise ConfigError(f"train.wa_start/wa_end: need 1 <= wa_start <= wa_end <= optim.epochs, got "
                          f"{cfg.train.wa_start}, {cfg.train.wa_end}, {cfg.optim.epochs}")
    if not 0.0 <= cfg.psl.alpha <= 1.0:
        raise ConfigError(f"psl.alpha: must be in [0, 1], got {cfg.psl.alpha}")
    if not 0.0 <= cfg.augment.mixup <= 1.0:
        raise ConfigError(f"augment.mixup: a rate in [0, 1], got {cfg.augment.mixup}")
    if cfg.psl.teacher is not None and cfg.psl.chunk_seconds is None:
        raise ConfigError("psl.chunk_seconds: required when psl.teacher is set")
    if not cfg.data.train:
        raise ConfigError("data.train: at least one dataset is required")
    if not cfg.data.valid and not 0.0 < cfg.data.valid_fraction < 1.0:
        raise ConfigError(f"data.valid_fraction: must be in (0, 1) when data.valid is empty")
    if cfg.data.select_on == "eval" and not cfg.data.eval:
        raise ConfigError("data.select_on: 'eval' needs data.eval")
    if check_paths:
        for split in ("train", "valid", "eval"):
            for i, spec in enumerate(getattr(cfg.data, split)):
                if not dataset_exists(spec):
                    raise ConfigError(f"data.{split}[{i}]: {spec} does not exist (build it with tools.build_shards)")
        for key, p in (("psl.teacher", cfg.psl.teacher), ("data.strong_labels", cfg.data.strong_labels),
                       ("model.init", cfg.model.init)):
            if p is not None and not Path(p).exists():
                raise ConfigError(f"{key}: {p} does not exist")


def dataset_exists(spec: str) -> bool:
    """A dataset is a directory, or a shard pattern with ``{000000..000199}`` brace ranges."""
    if "{" not in spec:
        return Path(spec).is_dir()
    return Path(spec).parent.is_dir()
