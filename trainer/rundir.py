"""A run directory's files, named once: what trainer/run.py writes there and where every reader (predict and the
tagger, PSL teachers, ensembles, export and its model card, the demo) finds it. Inside ``checkpoints/`` the
layout is trainer/checkpointing.py's."""
from __future__ import annotations

from pathlib import Path

from trainer.data.manifest import VOCABULARY

MARKER = ".audiotag-run"  # written when a run claims its directory: run.overwrite deletes only directories with it
LOCK = ".lock"  # flock'd by the run's main process while it runs; holds the holder's host, pid and start time
CHECKPOINTS, METRICS, MODELS = "checkpoints", "metrics.csv", "models"
RESULTS = (CHECKPOINTS, METRICS, MODELS)  # what makes a directory a run's


class RunDir:
    """The run directory at ``path`` (run.dir/run.name); each property is one of its files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config(self) -> Path:
        """The resolved config (dataset normalisation stats filled in): predict and PSL teachers rebuild the run's
        features from it."""
        return self.path / "config.yaml"

    @property
    def vocabulary(self) -> Path:
        return self.path / VOCABULARY

    @property
    def metrics(self) -> Path:
        """One row per epoch trained; evaluation cells empty for an epoch not evaluated."""
        return self.path / METRICS

    @property
    def steps(self) -> Path:
        """One row per micro-step: its loss (mean over the ranks) and learning rate."""
        return self.path / "steps.csv"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def corrupt_samples(self) -> Path:
        """The training samples skipped as corrupt (data.on_corrupt: skip), one JSON object a line."""
        return self.path / "corrupt_samples.jsonl"

    @property
    def missing_eval_ids(self) -> Path:
        """The ids of data.eval_ids that no eval record matches."""
        return self.path / "eval_missing_ids.txt"

    @property
    def marker(self) -> Path:
        return self.path / MARKER

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def models(self) -> Path:
        return self.path / MODELS

    def weights(self, name: str) -> Path:
        """``models/{name}.pt``: ``epoch_{N}``, ``best`` (the best single epoch's) or ``wa`` (weight-averaged)."""
        return self.models / f"{name}.pt"

    def epoch_weights(self, epoch: int) -> Path:
        return self.weights(f"epoch_{epoch}")

    def predictions(self, split: str, tag: str) -> Path:
        """``predictions/{split}_{tag}.npz``: ``epoch_{N}``, ``best``, ``wa``, ``ensemble``,
        ``best_chunk_{max|mean}``."""
        return self.path / "predictions" / f"{split}_{tag}.npz"

    def result(self, name: str) -> Path:
        """PSLA's result file of a final model (``best_single``, ``wa``, ``ensemble``, ``best_single_chunk_max``...)."""
        return self.path / f"{name}_result.csv"

    @property
    def per_class_ap(self) -> Path:
        return self.path / "best_single_per_class_ap.csv"
