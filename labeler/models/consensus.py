"""Consensus labels from a model of the annotators (Dawid & Skene, 1979), the classifier as one more voter.

Input: ``labels`` (N tasks, M annotators) of class indices, :data:`MISSING` where an annotator did not
label a task; optionally the classifier's out-of-fold probabilities ``pred_probs`` (N, K; a nan row: no
answer for that task) and known
labels ``gold`` (N,) (Label Studio ``ground_truth`` annotations or a CSV of honeypots).

Each annotator ``j`` has a confusion matrix ``pi_j[k, l] = P(j says l | true class k)``. EM alternates

    E:  T_ik  ∝  base_ik * prod_{j labelled i} pi_j[k, l_ij]
    M:  pi_j[k, l] = (a + sum_i T_ik [l_ij = l]) / (K a + sum_i T_ik [j labelled i])

where ``base`` is the class prior ``rho`` (the mean of ``T``). The classifier's answer
``argmax_k p(k | x_i)`` (out-of-fold) is one more voter whose confusion matrix EM fits like a person's:
a weak model earns little weight, a good one settles the tasks where people split. (Its probabilities as
the task's prior, CROWDLAB's choice, let a confident but wrong model outvote people once the annotators'
accuracy drifted; :func:`crowdlab` runs that for comparison.) Known labels fix ``T_i`` to their class
(ground truth wins) and teach ``pi`` the most. ``a`` keeps an unseen (true, given) pair from a zero that
no later evidence could move; each annotator's matrix is shrunk toward a one-coin matrix of its own
accuracy (:func:`fit_confusion`) and fitted only on tasks that identify it (:func:`informative`).
The consensus label is ``argmax_k T_ik`` and its confidence ``max_k T_ik``.

This module is pure (numpy in, numpy out) and below :mod:`labeler.studio`, whose label rule uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

MISSING = -1
SMOOTHING = 0.5       # Dirichlet pseudo-count per (true, given) cell of a confusion matrix
# People are taken to be better than chance: without it EM on a few disputed tasks (those a relabelling
# queue picks) can settle on the mirror image, every label flipped and every annotator "below chance".
PRIOR_ACCURACY, PRIOR_LABELS = 0.8, 10.0
SHRINK = 5.0          # pseudo-labels per true class that pull an annotator's confusion toward the team's
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
    model_accuracy: float | None = None  # the classifier's, when its answers voted


def as_matrix(labels: np.ndarray) -> np.ndarray:
    """``labels`` as an (N, M) int matrix (one column: a vector; N or M may be 0)."""
    out = np.asarray(labels, dtype=int)
    return out[:, None] if out.ndim == 1 else out.reshape(out.shape[0], -1) if out.ndim != 2 else out


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
    labels = as_matrix(labels)
    return np.stack([(labels == k).sum(axis=1) for k in range(n_classes)], axis=1)


def _check(labels: np.ndarray, n_classes: int, pred_probs: np.ndarray | None, gold: np.ndarray | None,
           ) -> tuple[np.ndarray, np.ndarray]:
    labels = as_matrix(labels)
    if ((labels < MISSING) | (labels >= n_classes)).any():
        raise ValueError(f"labels must be class indices 0..{n_classes - 1} or {MISSING}")
    if pred_probs is not None and np.shape(pred_probs) != (len(labels), n_classes):
        raise ValueError(f"pred_probs must be ({len(labels)}, {n_classes}), got {np.shape(pred_probs)}")
    g = np.full(len(labels), MISSING) if gold is None else np.asarray(gold, dtype=int)
    if g.shape != (len(labels),) or ((g < MISSING) | (g >= n_classes)).any():
        raise ValueError("gold must hold one class index or MISSING per task")
    return labels, g


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


def confusion_counts(labels: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """(M, K, K) expected counts ``sum_i T_ik [l_ij = l]`` of (true k, given l) per annotator."""
    n_classes = posterior.shape[1]
    out = np.zeros((labels.shape[1], n_classes, n_classes))
    for j in range(labels.shape[1]):
        seen = labels[:, j] != MISSING
        out[j] = posterior[seen].T @ np.eye(n_classes)[labels[seen, j]]
    return out


def soft_confusion(labels: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """(M, K, K) ``C_j[k, l] = sum_i T_ik [l_ij = l] / sum_i T_ik [j labelled i]``; rows without mass are nan."""
    counts = confusion_counts(labels, posterior)
    rows = counts.sum(axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, counts / np.where(rows > 0, rows, 1), np.nan)


def informative(labels: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """The tasks that say something of the annotators: two labels or more, or a labelled honeypot.

    A task one person labelled fits any accuracy (its label can be right or wrong with any prior), so
    EM on such tasks drifts; the confusion matrices are fitted on informative tasks only.
    """
    per_task = (labels != MISSING).sum(axis=1)
    return (per_task >= 2) | ((gold != MISSING) & (per_task > 0))


def one_coin(accuracy: np.ndarray, n_classes: int) -> np.ndarray:
    """(M, K, K) matrices of annotators right with ``accuracy``, else any wrong class alike:
    ``a`` on the diagonal, ``(1 - a) / (K - 1)`` off it."""
    acc = np.asarray(accuracy, dtype=np.float64)[:, None, None]
    eye = np.eye(n_classes)[None]
    return acc * eye + (1 - acc) / max(n_classes - 1, 1) * (1 - eye)


def fit_confusion(labels: np.ndarray, posterior: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(M, K, K) confusion matrices fitted on ``rows``, each shrunk toward a one-coin matrix:

        a_j = max((sum_k C_j[k, k] + S a) / (n_j + S), 1/K + 0.01),   a = (sum_j tr C_j + 10 * 0.8) / (n + 10)
        pi_j[k, l] = (C_j[k, l] + S one_coin(a_j)[k, l] + eps) / row sum

    with ``C_j`` the expected counts on ``rows`` and ``S`` = :data:`SHRINK` pseudo-labels: a true class
    an annotator was seldom seen on (with ten classes and a few overlapping tasks, most) is taken to be
    labelled with that annotator's overall accuracy, not like a coin toss.
    """
    counts = confusion_counts(labels[rows], posterior[rows])
    n_classes = posterior.shape[1]
    right, seen = np.trace(counts, axis1=1, axis2=2), counts.sum(axis=(1, 2))
    team = (right.sum() + PRIOR_LABELS * PRIOR_ACCURACY) / (seen.sum() + PRIOR_LABELS)
    own = np.maximum((right + SHRINK * team) / (seen + SHRINK), 1 / n_classes + 0.01)  # better than chance
    pi = counts + SHRINK * one_coin(own, n_classes) + 1e-3
    return pi / pi.sum(axis=2, keepdims=True)


