"""One training run: labels from Label Studio -> classifier -> evaluation -> registry.

Evaluation is always on annotations the model did not train on:

- with enough labels (``HOLDOUT_MIN`` held-out items or more), a fifth of the
  labelled tasks chosen by a hash of the task id is held out. The choice is
  stable across runs, so no version ever trains on an item that any version is
  evaluated on, and versions (and the serving model) compare on the same items;
- with fewer, 5-fold stratified cross-validation gives out-of-fold
  probabilities for every label, then the served model is fitted on all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from labeler.errors import TrainingError
from labeler.labelconfig import LabelConfig
from labeler.learning import multilabel
from labeler.learning.labelled import LabelledSet, Voter, load_labelled, self_training_pool
from labeler.learning.metrics import evaluate
from labeler.learning.pretraining import ensure_encoder
from labeler.learning.promotion import HOLDOUT_MIN, METRIC_NAMES, Split, choose_split, decide_promotion, is_holdout, unseen_by  # noqa: F401 - imported from here too
from labeler.models.calibration import fit_temperature
from labeler.models.classifiers import KINDS, Classifier, Ensemble, Sample
from labeler.models.classifiers.base import stack_rows
from labeler.models.predictor import Predictor
from labeler.models.selftrain import ConsistencyTrained, Frozen, SelfTrained
from labeler.models.zeroshot import softmax
from labeler.studio.client import Studio
from labeler.studio.tasks import project_config
from labeler.studio.team import save_votes

log = logging.getLogger(__name__)

# Below this many training labels the CNN is served as a small ensemble (LABELER_ENSEMBLE=auto): where
# `labeler simulate --levers ensemble` measured lower EER and log-loss on eyes24 (the gain was gone by 300).
ENSEMBLE_BELOW = 300
# Per-class FixMatch lost on multi-label shapes (macro-F1 on the unlabelled rest 0.71 vs 0.78 at 10 labels, 0.89 vs
# 0.96 at 20, three times the fit; benchmarks/multilabel_shapes.py --fixmatch), so `auto` leaves it off; `on` forces it.
MULTILABEL_AUTO_FIXMATCH = False


@dataclass
class Outcome:
    version: str
    promoted: bool
    meta: dict


def cross_val_proba(estimator: Classifier, samples: Sequence[Sample], y: np.ndarray,
                    folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities: each item scored by a clone of ``estimator`` that never saw it
    (stratified folds; every class must occur in ``y``, as training and review require)."""
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(estimator, list(samples), y, cv=cv, method="predict_proba")


def choose_kind(setting: str, has_zeroshot: bool) -> str:
    if setting == "auto":
        return "head" if has_zeroshot else "cnn"
    if setting not in KINDS:
        raise TrainingError(f"unknown classifier {setting!r}; choose from auto, {', '.join(KINDS)}")
    if KINDS[setting].needs_features and not has_zeroshot:
        raise TrainingError(f"classifier {setting!r} needs the zero-shot model, which is not loaded")
    return setting


def model_voter(predictor: Predictor, classes: list[str]) -> Voter | None:
    """The classifier kind training fits, as one more voter in the consensus (issue 22): its out-of-fold
    probabilities (stratified folds, at most 5; None with fewer than 2 labels of a class). None for the
    ``cnn`` kind: five more CNN fits per training; there the consensus is the people's alone."""
    s = predictor.settings
    kind = choose_kind(s.classifier, predictor.scorer is not None)
    if kind == "cnn":
        return None

    def vote(samples: list[Sample], y: np.ndarray) -> np.ndarray | None:
        counts = np.bincount(y, minlength=len(classes))
        if counts.min() < 2:
            return None
        return cross_val_proba(KINDS[kind](classes, seed=s.seed), samples, y, folds=int(min(5, counts.min())), seed=s.seed)
    return vote


