"""Replaying the annotation loop offline: does active learning save labels?

No Label Studio: a simulated annotator reveals the hidden label of each image
the strategy queries, and nothing else. Each round retrains with the same
classifier code the backend uses, and evaluates on a held-out part that is
never queried. The strategies live in :mod:`labeler.models.strategies`, shared with
the service's labelling queue (:mod:`labeler.studio.queue`), so Label Studio serves
what is measured here.

Cold start, with no labels: the zero-shot model's uncertainty where one is
configured; otherwise k-center greedy on frozen ImageNet features, a first
batch that covers the pool rather than one that is random by accident.

With ``self_train``, each round's model also trains on the pool images the
previous round's model (or the zero-shot model) is sure of (see
:mod:`labeler.models.selftrain`): the teacher's predictions are the ones ranking the
pool anyway, so self-training costs no extra fit per round.

The strategies' curves train one CNN per round; the backend serves three averaged while a project has
few labels (``LABELER_ENSEMBLE``, :func:`labeler.learning.training.uses_ensemble`), which
``--levers ensemble`` measures.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import clone
from tqdm.auto import tqdm

from labeler.learning.metrics import HIGHER_IS_BETTER, evaluate
from labeler.learning.plotting import headless_matplotlib
from labeler.models import selftrain
from labeler.models.classifiers import KINDS, Classifier, CNNClassifier, Ensemble, Sample
from labeler.models.strategies import DEFAULT_STRATEGY, STRATEGIES, check_strategy, imagenet_features, k_center_greedy, select  # noqa: F401

log = logging.getLogger(__name__)


class Annotator:
    """The simulated person: knows every label, tells only those asked for."""

    def __init__(self, labels: np.ndarray) -> None:
        self._labels = np.asarray(labels)
        self.queried: set[int] = set()
        self.order: list[int] = []  # in the order asked

    def label(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        self.queried.update(int(i) for i in indices)
        self.order += [int(i) for i in indices]
        return self._labels[np.asarray(indices, dtype=int)]


@dataclass
class RunResult:
    strategy: str
    seed: int
    rows: list[dict] = field(default_factory=list)
    model: Classifier | None = None


def run(samples: Sequence[Sample], y: np.ndarray, classes: list[str], strategy: str, budget: int,
        batch: int, test_idx: np.ndarray, seed: int, estimator: Classifier,
        zeroshot: np.ndarray | None = None, features: np.ndarray | None = None,
        start: int | None = None, progress: bool = True,
        self_train: float | None = None, warm_start: bool = True, name: str | None = None,
        unlabelled: bool = False, start_per_class: int = 0, **select_options) -> tuple[RunResult, Annotator]:
    """One simulated annotation run; returns metrics after each round and the annotator.

    Each round trains a clone of ``estimator`` (its ``seed`` set to ``seed``). With
    ``warm_start`` each round's model starts from the last round's
    (:meth:`Classifier.init_from`), which needs fewer steps than a cold fit. ``name`` labels
    the rows (default: ``strategy``); ``select_options`` go to :func:`select` (the cold start). With
    ``unlabelled`` consistency training replaces self-training; every fit gets the pool's images (:func:`_train_round`).
    With ``start_per_class`` the first labels are that many random images of each class instead of the
    strategy's first batch (:func:`per_class_start`).
    """
    check_strategy(strategy)
    rng, annotator, test = np.random.default_rng(seed), Annotator(y), np.asarray(test_idx)
    pool = np.setdiff1d(np.arange(len(y)), test)
    labelled: np.ndarray = np.zeros(0, dtype=int)
    got: np.ndarray = np.zeros(0, dtype=int)
    result = RunResult(name or strategy, seed)
    proba = zeroshot[pool] if zeroshot is not None else None
    first = start or batch
    bar = tqdm(total=budget, desc=f"{result.strategy} seed {seed}", unit="label", disable=not progress)
    while len(labelled) < budget and len(pool):
        k = min(first if not len(labelled) else batch, budget - len(labelled))
        picked = per_class_start(y[pool], pool, start_per_class, rng) if start_per_class and not len(labelled) \
            else select(strategy, proba, pool, labelled, k, rng, features, **select_options)
        labelled = np.concatenate([labelled, picked])
        got = np.concatenate([got, annotator.label(picked)])
        left = ~np.isin(pool, picked)
        pool = pool[left]
        bar.update(len(picked))
        if len(set(got.tolist())) < len(classes):
            proba = None if zeroshot is None else zeroshot[pool]
            continue  # cannot train before every class has a label
        model = clone(estimator).set_params(seed=seed)
        if warm_start and result.model is not None:
            model.init_from(result.model)
        teacher = proba[left] if self_train is not None and proba is not None and len(pool) else None
        info, train_s = _train_round(model, samples, labelled, got, pool, teacher, self_train, unlabelled)
        result.model = model
        if len(test):  # none when the whole set is the pool (``labeler simulate --certify``)
            m = evaluate(y[test], model.predict_proba([samples[i] for i in test]), classes)
            result.rows.append(_row(result.strategy, seed, len(labelled), m, info, train_s))
            bar.set_postfix(acc=f"{m['accuracy']:.4f}", eer=m.get("eer"), pseudo=info.get("pseudo_labels", 0))
        proba = model.predict_proba([samples[i] for i in pool]) if len(pool) else None
    bar.close()
    return result, annotator


def per_class_start(y_pool: np.ndarray, pool: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random images of each class from ``pool`` (fewer where a class has fewer): the few-label
    protocol of the semi-supervised literature (FixMatch's "one label per class"), and what a person does who
    labels one example of each class before the queue takes over. Needs the hidden labels: simulation only."""
    picked = [rng.choice(pool[y_pool == c], size=min(per_class, int(np.sum(y_pool == c))), replace=False)
              for c in np.unique(y_pool)]
    return np.concatenate(picked).astype(int)