def dawid_skene(labels: np.ndarray, n_classes: int, pred_probs: np.ndarray | None = None,
                gold: np.ndarray | None = None, max_iter: int = 100, tol: float = 1e-6) -> Consensus:
    """Consensus labels and annotator quality by Dawid-Skene EM (see the module's docstring).

    Starts from the majority vote (the model's answer one more vote); the confusion
    matrices are fitted on the :func:`informative` tasks. Degenerate inputs still answer: with no task
    of two labels and no labelled honeypot, nothing tells a good annotator from a bad one, so the
    label is the majority vote (one label: that label), confidence and accuracy are nan, and
    ``unavailable`` says so.
    """
    labels, g = _check(labels, n_classes, pred_probs, gold)
    rows = informative(labels, g)
    if not rows.any():
        return _unfitted(labels, n_classes, g)
    people = labels.shape[1]
    if pred_probs is not None:  # the model's answer is one more column, its confusion fitted like a person's
        p = np.asarray(pred_probs, dtype=np.float64)
        scored = np.isfinite(p).all(axis=1)  # a nan row: the model abstains on that task
        answer = np.where(scored, np.nan_to_num(p).argmax(axis=1), MISSING)
        labels = np.c_[labels, np.where((labels != MISSING).any(axis=1) | (g != MISSING), answer, MISSING)]
    # start from the people's vote, the model's only breaking ties: starting with it as an equal lets EM
    # settle on "the model is right, the people are noise"
    t = vote_counts(labels[:, :people], n_classes) + 0.5 * vote_counts(labels[:, people:], n_classes) + 1e-9
    t /= t.sum(axis=1, keepdims=True)
    known = g != MISSING
    t[known] = np.eye(n_classes)[g[known]]
    has = (labels[:, :people] != MISSING).any(axis=1) | known
    for _ in range(max_iter):
        log_pi = np.log(fit_confusion(labels, t, rows))
        prior = (t[has].sum(axis=0) + 1) / (has.sum() + n_classes)  # rho over every labelled task, Laplace
        new = _e_step(labels, log_pi, np.broadcast_to(prior, t.shape), g)
        done = np.abs(new - t).max() < tol
        t = new
        if done:
            break
    result = _result(labels[:, :people], t, g, rows, "dawid-skene" + (" + model" if pred_probs is not None else ""))
    if pred_probs is not None:
        result.model_accuracy = annotator_accuracy(np.where(rows[:, None], labels[:, people:], MISSING), t, g)[0][0]
    return result


def _result(labels: np.ndarray, t: np.ndarray, gold: np.ndarray, rows: np.ndarray, method: str) -> Consensus:
    """The fitted posterior turned into labels, confidences and per-annotator figures (accuracy and
    confusion from the informative ``rows``: elsewhere an annotator's own label sways the posterior)."""
    has = ((labels != MISSING).sum(axis=1) > 0) | (gold != MISSING)
    label = np.where(has, t.argmax(axis=1), MISSING)
    confidence = np.where(has, t.max(axis=1), np.nan)
    acc, low, high, source = annotator_accuracy(np.where(rows[:, None], labels, MISSING), t, gold)
    unavailable = [] if (gold != MISSING).any() else ["accuracy from honeypots: no task has a known label"]
    if (labels != MISSING).sum(axis=1).max(initial=0) < 2:
        unavailable.append("agreement between annotators: no task has two annotations")
    unseen = [j for j in range(labels.shape[1]) if not np.isfinite(acc[j]) and (labels[:, j] != MISSING).any()]
    if unseen:
        unavailable.append(f"accuracy of annotators {unseen} (columns): none of their tasks has a second label or a "
                           "known one")
    return Consensus(label, confidence, t, acc, low, high, source, soft_confusion(np.where(rows[:, None], labels, MISSING), t),
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

    labels = as_matrix(labels)
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

    labels = as_matrix(labels)
    wide = np.where(labels == MISSING, np.nan, labels.astype(float))
    return get_active_learning_scores(wide, np.asarray(pred_probs), np.asarray(pred_probs_unlabelled))
