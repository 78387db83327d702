"""What single-choice training (:mod:`labeler.learning.training`) and multi-label training
(:mod:`labeler.learning.multilabel`) share: the split into training and evaluation labels, and the
rule that promotes a new version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HOLDOUT_MIN = 50


def is_holdout(task_id: int, fraction: int = 5) -> bool:
    """Stable held-out membership: one task in ``fraction`` by a hash of its id."""
    return int(hashlib.sha1(str(task_id).encode()).hexdigest(), 16) % fraction == 0


@dataclass
class Split:
    """Which labels train the new version and which evaluate it (indices into the labelled set)."""

    train: np.ndarray
    evaluate: np.ndarray
    method: str   # "holdout" or "<k>-fold cross-validation"
    folds: int = 0


def choose_split(task_ids: Sequence[int], y: np.ndarray, n_classes: int) -> Split:
    """The stable hash hold-out when it has ``HOLDOUT_MIN`` items and leaves every class to train on,
    else k-fold cross-validation over all labels (k = 5, or the rarest class's count)."""
    hold = np.array([is_holdout(t) for t in task_ids], dtype=bool)
    if hold.sum() >= HOLDOUT_MIN and len(set(y[~hold])) == n_classes:
        return Split(np.flatnonzero(~hold), np.flatnonzero(hold), "holdout")
    folds = int(min(5, np.bincount(y, minlength=n_classes).min()))
    every = np.arange(len(y))
    return Split(every, every, f"{folds}-fold cross-validation", folds)


def unseen_by(serving_meta: dict | None, task_ids: Sequence[int], split: Split) -> np.ndarray:
    """Evaluation items (indices) the serving version never trained on.

    The hold-out is never trained on by any version. Under cross-validation,
    versions record the tasks they trained on; items labelled since then are
    unseen by the serving version. An older version without that record is
    evaluated on every item (which favours it: promotion stays conservative).
    """
    if split.method == "holdout" or not serving_meta or not serving_meta.get("trained_tasks"):
        return split.evaluate
    seen = set(serving_meta["trained_tasks"])
    fresh = np.array([i for i in split.evaluate if task_ids[i] not in seen], dtype=int)
    return fresh if len(fresh) else split.evaluate


METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


def decide_promotion(new_value: float, baseline: dict) -> tuple[bool, str]:
    """Promote when the new version is not worse than ``baseline`` on the same items, by the
    baseline's ``metric`` (higher is better): accuracy for single-choice projects, macro-F1 for
    multi-label ones (:mod:`labeler.learning.multilabel`).

    ``baseline``: ``{"name", "metric", "value", "new_value"?, "n"}`` where ``new_value``
    (if given) is the new version's value on exactly the baseline's items.
    """
    ours = baseline.get("new_value", new_value)
    promoted = ours >= baseline["value"]
    sign = ">=" if promoted else "<"
    metric = METRIC_NAMES.get(baseline["metric"], baseline["metric"])
    return promoted, (f"{metric} on {baseline['n']} labels unseen by both {ours:.4f} {sign} "
                      f"{baseline['value']:.4f} of {baseline['name']} on the same items")
