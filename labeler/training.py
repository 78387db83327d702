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

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold

from .calibration import fit_temperature
from .classifiers import KINDS, Classifier, Sample
from .connection import Connection
from .errors import TrainingError
from .labelconfig import LabelConfig
from .metrics import evaluate
from .predictor import Predictor, Scored
from .selftrain import SelfTrained
from .studio import Labelled, connect, labelled_tasks, project_config
from .zeroshot import softmax

log = logging.getLogger(__name__)
HOLDOUT_MIN = 50


def is_holdout(task_id: int, fraction: int = 5) -> bool:
    """Stable held-out membership: one task in ``fraction`` by a hash of its id."""
    return int(hashlib.sha1(str(task_id).encode()).hexdigest(), 16) % fraction == 0


@dataclass
class Outcome:
    version: str
    promoted: bool
    meta: dict


def cross_val_proba(make: Callable[[], Classifier], samples: Sequence[Sample], y: np.ndarray,
                    folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities: each item scored by a model that never saw it."""
    proba = np.zeros((len(y), len(make().classes)))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        model = make()
        model.fit([samples[i] for i in tr], y[tr])
        proba[te] = model.predict_proba([samples[i] for i in te])
    return proba


def choose_kind(setting: str, has_zeroshot: bool) -> str:
    if setting == "auto":
        return "head" if has_zeroshot else "cnn"
    if setting not in KINDS:
        raise TrainingError(f"unknown classifier {setting!r}; choose from auto, {', '.join(KINDS)}")
    if KINDS[setting].needs_features and not has_zeroshot:
        raise TrainingError(f"classifier {setting!r} needs the zero-shot model, which is not loaded")
    return setting


@dataclass
class LabelledSet:
    """A project's usable labels with their images: what training and review start from."""

    keep: list[tuple[Labelled, Scored]]  # readable images, embedded, zero-shot evidence attached
    bad: list[tuple[int, str]]           # (task id, why its image could not be used)
    y: np.ndarray                        # class indices of ``keep``
    skipped_tasks: int                   # annotated tasks without a usable label
    unlabelled: list[tuple[int, str]]    # (task id, image URL) of tasks nobody annotated


def load_labelled(predictor: Predictor, ls, project: int, config: LabelConfig, conn: Connection) -> LabelledSet:
    """Fetch the labelled tasks, download and embed their images, attach zero-shot evidence."""
    labelled, skipped, unlabelled = labelled_tasks(ls, project, config)
    items = predictor.samples([lab.url for lab in labelled], conn)
    bad = [(lab.task_id, it.error or "unreadable") for lab, it in zip(labelled, items) if it.sample is None]
    keep = [(lab, it) for lab, it in zip(labelled, items) if it.sample is not None]
    predictor.zeroshot_scores([it for _, it in keep], config)
    y = np.array([config.classes.index(lab.label) for lab, _ in keep], dtype=int)
    return LabelledSet(keep, bad, y, skipped, unlabelled)


def self_training_pool(predictor: Predictor, data: LabelledSet, config: LabelConfig, conn: Connection,
                       limit: int) -> list[Sample]:
    """Up to ``limit`` unlabelled images (a stable choice by task id), downloaded and embedded.

    Unreadable ones are left out: they only cost the pseudo-labels they would have given.
    """
    chosen = sorted(data.unlabelled, key=lambda t: hashlib.sha1(str(t[0]).encode()).hexdigest())[:limit]
    items = predictor.samples([url for _, url in chosen], conn)
    predictor.zeroshot_scores(items, config)
    return [it.sample for it in items if it.sample is not None]


def train_project(predictor: Predictor, project: str, conn: Connection, trigger: str = "manual",
                  report: Callable[[str], None] = lambda s: None) -> Outcome:
    """Train, evaluate and register a new version for ``project``; promote it if not worse.

    Raises :class:`TrainingError` (or a Label Studio error) without touching
    the serving model.
    """
    s = predictor.settings
    ls = connect(conn.hostname, conn.token)
    config = project_config(ls, int(project))
    report("fetching annotations and images")
    data = load_labelled(predictor, ls, int(project), config, conn)
    keep, bad, y, skipped_tasks = data.keep, data.bad, data.y, data.skipped_tasks
    classes = list(config.classes)
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    short = {c: n for c, n in counts.items() if n < s.min_per_class}
    if short:
        raise TrainingError(f"too few labels to train: {short} (need at least {s.min_per_class} per class; "
                            f"{len(keep)} usable labels, {len(bad)} unreadable images)")
    hold = np.array([is_holdout(lab.task_id) for lab, _ in keep])
    use_holdout = hold.sum() >= HOLDOUT_MIN and len(set(y[~hold])) == len(classes)
    samples = [it.sample for _, it in keep]
    kind = choose_kind(s.classifier, predictor.scorer is not None)
    base = lambda: KINDS[kind](classes, seed=s.seed)  # noqa: E731
    pool: list[Sample] = []
    if s.self_train_pool > 0 and data.unlabelled:
        report(f"fetching up to {s.self_train_pool} of {len(data.unlabelled)} unlabelled images for self-training")
        pool = self_training_pool(predictor, data, config, conn, s.self_train_pool)
    make = (lambda: SelfTrained(base, pool, s.self_train)) if pool else base  # noqa: E731
    meta: dict = {"kind": kind, "classes": classes, "prompts": {c: list(config.prompts[c]) for c in classes},
                  "class_counts": counts, "trigger": trigger,
                  "skipped_tasks": skipped_tasks,
                  "self_training": {"pool": len(pool), "threshold": s.self_train} if pool else None,
                  "unreadable_images": [{"task": t, "error": e} for t, e in bad][:100]}
    take = lambda idx: [samples[i] for i in idx]  # noqa: E731

    if use_holdout:
        train_idx, eval_idx = np.flatnonzero(~hold), np.flatnonzero(hold)
        report(f"training {kind} on {len(train_idx)} labels, {len(eval_idx)} held out")
        clf = make()
        meta["train_info"] = clf.fit(take(train_idx), y[train_idx])
        eval_proba = clf.predict_proba(take(eval_idx))
        meta["evaluation"] = "holdout"
    else:
        folds = min(5, min(counts.values()))
        report(f"{folds}-fold cross-validation of {kind} on {len(y)} labels")
        eval_idx = train_idx = np.arange(len(y))
        eval_proba = cross_val_proba(make, samples, y, folds, s.seed)
        report(f"training {kind} on all {len(y)} labels")
        clf = make()
        meta["train_info"] = clf.fit(samples, y)
        meta["evaluation"] = f"{folds}-fold cross-validation"
    meta.update(n_train=int(len(train_idx)), n_eval=int(len(eval_idx)))
    meta["metrics"] = evaluate(y[eval_idx], eval_proba, classes)
    ev = take(eval_idx)
    if predictor.scorer is not None:
        # Calibrate the zero-shot model on every label (it is not trained, so no leak);
        # its metrics below use the temperature in force before this run.
        zs_all = np.stack([x.zeroshot for x in samples])
        meta["zeroshot_temperature"] = fit_temperature(zs_all, y)
        zs = softmax(np.stack([x.zeroshot for x in ev]), predictor.registry.temperature(project))
        meta["zeroshot_metrics"] = evaluate(y[eval_idx], zs, classes)
    serving, current = predictor.classifier(project)
    # A trained serving model is compared only on the stable hold-out, which it never trained on.
    if use_holdout and current is not None and list(current.classes) == classes and (
            not current.needs_features or predictor.scorer is not None):
        meta["serving_metrics"] = {"version": serving,
                                   **evaluate(y[eval_idx], current.predict_proba(ev), classes)}
    baseline = meta.get("serving_metrics") or meta.get("zeroshot_metrics")
    new_acc = meta["metrics"]["accuracy"]
    if baseline is None:
        promoted, why = True, "nothing to compare against"
    else:
        against = baseline.get("version", "the zero-shot model")
        sign = ">=" if new_acc >= baseline["accuracy"] else "<"
        promoted = new_acc >= baseline["accuracy"]
        why = (f"accuracy on {len(eval_idx)} unseen labels {new_acc:.4f} {sign} "
               f"{baseline['accuracy']:.4f} of {against} on the same items")
    meta.update(promoted=promoted, promotion_reason=why)

    def write(folder):
        clf.save(folder)
        return meta

    version = predictor.registry.add(project, write)
    if "zeroshot_temperature" in meta:
        predictor.registry.set_temperature(project, meta["zeroshot_temperature"], len(y))
    if promoted:
        predictor.registry.promote(project, version)
    log.info("project %s: trained %s (%s): %s", project, version, trigger, why)
    return Outcome(version, promoted, predictor.registry.meta(project, version))
