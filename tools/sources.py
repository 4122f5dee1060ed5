"""Turn a builder SOURCE (AudioSet segments CSV, PSLA JSON datafile or PSL TSV) into input items.

Every input line becomes exactly one :class:`Item`; an item that cannot be written carries its
``reject`` reason, so counts of written plus rejected always add up to the number of inputs.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tools.audio_io import AUDIO_EXTENSIONS
from trainer.data.manifest import Vocabulary

# Reject reasons, as they appear in rejects.jsonl and the summary line.
MISSING_FILE = "missing file"
UNREADABLE = "unreadable audio"
TOO_SHORT = "too short"
TOO_LONG = "too long"
LOW_RATE = "sample rate too low"
UNKNOWN_LABEL = "unknown label"
NO_LABELS = "no labels"
DUPLICATE_KEY = "duplicate key"


@dataclass(frozen=True)
class Item:
    key: str  # webdataset key: no dots, no whitespace (make_key)
    path: str | None  # audio file; None when it could not be found
    source: str  # the input as the user knows it: a path relative to the source's base dir, or a YTID
    labels: tuple[int, ...] = ()
    mids: tuple[str, ...] = ()
    reject: str | None = None
    detail: str = ""


def make_key(stem: str) -> str:
    """The stem with its dots removed (webdataset splits a member name at its first dot) and each whitespace
    character replaced by ``_`` (a DALI ``.idx`` line is split at whitespace): ``my clip.1.wav`` -> ``my_clip1``."""
    return re.sub(r"\s", "_", stem.replace(".", ""))


def index_audio_dir(audio_dir: Path) -> dict[str, str]:
    """Map every audio file stem under ``audio_dir`` to its path, walking the tree once.

    Sorted traversal makes the choice deterministic when a stem exists with several extensions.
    """
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"--audio-dir {audio_dir}: not a directory")
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(audio_dir):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in AUDIO_EXTENSIONS:
                found.setdefault(stem, os.path.join(root, name))
    return found


def _resolve_labels(mids: list[str], vocab: Vocabulary, key: str, path: str | None, source: str) -> Item:
    mids = [m for m in (m.strip() for m in mids) if m]
    if not mids:
        return Item(key, path, source, reject=NO_LABELS)
    unknown = [m for m in mids if m not in vocab.index]
    if unknown:
        return Item(key, path, source, reject=UNKNOWN_LABEL, detail=",".join(unknown))
    labels = tuple(sorted({vocab.index[m] for m in mids}))
    return Item(key, path, source, labels=labels, mids=tuple(vocab.mids[i] for i in labels))


def read_audioset_csv(csv_path: Path, audio_dir: Path, vocab: Vocabulary) -> list[Item]:
    """Official (``#`` comments, ``", "`` separators) or single-header-row AudioSet segments CSV."""
    files = index_audio_dir(audio_dir)
    items = []
    with open(csv_path, newline="") as f:
        rows = csv.reader((line for line in f if not line.startswith("#")), skipinitialspace=True)
        for lineno, row in enumerate(rows, 1):
            if not row or (lineno == 1 and row[0] == "YTID"):
                continue
            if len(row) < 4:
                raise ValueError(f"{csv_path}: row {row!r} has {len(row)} fields, expected YTID,start,end,labels")
            ytid, start, end, labels = row[0], row[1], row[2], row[3]
            try:
                span = f"{float(start):.3f}_{float(end):.3f}"
            except ValueError:
                raise ValueError(f"{csv_path}: row {row!r}: start/end are not numbers") from None
            key, path = make_key(f"{ytid}_{span}"), None
            # Name forms in use: PSL's {YTID}_{start}_{end}, PANNs' Y{YTID}, plain {YTID}.
            for stem, stem_key in ((f"{ytid}_{start}_{end}", None), (f"{ytid}_{span}", None),
                                   (f"Y{ytid}", make_key(ytid)), (ytid, None)):
                if stem in files:
                    path, key = files[stem], stem_key or make_key(stem)
                    break
            source = os.path.relpath(path, audio_dir) if path else ytid
            item = _resolve_labels(labels.split(","), vocab, key, path, source)
            if path is None and item.reject is None:
                item = Item(key, None, source, reject=MISSING_FILE, detail=f"no audio for {ytid} in {audio_dir}")
            items.append(item)
    return items


def _file_item(path_text: str, base: Path, mids: list[str] | None, labels: list[str] | None,
               vocab: Vocabulary) -> Item:
    path = Path(path_text) if os.path.isabs(path_text) else base / path_text
    key = make_key(Path(path_text).stem)
    source = path_text
    if mids is None:  # PSL TSV: class indices
        try:
            idx = [int(x) for x in labels if x.strip()]
        except ValueError:
            return Item(key, str(path), source, reject=UNKNOWN_LABEL, detail=";".join(labels))
        bad = [i for i in idx if not 0 <= i < len(vocab)]
        if bad:
            return Item(key, str(path), source, reject=UNKNOWN_LABEL, detail=",".join(map(str, bad)))
        mids = [vocab.mids[i] for i in idx]
    item = _resolve_labels(mids, vocab, key, str(path), source)
    if item.reject is None and not path.is_file():
        return Item(key, None, source, reject=MISSING_FILE, detail=str(path))
    return item


def read_psla_json(json_path: Path, vocab: Vocabulary) -> list[Item]:
    """PSLA datafile ``{"data": [{"wav": path, "labels": "/m/..,/m/.."}]}``; relative to the JSON's dir."""
    with open(json_path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{json_path}: expected a PSLA datafile {{\"data\": [{{\"wav\": ..., \"labels\": ...}}]}}")
    items = []
    for i, entry in enumerate(data["data"]):
        if not isinstance(entry, dict) or "wav" not in entry:
            raise ValueError(f"{json_path}: data[{i}] has no 'wav' field")
        items.append(_file_item(str(entry["wav"]), json_path.parent, str(entry.get("labels", "")).split(","),
                                None, vocab))
    return items


def read_psl_tsv(tsv_path: Path, vocab: Vocabulary, audio_dir: Path | None = None) -> list[Item]:
    """PSL TSV: a header row, then ``filename<TAB>labels`` with ``;``-separated class indices."""
    base = audio_dir or tsv_path.parent
    items = []
    with open(tsv_path, newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        header = next(rows, None)
        if header is None:
            return []
        for row in rows:
            if not row:
                continue
            if len(row) < 2:
                raise ValueError(f"{tsv_path}: row {row!r}: expected filename<TAB>labels")
            items.append(_file_item(row[0], base, None, row[1].split(";"), vocab))
    return items


def read_source(source: Path, vocab: Vocabulary, audio_dir: Path | None = None) -> list[Item]:
    """Dispatch on the file type: ``.csv`` AudioSet segments, ``.json`` PSLA, ``.tsv`` PSL."""
    if not source.is_file():
        raise FileNotFoundError(f"SOURCE {source}: no such file")
    suffix = source.suffix.lower()
    if suffix == ".csv":
        if audio_dir is None:
            raise ValueError(f"{source}: an AudioSet segments CSV needs --audio-dir")
        return read_audioset_csv(source, audio_dir, vocab)
    if suffix == ".json":
        return read_psla_json(source, vocab)
    if suffix == ".tsv":
        return read_psl_tsv(source, vocab, audio_dir)
    raise ValueError(f"SOURCE {source}: expected a .csv (AudioSet segments), .json (PSLA) or .tsv (PSL) file")


def mark_duplicates(items: list[Item]) -> list[Item]:
    """The first item with a key wins; later ones (the same stem elsewhere, or names that :func:`make_key` makes
    equal) are rejected rather than overwriting it."""
    seen: dict[str, str] = {}  # key -> source of the item that has it
    out = []
    for it in items:
        if it.reject is None and it.key in seen:
            it = Item(it.key, it.path, it.source, it.labels, it.mids, DUPLICATE_KEY,
                      f"key {it.key} is already that of {seen[it.key]}")
        elif it.reject is None:
            seen[it.key] = it.source
        out.append(it)
    return out