def _train_round(model: Classifier, samples: Sequence[Sample], labelled: np.ndarray, got: np.ndarray,
                 pool: np.ndarray, teacher_proba: np.ndarray | None, threshold: float | None,
                 unlabelled: bool = False) -> tuple[dict, float]:
    """Fit ``model`` on the labels so far; with ``teacher_proba`` (the last round's model, or the
    zero-shot one, on ``pool``) also on the confident pool images: no extra fit per round. The pool's
    images go to the fit itself too (for consistency training with ``unlabelled``, and for a CNN's
    few-label probe)."""
    t = time.perf_counter()
    consistency = unlabelled and isinstance(model, (CNNClassifier, Ensemble)) and model.supports_consistency
    if teacher_proba is not None and threshold is not None and not consistency:  # a teacher: self-training is on
        info = selftrain.self_train(model, [samples[i] for i in labelled], got, [samples[i] for i in pool],
                                    teacher_proba, threshold)
    else:
        info = model.fit([samples[i] for i in labelled], got, unlabelled=[samples[i] for i in pool]).fit_info_
    return info, time.perf_counter() - t


def _row(strategy: str, seed: int, labels: int, m: dict, info: dict, train_s: float) -> dict:
    """One learning-curve point: the held-out metrics after a round."""
    return {"strategy": strategy, "seed": seed, "labels": labels, "eer": m.get("eer"), "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"], "roc_auc": m.get("roc_auc", m.get("roc_auc_macro")),
            "eer_macro": m.get("eer_macro"), "pseudo_labels": info.get("pseudo_labels", 0),
            "log_loss": m.get("log_loss"),
            "train_seconds": round(train_s, 2)}


def labels_to_reach(rows: list[dict], target: float, metric: str = "eer") -> float | None:
    """Fewest labels at which the mean ``metric`` over seeds reaches ``target`` (None: never).

    Reaching is ``<= target`` for error rates (EER) and ``>= target`` for
    accuracy and macro-F1 (:data:`labeler.learning.metrics.HIGHER_IS_BETTER`).
    """
    higher = HIGHER_IS_BETTER[metric]
    for n, values in by_labels(rows, metric).items():
        m = np.mean(values)
        if (m >= target) if higher else (m <= target):
            return n
    return None


def full_data_reference(samples: Sequence[Sample], y: np.ndarray, classes: list[str], estimators: Sequence[Classifier],
                        holdouts: Sequence[np.ndarray], metric: str) -> list[float]:
    """What labelling everything reaches with the same training recipe (step cap included): each
    estimator fitted on every image outside each seed's hold-out; ``metric`` per estimator, averaged
    over the seeds."""
    means = []
    for estimator in estimators:
        values = []
        for seed, test in enumerate(holdouts):
            pool = np.setdiff1d(np.arange(len(y)), test)
            model = clone(estimator).set_params(seed=seed).fit([samples[i] for i in pool], y[pool])
            values.append(evaluate(y[test], model.predict_proba([samples[i] for i in test]), classes)[metric])
        means.append(float(np.mean(values)))
    return means


def share_of(full: float, share: float, metric: str) -> float:
    """The target "``share`` of the full-data metric": ``share * full`` for accuracy-like metrics; for
    error rates (EER) the same share of ``1 - error``, i.e. ``1 - share * (1 - full)``."""
    return share * full if HIGHER_IS_BETTER[metric] else 1 - share * (1 - full)


def by_labels(rows: list[dict], metric: str) -> dict[int, list[float]]:
    """``metric`` of the rows grouped by label count, ascending; rounds where it is undefined (None:
    e.g. EER on a hold-out without one of the classes) are left out."""
    out: dict[int, list[float]] = {}
    for r in sorted(rows, key=lambda r: r["labels"]):
        if r.get(metric) is not None:
            out.setdefault(r["labels"], []).append(float(r[metric]))
    return out


def write_outputs(rows: list[dict], out: Path, title: str, metric: str = "eer") -> tuple[Path, Path]:
    """``learning_curves.csv`` and ``learning_curves.png`` (mean ``metric`` with a +-1 std band)."""
    headless_matplotlib()
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "learning_curves.csv", out / "learning_curves.png"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        curve = by_labels([r for r in rows if r["strategy"] == strategy], metric)
        ns = list(curve)
        mean, std = np.array([np.mean(v) for v in curve.values()]), np.array([np.std(v) for v in curve.values()])
        ax.plot(ns, mean, marker="o", label=strategy)
        ax.fill_between(ns, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("human labels")
    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    ax.set_ylabel(f"{metric} on the held-out part ({better} is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path


def make_classifier(kind: str, classes: list[str], **cnn_options) -> Classifier:
    """The unfitted estimator a simulation trains (clones of it, one per round)."""
    if kind == "cnn":
        return CNNClassifier(classes, progress=False, **cnn_options)
    return KINDS[kind](classes)
