"""A team of simulated annotators of known accuracies (``labeler simulate --annotators``, issue 22).

Two questions, on a labelled folder whose labels are the truth:

1. Consensus: every task gets ``per_task`` labels from distinct, randomly drawn annotators (right with
   their accuracy, else a uniformly drawn wrong class). Measured against the truth: the majority vote
   (ties broken at random), Dawid-Skene, Dawid-Skene with the classifier's out-of-fold probabilities as
   one more voter, CROWDLAB (cleanlab), and the best annotator alone on the tasks it labelled; and how far
   the estimated accuracies are from the true ones.
2. Relabel or label new, at equal clicks: from ``start`` tasks labelled once, each round spends ``batch``
   clicks on the tasks ActiveLab scores lowest (cleanlab ``get_active_learning_scores``), either among
   labelled and unlabelled tasks (a labelled one goes to an annotator who has not seen it) or among the
   unlabelled only. The same score ranks both, so the difference is the relabelling. Measured: the
   accuracy of a classifier trained on the consensus labels, on a held-out part no one labels, and the
   accuracy of the consensus labels themselves.

The classifier is a logistic regression on frozen ImageNet features (:func:`imagenet_features`): the
benchmark is about labels, not about the model, and it must run on a CPU in minutes.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from labeler.models.consensus import MISSING, crowdlab, dawid_skene, relabel_scores, vote_counts


def annotate(y: np.ndarray, annotator: np.ndarray, accuracies: np.ndarray, n_classes: int,
             rng: np.random.Generator) -> np.ndarray:
    """The labels ``annotator[i]`` gives task ``i``: the truth with its accuracy, else a uniformly wrong class."""
    wrong = (y + rng.integers(1, n_classes, len(y))) % n_classes
    return np.where(rng.random(len(y)) < accuracies[annotator], y, wrong)


def team_labels(y: np.ndarray, accuracies: list[float], per_task: int, n_classes: int, seed: int) -> np.ndarray:
    """(N, M) labels: each task labelled by ``per_task`` distinct annotators drawn at random."""
    rng = np.random.default_rng(seed)
    acc = np.asarray(accuracies)
    out = np.full((len(y), len(acc)), MISSING)
    for i in range(len(y)):
        who = rng.choice(len(acc), size=min(per_task, len(acc)), replace=False)
        out[i, who] = annotate(np.full(len(who), y[i]), who, acc, n_classes, rng)
    return out


def random_tie_vote(labels: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """The majority vote with ties broken at random (the fair baseline: a fixed tie rule favours a class)."""
    counts = vote_counts(labels, n_classes) + rng.random((len(labels), n_classes)) * 0.5
    out = counts.argmax(axis=1)
    out[(labels != MISSING).sum(axis=1) == 0] = MISSING
    return out


def out_of_fold(features: np.ndarray, y: np.ndarray, n_classes: int, seed: int, folds: int = 5) -> np.ndarray:
    """(N, K) probabilities of a logistic regression for each task from the folds it was not trained on."""
    out = np.full((len(y), n_classes), 1 / n_classes)
    k = min(folds, int(np.bincount(y, minlength=n_classes)[np.bincount(y, minlength=n_classes) > 0].min()))
    if k < 2 or len(np.unique(y)) < 2:
        return out
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(features, y):
        out[test] = _proba(_fit(features[train], y[train], seed), features[test], n_classes)
    return out


def _fit(x: np.ndarray, y: np.ndarray, seed: int) -> LogisticRegression:
    return LogisticRegression(max_iter=2000, random_state=seed).fit(x, y)


def _proba(model: LogisticRegression, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all ``n_classes`` (a class the fit never saw gets 0)."""
    out = np.zeros((len(x), n_classes))
    if len(x):
        out[:, model.classes_] = model.predict_proba(x)
    return out


