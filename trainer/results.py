"""Run outputs: per-epoch metrics CSV and plot, PSLA-style result files and ``summary.json``."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

from trainer.data.atomic import atomic_write
from trainer.data.eval_ids import EvalSelection

matplotlib.use("Agg")  # runs are headless
import matplotlib.pyplot as plt  # noqa: E402

RESULT_FIELDS = ["mAP", "mAUC", "dprime", "num_samples", "num_skipped_ap", "keys_digest"]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` under the file's header (the first row's keys); a None value is an empty cell, a key
    the header lacks is an error (every row has the first row's columns)."""
    new = not path.exists() or path.stat().st_size == 0
    if new:
        fields = list(row)
    else:
        with open(path, newline="") as f:
            fields = next(csv.reader(f))
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(row)


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def evaluated(rows: list[dict[str, str]], column: str) -> dict[int, float]:
    """Epoch → ``column`` of the metrics.csv rows that have it: the evaluated epochs (the others' cells are
    empty)."""
    return {int(r["epoch"]): float(r[column]) for r in rows if r.get(column)}


def optimizer_steps(steps_csv: Path, accumulation: int) -> int:
    """Optimizer steps of a run from its steps.csv (one row per micro-step): each epoch's steps over the
    gradient accumulation, rounded up as the schedule counts them."""
    last: dict[str, int] = {}
    for r in read_rows(steps_csv):
        last[r["epoch"]] = max(last.get(r["epoch"], 0), int(r["step"]))
    return sum(math.ceil(n / accumulation) for n in last.values())


def truncate_rows(path: Path, keep: int) -> None:
    """Drop rows past the first ``keep`` (a resumed run rewrites what came after its checkpoint, a row torn by
    a crash included): the kept rows are written aside and renamed over the file, so a kill or a power loss
    leaves the old file or the new one."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    if len(lines) - 1 > keep:
        with atomic_write(path, newline="", fsync=True) as f:
            csv.writer(f).writerows(lines[:keep + 1])


def write_result(path: Path, metrics: dict[str, Any], eval_ids: EvalSelection | None = None) -> None:
    """PSLA's result file; with an expected eval set (data.eval_ids) also how many of its clips were expected
    and present (num_samples: how many the metrics were computed on)."""
    row = scalar_metrics(metrics)
    if eval_ids is not None:
        row.update(eval_ids_expected=eval_ids.expected, eval_ids_present=eval_ids.present)
    with atomic_write(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(row)
        w.writerow(row.values())


def write_per_class(path: Path, metrics: dict[str, Any]) -> None:
    with atomic_write(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "AP"])
        for name, ap in metrics["per_class_ap"].items():
            w.writerow([name, "" if ap is None else f"{ap:.6f}"])


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in RESULT_FIELDS}


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(summary, indent=2) + "\n")


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    rows = read_rows(metrics_csv)
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    for split in ("valid", "eval"):
        scores = evaluated(rows, f"{split}_mAP")
        if scores:
            ax_map.plot(list(scores), list(scores.values()), marker="o", label=split)
    ax_map.set(xlabel="epoch", ylabel="mAP", title="mAP")
    ax_map.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
