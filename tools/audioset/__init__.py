"""AudioSet metadata shipped with the project (Google, CC BY 4.0; see README.md here).

Read as package data, so it works from a clone and from a non-editable ``pip install`` alike:
the 527-class vocabulary (the default ``--labels`` of ``tools.build_shards``) and the label sets of the
balanced training and evaluation segment lists, in list order (what ``tools.make_synthetic`` samples).
"""
from __future__ import annotations

import gzip
from importlib import resources

from trainer.data.manifest import Vocabulary

VOCABULARY_FILE = "class_labels_indices.csv"
LABEL_SET_FILES = {"balanced_train": "balanced_train_label_sets.txt.gz", "eval": "eval_label_sets.txt.gz"}


def vocabulary() -> Vocabulary:
    """AudioSet's 527-class ``class_labels_indices.csv``."""
    with resources.as_file(resources.files(__name__) / VOCABULARY_FILE) as path:
        return Vocabulary.load(path)


def label_sets(split: str) -> list[list[str]]:
    """The positive labels (class mids) of every segment of ``balanced_train`` or ``eval``, in list order."""
    if split not in LABEL_SET_FILES:
        raise ValueError(f"unknown AudioSet split {split!r} (known: {', '.join(LABEL_SET_FILES)})")
    data = gzip.decompress((resources.files(__name__) / LABEL_SET_FILES[split]).read_bytes()).decode()
    return [line.split(",") for line in data.splitlines()]