def check_counts(y: np.ndarray, classes: list[str], min_per_class: int, n_bad: int) -> dict[str, int]:
    """Labels per class; TrainingError when a class has fewer than ``min_per_class``."""
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    short = {c: n for c, n in counts.items() if n < min_per_class}
    if short:
        raise TrainingError(f"too few labels to train: {short} (need at least {min_per_class} per class; "
                            f"{len(y)} usable labels, {n_bad} unreadable images)")
    return counts


def fit_and_evaluate(evaluated: Classifier, served: Classifier, samples: Sequence[Sample], y: np.ndarray,
                     split: Split, seed: int, report: Callable[[str], None]) -> tuple[Classifier, np.ndarray]:
    """(the fitted model to serve, the probabilities that evaluate it).

    Hold-out: one fit of ``served`` (the same procedure as ``evaluated``) on the
    training part, scored on the held-out part. Cross-validation: out-of-fold
    probabilities of ``evaluated``, then one fit of ``served`` on every label.
    """
    if split.method == "holdout":
        report(f"training on {len(split.train)} labels, {len(split.evaluate)} held out")
        clf = clone(served).fit([samples[i] for i in split.train], y[split.train])
        return clf, clf.predict_proba([samples[i] for i in split.evaluate])
    report(f"{split.method} on {len(y)} labels")
    proba = cross_val_proba(evaluated, samples, y, split.folds, seed)
    report(f"training on all {len(y)} labels")
    return clone(served).fit(list(samples), y), proba


def baseline_for(predictor: Predictor, project: str, samples: Sequence[Sample], y: np.ndarray,
                 task_ids: Sequence[int], split: Split, eval_proba: np.ndarray, classes: list[str],
                 meta: dict) -> dict:
    """What the new version must not be worse than: the serving version if one serves, else the
    zero-shot model, else a constant guess of the most frequent training class; all on the same items."""
    serving, current = predictor.classifier(project)
    if current is not None and serving is not None and list(current.classes) == classes and \
            not getattr(current, "multilabel", False) and (
            not current.needs_features or predictor.scorer is not None):
        items = unseen_by(predictor.registry.meta(project, serving), task_ids, split)
        where = {int(i): k for k, i in enumerate(split.evaluate)}
        ours = eval_proba[[where[int(i)] for i in items]].argmax(1)
        theirs = current.predict_proba([samples[i] for i in items])
        meta["serving_metrics"] = {"version": serving, **evaluate(y[items], theirs, classes)}
        return {"name": serving, "metric": "accuracy", "value": meta["serving_metrics"]["accuracy"],
                "n": len(items), "new_value": float((ours == y[items]).mean())}
    if "zeroshot_metrics" in meta:
        return {"name": "the zero-shot model", "metric": "accuracy", "value": meta["zeroshot_metrics"]["accuracy"],
                "n": len(split.evaluate)}
    guess = int(np.bincount(y[split.train], minlength=len(classes)).argmax())
    return {"name": f"always guessing {classes[guess]!r}", "metric": "accuracy",
            "value": float((y[split.evaluate] == guess).mean()), "n": len(split.evaluate)}


def zeroshot_baseline(predictor: Predictor, project: str, samples: Sequence[Sample], y: np.ndarray,
                      split: Split, classes: list[str], meta: dict) -> None:
    """Calibrate the zero-shot model on every label (it is not trained: no leak) and record its
    metrics on the evaluation items with the temperature in force before this run."""
    if predictor.scorer is None:
        return
    meta["zeroshot_temperature"] = fit_temperature(stack_rows([x.zeroshot for x in samples]), y)
    zs = softmax(stack_rows([samples[i].zeroshot for i in split.evaluate]), predictor.registry.temperature(project))
    meta["zeroshot_metrics"] = evaluate(y[split.evaluate], zs, classes)


