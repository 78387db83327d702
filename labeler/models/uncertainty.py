"""Uncertainty measures for active learning: numpy in, numpy out.

Each takes class probabilities ``P`` of shape (N, C) (rows sum to 1) and
returns an uncertainty per row in [0, 1], higher = less certain. :func:`confidence` turns any of them into the score
that Label Studio sorts ascending ("least confident first").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def least_confidence(P: np.ndarray) -> np.ndarray:
    """``u = 1 - max_c P_c``: one minus the top probability (range [0, 1 - 1/C])."""
    return 1.0 - np.asarray(P, dtype=np.float64).max(axis=1)


def margin(P: np.ndarray) -> np.ndarray:
    """``u = 1 - (P_(1) - P_(2))``: one minus the gap between the two most probable classes."""
    P = np.asarray(P, dtype=np.float64)
    top2 = np.sort(P, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(P: np.ndarray) -> np.ndarray:
    """``u = -sum_c P_c log P_c / log C``: Shannon entropy normalised to [0, 1]."""
    P = np.clip(np.asarray(P, dtype=np.float64), 1e-12, 1.0)
    return -(P * np.log(P)).sum(axis=1) / np.log(P.shape[1])


MEASURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
}


def uncertainty(P: np.ndarray, measure: str = "least_confidence") -> np.ndarray:
    """Apply the measure named ``measure`` (one of :data:`MEASURES`)."""
    try:
        return MEASURES[measure](P)
    except KeyError:
        raise ValueError(f"unknown uncertainty measure {measure!r}; choose from {sorted(MEASURES)}") from None


def confidence(P: np.ndarray, measure: str = "least_confidence") -> np.ndarray:
    """``1 - uncertainty``: ascending order is most uncertain first.

    For least confidence this is the probability of the chosen class.
    """
    return 1.0 - uncertainty(P, measure)


def rank(P: np.ndarray, measure: str = "least_confidence") -> np.ndarray:
    """Indices of rows, most uncertain first (stable for ties)."""
    return np.argsort(-uncertainty(P, measure), kind="stable")


def multilabel_uncertainty(P: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
    """Uncertainty of multi-label predictions (independent per-class probabilities ``P``, (N, C)).

    Class ``c`` is predicted when ``P_c >= t_c``; its margin is how far ``P_c``
    sits from the threshold, relative to the room on that side:
    ``m_c = |P_c - t_c| / (1 - t_c)`` above and ``/ t_c`` below, in [0, 1].
    A task is as uncertain as its least decided class: ``u = 1 - min_c m_c``.
    """
    P = np.asarray(P, dtype=np.float64)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), P.shape[1:])
    room = np.where(P >= t, 1.0 - t, t)
    m = np.abs(P - t) / np.clip(room, 1e-12, None)
    return 1.0 - np.clip(m, 0.0, 1.0).min(axis=1)


def centred(P: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
    """Per-class probabilities (one row (C,) or rows (N, C)) rescaled so that each class's threshold sits at 0.5.

    ``q_c = 0.5 + 0.5 (P_c - t_c) / (1 - t_c)`` above the threshold and
    ``q_c = 0.5 P_c / t_c`` below: monotone per class, ``q_c >= 0.5`` exactly
    when ``P_c >= t_c``, and ``multilabel_uncertainty(q, 0.5) ==
    multilabel_uncertainty(P, t)``. Rows scored under different thresholds
    (model versions) can then be ranked together, as the labelling queue does.
    """
    P = np.asarray(P, dtype=np.float64)
    t = np.clip(np.broadcast_to(np.asarray(thresholds, dtype=np.float64), P.shape), 1e-12, 1 - 1e-12)
    return np.where(P >= t, 0.5 + 0.5 * (P - t) / (1.0 - t), 0.5 * P / t)
