"""Multi-label classifiers: one independent probability per class (``<Choices choice="multiple">``).

``y`` is an (N, C) 0/1 matrix of label sets; :meth:`predict_proba` gives (N, C)
per-class probabilities (rows need not sum to 1) and :meth:`predict` the set of
classes at or over their threshold ``thresholds_`` (0.5 until training tunes
them on predictions for labels the model never saw; they are saved with it).

- :class:`MultiLabelHead`: one-vs-rest logistic regression (a sigmoid per class,
  ``class_weight="balanced"`` per class, so a rare class is not drowned by its
  negatives) on the standardised ``[BLIP-2 embedding, zero-shot evidence]``.
- :class:`MultiLabelCNN`: the MobileNetV2 of :mod:`.cnn` with a binary
  cross-entropy head (``BCEWithLogits``, each class's positives weighted by
  ``n_neg / n_pos``).

A class with no positive (or no negative) among the training labels, as
happens in a cross-validation fold of a rare class, gets a constant
probability, the smoothed rate ``(n_pos + 0.5) / (n + 1)``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from labeler.models.classifiers.base import Classifier, Sample
from labeler.models.classifiers.cnn import CNNClassifier
from labeler.models.classifiers.head import EmbeddingHead
from labeler.models.zeroshot import sigmoid


def constant_logit(y: np.ndarray) -> float:
    """Log-odds of the smoothed positive rate ``(n_pos + 0.5) / (n + 1)`` (finite for 0 and n positives)."""
    p = (float(np.sum(y)) + 0.5) / (len(y) + 1.0)
    return float(np.log(p / (1 - p)))


class MultiLabel:
    """What multi-label classifiers share: the flag, thresholds and set predictions."""

    multilabel = True
    classes: Sequence[str]
    thresholds_: np.ndarray
    predict_proba: Callable[..., np.ndarray]  # the classifier's own

    def _start_thresholds(self) -> None:
        self.thresholds_ = np.full(len(self.classes), 0.5)

    def predict(self, X: Sequence[Sample]) -> np.ndarray:
        """(N, C) 0/1: the classes at or over their threshold."""
        return (self.predict_proba(X) >= np.asarray(self.thresholds_)).astype(int)

    def score(self, X: Sequence[Sample], y: np.ndarray, sample_weight=None) -> float:
        """Subset accuracy: the share of items whose whole label set is right."""
        return float((self.predict(X) == np.asarray(y)).all(1).mean())


class MultiLabelHead(MultiLabel, Classifier):
    """One-vs-rest logistic regression on standardised ``[pooled embedding, zero-shot evidence]``."""

    kind = "head_ml"
    needs_features = True

    def __init__(self, classes: Sequence[str], seed: int = 0, C: float = 0.5) -> None:
        super().__init__(classes, seed)
        self.C = C

    def _fit(self, samples: list[Sample], y: np.ndarray) -> dict:
        t = time.perf_counter()
        Y = np.asarray(y, dtype=int).reshape(len(samples), len(self.classes))
        X = EmbeddingHead._matrix(samples)
        self.scaler_ = StandardScaler().fit(X)
        Xs = self.scaler_.transform(X)
        self.coef_ = np.zeros((len(self.classes), X.shape[1]))
        self.intercept_ = np.zeros(len(self.classes))
        constant = []
        for c in range(len(self.classes)):
            if Y[:, c].min() == Y[:, c].max():
                self.intercept_[c] = constant_logit(Y[:, c])
                constant.append(self.classes[c])
                continue
            lr = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000, random_state=self.seed)
            lr.fit(Xs, Y[:, c])
            self.coef_[c], self.intercept_[c] = lr.coef_[0], lr.intercept_[0]
        self._start_thresholds()
        return {"train_seconds": time.perf_counter() - t, "constant_classes": constant}

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        if not len(samples):
            return np.zeros((0, len(self.classes)))
        Xs = self.scaler_.transform(EmbeddingHead._matrix(samples))
        return sigmoid(Xs @ self.coef_.T + self.intercept_)

    # Plain arrays + JSON, never pickled (as the single-label head).
    def _save(self, folder: Path) -> None:
        np.savez(folder / "head_ml.npz", mean=self.scaler_.mean_, scale=self.scaler_.scale_,
                 var=self.scaler_.var_, coef=self.coef_, intercept=self.intercept_)
        (folder / "head_ml.json").write_text(json.dumps({
            "C": self.C, "thresholds": [float(t) for t in self.thresholds_],
            "n_samples_seen": int(self.scaler_.n_samples_seen_)}))

    @classmethod
    def _load(cls, folder: Path, classes: list[str]) -> "MultiLabelHead":
        info = json.loads((folder / "head_ml.json").read_text())
        head = cls(classes, C=info["C"])
        head.scaler_ = StandardScaler()
        with np.load(folder / "head_ml.npz", allow_pickle=False) as a:
            head.scaler_.mean_, head.scaler_.scale_, head.scaler_.var_ = a["mean"], a["scale"], a["var"]
            head.coef_, head.intercept_ = a["coef"], a["intercept"]
        head.scaler_.n_features_in_ = head.coef_.shape[1]
        head.scaler_.n_samples_seen_ = info["n_samples_seen"]
        head.thresholds_ = np.asarray(info["thresholds"], dtype=np.float64)
        return head


def multilabel_fixmatch_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                             threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch per class: ``mean_ic m_ic * BCE(strong_ic, 1[p_ic >= 0.5])`` with ``m_ic = 1[max(p_ic,
    1 - p_ic) >= t]``, ``p`` the sigmoid of the (detached) weak-view logits: a class the network is sure
    of, present or absent, teaches the strong view, whatever it says of the others. And the share of
    (image, class) pairs above the threshold."""
    p = weak_logits.detach().sigmoid()
    mask = (torch.maximum(p, 1 - p) >= threshold).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(strong_logits, (p >= 0.5).float(), reduction="none")
    return (bce * mask).mean(), mask.mean()