def _pool_use(served: Classifier, pool: int, threshold: float, info: dict) -> dict | None:
    """How the version learnt from its ``pool`` unlabelled images (None: no pool), for its meta; ``info``:
    the fitted model's ``fit_info_``."""
    if not pool:
        return None
    if info.get("probe_only") and info.get("pseudo_labels"):  # a probe of the pool's seeded k-means clusters
        return {"pool": pool, "method": "seeded k-means", "threshold": None}
    if isinstance(served, ConsistencyTrained):
        return {"pool": pool, "method": "fixmatch", "threshold": getattr(served.estimator, "consistency_threshold", None)}
    return {"pool": pool, "method": "self-training", "threshold": threshold}


def _ensemble_use(served: Classifier, evaluated: Classifier, split: Split) -> dict | None:
    """The served ensemble's size and what the metrics are of (None: no ensemble), for the version's meta."""
    ensemble = served if isinstance(served, Ensemble) else getattr(served, "estimator", None)
    if not isinstance(ensemble, Ensemble):
        return None
    return {"members": ensemble.members,
            "evaluated": "the ensemble" if evaluated is served else f"one member ({split.method})"}


def uses_consistency(setting: str, n_classes: int, multilabel: bool = False) -> bool:
    """Whether the CNN trains with FixMatch on the pool instead of self-training (``LABELER_CONSISTENCY``).
    ``auto``: with three classes or more, where ``labeler simulate --levers fixmatch`` measured a gain
    (ten-class digits); not for two, where it did not (eyes24) and costs twice a plain fit. Multi-label
    (which has no self-training): MULTILABEL_AUTO_FIXMATCH."""
    if multilabel:
        return setting == "on" or (setting == "auto" and MULTILABEL_AUTO_FIXMATCH)
    return setting == "on" or (setting == "auto" and n_classes > 2)


def multilabel_pool(predictor: Predictor, data: LabelledSet, config: LabelConfig, studio: Studio, kind: str,
                    report: Callable[[str], None]) -> list[Sample]:
    """The unlabelled images a multi-label CNN trains on with FixMatch (:func:`uses_consistency`; none else)."""
    s = predictor.settings
    if kind != "cnn" or not data.unlabelled or s.self_train_pool <= 0 \
            or not uses_consistency(s.consistency, len(config.classes), multilabel=True):
        return []
    report(f"fetching up to {s.self_train_pool} of {len(data.unlabelled)} unlabelled images for FixMatch")
    return self_training_pool(predictor, data, config, studio, s.self_train_pool)


def uses_ensemble(setting: str, n_train: int) -> bool:
    """Whether the CNN is served as a three-member ensemble (``LABELER_ENSEMBLE``). ``auto``: with fewer
    than :data:`ENSEMBLE_BELOW` training labels, where it paid for its three fits (a few seconds each
    there); not beyond, where it no longer helped and three fits of thousands of labels would overrun
    the retraining's time."""
    return setting == "on" or (setting == "auto" and n_train < ENSEMBLE_BELOW)


