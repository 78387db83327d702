"""Training for multi-label projects: label sets in, per-class probabilities and thresholds out.

The steps mirror :func:`labeler.learning.training.train_project` (counts, split,
fit and evaluate, baselines, promotion, registry) with label sets ``Y`` (N, C):

- counts: every class needs ``min_per_class`` positives and as many negatives;
- split: the same stable hash hold-out when it is large enough and leaves every
  class positives and negatives to train on, else k-fold cross-validation
  stratified by each item's rarest class (so a rare class's few positives are
  spread over the folds; k = 5 or that class's count);
- thresholds: per class, the one maximising F1 on predictions for labels the
  model never saw (held-out or out-of-fold) is saved with the version. The
  version's own metrics use *cross-fitted* thresholds: the items of each fold
  (hold-out: each half) are decided with thresholds tuned on the other folds,
  so no item is evaluated with a threshold tuned on it;
- evaluation: per-class precision/recall/F1, micro- and macro-F1, subset
  accuracy, Hamming loss (:func:`labeler.learning.metrics.evaluate_multilabel`);
- promotion: macro-F1 on the same items against the serving version, else the
  zero-shot model (sigmoid of the ITM evidence, with the thresholds in force
  before this run), else always guessing the most frequent label set;
- the zero-shot thresholds are re-fitted on every label (it is not trained: no leak);
- self-training is off for multi-label projects.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from labeler.errors import TrainingError
from labeler.learning.labelled import LabelledSet
from labeler.learning.metrics import evaluate_multilabel
from labeler.learning.pretraining import ensure_encoder
from labeler.learning.promotion import HOLDOUT_MIN, Split, decide_promotion, is_holdout, unseen_by
from labeler.models.calibration import fit_thresholds
from labeler.models.classifiers import Classifier, Sample
from labeler.models.classifiers.base import stack_rows
from labeler.models.predictor import Predictor
from labeler.models.zeroshot import sigmoid

log = logging.getLogger(__name__)


def check_counts(Y: np.ndarray, classes: list[str], min_per_class: int, n_bad: int) -> dict[str, int]:
    """Positives per class; TrainingError when a class has fewer than ``min_per_class`` positives or negatives."""
    Y = np.asarray(Y, dtype=int).reshape(-1, len(classes))
    counts = {c: int(Y[:, i].sum()) for i, c in enumerate(classes)}
    short = {c: n for c, n in counts.items() if n < min_per_class}
    everywhere = [c for c, n in counts.items() if len(Y) - n < min_per_class]
    if short or everywhere:
        what = []
        if short:
            what.append(f"too few images with {short}")
        if everywhere:
            what.append(f"too few images without {everywhere}")
        raise TrainingError(f"too few labels to train: {'; '.join(what)} (need at least {min_per_class} of each "
                            f"per class; {len(Y)} usable labels, {n_bad} unreadable images)")
    return counts


def rarest_class(Y: np.ndarray) -> np.ndarray:
    """Per item, the rarity rank of its rarest positive class (0 = the rarest class; ``C`` for an item
    with none): the key that cross-validation stratifies on."""
    Y = np.asarray(Y, dtype=int)
    rarity = np.argsort(np.argsort(Y.sum(0), kind="stable"), kind="stable")
    return np.where(Y == 1, rarity[None, :], Y.shape[1]).min(1)


def choose_split(task_ids: Sequence[int], Y: np.ndarray, is_holdout: Callable[[int], bool]):
    """The hash hold-out when it has ``HOLDOUT_MIN`` items and leaves each class positives and negatives to
    train on, else k-fold cross-validation over all labels (k = 5, or the rarest class's positive count)."""
    hold = np.array([is_holdout(t) for t in task_ids], dtype=bool)
    train = Y[~hold]
    if hold.sum() >= HOLDOUT_MIN and train.any(0).all() and (train == 0).any(0).all():
        return Split(np.flatnonzero(~hold), np.flatnonzero(hold), "holdout")
    folds = int(max(2, min(5, Y.sum(0).min(), (Y == 0).sum(0).min())))
    every = np.arange(len(Y))
    return Split(every, every, f"{folds}-fold cross-validation", folds)


def fold_of(Y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per item, stratified by :func:`rarest_class`."""
    key = rarest_class(Y)
    out = np.zeros(len(Y), dtype=int)
    with warnings.catch_warnings():  # a key with fewer items than folds is spread as far as it goes
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(Y, key)):
            out[te] = k
    return out


def halves(task_ids: Sequence[int]) -> np.ndarray:
    """Two stable groups of held-out items (by a hash of the task id), for cross-fitted thresholds."""
    return np.array([int(hashlib.sha1(f"half-{t}".encode()).hexdigest(), 16) % 2 for t in task_ids], dtype=int)


def cross_fitted_thresholds(P: np.ndarray, Y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(N, C) thresholds: the rows of each group get the F1-maximising thresholds of the other groups' rows."""
    T = np.full(P.shape, 0.5)
    for g in np.unique(groups):
        rest = groups != g
        if rest.any():
            T[groups == g] = fit_thresholds(P[rest], Y[rest])
    return T


def fit_and_evaluate(estimator: Classifier, samples: Sequence[Sample], Y: np.ndarray, split, task_ids: Sequence[int],
                     seed: int, report: Callable[[str], None], pool: Sequence[Sample] = (),
                     ) -> tuple[Classifier, np.ndarray, np.ndarray]:
    """(the fitted model to serve, its probabilities on the evaluation items, their cross-fitting groups).
    Every fit gets the unlabelled ``pool`` (FixMatch, where the estimator's ``consistency`` is on)."""
    take = lambda idx: [samples[i] for i in idx]  # noqa: E731
    fit = lambda idx: clone(estimator).fit(take(idx), Y[idx], unlabelled=list(pool) or None)  # noqa: E731
    if split.method == "holdout":
        report(f"training on {len(split.train)} labels, {len(split.evaluate)} held out")
        clf = fit(split.train)
        return clf, clf.predict_proba(take(split.evaluate)), halves([task_ids[i] for i in split.evaluate])
    report(f"{split.method} on {len(Y)} labels")
    folds = fold_of(Y, split.folds, seed)
    proba = np.zeros(Y.shape)
    for k in range(split.folds):
        te = np.flatnonzero(folds == k)
        proba[te] = fit(np.flatnonzero(folds != k)).predict_proba(take(te))
    report(f"training on all {len(Y)} labels")
    return fit(np.arange(len(Y))), proba, folds


def promotion_baseline(predictor: Predictor, project: str, samples: Sequence[Sample], Y: np.ndarray,
                       task_ids: Sequence[int], split, eval_proba: np.ndarray, eval_t: np.ndarray,
                       classes: list[str], meta: dict) -> dict:
    """What the new version must not be worse than, in macro-F1 on the same items (see
    :func:`labeler.learning.promotion.decide_promotion`): the serving multi-label version, else the
    zero-shot model, else always guessing the training part's most frequent label set."""
    serving, current = predictor.classifier(project)
    if serving is not None and current is not None and getattr(current, "multilabel", False) \
            and list(current.classes) == classes and (not current.needs_features or predictor.scorer is not None):
        items = unseen_by(predictor.registry.meta(project, serving), task_ids, split)
        where = {int(i): k for k, i in enumerate(split.evaluate)}
        rows = [where[int(i)] for i in items]
        theirs = current.predict_proba([samples[i] for i in items])
        meta["serving_metrics"] = {"version": serving, **evaluate_multilabel(Y[items], theirs, classes,
                                                                             current.thresholds_)}
        ours = evaluate_multilabel(Y[items], eval_proba[rows], classes, eval_t[rows])["macro_f1"]
        return {"name": serving, "metric": "macro_f1", "value": meta["serving_metrics"]["macro_f1"],
                "new_value": ours, "n": len(items)}
    if "zeroshot_metrics" in meta:
        return {"name": "the zero-shot model", "metric": "macro_f1", "value": meta["zeroshot_metrics"]["macro_f1"],
                "n": len(split.evaluate)}
    sets, counts = np.unique(Y[split.train], axis=0, return_counts=True)
    guess = sets[counts.argmax()]
    value = evaluate_multilabel(Y[split.evaluate], np.tile(guess, (len(split.evaluate), 1)), classes)["macro_f1"]
    names = [c for c, b in zip(classes, guess) if b] or ["none of them"]
    return {"name": f"always guessing {names}", "metric": "macro_f1", "value": value, "n": len(split.evaluate)}


def zeroshot_baseline(predictor: Predictor, project: str, samples: Sequence[Sample], Y: np.ndarray, split,
                      classes: list[str], meta: dict) -> None:
    """Fit the zero-shot thresholds on every label, and record the zero-shot model's metrics on the
    evaluation items with the thresholds in force before this run."""
    if predictor.scorer is None:
        return
    evidence = stack_rows([x.zeroshot for x in samples])
    meta["zeroshot_thresholds"] = fit_thresholds(sigmoid(evidence), Y).tolist()
    zs = sigmoid(evidence[split.evaluate])
    meta["zeroshot_metrics"] = evaluate_multilabel(Y[split.evaluate], zs, classes,
                                                   np.asarray(predictor.registry.thresholds(project, classes)))


def estimator_for(kind: str, classes: list[str], seed: int) -> Classifier:
    """The multi-label estimator of a classifier kind (``head`` or ``cnn``)."""
    from labeler.models.classifiers import MULTILABEL_KINDS

    return MULTILABEL_KINDS[kind](classes, seed=seed)


def train(predictor: Predictor, project: str, data: LabelledSet, classes: list[str], kind: str,
          report: Callable[[str], None], conn=None,
          fetch_pool: Callable[[], Sequence[Sample]] = tuple) -> tuple[Classifier, dict]:
    """Fit, tune thresholds, evaluate and compare a multi-label version; returns (model, meta).

    Once the labels suffice, a CNN starts from the project's self-supervised encoder, pretrained first
    where :func:`labeler.learning.pretraining.ensure_encoder` says so (``conn`` fetches its images), as
    a single-label project does; with unlabelled images from ``fetch_pool`` (called once the labels
    suffice) it trains with FixMatch on them (every fit, the cross-validation folds' too). ``meta`` holds
    what :func:`labeler.learning.training.train_project` registers, ``promoted`` and ``promotion_reason``
    included.
    """
    s = predictor.settings
    counts = check_counts(data.y, classes, s.min_per_class, len(data.bad))
    pool = list(fetch_pool())
    encoder = ensure_encoder(predictor, project, data, conn, kind, report)
    samples = [it.decoded for _, it in data.keep]
    Y = np.asarray(data.y, dtype=int)
    task_ids = [lab.task_id for lab, _ in data.keep]
    split = choose_split(task_ids, Y, is_holdout)
    estimator = estimator_for(kind, classes, s.seed)
    if encoder is not None:
        estimator.set_params(encoder=str(encoder[1]))
    if pool:
        estimator.set_params(consistency=1.0)
    clf, proba, groups = fit_and_evaluate(estimator, samples, Y, split, task_ids,
                                          s.seed, lambda step: report(f"{kind} (multi-label): {step}"), pool)
    Ye = Y[split.evaluate]
    clf.thresholds_ = fit_thresholds(proba, Ye)
    eval_t = cross_fitted_thresholds(proba, Ye, groups)
    meta: dict = {"kind": clf.kind, "multilabel": True, "classes": classes, "class_counts": counts,
                  "thresholds": clf.thresholds_.tolist(), "skipped_tasks": data.skipped_tasks,
                  "self_training": {"pool": len(pool), "threshold": clf.get_params().get("consistency_threshold"),
                                    # what the served fit did: FixMatch needs two or more readable pool images
                                    "method": "fixmatch" if "unlabelled" in clf.fit_info_ else None} if pool else None,
                  "train_info": clf.fit_info_, "evaluation": split.method,
                  "encoder": encoder[0] if encoder else None,
                  "n_train": int(len(split.train)), "n_eval": int(len(split.evaluate)),
                  "metrics": evaluate_multilabel(Ye, proba, classes, eval_t),
                  "trained_tasks": sorted(int(task_ids[i]) for i in split.train) if split.folds else None}
    zeroshot_baseline(predictor, project, samples, Y, split, classes, meta)
    baseline = promotion_baseline(predictor, project, samples, Y, task_ids, split, proba, eval_t, classes, meta)
    promoted, why = decide_promotion(meta["metrics"]["macro_f1"], baseline)
    meta.update(promoted=promoted, promotion_reason=why)
    return clf, meta
