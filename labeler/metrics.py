"""Evaluation metrics for classifiers: numpy in, plain numbers out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve


def eer(y_true: np.ndarray, score: np.ndarray) -> float:
    """Equal error rate of a binary score (higher = positive).

    The ROC point where the false-positive rate equals the false-negative rate
    ``1 - TPR``; between two ROC points the crossing is interpolated linearly:
    with ``d_k = FPR_k - FNR_k`` changing sign between k-1 and k,
    ``EER = FPR_{k-1} + (FPR_k - FPR_{k-1}) * t`` where ``t = -d_{k-1} / (d_k - d_{k-1})``.
    """
    y_true = np.asarray(y_true).astype(int)
    if y_true.min() == y_true.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(y_true, np.asarray(score, dtype=np.float64))
    fnr = 1.0 - tpr
    d = fpr - fnr
    k = int(np.argmax(d >= 0))  # first point at or past the crossing
    if k == 0 or d[k] == 0:
        return float((fpr[k] + fnr[k]) / 2)
    t = -d[k - 1] / (d[k] - d[k - 1])
    return float(fpr[k - 1] + (fpr[k] - fpr[k - 1]) * t)


def evaluate(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, per-class precision/recall, confusion matrix; ROC AUC and EER for two classes.

    ``y_true`` holds class indices into ``classes``; ``proba`` is (N, C).
    For two classes the positive class is ``classes[0]`` (its probability is
    the score), matching the order of the label config.
    """
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0)
    out: dict = {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()) if len(y_true) else float("nan"),
        "per_class": {c: {"precision": float(prec[i]), "recall": float(rec[i]),
                          "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y_true, pred, labels=labels).tolist(),
    }
    if len(classes) == 2 and len(set(y_true.tolist())) == 2:
        positive = (y_true == 0).astype(int)
        out["roc_auc"] = float(roc_auc_score(positive, proba[:, 0]))
        out["eer"] = eer(positive, proba[:, 0])
    return out
