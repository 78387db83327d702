"""Consensus labels from a model of the annotators (Dawid & Skene, 1979), the classifier as one more voter.

Input: ``labels`` (N tasks, M annotators) of class indices, :data:`MISSING` where an annotator did not
label a task; optionally the classifier's out-of-fold probabilities ``pred_probs`` (N, K) and known
labels ``gold`` (N,) (Label Studio ``ground_truth`` annotations or a CSV of honeypots).

Each annotator ``j`` has a confusion matrix ``pi_j[k, l] = P(j says l | true class k)``. EM alternates

    E:  T_ik  ∝  base_ik * prod_{j labelled i} pi_j[k, l_ij]
    M:  pi_j[k, l] = (a + sum_i T_ik [l_ij = l]) / (K a + sum_i T_ik [j labelled i])

where ``base_i`` is the class prior ``rho`` (the mean of ``T``) without a model, and the model's calibrated
``p(k | x_i)`` with one: its probability already holds the prior, so it enters as the task's prior, the
calibrated voter CROWDLAB describes. Known labels fix ``T_i`` to their class (ground truth wins) and teach
``pi`` the most. ``a`` (0.5) keeps an unseen (true, given) pair from a zero that no later evidence could
move. The consensus label is ``argmax_k T_ik`` and its confidence ``max_k T_ik``.

This module is pure (numpy in, numpy out) and below :mod:`labeler.studio`, whose label rule uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

MISSING = -1
SMOOTHING = 0.5       # Dirichlet pseudo-count per (true, given) cell of a confusion matrix
MODEL_FLOOR = 0.02    # the model's probabilities are clipped here: an over-confident model cannot outvote two people
INTERVAL = 0.95       # level of the accuracy intervals


@dataclass
class Consensus:
    """Per task: ``label`` (MISSING without annotation or known label), ``confidence`` (nan where no
    model of the annotators can be fitted), ``posterior`` (N, K). Per annotator: ``accuracy`` with
    ``accuracy_low``/``accuracy_high`` (nan where unknown) and its ``accuracy_source`` ("honeypots",
    "consensus model" or "" when unknown), ``confusion`` (M, K, K; rows: true class, sums to 1, nan
    rows where unseen), ``counts`` (labels given), ``honeypots`` (known-label tasks each labelled).
    ``unavailable``: the figures that cannot be given, each with why."""

    label: np.ndarray
    confidence: np.ndarray
    posterior: np.ndarray
    accuracy: np.ndarray
    accuracy_low: np.ndarray
    accuracy_high: np.ndarray
    accuracy_source: list[str]
    confusion: np.ndarray
    counts: np.ndarray
    honeypots: np.ndarray
    method: str
    unavailable: list[str] = field(default_factory=list)


def majority_vote(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The most frequent label per task (ties: the lowest class index; MISSING where none).

    ``mv_i = argmax_k #{j : l_ij = k}``. The baseline the consensus is measured against.
    """
    counts = vote_counts(labels, n_classes)
    out = counts.argmax(axis=1)
    out[counts.sum(axis=1) == 0] = MISSING
    return out


def vote_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, K) how many annotators gave each class to each task."""
    labels = np.asarray(labels, dtype=int).reshape(len(labels), -1)
    return np.stack([(labels == k).sum(axis=1) for k in range(n_classes)], axis=1)


def _check(labels: np.ndarray, n_classes: int, pred_probs: np.ndarray | None, gold: np.ndarray | None,
           ) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=int).reshape(len(labels), -1)
    if ((labels < MISSING) | (labels >= n_classes)).any():
        raise ValueError(f"labels must be class indices 0..{n_classes - 1} or {MISSING}")
    if pred_probs is not None and np.shape(pred_probs) != (len(labels), n_classes):
        raise ValueError(f"pred_probs must be ({len(labels)}, {n_classes}), got {np.shape(pred_probs)}")
    g = np.full(len(labels), MISSING) if gold is None else np.asarray(gold, dtype=int)
    if g.shape != (len(labels),) or ((g < MISSING) | (g >= n_classes)).any():
        raise ValueError("gold must hold one class index or MISSING per task")
    return labels, g


def _model_prior(pred_probs: np.ndarray) -> np.ndarray:
    """The model's probabilities clipped at MODEL_FLOOR and renormalised: ``max(p, f) / sum_k max(p_k, f)``."""
    p = np.maximum(np.asarray(pred_probs, dtype=np.float64), MODEL_FLOOR)
    return p / p.sum(axis=1, keepdims=True)


