"""Run configuration: YAML files with dotted command-line overrides, validated up front.

The sections are the packages' own settings dataclasses (trainer/data/settings.py,
trainer/models/settings.py, trainer/settings.py); this module composes them, loads YAML into them, validates
the whole and saves it. Each section's ``validate()`` checks its own settings (every number within its domain);
the rules across sections are here. An unknown key, a wrong type or a missing dataset is one clear error naming the
dotted key. The resolved config is saved in the run directory with every run.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from trainer.data.chunks import Chunking
from trainer.data.datasets import spec_exists
from trainer.data.features import build_frontend
from trainer.data.settings import AugmentConfig, DataConfig, FeatureConfig
from trainer.models.settings import ModelConfig
from trainer.settings import EvalConfig, OptimConfig, PSLConfig, RunConfig, TrainConfig, teacher_members


class ConfigError(ValueError):
    """A config problem, always naming the dotted key it is about."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
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
    return " or ".join(" or ".join(map(repr, typing.get_args(a))) if typing.get_origin(a) is Literal
                       else str(a) if typing.get_origin(a) else getattr(a, "__name__", str(a))  # list[str], not list
                       for a in typing.get_args(tp))


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
    for section in dataclasses.fields(cfg):  # each section checks its own settings ...
        try:
            getattr(cfg, section.name).validate(section.name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    # ... and the rules across sections are here
    if not 1 <= cfg.train.wa_start <= (cfg.train.wa_end or cfg.optim.epochs) <= cfg.optim.epochs:
        raise ConfigError(f"train.wa_start/wa_end: need 1 <= wa_start <= wa_end <= optim.epochs, got "
                          f"{cfg.train.wa_start}, {cfg.train.wa_end}, {cfg.optim.epochs}")
    if cfg.data.global_batch_size is not None and cfg.optim.grad_accum != 1:
        raise ConfigError("optim.grad_accum: with data.global_batch_size, accumulation follows from "
                          "data.max_batch_per_process; leave optim.grad_accum at 1")
    if cfg.psl.oracle and any((cfg.augment.mixup, cfg.augment.batch_mixup_alpha, cfg.augment.time_shift)):
        raise ConfigError("psl.oracle: true chunk labels cannot follow mixup or time shifts; set augment.mixup, "
                          "augment.batch_mixup_alpha and augment.time_shift to 0")
    if cfg.evaluation.select_on == "eval" and not cfg.data.eval:
        raise ConfigError("evaluation.select_on: 'eval' needs data.eval")
    try:
        frontend = build_frontend(cfg.features)
    except ValueError as e:  # an option that does not apply to the front-end
        raise ConfigError(f"features.{e}") from None
    for key, seconds, hop in (("evaluation.chunk_seconds", cfg.evaluation.chunk_seconds, None),
                              ("psl.chunk_seconds", cfg.psl.chunk_seconds, cfg.psl.chunk_hop)):
        try:  # at least one frame of this front-end
            if seconds is not None:
                Chunking.of(frontend, seconds, hop)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    missing = missing_paths(cfg) if check_paths else []
    if missing:
        raise ConfigError(missing[0])


def missing_paths(cfg: Config) -> list[str]:
    """One line per dataset, teacher or file the config names that does not exist, naming its dotted key."""
    missing = [f"data.{split}[{i}]: {spec} does not exist (build it with tools.build_shards)"
               for split in ("train", "valid", "eval") for i, spec in enumerate(getattr(cfg.data, split))
               if not spec_exists(spec)]
    teachers = teacher_members(cfg.psl.teacher) if cfg.psl.teacher else []
    for key, p in teachers + [("psl.oracle", cfg.psl.oracle), ("model.init", cfg.model.init),
                              ("model.pretrained_file", cfg.model.pretrained_file),
                              ("evaluation.strong_labels", cfg.evaluation.strong_labels),
                              ("data.eval_ids", cfg.data.eval_ids)]:
        if p is not None and not Path(p).exists():
            missing.append(f"{key}: {p} does not exist")
    return missing

