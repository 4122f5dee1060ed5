import csv
import json

import numpy as np
import pytest
import torch

from trainer.averaging import average_state_dicts
from trainer.ensemble import main, mean_predictions
from trainer.metrics import tagging_metrics


def _sd(seed, steps):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=g), "bn.num_batches_tracked": torch.tensor(steps)}


def test_average_of_two_is_elementwise_mean(tmp_path):
    a, b = _sd(0, 10), _sd(1, 20)
    torch.save(a, tmp_path / "a.pt")
    avg = average_state_dicts([tmp_path / "a.pt", b])
    torch.testing.assert_close(avg["w"], (a["w"] + b["w"]) / 2)
    assert avg["bn.num_batches_tracked"].item() == 20
    assert avg["w"].dtype == torch.float32


def test_average_rejects_mismatched_keys():
    with pytest.raises(ValueError, match="extra"):
        average_state_dicts([_sd(0, 1), {**_sd(1, 1), "extra": torch.zeros(1)}])


def test_mean_predictions_aligns_by_key_and_names_missing():
    p1, p2 = np.array([[0.2], [0.4]]), np.array([[0.8], [0.6]])
    keys, probs = mean_predictions([(["a", "b"], p1), (["b", "a"], p2)])
    assert keys == ["a", "b"]
    np.testing.assert_allclose(probs, [[(0.2 + 0.6) / 2], [(0.4 + 0.8) / 2]])
    with pytest.raises(ValueError, match="'b'"):
        mean_predictions([(["a", "b"], p1), (["a", "c"], p2)])


def test_ensemble_cli_equals_manual_mean(tmp_path, capsys):
    rng = np.random.default_rng(0)
    keys = np.array([f"clip{i}" for i in range(30)])
    targets = (rng.random((30, 4)) < 0.4).astype(np.float32)
    targets[0] = 1  # every class has a positive
    probs = [rng.random((30, 4)).astype(np.float32) for _ in range(2)]
    order = rng.permutation(30)
    for i, (p, perm) in enumerate([(probs[0], np.arange(30)), (probs[1], order)]):
        (tmp_path / f"run{i}" / "predictions").mkdir(parents=True)
        np.savez(tmp_path / f"run{i}" / "predictions" / "eval_best.npz", probs=p[perm], targets=targets[perm], keys=keys[perm])
        (tmp_path / f"run{i}" / "class_labels_indices.csv").write_text(
            "index,mid,display_name\n" + "".join(f"{c},/m/{c},Name {c}\n" for c in range(4)))
    out = tmp_path / "ens"
    main([str(tmp_path / "run0"), str(tmp_path / "run1"), "--out", str(out)])
    expected = tagging_metrics((probs[0] + probs[1]) / 2, targets, [f"Name {c}" for c in range(4)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mAP"] == pytest.approx(expected["mAP"])
    assert summary["mAUC"] == pytest.approx(expected["mAUC"])
    assert summary["per_class_ap"] == pytest.approx(expected["per_class_ap"])
    rows = list(csv.DictReader(open(out / "ensemble_result.csv")))
    assert [r["model"] for r in rows][-1] == "ensemble" and len(rows) == 3
    assert "mAP" in capsys.readouterr().out
