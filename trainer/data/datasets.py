"""Resolve a config's dataset specs into :class:`RecordTable` s with absolute shard paths.

A spec is a built dataset directory, or a brace-expanded shard pattern inside one
(``shards/as/as-{000000..000199}.tar``, the webdataset convention) that selects some of its shards; either may
be a URL (``https://``, ``s3://``, ``gs://``: trainer/data/remote.py), whose shards are then named by URL.
"""
from __future__ import annotations

import dataclasses
import json
import os
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from braceexpand import braceexpand

from trainer.data.eval_ids import EvalSelection, select_listed
from trainer.data.manifest import DATASET_INFO, VOCABULARY, Vocabulary, read_manifest
from trainer.data.records import RecordTable, key_hash
from trainer.data.remote import Stores, check_shards, fetch_dataset, is_url, locate, split_spec
from trainer.data.settings import DataConfig, FeatureConfig, RemoteSettings


@dataclass
class Splits:
    train: RecordTable
    valid: RecordTable
    eval: RecordTable
    vocab: Vocabulary
    feature_stats: dict  # dataset.json "feature_stats" of the first training dataset ({} if none)
    eval_ids: Optional[EvalSelection] = None  # with data.eval_ids: eval holds the listed clips only
    warnings: list[str] = field(default_factory=list)  # for the run's log: e.g. eval clips that are also trained on

    def feature_config(self, cfg: FeatureConfig) -> FeatureConfig:
        """``cfg`` with norm_mean/std taken from the dataset's stats where the config leaves them None."""
        stats = self.feature_stats.get(cfg.frontend) or {}
        return dataclasses.replace(
            cfg,
            norm_mean=cfg.norm_mean if cfg.norm_mean is not None else stats.get("mean"),
            norm_std=cfg.norm_std if cfg.norm_std is not None else stats.get("std"),
        )


class SplitError(ValueError):
    """A split that cannot be trained or evaluated on (empty, or a dataset listed twice), found before any work;
    the message starts with the ``data.`` key to change."""


def index_path(shard: Path) -> Path:
    """The DALI index beside a shard: ``x.tar.idx``, or ``x.idx`` if that is what exists (a broken link
    counts as existing, so that the error about it names the link)."""
    alt = shard.with_suffix(".idx")
    return alt if os.path.lexists(alt) and not Path(f"{shard}.idx").is_file() else Path(f"{shard}.idx")


def broken_link(path: Path) -> str:
    """For the message about a missing ``path``: where it links to when it is a broken symbolic link (a dataset
    made by tools.enhance_labels holds relative links to another dataset's shards, which break when only one
    of the two directories moves), else nothing."""
    if path.is_symlink():
        return f" (a link to {os.readlink(path)}, which does not resolve: was the linked dataset moved?)"
    return ""


def split_local_spec(spec: str) -> tuple[Path, set[str] | None]:
    """(dataset directory, selected shard names or None for all): a directory, one ``x.tar`` or a
    brace pattern of shards."""
    if "{" not in spec and not spec.endswith(".tar"):
        return Path(spec).resolve(), None
    names = [Path(p) for p in braceexpand(spec)]
    parents = {p.parent.resolve() for p in names}
    if len(parents) != 1:
        raise ValueError(f"{spec}: a shard pattern must stay inside one dataset directory")
    return parents.pop(), {p.name for p in names}


def spec_exists(spec: str) -> bool:
    """Whether the dataset directory a spec names (or whose shards it selects) exists; a URL is taken to (it is
    reached, with one error naming it when it cannot be, when the run loads it)."""
    if is_url(spec):
        return True
    try:
        return split_local_spec(spec)[0].is_dir()
    except ValueError:
        return False


def load_records(spec: str, remote: RemoteSettings = RemoteSettings()) -> tuple[RecordTable, Vocabulary, dict]:
    """Records of one spec (absolute shard paths, every shard and .idx checked; at a URL, shard URLs, every
    shard checked to answer), its vocabulary and the dataset's ``dataset.json`` (``{}`` if absent). A dataset at
    a URL has its small files fetched into ``remote.cache_dir`` first (:func:`trainer.data.remote.fetch_dataset`)."""
    url, stores = None, None
    if is_url(spec):
        url, selected = split_spec(spec)
        stores = Stores(remote)
        root = fetch_dataset(url, stores)
    else:
        root, selected = split_local_spec(spec)
        if not root.is_dir():
            raise FileNotFoundError(f"{spec}: dataset directory {root} does not exist")
    vocab = Vocabulary.load(root / VOCABULARY)
    records = read_manifest(root)
    if selected is not None:
        for name in sorted(selected) if url is None else ():
            if not (root / name).is_file():
                raise FileNotFoundError(f"{spec}: missing shard {root / name}")
        missing = sorted(selected - set(records.shards))
        if missing:
            raise FileNotFoundError(f"{spec}: shard {missing[0]} is not in {url or root}/manifest.jsonl")
        chosen = np.array([name in selected for name in records.shards], dtype=bool)
        records = records.take(chosen[records.shard_index])
    used = np.bincount(records.shard_index, minlength=len(records.shards)) > 0
    if url is not None:  # DALI's .idx files are not read: clips are found by the manifest's offsets
        check_shards((locate(url, name) for name, u in zip(records.shards, used) if u), stores)
        info_path = root / DATASET_INFO
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        return records.with_shards([locate(url, name) for name in records.shards]), vocab, info
    linked = [name for name, u in zip(records.shards, used) if u and is_url(name)]
    if linked:  # a local dataset naming shards at a URL (tools.enhance_labels of a dataset there)
        check_shards(linked, Stores(remote))
    for name in sorted(name for name, u in zip(records.shards, used) if u and not is_url(name)):
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"missing shard {path}{broken_link(path)}")
        idx = index_path(path)
        if not idx.is_file():
            raise FileNotFoundError(f"missing index {idx}{broken_link(idx)} for shard {path}")
    records = records.with_shards([locate(str(root), name) for name in records.shards])
    info_path = root / DATASET_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return records, vocab, info