def compare_consensus(features: np.ndarray, y: np.ndarray, accuracies: list[float], per_task: int,
                      n_classes: int, seed: int) -> dict:
    """Question 1 for one seed: accuracy of each way to a label, and the estimated accuracies' error."""
    labels = team_labels(y, accuracies, per_task, n_classes, seed)
    rng = np.random.default_rng(seed)
    vote = random_tie_vote(labels, n_classes, rng)
    probs = out_of_fold(features, vote, n_classes, seed)
    ds, ds_model = dawid_skene(labels, n_classes), dawid_skene(labels, n_classes, pred_probs=probs)
    best = int(np.argmax(accuracies))
    seen = labels[:, best] != MISSING
    return {"seed": seed, "majority": float((vote == y).mean()), "dawid_skene": float((ds.label == y).mean()),
            "dawid_skene_model": float((ds_model.label == y).mean()),
            "crowdlab": float((crowdlab(labels, probs)[0] == y).mean()),
            "best_single": float((labels[seen, best] == y[seen]).mean()),
            "model_alone": float((probs.argmax(axis=1) == y).mean()),
            "accuracy_error": float(np.abs(ds.accuracy - np.asarray(accuracies)).max()),
            "accuracy_error_model": float(np.abs(ds_model.accuracy - np.asarray(accuracies)).max()),
            "estimated": [round(float(a), 4) for a in ds_model.accuracy]}


