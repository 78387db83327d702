"""A small deep ensemble: a few copies of one classifier, each from its own seed, probabilities averaged.

Members differ only by seed (their initial head, batch order and augmentations), as in Lakshminarayanan
et al. (2017); averaging them is the simplest known way to better-calibrated probabilities, which
feed the queue's uncertainty, the review and the certified auto-accept. It costs ``members`` fits
and ``members`` predictions, so it is kept only where ``labeler simulate --levers ensemble`` shows
that this buys more than the same time spent on labels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.base import clone

from labeler.models.classifiers.base import Classifier, Sample, WrapsEstimator, load_classifier


class Ensemble(WrapsEstimator):
    kind = "ensemble"

    step_fraction = 1.0  # each member's (self-training's teacher sets it lower)

    def __init__(self, estimator: Classifier, members: int = 3, seed: int = 0) -> None:
        self.estimator, self.members, self.seed = estimator, members, seed
        self._previous: list[Classifier] | None = None

    @property
    def supports_consistency(self) -> bool:
        return bool(getattr(self.estimator, "supports_consistency", False))

    def learns_pool_itself(self, y: np.ndarray) -> bool:
        return self._previous is None and self.estimator.learns_pool_itself(y)

    def init_from(self, previous: Classifier) -> bool:
        """Each member starts from the same member of ``previous`` (an ensemble of as many, of members it
        can start from: not probe-only CNNs), or every member from ``previous`` itself where it is one
        model its members can start from (the CNN a project served before its ensemble)."""
        if isinstance(previous, Ensemble):
            prior = getattr(previous, "members_", None)
            if prior is None or len(prior) != self.members or not clone(self.estimator).init_from(prior[0]):
                return False
            self._previous = list(prior)
            return True
        if not clone(self.estimator).init_from(previous):
            return False
        self._previous = [previous] * self.members
        return True

    def fit(self, X: Sequence[Sample], y: np.ndarray, unlabelled: Sequence[Sample] | None = None) -> "Ensemble":
        """Fit every member on ``X``/``y`` (and ``unlabelled``: each member's to use)."""
        self.classes_ = np.arange(len(self.classes))
        self.members_: list[Classifier] = []
        infos = []
        for i in range(self.members):
            member = clone(self.estimator).set_params(seed=self.seed * self.members + i)
            member.step_fraction = self.step_fraction
            if self._previous is not None:
                member.init_from(self._previous[i])
            member.fit(list(X), np.asarray(y, dtype=int), unlabelled=unlabelled)
            self.members_.append(member)
            infos.append(member.fit_info_)
        self._previous = None
        self.fit_info_ = {**infos[0], "members": self.members,
                          "train_seconds": sum(float(i.get("train_seconds", 0)) for i in infos)}
        if "probe_only" in infos[0]:  # only if every member is: the others trained their networks
            self.fit_info_["probe_only"] = all(i["probe_only"] for i in infos)
        return self

    def _fit(self, samples: list[Sample], y: np.ndarray) -> dict:  # fit is overridden
        raise NotImplementedError

    def predict_proba(self, X: Sequence[Sample]) -> np.ndarray:
        """The members' mean probabilities."""
        return np.mean([m.predict_proba(X) for m in self.members_], axis=0)

    def _save(self, folder: Path) -> None:
        for i, member in enumerate(self.members_):
            member.save(folder / f"member-{i}")
        (folder / "ensemble.json").write_text(json.dumps({"members": len(self.members_), "seed": self.seed}))

    @classmethod
    def _load(cls, folder: Path, classes: list[str]) -> "Ensemble":
        """The saved members (as many as ``ensemble.json`` says, in order); the first is the estimator a
        refit would clone, so refit a loaded ensemble only to warm-start from it (:meth:`init_from`)."""
        meta = json.loads((folder / "ensemble.json").read_text())
        members = [load_classifier(folder / f"member-{i}") for i in range(int(meta["members"]))]
        model = cls(members[0], members=len(members), seed=int(meta["seed"]))
        model.members_ = members
        return model
