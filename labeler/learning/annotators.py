"""Annotator quality beyond the consensus model: agreement, speed and automation bias.

Pure functions on the same ``labels`` matrix as :mod:`labeler.models.consensus` (N tasks, M annotators,
:data:`~labeler.models.consensus.MISSING` where an annotator did not label a task). Agreement uses
scikit-learn's ``cohen_kappa_score`` per pair and the ``krippendorff`` package for the project. Each
figure that the data cannot give is None, and the report's ``unavailable`` says why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from labeler.models.consensus import MISSING, Consensus


def pairwise_kappa(labels: np.ndarray, min_shared: int = 2) -> np.ndarray:
    """(M, M) Cohen's kappa of every pair on the tasks both labelled, ``(p_o - p_e) / (1 - p_e)``.

    nan where a pair shares fewer than ``min_shared`` tasks or kappa is undefined (both gave one
    and the same class to every shared task: ``p_e = 1``); the diagonal is 1.
    """
    labels = np.asarray(labels, dtype=int)
    m = labels.shape[1]
    out = np.full((m, m), np.nan)
    np.fill_diagonal(out, 1.0)
    for a in range(m):
        for b in range(a + 1, m):
            both = (labels[:, a] != MISSING) & (labels[:, b] != MISSING)
            if both.sum() < min_shared:
                continue
            x, y = labels[both, a], labels[both, b]
            if len(set(x.tolist()) | set(y.tolist())) < 2:
                continue  # one class only: chance agreement is 1, kappa 0/0
            out[a, b] = out[b, a] = cohen_kappa_score(x, y)
    return out


def krippendorff_alpha(labels: np.ndarray) -> float | None:
    """Krippendorff's alpha (nominal) of the whole project, ``1 - D_o / D_e``; None without a task of two
    labels or with a single class in all of them (``D_e = 0``)."""
    import krippendorff

    labels = np.asarray(labels, dtype=int)
    pairable = (labels != MISSING).sum(axis=1) >= 2
    if not pairable.any() or len(np.unique(labels[pairable][labels[pairable] != MISSING])) < 2:
        return None
    data = np.where(labels[pairable] == MISSING, np.nan, labels[pairable].astype(float)).T
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def speed(lead_times: np.ndarray) -> dict[str, np.ndarray]:
    """Per annotator (columns of ``lead_times``, seconds, nan where none): median and count of the
    annotations that carry Label Studio's ``lead_time`` (the time spent on the task)."""
    lt = np.asarray(lead_times, dtype=np.float64)
    with np.errstate(all="ignore"):
        counts = np.isfinite(lt).sum(axis=0)
        median = np.array([np.nanmedian(c) if np.isfinite(c).any() else np.nan for c in lt.T])
    return {"median_s": median, "timed": counts}


def _rate(hits: np.ndarray, level: float = 0.95) -> dict:
    """A proportion with its Clopper-Pearson interval; ``None`` values when ``hits`` is empty."""
    n, k = int(len(hits)), int(np.sum(hits))
    if not n:
        return {"rate": None, "low": None, "high": None, "n": 0}
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return {"rate": k / n, "low": float(ci.low), "high": float(ci.high), "n": n}