def consensus_of(features: np.ndarray, labels: np.ndarray, n_classes: int, seed: int,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(consensus labels, out-of-fold probabilities) of labelled tasks: the vote trains the out-of-fold
    model, whose probabilities then vote in Dawid-Skene, as the service does with its classifier."""
    vote = random_tie_vote(labels, n_classes, np.random.default_rng(seed))
    probs = out_of_fold(features, vote, n_classes, seed)
    return dawid_skene(labels, n_classes, pred_probs=probs).label, probs


def _pick(labels: np.ndarray, pool: np.ndarray, features: np.ndarray, n_classes: int, k: int, relabel: bool,
          seed: int) -> np.ndarray:
    """The ``k`` tasks of ``pool`` whose next label ActiveLab values most (lowest score): unlabelled ones,
    and with ``relabel`` also labelled ones that an annotator has not seen yet."""
    done = (labels[pool] != MISSING).any(axis=1)
    lab, unl = pool[done], pool[~done]
    cons, oof = consensus_of(features[lab], labels[lab], n_classes, seed)
    model = _fit(features[lab], cons, seed) if len(np.unique(cons)) > 1 else None
    unl_probs = _proba(model, features[unl], n_classes) if model is not None else np.full((len(unl), n_classes), 1 / n_classes)
    score_lab, score_unl = relabel_scores(labels[lab], oof, unl_probs)
    open_lab = (labels[lab] == MISSING).any(axis=1) if relabel else np.zeros(len(lab), bool)
    tasks = np.concatenate([lab[open_lab], unl])
    scores = np.concatenate([score_lab[open_lab], score_unl])
    return tasks[np.argsort(scores, kind="stable")[:k]]


def relabel_run(features: np.ndarray, y: np.ndarray, accuracies: list[float], n_classes: int, clicks: int, start: int,
                batch: int, test: np.ndarray, relabel: bool, seed: int) -> dict:
    """Question 2 for one seed and one queue: ``clicks`` labels in all, ``start`` of them on random tasks."""
    rng = np.random.default_rng(seed)
    acc = np.asarray(accuracies)
    pool = np.setdiff1d(np.arange(len(y)), test)
    labels = np.full((len(y), len(acc)), MISSING)
    used = 0
    picked = rng.choice(pool, size=min(start, clicks), replace=False)
    while len(picked):
        for i in picked:
            free = np.flatnonzero(labels[i] == MISSING)
            j = int(rng.choice(free))
            labels[i, j] = annotate(y[i:i + 1], np.array([j]), acc, n_classes, rng)[0]
        used += len(picked)
        k = min(batch, clicks - used)
        picked = _pick(labels, pool, features, n_classes, k, relabel, seed) if k > 0 else np.zeros(0, int)
    lab = pool[(labels[pool] != MISSING).any(axis=1)]
    cons, _ = consensus_of(features[lab], labels[lab], n_classes, seed)
    if len(np.unique(cons)) < 2:  # the consensus collapsed to one class: the classifier is that constant
        test_accuracy = float((y[test] == cons[0]).mean())
    else:
        test_accuracy = float((_fit(features[lab], cons, seed).predict(features[test]) == y[test]).mean())
    return {"queue": "relabel_or_new" if relabel else "new_only", "seed": seed, "clicks": used,
            "tasks": len(lab), "second_opinions": used - len(lab),
            "test_accuracy": test_accuracy,
            "label_accuracy": float((cons == y[lab]).mean())}


def summary(rows: list[dict], keys: list[str]) -> str:
    """Mean +- std over seeds of each of ``keys``."""
    return ", ".join(f"{k} {np.mean([r[k] for r in rows]):.4f} +- {np.std([r[k] for r in rows]):.4f}" for k in keys)


def team_study(features: np.ndarray, y: np.ndarray, n_classes: int, accuracies: list[float], per_task: int, seeds: int,
               clicks: int, start: int, batch: int, test_size: int) -> list[str]:
    """Both questions over ``seeds`` seeds, as lines to print (``labeler simulate --annotators`` and
    ``benchmarks/team_bench.py``); ``test_size`` tasks per seed are held out of the relabelling runs."""
    cons = [compare_consensus(features, y, accuracies, per_task, n_classes, s) for s in range(seeds)]
    lines = [f"  seed {r['seed']}: estimated accuracies {r['estimated']}" for r in cons]
    lines.append(f"consensus, {per_task} labels per task, {seeds} seeds (accuracy against the truth): "
                 + summary(cons, ["majority", "dawid_skene", "dawid_skene_model", "crowdlab", "best_single", "model_alone"]))
    lines.append("  max |estimated - true accuracy|: " + summary(cons, ["accuracy_error", "accuracy_error_model"]))
    runs = []
    for s in range(seeds):
        test = np.random.default_rng(100 + s).choice(len(y), size=min(test_size, len(y) // 3), replace=False)
        runs += [relabel_run(features, y, accuracies, n_classes, clicks, start, batch, test, r, s) for r in (True, False)]
    for queue in ("relabel_or_new", "new_only"):
        sel = [r for r in runs if r["queue"] == queue]
        lines.append(f"{queue:>15}, {clicks} clicks: " + summary(sel, ["test_accuracy", "label_accuracy", "tasks",
                                                                      "second_opinions"]))
    return lines


def honeypot_run(accuracies: list[float], n_tasks: int, rate: float, n_classes: int, seed: int) -> dict:
    """One person per task (no overlap) and honeypots at ``rate`` of each person's queue slots, as the
    "Next to label" queue mixes them (the least-labelled first, so everyone meets the same ones): how close
    the estimated accuracies come to the true ones, and whether their 95 % intervals hold them."""
    rng = np.random.default_rng(seed)
    acc = np.asarray(accuracies)
    m = len(acc)
    y = rng.integers(0, n_classes, n_tasks)
    who = rng.integers(0, m, n_tasks)
    honey = int(round(rate / (1 - rate) * n_tasks / m))  # honeypots each person meets beside n/m new tasks
    y = np.r_[y, rng.integers(0, n_classes, honey)]
    labels = np.full((n_tasks + honey, m), MISSING)
    labels[np.arange(n_tasks), who] = annotate(y[:n_tasks], who, acc, n_classes, rng)
    for j in range(m):
        labels[n_tasks:, j] = annotate(y[n_tasks:], np.full(honey, j), acc, n_classes, rng)
    gold = np.r_[np.full(n_tasks, MISSING), y[n_tasks:]]
    c = dawid_skene(labels, n_classes, gold=gold)
    fitted = bool(np.isfinite(c.accuracy).all())
    return {"rate": rate, "seed": seed, "honeypots": honey, "fitted": fitted,
            "max_error": float(np.abs(c.accuracy - acc).max()) if fitted else float("nan"),
            "width": float(np.mean(c.accuracy_high - c.accuracy_low)) if fitted else float("nan"),
            "covered": float(np.mean((c.accuracy_low <= acc) & (acc <= c.accuracy_high))) if fitted else float("nan")}


def honeypot_study(accuracies: list[float], n_tasks: int, rates: list[float], n_classes: int, seeds: int) -> list[str]:
    """:func:`honeypot_run` over ``seeds`` per rate, as lines to print."""
    lines = []
    for rate in rates:
        runs = [honeypot_run(accuracies, n_tasks, rate, n_classes, s) for s in range(seeds)]
        ok = [r for r in runs if r["fitted"]]
        if not ok:
            lines.append(f"honeypot rate {rate:g}: no accuracy can be estimated (one person per task, no honeypot)")
            continue
        lines.append(f"honeypot rate {rate:g} ({runs[0]['honeypots']} honeypots, each labelled by all), {n_tasks} tasks "
                     f"one person each, {seeds} seeds: " + summary(ok, ["max_error", "width", "covered"]))
    return lines
