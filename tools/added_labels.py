"""``enhancement.csv`` of a dataset made by tools.enhance_labels: the labels its manifest gives beyond those in
the shards it links to, one :class:`AddedLabel` a row, with the reason for each."""
from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from trainer.data.atomic import atomic_write


@dataclass(frozen=True)
class AddedLabel:
    """One row of ``enhancement.csv``: a label the manifest gives ``key`` that its shard's ``.json`` lacks."""

    key: str
    index: int  # class index into the dataset's vocabulary
    mid: str
    display_name: str
    reason: str  # "ontology" (an ancestor of a label) or "model" (a trained run's score at or above the threshold)
    score: float | None = None  # model rows: the run's clip probability for the class
    threshold: float | None = None  # model rows: the class's threshold

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def write_added_labels(path: Path, rows: Iterable[AddedLabel]) -> None:
    with atomic_write(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(AddedLabel.fields())
        for r in rows:
            w.writerow(["" if v is None else v for v in dataclasses.astuple(r)])


def read_added_labels(path: Path) -> list[AddedLabel]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != AddedLabel.fields():
            raise ValueError(f"{path}: expected columns {','.join(AddedLabel.fields())}")
        rows = []
        for lineno, d in enumerate(reader, 2):
            try:
                rows.append(AddedLabel(d["key"], int(d["index"]), d["mid"], d["display_name"], d["reason"],
                                       float(d["score"]) if d["score"] else None,
                                       float(d["threshold"]) if d["threshold"] else None))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
    return rows
