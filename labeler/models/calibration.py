"""Temperature scaling of zero-shot class scores (Guo et al., 2017).

With evidence ``s`` (N, C) and labels ``y``, the temperature minimises the
negative log-likelihood of the softmax:

    T* = argmin_T  -1/N sum_i log softmax(s_i / T)[y_i]

One parameter cannot change the ranking inside an image, only how peaked the
probabilities are, so "uncertain" comes to mean what it says.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar


def nll(scores: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``y`` under ``softmax(scores / T)``."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(scores: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """The NLL-minimising temperature, searched on log T within ``bounds``."""
    y = np.asarray(y, dtype=int)
    if len(y) == 0:
        return 1.0
    res = minimize_scalar(lambda lt: nll(scores, y, float(np.exp(lt))),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))


def fit_thresholds(P: np.ndarray, Y: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-class decision thresholds for multi-label probabilities, each maximising that class's F1.

    With the observed values of ``P_c`` sorted, ``v_1 < ... < v_m``, every
    threshold in ``(v_{k-1}, v_k]`` makes the same decisions, so F1 is computed
    per interval. Among the intervals of maximal F1, the one nearest 0.5 wins;
    the threshold is 0.5 when the interval holds it, else the interval's middle
    (the largest margin to both neighbouring items, not the edge that one
    training item happens to sit on). A class without both positives and
    negatives among the labels keeps ``default``.
    """
    P, Y = np.asarray(P, dtype=np.float64), np.asarray(Y, dtype=int)
    out = np.full(P.shape[1], default)
    for c in range(P.shape[1]):
        y, p = Y[:, c], P[:, c]
        if len(y) == 0 or y.min() == y.max():
            continue
        upper = np.unique(p)
        lower = np.r_[0.0, upper[:-1]]
        pred = p[None, :] >= upper[:, None]
        tp = (pred & (y == 1)).sum(1)
        f1 = 2 * tp / (pred.sum(1) + y.sum())
        best = np.flatnonzero(f1 == f1.max())
        inside = (lower[best] < 0.5) & (0.5 <= upper[best])
        if inside.any():
            out[c] = 0.5
            continue
        k = best[np.argmin(np.minimum(np.abs(lower[best] - 0.5), np.abs(upper[best] - 0.5)))]
        out[c] = float((lower[k] + upper[k]) / 2)
    return out