def make_model(predictor: Predictor, project: str, data: LabelledSet, config: LabelConfig, studio: Studio,
               split: Split, report: Callable[[str], None],
               encoder: tuple[str, Path] | None = None) -> tuple[str, Classifier, Classifier, int]:
    """(classifier kind, the estimator cross-validation evaluates, the estimator that is served,
    self-training pool size).

    Both learn from the pool (self-training, or FixMatch: :func:`uses_consistency`). The served
    one starts from the serving version (its teacher, whose weights it continues from, as
    ``labeler simulate`` continues from the last round's model) whenever that one is of the same
    kind and classes; the evaluated one only where that cannot leak evaluation labels
    (:func:`serving_teacher`). Under cross-validation the metrics are then those of the procedure
    without it: if anything, an underestimate. The same holds for the ensemble (:func:`uses_ensemble`):
    cross-validation evaluates one member's procedure (five fits, not fifteen); the hold-out, the ensemble.
    """
    s = predictor.settings
    kind = choose_kind(s.classifier, predictor.scorer is not None)
    base = KINDS[kind](list(config.classes), seed=s.seed)
    if encoder is not None:  # the project's self-supervised encoder (labeler.learning.pretraining)
        base.set_params(encoder=str(encoder[1]), probe_only_below=s.probe_only_below)
        if split.method != "holdout":  # the folds (4/5 of the labels) probe or fine-tune as the fit on all does
            base.set_params(probe_only=base.learns_pool_itself(data.y[split.train]))
    pool: list[Sample] = []
    if s.self_train_pool > 0 and data.unlabelled:
        report(f"fetching up to {s.self_train_pool} of {len(data.unlabelled)} unlabelled images for self-training")
        pool = self_training_pool(predictor, data, config, studio, s.self_train_pool)
    fixmatch = kind == "cnn" and bool(pool) and uses_consistency(s.consistency, len(config.classes))
    if fixmatch:
        base.set_params(consistency=1.0)
    single = base
    if kind == "cnn" and uses_ensemble(s.ensemble, len(split.train)):
        base = Ensemble(single, seed=s.seed)
    enc = encoder[0] if encoder else None
    safe = serving_teacher(predictor, project, base, split, enc)
    warm = safe or serving_teacher(predictor, project, base, None, enc)

    def procedure(model: Classifier, teacher: Frozen | None) -> Classifier:
        if fixmatch:
            return ConsistencyTrained(model, pool, teacher=teacher)
        # An empty pool with a teacher is a plain warm start from it.
        return model if teacher is None and not pool else SelfTrained(model, pool, s.self_train, teacher=teacher)

    if split.method == "holdout":
        evaluated = procedure(base, safe)
        return kind, evaluated, evaluated, len(pool)
    return kind, procedure(single, safe), procedure(base, warm), len(pool)


def serving_teacher(predictor: Predictor, project: str, base: Classifier, split: Split | None,
                    encoder: str | None = None) -> Frozen | None:
    """The serving version as the teacher (no teacher is fitted, and the new version starts from
    its weights), if it is of ``base``'s kind and classes.

    With a ``split`` (the model is evaluated), only where it cannot leak evaluation labels: under
    the hash hold-out, with a serving version that was itself trained under it (so it never saw
    a held-out item). ``split=None``: for a model that is served but not evaluated.
    """
    serving, model = predictor.classifier(project)
    if model is None or serving is None or _weights_kind(model) != _weights_kind(base) \
            or list(model.classes) != list(base.classes):
        return None
    meta = predictor.registry.meta(project, serving)
    if meta.get("encoder") != encoder:  # a new encoder: start from it, not from weights that predate it
        return None
    if split is not None and (split.method != "holdout" or meta.get("evaluation") != "holdout"):
        return None
    return Frozen(model)


def _weights_kind(model: Classifier) -> str:
    """The kind of ``model``'s weights: an ensemble's are its members' (a CNN starts from its first member,
    and an ensemble's members from a CNN's or from their counterparts)."""
    return model.estimator.kind if isinstance(model, Ensemble) else model.kind


def register(predictor: Predictor, project: str, clf: Classifier, meta: dict, n_labels: int) -> str:
    """Write the version (and the fitted zero-shot temperature or, multi-label, thresholds); promote it
    if ``meta`` says so."""
    def write(folder):
        clf.save(folder)
        return meta

    version = predictor.registry.add(project, write)
    if "zeroshot_temperature" in meta:
        predictor.registry.set_temperature(project, meta["zeroshot_temperature"], n_labels)
    if "zeroshot_thresholds" in meta:
        predictor.registry.set_thresholds(project, meta["classes"], meta["zeroshot_thresholds"], n_labels)
    if meta["promoted"]:
        predictor.registry.promote(project, version)
    return version


