"""metrics.csv: every row has the first row's columns, a cell left empty where an epoch has no value."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer import results


def test_metrics_rows_keep_their_columns_with_empty_evaluation_cells(tmp_path: Path):
    path = tmp_path / "metrics.csv"
    for epoch, score in ((1, None), (2, 0.25), (3, None), (4, 0.5)):
        results.append_row(path, {"epoch": epoch, "train_loss": 0.1, "valid_mAP": score, "eval_mAP": score})
    with open(path) as f:
        assert f.read().splitlines() == ["epoch,train_loss,valid_mAP,eval_mAP", "1,0.1,,", "2,0.1,0.25,0.25",
                                         "3,0.1,,", "4,0.1,0.5,0.5"]
    rows = results.read_rows(path)
    assert results.evaluated(rows, "valid_mAP") == {2: 0.25, 4: 0.5}
    results.plot_curves(path, tmp_path / "curves.png")  # the first row not evaluated: curves of the others
    assert (tmp_path / "curves.png").stat().st_size > 0
    results.truncate_rows(path, 3)  # a resume from epoch 3's checkpoint
    assert results.evaluated(results.read_rows(path), "valid_mAP") == {2: 0.25}
    assert path.read_text().splitlines()[-1] == "3,0.1,,"
    with pytest.raises(ValueError, match="not in fieldnames"):  # a column the header lacks: never misaligned
        results.append_row(path, {"epoch": 4, "train_loss": 0.1, "valid_mAP": 0.5, "eval_mAP": 0.5, "extra": 1})
