"""A logistic-regression head on BLIP-2 image embeddings (plus the zero-shot evidence)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .base import Classifier, Sample


class EmbeddingHead(Classifier):
    """Standardised ``[pooled embedding, zero-shot class scores]`` -> logistic regression.

    Fits in well under a second for tens of thousands of labels (the vision
    tower ran when the images were first scored; its output is cached).
    Class imbalance: ``class_weight="balanced"``.
    """

    kind = "head"
    needs_features = True

    def __init__(self, classes: Sequence[str], seed: int = 0, C: float = 0.5) -> None:
        super().__init__(classes, seed)
        self.model = make_pipeline(StandardScaler(), LogisticRegression(
            C=C, class_weight="balanced", max_iter=2000, random_state=seed))

    @staticmethod
    def _matrix(samples: Sequence[Sample]) -> np.ndarray:
        if any(s.features is None for s in samples):
            raise ValueError("the embedding head needs BLIP-2 image embeddings (no zero-shot model configured?)")
        rows = [np.concatenate([s.features.ravel(), s.zeroshot.ravel() if s.zeroshot is not None else []])
                for s in samples]
        return np.asarray(rows, dtype=np.float64)

    def fit(self, samples: Sequence[Sample], y: np.ndarray) -> dict:
        t = time.perf_counter()
        self.model.fit(self._matrix(samples), y)
        return {"train_seconds": time.perf_counter() - t}

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        if not samples:
            return np.zeros((0, len(self.classes)))
        proba = np.zeros((len(samples), len(self.classes)))
        proba[:, self.model.classes_] = self.model.predict_proba(self._matrix(samples))
        return proba

    def _save(self, folder: Path) -> None:
        joblib.dump(self.model, folder / "head.joblib")

    @classmethod
    def _load(cls, folder: Path, classes: list[str]) -> "EmbeddingHead":
        head = cls(classes)
        head.model = joblib.load(folder / "head.joblib")
        return head
