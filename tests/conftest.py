"""Shared fixtures: a tiny synthetic dataset and its built train/eval shards (session-scoped, ~3 s).

``synthetic_dir``: Path of a ``tools.make_synthetic`` output with 40 unbalanced (a balanced subset of at
least 4 clips per class), 8 valid and 16 eval clips over 6 classes ({split}.json, {split}_strong.tsv,
class_labels_indices.csv, classes.csv, audio/).
``built_shards``: dict {"train": Path, "eval": Path} of dataset directories built from unbalanced.json and
eval.json by ``tools.build_shards`` (16 samples per shard: train has 3 shards, eval 1). Treat both as
read-only; copy them before corrupting anything.
``two_process_run``: the run directory of a finished tiny training run (tests/runkit.py ``tiny_config``: mel64,
4 s clips, MobileNetV2 ×0.35, 2 epochs) on two processes over ``built_shards``, with eval and chunk-level
results; the one trained run the tests share (test_run checks it, the tagger and export tests use it).
``served_shards``: ``http://127.0.0.1:PORT`` of a static HTTP server (tests/servers.py) over the directory
holding ``built_shards``: ``{url}/syntrain`` and ``{url}/syneval`` are those datasets at a URL.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from runkit import launch, tiny_config
from tests.servers import serve
from tools.build_shards import BuildOptions, build
from tools.make_synthetic import make_synthetic

TRAIN_CLIPS, VALID_CLIPS, EVAL_CLIPS, CLASSES = 40, 8, 16, 6


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("synthetic")
    make_synthetic(d, clips=TRAIN_CLIPS, eval_clips=EVAL_CLIPS, classes=CLASSES, seed=0, valid_clips=VALID_CLIPS,
                   balanced_per_class=4, workers=2)
    return d


@pytest.fixture(scope="session")
def built_shards(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    out = {}
    for split, source in (("train", "unbalanced"), ("eval", "eval")):
        opts = BuildOptions(source=synthetic_dir / f"{source}.json", out=root / f"syn{split}",
                            labels=synthetic_dir / "class_labels_indices.csv", workers=1, shard_samples=16)
        result = build(opts, progress=False)
        assert result.num_written == result.num_inputs, result.summary()
        out[split] = opts.out
    return out


@pytest.fixture(scope="session")
def two_process_run(built_shards: dict[str, Path], synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run2")
    config = tiny_config(root / "tiny.yaml", built_shards, synthetic_dir, root / "runs")
    launch("trainer/run.py", str(config), processes=2)
    return root / "runs" / "tiny"


@pytest.fixture(scope="session")
def served_shards(built_shards: dict[str, Path]) -> Iterator[str]:
    with serve("static", str(built_shards["train"].parent)) as url:
        yield url
