"""Clip-level tagging metrics as PSLA reports them: mAP, mAUC and d' computed from mAUC."""
from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score


def d_prime(auc: float) -> float:
    """d' = √2·Φ⁻¹(AUC); PSLA applies it to the mean AUC. Infinite for AUC = 1."""
    return float(math.sqrt(2.0) * norm.ppf(auc))


def tagging_metrics(probs: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Macro mAP over classes with ≥1 positive, mAUC over classes with positives and negatives.

    Classes where a metric is undefined are skipped and counted (num_skipped_ap/auc); their entry
    in per_class_ap / per_class_auc (display name → value) is None. With no evaluable class at all
    the mean is NaN.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise ValueError(f"probs {probs.shape} and targets {targets.shape} must both be N × C")
    if probs.shape[1] != len(class_names):
        raise ValueError(f"{probs.shape[1]} classes in probs but {len(class_names)} class names")
    if len(set(class_names)) != len(class_names):
        raise ValueError("class names must be unique: per-class results are keyed by name")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be binary (0/1) labels")
    targets = targets.astype(bool)
    n = len(targets)
    positives = targets.sum(axis=0)
    per_class_ap: dict[str, float | None] = {}
    per_class_auc: dict[str, float | None] = {}
    aps, aucs = [], []
    for c, name in enumerate(class_names):
        ap = auc = None
        if positives[c] > 0:
            ap = float(average_precision_score(targets[:, c], probs[:, c]))
            aps.append(ap)
            if positives[c] < n:
                auc = float(roc_auc_score(targets[:, c], probs[:, c]))
                aucs.append(auc)
        per_class_ap[name], per_class_auc[name] = ap, auc
    m_ap = float(np.mean(aps)) if aps else math.nan
    m_auc = float(np.mean(aucs)) if aucs else math.nan
    return {
        "mAP": m_ap,
        "mAUC": m_auc,
        "dprime": d_prime(m_auc) if aucs else math.nan,
        "num_samples": n,
        "num_classes": len(class_names),
        "num_skipped_ap": len(class_names) - len(aps),
        "num_skipped_auc": len(class_names) - len(aucs),
        "per_class_ap": per_class_ap,
        "per_class_auc": per_class_auc,
    }


def keys_digest(keys: list[str]) -> str:
    """Order-independent fingerprint of the evaluated clips, so results on different sets can't be mixed up."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
