"""Finding likely label errors from out-of-fold probabilities (confident learning).

Northcutt, Jiang and Chuang, "Confident Learning", JAIR 2021. With
out-of-fold probabilities ``P`` (N, C) and given labels ``y``:

    t_c  = mean_{i: y_i = c} P_ic                       (per-class threshold)
    j*_i = argmax_{j: P_ij >= t_j} P_ij                 (the confident class, if any)

Item ``i`` is flagged when ``j*_i`` exists and differs from ``y_i``; flagged
items are ranked by self-confidence ``P_{i, y_i}``, lowest (most suspicious)
first. The per-class thresholds adapt to classes the model is less sure of,
so one rare or hard class is not flagged wholesale.
"""

from __future__ import annotations

import numpy as np


def class_thresholds(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``t_c``: the mean probability of class c over the items labelled c (1.0 if none)."""
    P, y = np.asarray(P, dtype=np.float64), np.asarray(y, dtype=int)
    return np.array([P[y == c, c].mean() if (y == c).any() else 1.0 for c in range(P.shape[1])])


def find_label_issues(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of likely mislabelled items, most suspicious first."""
    P, y = np.asarray(P, dtype=np.float64), np.asarray(y, dtype=int)
    if len(y) == 0:
        return np.zeros(0, dtype=int)
    above = P >= class_thresholds(P, y)[None, :]
    confident = np.where(above, P, -1.0).argmax(axis=1)
    flagged = np.flatnonzero(above.any(axis=1) & (confident != y))
    self_conf = P[flagged, y[flagged]]
    return flagged[np.argsort(self_conf, kind="stable")]
