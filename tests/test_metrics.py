import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from trainer.metrics import keys_digest, tagging_metrics


def _data(seed=0, n=50, c=6):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.float32)
    probs = np.clip(0.5 * targets + 0.7 * rng.random((n, c)), 0, 1)
    return probs, targets


def test_matches_sklearn_and_dprime():
    probs, targets = _data()
    names = [f"c{i}" for i in range(6)]
    m = tagging_metrics(probs, targets, names)
    ap = [average_precision_score(targets[:, c], probs[:, c]) for c in range(6)]
    auc = [roc_auc_score(targets[:, c], probs[:, c]) for c in range(6)]
    assert m["mAP"] == pytest.approx(np.mean(ap))
    assert m["mAUC"] == pytest.approx(np.mean(auc))
    assert m["dprime"] == pytest.approx(math.sqrt(2) * norm.ppf(np.mean(auc)))
    assert list(m["per_class_ap"]) == names
    assert list(m["per_class_ap"].values()) == pytest.approx(ap)
    assert (m["num_samples"], m["num_skipped_ap"], m["num_skipped_auc"]) == (50, 0, 0)


def test_classes_without_positives_or_negatives_are_skipped():
    probs, targets = _data()
    targets[:, 1] = 0  # no positives: no AP, no AUC
    targets[:, 4] = 1  # no negatives: AP defined, AUC not
    m = tagging_metrics(probs, targets, list("abcdef"))
    keep_ap, keep_auc = [0, 2, 3, 4, 5], [0, 2, 3, 5]
    assert m["mAP"] == pytest.approx(np.mean([average_precision_score(targets[:, c], probs[:, c]) for c in keep_ap]))
    assert m["mAUC"] == pytest.approx(np.mean([roc_auc_score(targets[:, c], probs[:, c]) for c in keep_auc]))
    assert (m["num_skipped_ap"], m["num_skipped_auc"]) == (1, 2)
    assert m["per_class_ap"]["b"] is None and m["per_class_auc"]["e"] is None


def test_rejects_soft_targets():
    probs, targets = _data()
    with pytest.raises(ValueError, match="binary"):
        tagging_metrics(probs, targets * 0.9, list("abcdef"))


def test_keys_digest_is_order_independent():
    assert keys_digest(["b", "a"]) == keys_digest(["a", "b"])
    assert keys_digest(["a", "b"]) != keys_digest(["a", "c"])
    assert len(keys_digest(["a"])) == 16
