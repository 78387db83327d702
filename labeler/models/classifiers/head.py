"""A logistic-regression head on BLIP-2 image embeddings (plus the zero-shot evidence)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from labeler.models.classifiers.base import Classifier, Sample


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
        self.C = C

    def _pipeline(self):
        return make_pipeline(StandardScaler(), LogisticRegression(
            C=self.C, class_weight="balanced", max_iter=2000, random_state=self.seed))

    @staticmethod
    def _matrix(samples: Sequence[Sample]) -> np.ndarray:
        rows = []
        for s in samples:
            if s.features is None:
                raise ValueError("the embedding head needs BLIP-2 image embeddings (no zero-shot model configured?)")
            rows.append(np.concatenate([s.features.ravel(), s.zeroshot.ravel() if s.zeroshot is not None else []]))
        return np.asarray(rows, dtype=np.float64)

    def _fit(self, samples: list[Sample], y: np.ndarray) -> dict:
        t = time.perf_counter()
        self.model_ = self._pipeline().fit(self._matrix(samples), y)
        return {"train_seconds": time.perf_counter() - t}

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        if not samples:
            return np.zeros((0, len(self.classes)))
        proba = np.zeros((len(samples), len(self.classes)))
        proba[:, self.model_.classes_] = self.model_.predict_proba(self._matrix(samples))
        return proba

    # Saved as plain arrays + JSON, never pickled: loading a model file must not run code.
    _ARRAYS = {"scaler": ("mean_", "scale_", "var_"), "lr": ("coef_", "intercept_", "classes_", "n_iter_")}

    def _save(self, folder: Path) -> None:
        scaler, lr = self.model_[0], self.model_[-1]
        # Any: mypy matches **arrays against savez's allow_pickle: bool too
        arrays: dict[str, Any] = {f"{part}.{a}": np.asarray(getattr(est, a))
                                  for part, est in (("scaler", scaler), ("lr", lr)) for a in self._ARRAYS[part]}
        np.savez(folder / "head.npz", **arrays)
        (folder / "head.json").write_text(json.dumps({
            "C": lr.C, "n_features_in": int(scaler.n_features_in_), "n_samples_seen": int(scaler.n_samples_seen_)}))

    @classmethod
    def _load(cls, folder: Path, classes: list[str]) -> "EmbeddingHead":
        info = json.loads((folder / "head.json").read_text())
        head = cls(classes, C=info["C"])
        head.model_ = head._pipeline()
        scaler, lr = head.model_[0], head.model_[-1]
        with np.load(folder / "head.npz", allow_pickle=False) as arrays:
            for part, est in (("scaler", scaler), ("lr", lr)):
                for a in cls._ARRAYS[part]:
                    setattr(est, a, arrays[f"{part}.{a}"])
        scaler.n_features_in_ = lr.n_features_in_ = info["n_features_in"]
        scaler.n_samples_seen_ = info["n_samples_seen"]
        return head