class MultiLabelCNN(MultiLabel, CNNClassifier):
    """MobileNetV2 fine-tuned with a sigmoid per class (binary cross-entropy on the logits); FixMatch
    per class (:func:`multilabel_fixmatch_loss`)."""

    kind = "cnn_ml"

    def _targets(self, y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(y).reshape(-1, len(self.classes)), dtype=torch.float32)

    def _loss_fn(self, y: np.ndarray, device: torch.device):
        """BCE with each class's positives weighted ``n_neg / n_pos`` (balanced, as the head)."""
        Y = np.asarray(y).reshape(-1, len(self.classes))
        pos = Y.sum(0)
        weight = torch.as_tensor((len(Y) - pos) / np.maximum(pos, 1), dtype=torch.float32,
                                 device=device).clamp(0.1, 100)
        return lambda logits, target: torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target, pos_weight=weight)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def _unlabelled_loss(self, weak_logits: torch.Tensor, strong_logits: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        return multilabel_fixmatch_loss(weak_logits, strong_logits, self.consistency_threshold)

    def _probe_weights(self, feats: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """A balanced logistic regression per class (its sigmoid's weights); None when some class's labels
        are all positive or all negative."""
        from sklearn.linear_model import LogisticRegression

        if not all(len(np.unique(col)) == 2 for col in targets.T):
            return None
        probes = [LogisticRegression(max_iter=500, class_weight="balanced").fit(feats, col) for col in targets.T]
        return np.vstack([p.coef_ for p in probes]), np.concatenate([p.intercept_ for p in probes])

    def _fit(self, samples: list[Sample], y: np.ndarray) -> dict:
        info = super()._fit(samples, y)
        self._start_thresholds()
        return info

    def _save(self, folder: Path) -> None:
        super()._save(folder)
        (folder / "thresholds.json").write_text(json.dumps([float(t) for t in self.thresholds_]))

    @classmethod
    def _load(cls, folder: Path, classes: list[str]) -> "MultiLabelCNN":
        model = super()._load(folder, classes)
        model.thresholds_ = np.asarray(json.loads((folder / "thresholds.json").read_text()), dtype=np.float64)
        return model
