"""The interface every trained classifier implements (a scikit-learn estimator), and how to load one."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin


@dataclass
class Sample:
    """One image as the classifiers see it.

    ``features`` is the BLIP-2 pooled image embedding (None without a zero-shot
    model); ``zeroshot`` the zero-shot class evidence ``s_ic`` (or None).
    """

    image: Image.Image
    features: np.ndarray | None = None
    zeroshot: np.ndarray | None = None


class Classifier(ClassifierMixin, BaseEstimator, ABC):
    """A scikit-learn classifier over :class:`Sample` sequences.

    ``classes`` names the classes in column order; ``y`` holds class indices
    into it, so ``classes_`` is ``arange(len(classes))`` and every class has a
    column of :meth:`predict_proba` even when a training fold lacks it.
    ``fit`` returns ``self`` and keeps what it measured (time, steps, ...) in
    ``fit_info_``; ``clone``, ``cross_val_predict`` and ``get_params`` work as
    for any scikit-learn estimator. Subclasses implement ``_fit`` and
    ``predict_proba`` and store their ``__init__`` arguments unchanged.
    """

    kind: str = ""
    needs_features: bool = False
    # Share of the usual training effort (optimiser steps) a fit spends; iterative kinds honour it
    # (a self-training teacher that only pseudo-labels needs less than the model that is served).
    step_fraction: float = 1.0

    def __init__(self, classes: Sequence[str], seed: int = 0) -> None:
        self.classes = classes
        self.seed = seed

    def fit(self, X: Sequence[Sample], y: np.ndarray, unlabelled: Sequence[Sample] | None = None) -> "Classifier":
        """Train on samples ``X`` with class indices ``y``; returns ``self``. ``unlabelled``: images of the
        same task without labels, for the kinds that learn from them (the CNN); the others ignore them."""
        self.classes_ = np.arange(len(self.classes))
        self.fit_info_ = self._fit(list(X), np.asarray(y, dtype=int)) or {}
        return self

    @abstractmethod
    def _fit(self, samples: list[Sample], y: np.ndarray) -> dict:
        """Train; returns what the fit measured (time, epochs, ...)."""

    def learns_pool_itself(self, y: np.ndarray) -> bool:
        """Whether the next :meth:`fit` on labels ``y`` learns more from the unlabelled images passed to it
        than from a teacher's pseudo-labels (then self-training gives it the pool instead). By default not."""
        return False

    def init_from(self, previous: "Classifier") -> bool:
        """Begin the next :meth:`fit` from ``previous``'s parameters where this kind can (same kind
        and classes), so it needs fewer steps; returns whether it will. By default it cannot."""
        return False

    @abstractmethod
    def predict_proba(self, X: Sequence[Sample]) -> np.ndarray:
        """(N, C) class probabilities, columns in ``classes`` order."""

    def predict(self, X: Sequence[Sample]) -> np.ndarray:
        """Class indices of the most probable class."""
        return self.predict_proba(X).argmax(1)

    @abstractmethod
    def _save(self, folder: Path) -> None: ...

    @classmethod
    @abstractmethod
    def _load(cls, folder: Path, classes: list[str]) -> "Classifier": ...

    def save(self, folder: str | Path) -> dict:
        """Write the model into ``folder`` (self-contained); returns the meta to store beside it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save(folder)
        meta = {"kind": self.kind, "classes": list(self.classes)}
        (folder / "classifier.json").write_text(json.dumps(meta))
        return meta


class WrapsEstimator(Classifier):
    """A classifier built around another, ``self.estimator`` (self-training, an ensemble): its
    ``classes`` and ``needs_features`` are the estimator's. The setters exist because
    :class:`Classifier` declares these as plain attributes; set them on the estimator instead."""

    estimator: Classifier

    @property  # Classifier declares a plain attribute
    def classes(self) -> Sequence[str]:
        return self.estimator.classes

    @classes.setter
    def classes(self, value: Sequence[str]) -> None:
        raise AttributeError(f"a {type(self).__name__}'s classes are its estimator's (set them there)")

    @property
    def needs_features(self) -> bool:
        return self.estimator.needs_features

    @needs_features.setter
    def needs_features(self, value: bool) -> None:
        raise AttributeError(f"a {type(self).__name__}'s needs_features is its estimator's (set it there)")


def load_classifier(folder: str | Path) -> Classifier:
    """Load whatever classifier ``folder`` holds (a registry version or an exported model)."""
    from labeler.models.classifiers import ALL_KINDS

    folder = Path(folder)
    info = json.loads((folder / "classifier.json").read_text())
    model = ALL_KINDS[info["kind"]]._load(folder, info["classes"])
    model.classes_ = np.arange(len(info["classes"]))
    return model


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class weights ``w_c = N / (C * n_c)`` (scikit-learn's "balanced")."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return len(y) / (n_classes * np.maximum(counts, 1))


def stack_rows(rows: Sequence[np.ndarray | None]) -> np.ndarray:
    """Stack per-sample arrays (features, zero-shot evidence) that every sample has by now;
    a missing one is a bug upstream, said plainly."""
    arrays = [r for r in rows if r is not None]
    if len(arrays) != len(rows):
        raise ValueError("a sample lacks its features or zero-shot evidence")
    return np.stack(arrays)