def _e_step(labels: np.ndarray, log_pi: np.ndarray, base: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """``T_ik ∝ base_ik prod_j pi_j[k, l_ij]`` in logs; known labels are one-hot."""
    logt = np.log(base).copy()
    for j in range(labels.shape[1]):
        seen = labels[:, j] != MISSING
        logt[seen] += log_pi[j][:, labels[seen, j]].T
    logt -= logt.max(axis=1, keepdims=True)
    t = np.exp(logt)
    t /= t.sum(axis=1, keepdims=True)
    known = gold != MISSING
    t[known] = np.eye(base.shape[1])[gold[known]]
    return t


def soft_confusion(labels: np.ndarray, posterior: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """(M, K, K) ``C_j[k, l] = (a + sum_i T_ik [l_ij = l]) / row sum``; rows without mass are nan (a = 0)."""
    n_classes = posterior.shape[1]
    out = np.full((labels.shape[1], n_classes, n_classes), np.nan)
    for j in range(labels.shape[1]):
        seen = labels[:, j] != MISSING
        counts = smoothing + posterior[seen].T @ np.eye(n_classes)[labels[seen, j]]
        rows = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[j] = np.where(rows > 0, counts / np.where(rows > 0, rows, 1), np.nan)
    return out


def _identifiable(labels: np.ndarray, pred_probs: np.ndarray | None, gold: np.ndarray) -> bool:
    """A model of the annotators can be fitted with two labels of a task, a model, or a labelled honeypot."""
    per_task = (labels != MISSING).sum(axis=1)
    return bool((per_task >= 2).any() or pred_probs is not None or ((gold != MISSING) & (per_task > 0)).any())


def dawid_skene(labels: np.ndarray, n_classes: int, pred_probs: np.ndarray | None = None,
                gold: np.ndarray | None = None, max_iter: int = 100, tol: float = 1e-6) -> Consensus:
    """Consensus labels and annotator quality by Dawid-Skene EM (see the module's docstring).

    Starts from the majority vote (with the model's probabilities as one more vote). Degenerate
    inputs still answer: with one label per task, no model and no honeypot, nothing tells a good
    annotator from a bad one, so the label is the majority vote and confidence and accuracy are nan,
    and ``unavailable`` says so.
    """
    labels, g = _check(labels, n_classes, pred_probs, gold)
    if not _identifiable(labels, pred_probs, g):
        return _unfitted(labels, n_classes, g)
    counts = vote_counts(labels, n_classes).astype(np.float64)
    base = _model_prior(pred_probs) if pred_probs is not None else None
    t = counts + (base if base is not None else 0) + 1e-9
    t /= t.sum(axis=1, keepdims=True)
    known = g != MISSING
    t[known] = np.eye(n_classes)[g[known]]
    for _ in range(max_iter):
        log_pi = np.log(soft_confusion(labels, t, SMOOTHING))
        prior = base if base is not None else np.broadcast_to(t.mean(axis=0), t.shape)
        new = _e_step(labels, log_pi, prior, g)
        done = np.abs(new - t).max() < tol
        t = new
        if done:
            break
    return _result(labels, t, g, "dawid-skene" + (" + model" if base is not None else ""))


def _result(labels: np.ndarray, t: np.ndarray, gold: np.ndarray, method: str) -> Consensus:
    """The fitted posterior turned into labels, confidences and per-annotator figures."""
    has = ((labels != MISSING).sum(axis=1) > 0) | (gold != MISSING)
    label = np.where(has, t.argmax(axis=1), MISSING)
    confidence = np.where(has, t.max(axis=1), np.nan)
    acc, low, high, source = annotator_accuracy(labels, t, gold)
    unavailable = [] if (gold != MISSING).any() else ["accuracy from honeypots: no task has a known label"]
    if (labels != MISSING).sum(axis=1).max(initial=0) < 2:
        unavailable.append("agreement between annotators: no task has two annotations")
    return Consensus(label, confidence, t, acc, low, high, source, soft_confusion(labels, t),
                     (labels != MISSING).sum(axis=0), ((labels != MISSING) & (gold != MISSING)[:, None]).sum(axis=0),
                     method, unavailable)


def _unfitted(labels: np.ndarray, n_classes: int, gold: np.ndarray) -> Consensus:
    """One label per task, no model, no honeypot: the majority vote, nothing estimated."""
    n, m = labels.shape
    label = majority_vote(labels, n_classes)
    post = np.full((n, n_classes), np.nan)
    nan = np.full(m, np.nan)
    why = ("no task has two annotations, no known label and no model probabilities, so nothing tells a good "
           "annotator from a bad one")
    return Consensus(label, np.full(n, np.nan), post, nan, nan.copy(), nan.copy(), [""] * m,
                     np.full((m, n_classes, n_classes), np.nan), (labels != MISSING).sum(axis=0), np.zeros(m, int),
                     "majority vote", [f"consensus confidence: {why}", f"annotator accuracy: {why}"])


def annotator_accuracy(labels: np.ndarray, posterior: np.ndarray, gold: np.ndarray,
                       level: float = INTERVAL) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per annotator: accuracy, interval low and high, and where it comes from.

    From honeypots where the annotator labelled any: ``k`` right of ``n``, Clopper-Pearson interval
    (scipy's ``binomtest``). Else from the consensus model: ``s = sum_i T_i[l_ij]`` expected right of
    ``n`` labels, the interval of a Beta(s + 1/2, n - s + 1/2) (Jeffreys) posterior; it ignores the
    model's own uncertainty, so it is the narrower of the two.
    """
    m = labels.shape[1]
    acc, low, high, source = np.full(m, np.nan), np.full(m, np.nan), np.full(m, np.nan), [""] * m
    for j in range(m):
        seen = labels[:, j] != MISSING
        hp = seen & (gold != MISSING)
        if hp.any():
            k, n = int((labels[hp, j] == gold[hp]).sum()), int(hp.sum())
            ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
            acc[j], low[j], high[j], source[j] = k / n, ci.low, ci.high, "honeypots"
        elif seen.any() and np.isfinite(posterior[seen]).all():
            s, n = float(posterior[seen, labels[seen, j]].sum()), int(seen.sum())
            lo, hi = stats.beta.ppf([(1 - level) / 2, (1 + level) / 2], s + 0.5, n - s + 0.5)
            acc[j], low[j], high[j], source[j] = s / n, lo, hi, "consensus model"
    return acc, low, high, source


def crowdlab(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CROWDLAB's consensus label and quality score per task (cleanlab.multiannotator), for comparison.

    Tasks without any annotation are MISSING / nan (cleanlab needs at least one label per row). One
    annotator: the label itself, scored by cleanlab's single-label ``get_label_quality_scores``.
    """
    from cleanlab.multiannotator import get_label_quality_multiannotator
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=int).reshape(len(labels), -1)
    has = (labels != MISSING).any(axis=1)
    if labels.shape[1] == 1:
        label, score = labels[:, 0].copy(), np.full(len(labels), np.nan)
        score[has] = get_label_quality_scores(labels[has, 0], np.asarray(pred_probs)[has])
        return label, score
    wide = np.where(labels[has] == MISSING, np.nan, labels[has].astype(float))
    res = get_label_quality_multiannotator(wide, np.asarray(pred_probs)[has], verbose=False,
                                           return_annotator_stats=False, return_detailed_quality=False)
    label, score = np.full(len(labels), MISSING), np.full(len(labels), np.nan)
    label[has] = res["label_quality"]["consensus_label"].to_numpy()
    score[has] = res["label_quality"]["consensus_quality_score"].to_numpy()
    return label, score


def relabel_scores(labels: np.ndarray, pred_probs: np.ndarray, pred_probs_unlabelled: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """ActiveLab (cleanlab ``get_active_learning_scores``): how little another label would add, per
    labelled task and per unlabelled one, on one scale (lowest: label next, be it a new task or a
    second opinion on a labelled one)."""
    from cleanlab.multiannotator import get_active_learning_scores

    labels = np.asarray(labels, dtype=int).reshape(len(labels), -1)
    wide = np.where(labels == MISSING, np.nan, labels.astype(float))
    return get_active_learning_scores(wide, np.asarray(pred_probs), np.asarray(pred_probs_unlabelled))