def load_many(specs: Sequence[str],
              remote: RemoteSettings = RemoteSettings()) -> tuple[RecordTable, Vocabulary | None, dict]:
    """Several specs concatenated; they must share the vocabulary (same digest)."""
    tables: list[RecordTable] = []
    vocab = None
    first_info: dict = {}
    for spec in specs:
        recs, v, info = load_records(spec, remote)
        if vocab is None:
            vocab, first_info = v, info
        elif v.digest() != vocab.digest():
            raise ValueError(f"{spec}: vocabulary {v.digest()} differs from {specs[0]}'s {vocab.digest()}")
        tables.append(recs)
    return RecordTable.concat(tables) if tables else RecordTable.from_records([]), vocab, first_info


def holdout_threshold(fraction: float) -> int:
    """The hold-out takes the keys whose :func:`key_hash` is below this: exactly ``key_hash < fraction · 2^64``
    as Python compares an int with a float (a hash is an integer, so below ``x`` is below ``ceil(x)``)."""
    return math.ceil(fraction * 2**64)


def in_holdout(key: str, fraction: float) -> bool:
    """Deterministic validation hold-out by key hash, independent of order and of the other keys."""
    return key_hash(key) < holdout_threshold(fraction)


def holdout_mask(records: RecordTable, fraction: float) -> np.ndarray:
    """:func:`in_holdout` of every record, from the cached hash column."""
    threshold = holdout_threshold(fraction)
    if threshold > np.iinfo(np.uint64).max:
        return np.ones(len(records), dtype=bool)
    return records.key_hash < np.uint64(max(threshold, 0))


def resolve_splits(cfg: DataConfig) -> Splits:
    """The train, valid and eval records of ``cfg``: a SplitError when a split would be empty or a list names one
    dataset's shards twice; eval (or data.valid) clips that are also training clips are a warning with the count."""
    for split in ("train", "valid", "eval"):
        _check_distinct(f"data.{split}", getattr(cfg, split))
    train, vocab, info = load_many(cfg.train, cfg.remote)
    if vocab is None:
        raise ValueError("data.train: at least one dataset is required")
    _check_not_empty("data.train", cfg.train, train)
    warnings = []
    if cfg.valid:
        valid, _ = _same_vocab(cfg.valid, vocab, cfg)
        _check_not_empty("data.valid", cfg.valid, valid)
        warnings += _shared_with_train("data.valid", valid, train)
    else:
        held = holdout_mask(train, cfg.valid_fraction)
        if held.all() or not held.any():
            raise SplitError(f"data.valid_fraction: {cfg.valid_fraction} of the {len(train)} training clips holds out "
                             f"{int(held.sum())} for validation, leaving {int((~held).sum())} to train on; change it, "
                             f"or list a validation set in data.valid")
        train, valid = train.take(~held), train.take(held)
    evals, _ = _same_vocab(cfg.eval, vocab, cfg) if cfg.eval else (RecordTable.from_records([]), None)
    if cfg.eval:
        _check_not_empty("data.eval", cfg.eval, evals)
    selection = None
    if cfg.eval_ids:
        evals, selection = select_listed(evals, cfg.eval_ids)
    warnings += _shared_with_train("data.eval", evals, train)
    return Splits(train, valid, evals, vocab, info.get("feature_stats", {}), selection, warnings)


def _check_distinct(key: str, specs: Sequence[str]) -> None:
    """A SplitError when two of ``specs`` select some of the same shards of one dataset (directories compared
    resolved, links followed): each of their clips would count twice."""
    seen: list[tuple[Path, set[str] | None]] = []
    for i, spec in enumerate(specs):
        root, selected = split_local_spec(spec)
        for j, (other, other_selected) in enumerate(seen):
            if root == other and (selected is None or other_selected is None or selected & other_selected):
                raise SplitError(f"{key}[{i}]: {spec} lists shards of {root} that {key}[{j}] ({specs[j]}) already "
                                 f"lists; each of their clips would count twice")
        seen.append((root, selected))


def _check_not_empty(key: str, specs: Sequence[str], records: RecordTable) -> None:
    if not len(records):
        raise SplitError(f"{key}: {', '.join(specs)} hold 0 clips")


def _shared_with_train(key: str, records: RecordTable, train: RecordTable) -> list[str]:
    """A warning (in a list, none if nothing is shared) counting the ``records`` whose key is a training clip's."""
    candidates = np.flatnonzero(np.isin(records.key_hash, train.key_hash))  # hashes first, then the keys
    found = train.find(records.keys(candidates))
    shared = sum(records.key(i) in found for i in candidates)
    if not shared:
        return []
    return [f"{key}: {shared} of its {len(records)} clips are also training clips (the same keys after the "
            f"validation hold-out); their scores are not held out"]


def _same_vocab(specs: Sequence[str], vocab: Vocabulary, cfg: DataConfig) -> tuple[RecordTable, Vocabulary]:
    records, v, _ = load_many(specs, cfg.remote)
    if v is not None and v.digest() != vocab.digest():
        raise ValueError(f"{specs[0]}: vocabulary {v.digest()} differs from the training set's {vocab.digest()}")
    return records, vocab