def automation_bias(labels: np.ndarray, reference: np.ndarray, shown: np.ndarray, control: np.ndarray,
                    gold: np.ndarray) -> list[dict]:
    """Per annotator: accuracy on control tasks (labelled blind: no pre-annotation) against accuracy on
    pre-annotated ones, and how often a wrong preselected answer was accepted on honeypots.

    ``reference``: the label each task is scored against (known label, else the consensus; MISSING to
    leave it out). ``shown``: the class preselected on each task (MISSING: none shown). ``control``:
    bool per task. The wrong-answer rate is ``#{l_ij = shown_i != gold_i} / #{shown_i != gold_i}`` over
    the honeypots the annotator labelled. The ``gap`` is accuracy with pre-annotation minus blind:
    positive when the preselected answer helps, negative when it misleads.
    """
    labels = np.asarray(labels, dtype=int)
    out = []
    for j in range(labels.shape[1]):
        seen = (labels[:, j] != MISSING) & (reference != MISSING)
        blind = _rate(labels[seen & control, j] == reference[seen & control])
        assisted = _rate(labels[seen & ~control & (shown != MISSING), j] == reference[seen & ~control & (shown != MISSING)])
        trap = (labels[:, j] != MISSING) & (gold != MISSING) & (shown != MISSING) & (shown != gold)
        accepted = _rate(labels[trap, j] == shown[trap])
        gap = None if blind["rate"] is None or assisted["rate"] is None else assisted["rate"] - blind["rate"]
        out.append({"blind": blind, "preannotated": assisted, "gap": gap, "accepted_wrong": accepted})
    return out


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def _annotator_row(name: str, j: int, c: Consensus, classes: Sequence[str], kappa: np.ndarray,
                   names: Sequence[str], sp: dict, bias: dict) -> dict:
    """One annotator's figures, JSON-ready."""
    confusion = {t: {g: _num(c.confusion[j, a, b]) for b, g in enumerate(classes)} for a, t in enumerate(classes)}
    return {"annotator": name, "labels": int(c.counts[j]), "honeypots": int(c.honeypots[j]),
            "accuracy": _num(c.accuracy[j]), "accuracy_low": _num(c.accuracy_low[j]),
            "accuracy_high": _num(c.accuracy_high[j]), "accuracy_source": c.accuracy_source[j] or None,
            "confusion": confusion,
            "kappa": {other: _num(kappa[j, k]) for k, other in enumerate(names) if k != j},
            "median_lead_time_s": _num(sp["median_s"][j]), "timed_labels": int(sp["timed"][j]),
            "automation_bias": bias}


def quality_report(names: Sequence[str], classes: Sequence[str], labels: np.ndarray, consensus: Consensus,
                   lead_times: np.ndarray, shown: np.ndarray, control: np.ndarray, gold: np.ndarray) -> dict:
    """Everything the admin page, its JSON and ``labeler annotators`` show, with what cannot be given."""
    labels = np.asarray(labels, dtype=int)
    reference = np.where(gold != MISSING, gold, consensus.label)
    kappa, sp = pairwise_kappa(labels), speed(lead_times)
    bias = automation_bias(labels, reference, shown, control, gold)
    alpha = krippendorff_alpha(labels)
    unavailable = list(consensus.unavailable)
    if alpha is None:
        unavailable.append("Krippendorff's alpha: no task has two annotations of different classes in the project")
    if not np.asarray(control, dtype=bool).any():
        unavailable.append("accuracy on blind control tasks: no control task (LABELER_CONTROL_RATE) is labelled")
    if not ((gold != MISSING) & (shown != MISSING) & (shown != gold)).any():
        unavailable.append("accepting a wrong preselected answer: no honeypot showed a wrong pre-annotation")
    rows = [_annotator_row(n, j, consensus, classes, kappa, names, sp, bias[j]) for j, n in enumerate(names)]
    labelled = consensus.label != MISSING
    return {"annotators": rows, "krippendorff_alpha": _num(alpha) if alpha is not None else None,
            "method": consensus.method, "tasks": int(labelled.sum()),
            "tasks_with_overlap": int(((labels != MISSING).sum(axis=1) >= 2).sum()),
            "honeypot_tasks": int((gold != MISSING).sum()), "control_tasks": int(np.sum(control)),
            "model_accuracy": _num(consensus.model_accuracy) if consensus.model_accuracy is not None else None,
            "mean_consensus_confidence": _num(float(np.nanmean(consensus.confidence[labelled])))
            if labelled.any() and np.isfinite(consensus.confidence[labelled]).any() else None,
            "unavailable": unavailable}
