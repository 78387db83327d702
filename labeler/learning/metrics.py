"""Evaluation metrics for classifiers: numpy in, plain numbers out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)


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


def one_vs_rest(y_true: np.ndarray, proba: np.ndarray) -> list[dict]:
    """Per class ``c``: ROC AUC and EER of the score ``P_ic`` for "``y_i == c``" against the rest.

    A class absent from ``y_true`` (or present everywhere) has neither: both are None.
    """
    y_true, proba = np.asarray(y_true, dtype=int), np.asarray(proba, dtype=np.float64)
    out: list[dict[str, float | None]] = []
    for c in range(proba.shape[1]):
        positive = (y_true == c).astype(int)
        if 0 < positive.sum() < len(positive):
            out.append({"roc_auc": float(roc_auc_score(positive, proba[:, c])), "eer": eer(positive, proba[:, c])})
        else:
            out.append({"roc_auc": None, "eer": None})
    return out


def evaluate(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and one-vs-rest ROC AUC/EER, confusion matrix.

    ``y_true`` holds class indices into ``classes``; ``proba`` is (N, C).
    ``log_loss`` (scikit-learn's) measures calibration.
    Macro-F1 is ``1/C' sum_c F1_c`` over the C' classes present in ``y_true``
    or predicted (a class nobody has would otherwise count as 0).
    For two classes, ``roc_auc`` and ``eer`` are those of ``classes[0]`` (its
    probability is the score), matching the order of the label config; for
    more, ``roc_auc_macro`` and ``eer_macro`` average the one-vs-rest values
    of the classes present.
    """
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0)
    ovr = one_vs_rest(y_true, proba) if len(y_true) else [{"roc_auc": None, "eer": None}] * len(classes)
    seen = sorted(set(y_true.tolist()) | set(pred.tolist()))
    out: dict = {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()) if len(y_true) else float("nan"),
        "macro_f1": float(np.mean(f1[seen])) if seen else float("nan"),
        "per_class": {c: {"precision": float(prec[i]), "recall": float(rec[i]),
                          "f1": float(f1[i]), "support": int(support[i]), **ovr[i]}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y_true, pred, labels=labels).tolist(),
    }
    if len(y_true):  # calibration: what the scores are worth as probabilities (the queue and the certificate use them)
        clipped = np.clip(proba, 1e-7, 1)
        out["log_loss"] = float(log_loss(y_true, clipped / clipped.sum(1, keepdims=True), labels=labels))
    if len(classes) == 2 and len(set(y_true.tolist())) == 2:
        positive = (y_true == 0).astype(int)
        out["roc_auc"] = float(roc_auc_score(positive, proba[:, 0]))
        out["eer"] = eer(positive, proba[:, 0])
    elif len(classes) > 2:
        aucs = [o["roc_auc"] for o in ovr if o["roc_auc"] is not None]
        eers = [o["eer"] for o in ovr if o["eer"] is not None]
        out["roc_auc_macro"] = float(np.mean(aucs)) if aucs else None
        out["eer_macro"] = float(np.mean(eers)) if eers else None
    return out


#: What ``labeler simulate`` tracks per round, and which way is better.
HIGHER_IS_BETTER = {"eer": False, "eer_macro": False, "accuracy": True, "macro_f1": True}


def default_metric(n_classes: int) -> str:
    """EER for two classes (the score of the first); macro-F1 for more (rare classes count as much)."""
    return "eer" if n_classes == 2 else "macro_f1"


def evaluate_multilabel(Y: np.ndarray, P: np.ndarray, classes: Sequence[str],
                        thresholds: np.ndarray | float = 0.5) -> dict:
    """Multi-label metrics: ``Y`` (N, C) 0/1 truth, ``P`` (N, C) independent probabilities.

    Prediction ``Ŷ_ic = [P_ic >= t_c]`` (``thresholds``: one number, one per class,
    or (N, C), one per item and class, as cross-fitted thresholds are). Subset accuracy is the share of items
    whose whole label set is right, ``mean_i [Ŷ_i = Y_i]``; Hamming loss the
    share of wrong (item, class) cells; per class precision, recall, F1 and
    one-vs-rest ROC AUC/EER of ``P_c``. Macro-F1 is the mean F1 over the classes
    present in ``Y`` or predicted (as :func:`evaluate`: a class nobody has and
    nothing predicts would count as 0); micro-F1 pools every (item, class) cell,
    ``2 TP / (2 TP + FP + FN)``. ``accuracy`` repeats the subset accuracy (what
    scikit-learn's ``accuracy_score`` gives for label sets), so the views written
    for single-label versions (admin page, learning curve) show it.
    """
    Y = np.asarray(Y, dtype=int).reshape(-1, len(classes))
    P = np.asarray(P, dtype=np.float64).reshape(-1, len(classes))
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), P.shape)
    pred = (P >= t).astype(int)
    tp, fp, fn = ((pred == 1) & (Y == 1)).sum(0), ((pred == 1) & (Y == 0)).sum(0), ((pred == 0) & (Y == 1)).sum(0)
    per_class = {}
    for c, name in enumerate(classes):
        prec = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 0.0
        rec = tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else 0.0
        both = 0 < Y[:, c].sum() < len(Y)
        per_class[name] = {"precision": float(prec), "recall": float(rec),
                           "f1": float(2 * prec * rec / (prec + rec)) if prec + rec else 0.0,
                           "support": int(Y[:, c].sum()), "threshold": float(t[:, c].mean()) if len(t) else None,
                           "roc_auc": float(roc_auc_score(Y[:, c], P[:, c])) if both else None,
                           "eer": eer(Y[:, c], P[:, c]) if both else None}
    seen = [name for c, name in enumerate(classes) if Y[:, c].any() or pred[:, c].any()]
    pooled = 2 * tp.sum() + fp.sum() + fn.sum()
    subset = float((pred == Y).all(1).mean()) if len(Y) else float("nan")
    return {"n": int(len(Y)), "subset_accuracy": subset, "accuracy": subset,
            "hamming_loss": float((pred != Y).mean()) if len(Y) else float("nan"),
            "macro_f1": float(np.mean([per_class[n]["f1"] for n in seen])) if seen else float("nan"),
            "micro_f1": float(2 * tp.sum() / pooled) if pooled else float("nan"),
            "per_class": per_class}
