"""An expected evaluation set (``data.eval_ids``): the clip ids a result should be computed on.

AudioSet's eval set shrinks as videos vanish (20,371 segments listed; copies in circulation hold 17-18 k),
and a result moves with the clips a copy lacks. Given the list of ids, results are computed on the eval
records that match one (the intersection) and say how many of the listed clips were there.

The list is one id per line, or a CSV whose first column is the id: AudioSet's eval_segments.csv (``#``
comment lines, YTID first) is one. A record matches an id when its key is the id or starts with the id and
``_``: the shard builder keys an AudioSet segment ``{YTID}_{start}_{end}`` (dots removed) or by its bare
YTID, and real YTIDs are 11 characters, so the prefix rule cannot confuse two of them.
"""
from __future__ import annotations

import csv
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data.atomic import atomic_write
from trainer.data.records import RecordTable

HEADER_CELLS = {"ytid", "id", "key"}  # a first row starting with one of these names the columns


class EvalIdsError(ValueError):
    """An id list that selects no eval clip."""


def read_ids(path: str | Path) -> list[str]:
    """The ids of a list, in file order, each once: the first cell of each line that is not blank or a ``#``
    comment, less a header row."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a spreadsheet's byte-order mark
        rows = csv.reader((line for line in f if not line.lstrip().startswith("#")), skipinitialspace=True)
        cells = [row[0].strip() for row in rows if row and row[0].strip()]
    if cells and cells[0].lower() in HEADER_CELLS:
        cells = cells[1:]
    return list(dict.fromkeys(cells))


def listed_id(key: str, ids: Container[str]) -> str | None:
    """The id of ``ids`` that the record ``key`` belongs to: the key itself, or the longest id that the key
    starts with, followed by ``_``; None when there is none."""
    if key in ids:
        return key
    cut = key.rfind("_")
    while cut > 0:
        if key[:cut] in ids:
            return key[:cut]
        cut = key.rfind("_", 0, cut)
    return None


@dataclass(frozen=True)
class EvalSelection:
    """What selecting the eval records by an id list found."""

    file: str
    expected: int  # ids listed
    missing: list[str]  # listed ids no record matches, in file order
    not_listed: int  # eval records left out: their key matches no listed id

    @property
    def present(self) -> int:
        return self.expected - len(self.missing)

    def counts(self) -> dict[str, str | int]:
        return {"file": self.file, "expected": self.expected, "present": self.present, "missing": len(self.missing),
                "not_listed": self.not_listed}

    def __str__(self) -> str:
        return (f"{self.present} of the {self.expected} clips listed in {self.file} present, {len(self.missing)} "
                f"missing; {self.not_listed} eval clips not listed, left out")

    def write_missing(self, path: str | Path) -> None:
        """The missing ids, one per line."""
        with atomic_write(path) as f:
            f.writelines(f"{i}\n" for i in self.missing)


def select_listed(records: RecordTable, path: str | Path) -> tuple[RecordTable, EvalSelection]:
    """The records whose key matches an id listed in ``path``, and what was found; an :class:`EvalIdsError`
    when none does (the wrong list, or keys of another form)."""
    ids = read_ids(path)
    wanted = set(ids)
    found = [listed_id(records.key(i), wanted) for i in range(len(records))]
    keep = np.array([i is not None for i in found], dtype=bool)
    if not keep.any():
        example = f" (keys such as {records.key(0)!r})" if len(records) else ""
        raise EvalIdsError(f"data.eval_ids: none of the {len(ids)} ids in {path} matches one of the "
                           f"{len(records)} eval clips{example}")
    present = set(found)
    missing = [i for i in ids if i not in present]
    return records.take(keep), EvalSelection(str(path), len(ids), missing, int((~keep).sum()))