def train_project(predictor: Predictor, project: str, studio: Studio, trigger: str = "manual",
                  report: Callable[[str], None] = lambda s: None) -> Outcome:
    """Train, evaluate and register a new version for ``project``; promote it if not worse.

    Steps: load the labelled set, check counts, split, fit and evaluate, measure
    the baselines, decide promotion, register. Raises :class:`TrainingError`
    (or a Label Studio error) without touching the serving model. Multi-label
    projects take the same steps with label sets (:mod:`labeler.learning.multilabel`).
    """
    config = project_config(studio, int(project))
    report("fetching annotations and images")
    data = load_labelled(predictor, studio, int(project), config,
                         None if config.multiple else model_voter(predictor, list(config.classes)))
    if config.multiple:
        kind = choose_kind(predictor.settings.classifier, predictor.scorer is not None)
        clf, meta = multilabel.train(predictor, project, data, list(config.classes), kind, report, studio.conn,
                                     lambda: multilabel_pool(predictor, data, config, studio, kind, report))
        meta.update(prompts={c: list(config.prompts[c]) for c in config.classes}, trigger=trigger,
                    unreadable_images=[{"task": t, "error": e} for t, e in data.bad][:100])
    else:
        clf, meta = train_single(predictor, project, studio, config, data, trigger, report)
    version = register(predictor, project, clf, meta, len(data.y))
    if data.votes:  # the annotator report weighs the same voters (labeler.studio.team.load_votes)
        save_votes(predictor.settings.model_dir, project, data.votes, version)
    log.info("project %s: trained %s (%s): %s", project, version, trigger, meta["promotion_reason"])
    return Outcome(version, meta["promoted"], predictor.registry.meta(project, version))


def train_single(predictor: Predictor, project: str, studio: Studio, config: LabelConfig, data: LabelledSet,
                 trigger: str, report: Callable[[str], None]) -> tuple[Classifier, dict]:
    """The single-choice steps of :func:`train_project` after loading: (the model, its meta)."""
    classes = list(config.classes)
    counts = check_counts(data.y, classes, predictor.settings.min_per_class, len(data.bad))
    samples, y = [it.decoded for _, it in data.keep], data.y
    task_ids = [lab.task_id for lab, _ in data.keep]
    split = choose_split(task_ids, y, len(classes))
    kind = choose_kind(predictor.settings.classifier, predictor.scorer is not None)
    encoder = ensure_encoder(predictor, project, data, studio.conn, kind, report)
    kind, evaluated, served, pool = make_model(predictor, project, data, config, studio, split, report, encoder)
    clf, eval_proba = fit_and_evaluate(evaluated, served, samples, y, split, predictor.settings.seed,
                                       lambda step: report(f"{kind}: {step}"))
    meta: dict = {"kind": kind, "classes": classes, "prompts": {c: list(config.prompts[c]) for c in classes},
                  "class_counts": counts, "trigger": trigger, "skipped_tasks": data.skipped_tasks,
                  "self_training": _pool_use(served, pool, predictor.settings.self_train, clf.fit_info_),
                  "ensemble": _ensemble_use(served, evaluated, split),
                  "encoder": encoder[0] if encoder else None,
                  "unreadable_images": [{"task": t, "error": e} for t, e in data.bad][:100],
                  "train_info": clf.fit_info_, "evaluation": split.method, "n_train": int(len(split.train)),
                  "n_eval": int(len(split.evaluate)), "metrics": evaluate(y[split.evaluate], eval_proba, classes),
                  # under cross-validation, what this version trained on (the next run compares on the rest)
                  "trained_tasks": sorted(int(task_ids[i]) for i in split.train) if split.folds else None}
    zeroshot_baseline(predictor, project, samples, y, split, classes, meta)
    baseline = baseline_for(predictor, project, samples, y, task_ids, split, eval_proba, classes, meta)
    promoted, why = decide_promotion(meta["metrics"]["accuracy"], baseline)
    meta.update(promoted=promoted, promotion_reason=why)
    return clf, meta
