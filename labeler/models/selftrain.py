"""Self-training: retrain on the labels plus the unlabelled images a model is sure of.

The teacher's confident predictions on the unlabelled pool become extra
training labels (pseudo-labels). They are capped per class at the rarest
class's count, most confident first, so that a teacher's bias towards one
class is not fed back to the student. Held-out evaluation labels are never
pseudo-labelled (they are labelled, not part of the pool), so the metrics
stay honest.

Cost stays bounded as the pool grows: at most ``MAX_PSEUDO`` pseudo-labels
join a fit, and in :class:`SelfTrained` the teacher trains with
``TEACHER_FRACTION`` of the usual steps and the student starts from the
teacher's weights (:meth:`Classifier.init_from`) instead of from scratch,
so a self-trained fit costs about one plain fit, not two.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.base import clone

from labeler.models.classifiers import Classifier, Sample
from labeler.models.classifiers.base import WrapsEstimator

MAX_PSEUDO = 2000        # pseudo-labels per fit, all classes together
TEACHER_FRACTION = 0.5   # the teacher only has to be sure of the easy images


def pseudo_labels(proba: np.ndarray, threshold: float,
                  limit: int | None = MAX_PSEUDO) -> tuple[np.ndarray, np.ndarray]:
    """Rows to pseudo-label and their labels.

    Row ``i`` qualifies when ``max_c p_ic >= threshold``; each class keeps at
    most ``min(min_c n_c, limit // C)`` of its qualifying rows (``n_c``: rows
    predicted ``c``, ``C`` classes), the most confident first. Returns
    (indices, labels), both empty when some class has no confident row.
    """
    proba = np.asarray(proba)
    if not len(proba):
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    pred, conf = proba.argmax(1), proba.max(1)
    per_class = [np.flatnonzero((pred == c) & (conf >= threshold)) for c in range(proba.shape[1])]
    cap = min(len(ix) for ix in per_class)
    if limit is not None:
        cap = min(cap, limit // proba.shape[1])
    if cap == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    take = np.concatenate([ix[np.argsort(-conf[ix], kind="stable")[:cap]] for ix in per_class])
    return take, pred[take]


def self_train(student: Classifier, samples: Sequence[Sample], y: np.ndarray, pool: Sequence[Sample],
               pool_proba: np.ndarray | None, threshold: float) -> dict:
    """Fit ``student`` on ``samples``/``y`` plus the confident part of ``pool``, pseudo-labelled from
    ``pool_proba`` (a teacher's probabilities on ``pool``). A student that learns the pool itself
    (:meth:`Classifier.learns_pool_itself`) gets the pool instead; where it could not use it after all
    (:func:`learnt_pool`), it goes on from that fit with the pseudo-labels, its own where ``pool_proba``
    is None (then it is its own teacher: ``teacher_warm_start`` in the result)."""
    own_teacher: dict = {}  # where it teaches itself
    if student.learns_pool_itself(y):
        if learnt_pool(student, samples, y, pool):
            return {**student.fit_info_, "self_train_threshold": None}
        if pool_proba is None:
            pool_proba = student.predict_proba(pool)
        own_teacher["teacher_warm_start"] = student.init_from(student)  # trained on the labels alone: go on from there
    if pool_proba is None:
        raise ValueError("self-training needs a teacher's probabilities on the pool")
    take, labels = pseudo_labels(pool_proba, threshold)
    student.fit(list(samples) + [pool[i] for i in take], np.concatenate([y, labels]).astype(int))
    return {**student.fit_info_, "pseudo_labels": int(len(take)), "self_train_threshold": threshold, **own_teacher}


def learnt_pool(student: Classifier, samples: Sequence[Sample], y: np.ndarray, pool: Sequence[Sample]) -> bool:
    """Fit a student that learns the pool itself; False where it could not after all (a CNN whose seeded
    k-means clusters did not follow the labels fine-tunes on the labels alone) and self-training must
    follow."""
    student.fit(samples, y, unlabelled=pool)
    return bool(student.fit_info_.get("probe_only", True))


class Pool(tuple):
    """The unlabelled images of a self-training run: read-only, so clones of a :class:`SelfTrained`
    share it (scikit-learn's ``clone`` deep-copies parameters: thousands of images per fold)."""

    def __deepcopy__(self, memo: dict) -> "Pool":
        return self


class Frozen:
    """A fitted model passed as a parameter: ``clone`` shares it instead of deep-copying its weights."""

    def __init__(self, model: Classifier) -> None:
        self.model = model

    def __deepcopy__(self, memo: dict) -> "Frozen":
        return self


class PoolTrained(WrapsEstimator):
    """A model that trains a clone of ``estimator`` (the student: what predicts and is saved) on the labels
    and an unlabelled ``pool``, optionally from a ``teacher`` (a :class:`Frozen` fitted model, e.g. the
    serving version, which must not have trained on the evaluation items). An estimator like any other,
    so cross-validation and hold-out evaluation measure the whole procedure on labels it never saw."""

    def __init__(self, estimator: Classifier, pool: Sequence[Sample], teacher: Frozen | None = None) -> None:
        self.estimator = estimator
        self.pool = pool if isinstance(pool, Pool) else Pool(pool)
        self.teacher = teacher

    @property  # the estimator's (Classifier declares a plain attribute)
    def kind(self) -> str:
        return self.estimator.kind

    @kind.setter
    def kind(self, value: str) -> None:
        raise AttributeError(f"a {type(self).__name__} model's kind is its estimator's (set it there)")

    def predict_proba(self, X: Sequence[Sample]) -> np.ndarray:
        return self.student_.predict_proba(X)

    def _save(self, folder: Path) -> None:
        self.student_._save(folder)  # saved as the student's kind: loads without this wrapper

    @classmethod
    def _load(cls, folder: Path, classes: list[str]) -> "Classifier":
        raise TypeError("a model trained with a pool is saved as its student's kind")


class SelfTrained(PoolTrained):
    """Self-training inside ``fit``: a teacher pseudo-labels ``pool`` (rows at least ``threshold`` sure),
    then the student trains on the labels and the pseudo-labels.

    The teacher is a clone of ``estimator`` fitted on the labels with ``teacher_fraction`` of the
    usual steps, or the given ``teacher``: then no teacher is fitted at all. The student starts from
    the teacher's weights where its kind can.
    """

    def __init__(self, estimator: Classifier, pool: Sequence[Sample], threshold: float,
                 teacher_fraction: float = TEACHER_FRACTION, teacher: Frozen | None = None) -> None:
        super().__init__(estimator, pool, teacher)
        self.threshold = threshold
        self.teacher_fraction = teacher_fraction

    def _fit(self, samples: list[Sample], y: np.ndarray) -> dict:
        self.student_ = clone(self.estimator)
        if self.teacher is None and self.student_.learns_pool_itself(y):  # no teacher to fit: it may learn the pool
            info = self_train(self.student_, samples, y, self.pool, None, self.threshold)
            return {**info, "teacher": None if info["self_train_threshold"] is None else "fitted"}
        if self.teacher is not None:
            teacher = self.teacher.model
        else:
            teacher = clone(self.estimator)
            teacher.step_fraction = self.teacher_fraction
            teacher.fit(samples, y)
        warm = self.student_.init_from(teacher)
        info = self_train(self.student_, samples, y, self.pool, teacher.predict_proba(self.pool), self.threshold)
        return {**info, "teacher_warm_start": warm, "teacher": "given" if self.teacher is not None else "fitted"}


class ConsistencyTrained(PoolTrained):
    """The pool used by consistency training instead (FixMatch, :func:`~labeler.models.classifiers.cnn.fixmatch_loss`):
    one fit of a clone of ``estimator`` (a CNN with ``consistency > 0``) on the labels, with ``pool``
    as its unlabelled images. No teacher is fitted; a given ``teacher`` (the serving version) only
    lends its weights as the starting point, as in :class:`SelfTrained`."""

    def _fit(self, samples: list[Sample], y: np.ndarray) -> dict:
        self.student_ = clone(self.estimator)
        warm = self.teacher is not None and self.student_.init_from(self.teacher.model)
        self.student_.fit(samples, y, unlabelled=list(self.pool))  # a CNN with consistency > 0
        return {**self.student_.fit_info_, "teacher_warm_start": warm,
                "teacher": "given" if self.teacher is not None else None}
