"""AudioSet metadata shipped with the project (Google, CC BY 4.0; see README.md here).

Read as package data, so it works from a clone and from a non-editable ``pip install`` alike:
the 527-class vocabulary (the default ``--labels`` of ``tools.build_shards``), the label sets of the
balanced training and evaluation segment lists, in list order (what ``tools.make_synthetic`` samples),
and the ontology (the class graph ``tools.enhance_labels`` completes labels along).
"""
from __future__ import annotations

import gzip
import json
from importlib import resources

from trainer.data.manifest import Vocabulary

VOCABULARY_FILE = "class_labels_indices.csv"
LABEL_SET_FILES = {"balanced_train": "balanced_train_label_sets.txt.gz", "eval": "eval_label_sets.txt.gz"}
ONTOLOGY_FILE = "ontology.json.gz"


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


class Ontology:
    """AudioSet's class graph (632 classes, 38 of them with more than one parent), from ``ontology.json``
    entries (``id``, ``name``, ``child_ids``, ``restrictions``, ...)."""

    def __init__(self, entries: list[dict]) -> None:
        self.entries = {e["id"]: e for e in entries}
        self.children: dict[str, list[str]] = {e["id"]: list(e["child_ids"]) for e in entries}
        self.parents: dict[str, list[str]] = {mid: [] for mid in self.entries}
        for e in entries:
            for child in e["child_ids"]:
                if child not in self.entries:
                    raise ValueError(f"ontology: {e['id']} lists child {child}, which has no entry")
                self.parents[child].append(e["id"])

    def __contains__(self, mid: str) -> bool:
        return mid in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def name(self, mid: str) -> str:
        return self.entries[mid]["name"]

    def ancestors(self, mid: str) -> set[str]:
        """Every class above ``mid`` along any path (abstract classes such as "Music genre" included)."""
        return self._closure(mid, self.parents)

    def descendants(self, mid: str) -> set[str]:
        """Every class below ``mid``."""
        return self._closure(mid, self.children)

    @staticmethod
    def _closure(mid: str, edges: dict[str, list[str]]) -> set[str]:
        if mid not in edges:
            raise KeyError(f"{mid} is not in the AudioSet ontology")
        found: set[str] = set()
        todo = list(edges[mid])
        while todo:
            m = todo.pop()
            if m not in found:
                found.add(m)
                todo.extend(edges[m])
        return found


def ontology() -> Ontology:
    """AudioSet's ``ontology.json``, unchanged."""
    return Ontology(json.loads(gzip.decompress((resources.files(__name__) / ONTOLOGY_FILE).read_bytes())))
