"""Certified auto-accept: which of the model's labels may stand without a person, with a guarantee.

The guarantee. Among the tasks the model labels unaided ("accepted"), the share of wrong labels
is at most ``eps``, with probability at least ``1 - delta`` over the audit draw. Nothing is assumed
about the images, the labels or the model: the only randomness is the audit's, which labeler draws
itself (a design-based guarantee), so it holds on any data set. It needs the scores to be fixed
before the audit is drawn: the certified model version must not have seen the audit's labels.

The design.

1. **The audit** is a Bernoulli sample of the pool (the tasks nobody has labelled): each task is
   drawn independently with a known probability ``f`` (per stratum), and people label the drawn
   ones. For any fixed set ``P`` of pool tasks holding ``E`` model errors, the number of errors the
   audit sees in ``P`` is then exactly ``Binomial(E, f)``, whatever else is true.
2. **The candidates** are prefixes of the pool sorted by the model's confidence, most confident
   first: "accept the top ``j``". For prefix ``j`` the null hypothesis is ``H_j: E_j >= E0_j`` with
   ``E0_j = floor(eps * (j - q_j)) + 1``, ``q_j`` the 95th percentile of the audit's share of the
   prefix (:func:`null_errors`): fewer errors keep "at most ``eps`` of what the model labels is
   wrong" true. Its exact p-value, with ``k_j`` audited errors, is
   ``p_j = P(Binomial(E0_j, f) <= k_j)`` (``scipy.stats.binom.cdf``; the cdf falls as ``E`` grows,
   so ``E0_j`` is the worst case). Audit tasks not yet labelled count as errors in ``k_j``.
3. **The threshold search** is Learn-then-Test with fixed-sequence testing (Angelopoulos et al.,
   2021): test ``j`` from a start outwards, in 1 % steps, and stop at the first ``p_j > delta'``.
   Fixed-sequence testing controls the family-wise error at ``delta'`` with no multiplicity
   penalty: every rejected ``H_j`` is false (``E_j < E0_j``) with probability ``>= 1 - delta'``.
   The start is the plan's (:class:`AuditPlan`, from the scores) and never before the smallest
   prefix that could pass with one audit error (:func:`first_prefix`): both are fixed before the
   draw and read no label. Prefixes are exact counts, ties in score split by task order.
4. **The bound actually achieved** on the accepted tasks (the prefix minus every task a person
   labelled, audit or not) is then ``(E0_j - 1 - k_known) / m``: the errors left after those
   people found (audit or later labels, ``k_known``), over the ``m`` tasks that keep the model's
   label. The certified prefix is the largest rejected one whose bound is ``<= eps`` (it fails where
   the audit took an unusually large share of the prefix, or where held-back classes or later
   labels leave few tasks to the model); choosing among rejected hypotheses keeps the error control.
   A prefix where people have already found ``E0_j`` errors or more is not rejected: the data
   prove its hypothesis.
5. **Per class** (``per_class=True``) the pool is stratified by the model's predicted class: each
   class gets its own audit rate, prefix search and level ``delta' / K``; by Bonferroni every
   class's claim holds at once with probability ``>= 1 - delta'``, and so does the overall one (a
   weighted mean of per-class rates). A class that cannot pass its first test is named: it blocks,
   and its tasks need a person while the other classes are certified. So is a class the plan finds
   not worth auditing (rate 0: it expects nothing accepted at this target) or whose draw came out
   empty. A rate-0 class is fixed before the draw and can accept nothing, so ``K`` counts only the
   classes audited at a rate above 0.
   Without it (the default) one stratum is certified at ``delta'``, which needs about half the
   audit labels for two classes; the per-class errors are then *estimated*, not certified.
6. **Rounds**: a certificate uses one audit round. Drawing another after looking at the first (for
   a larger audit, or a newer model version) is a new, independent round from the pool as it is
   then; round ``r`` is certified at ``delta_r`` (``0.8 * delta`` for the first, then
   ``0.1, 0.05, ... * delta``), so all rounds together keep ``delta``.

Multi-label projects: a task's label is its whole set and it counts as wrong when any class is
wrong, so the certificate bounds the share of accepted tasks with any wrong class (subset error,
which bounds the Hamming error per class too); its confidence is that of its least certain class.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import beta, binom, poisson

from labeler.errors import LabelerError
from labeler.models.uncertainty import multilabel_uncertainty

#: Defaults: at most 2 % wrong labels among the accepted tasks, with 95 % probability.
DEFAULT_EPS, DEFAULT_DELTA = 0.02, 0.05
#: Share of ``delta`` the first audit round spends; later rounds share the rest.
FIRST_ROUND_SHARE = 0.8
#: Prefix sizes tried, as fractions of a stratum (1 % steps).
GRID_STEP = 0.01


class CertificateError(LabelerError, ValueError):
    """A certificate cannot be issued as asked; the message says what is missing."""
    status = 400
    exit_code = 2


def check_levels(eps: float, delta: float) -> None:
    """Both must lie strictly between 0 and 1."""
    for name, v in (("eps (target error rate)", eps), ("delta (1 - confidence)", delta)):
        if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < 1 and math.isfinite(v)):
            raise CertificateError(f"{name} must lie strictly between 0 and 1, got {v!r}")


def round_delta(delta: float, round_no: int) -> float:
    """The level audit round ``round_no`` (1, 2, ...) is certified at; they sum to ``delta``.

    ``delta_1 = 0.8 delta``; ``delta_r = 0.2 delta / 2^(r-1)`` for ``r >= 2`` (0.1, 0.05, ...).
    """
    if round_no < 1:
        raise ValueError(f"audit rounds count from 1, got {round_no}")
    return delta * (FIRST_ROUND_SHARE if round_no == 1 else (1 - FIRST_ROUND_SHARE) / 2 ** (round_no - 1))


def clopper_pearson_lower(k: int | np.ndarray, n: int | np.ndarray, delta: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound on a binomial proportion at level ``delta``.

    ``L = Beta.ppf(delta, k, n - k + 1)`` (0 when ``k = 0``): the smallest ``p`` with
    ``P(Binomial(n, p) >= k) >= delta``.
    """
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(k > 0, beta.ppf(delta, np.maximum(k, 1e-300), np.maximum(n - k + 1, 1e-300)), 0.0)


def null_errors(eps: float, prefix: np.ndarray | int, f: float) -> np.ndarray:
    """``E0_j = floor(eps * (j - q_j)) + 1``, ``q_j`` the 95th percentile of ``Binomial(j, f)``.

    The claim for prefix ``j`` is "at most ``eps`` of the tasks left to the model are wrong"; about
    ``f * j`` of the prefix goes to the audit, and rarely more than ``q_j``, so ``E_j < E0_j`` errors
    in the prefix keep that claim true whenever the audit took no more than ``q_j`` of it (checked
    on the draw: see the bound in :func:`certify_stratum`).
    """
    j = np.asarray(prefix)
    return np.floor(eps * (j - binom.ppf(0.95, j, f)) + 1e-9).astype(int).clip(min=0) + 1


def error_count_pvalue(k: int | np.ndarray, e0: int | np.ndarray, f: float) -> np.ndarray:
    """``P(Binomial(E0, f) <= k)``: the exact p-value of "the set holds ``E0`` errors or more"
    when each of its tasks was audited with probability ``f`` and ``k`` audited errors were seen."""
    return binom.cdf(np.asarray(k), np.asarray(e0), f)


def first_prefix(eps: float, delta: float, f: float, size: int, tolerance: int = 1) -> int:
    """Where the search starts: the smallest prefix that would pass its test with ``tolerance`` audit
    errors (``P(Binomial(E0_j, f) <= tolerance) <= delta``), or with none if no prefix allows
    ``tolerance``; ``size + 1`` when no prefix can pass at all.

    The start depends on the scores' count and the audit rate only, never on labels, as a
    fixed-sequence test needs. Smaller prefixes would have to be error-free to pass, so one stray
    error in the most confident tasks would end the search at once; starting where one error is
    tolerated makes the certificate robust to it.
    """
    if f <= 0:
        return size + 1
    for tol in ((tolerance, 0) if tolerance > 0 else (0,)):
        lo, hi = 1, size
        if error_count_pvalue(tol, int(null_errors(eps, size, f)), f) > delta:
            continue
        while lo < hi:  # p-values fall as the prefix (and so E0) grows
            mid = (lo + hi) // 2
            if error_count_pvalue(tol, int(null_errors(eps, mid, f)), f) <= delta:
                hi = mid
            else:
                lo = mid + 1
        return lo
    return size + 1


@dataclass
class StratumResult:
    """One stratum's certificate (the whole pool, or the tasks the model gives one class)."""

    name: str
    size: int                 # pool tasks in the stratum at the draw
    rate: float               # audit inclusion probability f
    level: float              # the delta' its search ran at
    audited: int              # audit tasks drawn in the stratum
    audit_labelled: int
    audit_errors: int         # among the labelled audit tasks (all of them, in or out of the prefix)
    prefix: int               # tasks of the stratum in the certified prefix (0: none)
    threshold: float | None   # lowest confidence in the prefix (ties split by task order; None: none)
    accepted: int             # prefix tasks that keep the model's label
    bound: float | None       # certified upper bound on their error rate
    estimate: float | None    # audit estimate of the error rate in the prefix (not a bound)
    blocked: str | None = None  # why nothing could be accepted
    tests: list[dict] = field(default_factory=list)  # prefix, p-value, errors seen, passed
    held_back: list[str] = field(default_factory=list)  # predicted classes left to people (:func:`held_back`)


def certify_stratum(name: str, scores: np.ndarray, audited: np.ndarray, wrong: np.ndarray,
                    human: np.ndarray, eps: float, level: float, rate: float, start: int | None = None,
                    groups: np.ndarray | None = None, delta: float = DEFAULT_DELTA) -> tuple[StratumResult, np.ndarray]:
    """Search one stratum's prefixes; returns its result and the mask of the certified prefix (the
    tasks accepted are those of it that no person labelled, outside the classes held back).

    ``scores``: the model's confidence per task; ``audited``: drawn into the audit; ``wrong``: 1 where
    a person's label contradicts the model, 0 where it agrees, NaN where no person has labelled the
    task (for audit tasks, NaN counts as an error until labelled); ``human``: labelled by a person
    after the draw (audit or not). The prefix order is by score, ties broken by position.
    ``start``: the first prefix tested, fixed before any audit label is seen (the plan's; default
    :func:`first_prefix`). ``groups``: the predicted class per task, to hold back classes the audit
    does not vouch for (:func:`held_back`, at ``delta``); the bound is then over the tasks left.
    """
    n = len(scores)
    order = np.lexsort((np.arange(n), -np.asarray(scores, dtype=float)))
    names, codes = np.unique(np.zeros(n, int) if groups is None else np.asarray(groups), return_inverse=True)
    c = _PrefixCounts.of(np.asarray(audited, bool)[order], np.asarray(wrong, float)[order],
                         np.asarray(human, bool)[order], codes[order] if groups is not None else None)
    res = StratumResult(name, n, rate, level, int(c.audited.sum()), int(c.labelled_audit.sum()),
                        int((c.labelled_audit & c.known_err).sum()), 0, None, 0, None, None)
    if not c.audited.any():  # per class: nothing vouches for the class, it accepts nothing
        res.blocked = _unaudited(n, rate)
        return res, np.zeros(n, bool)
    start = max(start or 0, first_prefix(eps, level, rate, n))
    if start > n:
        res.blocked = (f"an audit rate of {rate:.3f} over {n} tasks cannot certify {eps:g} at this confidence "
                       "even with no error found: draw a larger audit")
        return res, np.zeros(n, bool)
    best, res.bound, held = _search(c, eps, level, rate, start, res.tests, delta)
    if not best:
        res.blocked = _why_blocked(res.tests[0], start, level)
        return res, np.zeros(n, bool)
    mask = np.zeros(n, bool)
    mask[order[:best]] = True
    if held.any():  # the prefix stays whole (its region is reported); certify() leaves these to people
        res.held_back = [str(x) for x in names[held]]
    res.prefix, res.accepted = best, int(c.kept(best, held))
    res.threshold = float(np.asarray(scores, float)[order][best - 1])
    seen = c.labelled_audit[:best]
    res.estimate = float(c.known_err[:best][seen].mean()) if seen.any() else None
    return res, mask


def _why_blocked(t: dict, start: int, level: float) -> str:
    """Why the search accepted nothing, from its first test."""
    if t["rejected"]:
        return ("no passing prefix leaves its tasks to the model within eps "
                "(the audit or people's labels took too large a share of them)")
    if t["known_errors"] >= t["null_errors"]:
        return (f"people's labels already show {t['known_errors']} model error(s) among the {start} most confident "
                f"tasks, more than eps allows there ({t['null_errors'] - 1})")
    return (f"{t['audit_errors']} audit error(s) (or unlabelled audit tasks) among the {start} most confident "
            f"tasks: p = {t['p_value']:.3g} > {level:.3g}")


@dataclass
class _PrefixCounts:
    """Per task in prefix order (most confident first), and counts over each prefix; per class too
    (rows of ``g_*``, one per predicted class) when classes may be held back."""

    audited: np.ndarray
    known_err: np.ndarray       # a person's label contradicts the model
    labelled_audit: np.ndarray
    k_test: np.ndarray          # audited errors for the test, unlabelled audit tasks counted as errors
    k_known: np.ndarray         # errors people found (audit or later labels): not among the accepted
    keep: np.ndarray            # tasks that keep the model's label
    g_keep: np.ndarray | None = None
    g_audit: np.ndarray | None = None   # labelled audit tasks
    g_err: np.ndarray | None = None     # of which the model got wrong

    @classmethod
    def of(cls, a: np.ndarray, w: np.ndarray, human: np.ndarray, groups: np.ndarray | None = None) -> "_PrefixCounts":
        h = human | a
        known_err = np.nan_to_num(w, nan=0.0) > 0
        lab = a & ~np.isnan(w)
        out = cls(a, known_err, lab, np.cumsum(a & (known_err | np.isnan(w))), np.cumsum(h & known_err),
                  np.cumsum(~h))
        if groups is not None:
            one_hot = groups[None, :] == np.arange(groups.max() + 1)[:, None]
            out.g_keep, out.g_audit = np.cumsum(one_hot & ~h, axis=1), np.cumsum(one_hot & lab, axis=1)
            out.g_err = np.cumsum(one_hot & lab & known_err, axis=1)
        return out

    def held(self, j: int, eps: float, delta: float) -> np.ndarray:
        """The classes :func:`held_back` leaves to people in prefix ``j`` (none without classes)."""
        if self.g_audit is None or self.g_err is None:
            return np.zeros(1, bool)
        return held_back(self.g_err[:, j - 1], self.g_audit[:, j - 1], eps, delta)

    def kept(self, j: int, held: np.ndarray) -> int:
        """Tasks of prefix ``j`` that keep the model's label, the held-back classes' excluded."""
        if self.g_keep is None or not held.any():
            return int(self.keep[j - 1])
        return int(self.keep[j - 1] - self.g_keep[held, j - 1].sum())


def held_back(errors: np.ndarray, audited: np.ndarray, eps: float, delta: float) -> np.ndarray:
    """Which predicted classes an overall certificate leaves to people: those with no labelled audit
    task in the accepted region (nothing vouches for them), and those whose audit errors put even the
    one-sided Clopper-Pearson *lower* bound of their error rate (at ``delta``) above ``eps``: the audit
    shows them worse than the target. A rare class the model gets wrong is then not carried by the
    other classes' good record, and its few tasks cost little to label. Leaving tasks to people never
    weakens the overall guarantee: the bound is recomputed over the tasks that remain.
    """
    audited = np.asarray(audited, float)
    return (audited < 1) | (clopper_pearson_lower(errors, audited, delta) > eps)


def _search(c: _PrefixCounts, eps: float, level: float, rate: float, start: int, tests: list[dict],
            delta: float = DEFAULT_DELTA) -> tuple[int, float | None, np.ndarray]:
    """The fixed-sequence search from ``start`` in 1 % steps; returns the certified prefix (0: none),
    its bound and the classes held back there, and appends each test to ``tests``."""
    n = len(c.keep)
    best, best_bound, best_held = 0, None, np.zeros(1, bool)
    for j in list(range(start, n, max(1, int(round(GRID_STEP * n))))) + [n]:
        e0 = int(null_errors(eps, j, rate))
        p = float(error_count_pvalue(int(c.k_test[j - 1]), e0, rate))
        held = c.held(j, eps, delta)
        m = c.kept(j, held)
        known = int(c.k_known[j - 1])
        # rejecting H_j means E_j <= e0 - 1; the errors left to the model are at most those minus the
        # known ones, over the tasks that keep the model's label
        bound = (e0 - 1 - known) / m if m else 0.0
        # people have found e0 errors or more in the prefix: H_j is proven true, never rejected (keeping
        # a subset of the rejections keeps the error control)
        rejected = p <= level and known < e0
        tests.append({"prefix": j, "p_value": p, "audit_errors": int(c.k_test[j - 1]), "known_errors": known,
                      "null_errors": e0, "bound": bound, "rejected": rejected})
        if not rejected:
            break  # fixed sequence: no further test
        if m and bound <= eps:  # the audit took no more of the prefix than the null allowed for
            best, best_bound, best_held = j, bound, held
    return best, best_bound, best_held


@dataclass
class Certificate:
    """What may be accepted, and the guarantee. JSON-able with :meth:`to_dict`."""

    eps: float
    delta: float
    round: int
    level: float                 # delta spent on this round
    per_class: bool
    method: str
    pool: int                    # tasks in the pool at the draw
    audited: int
    audit_labelled: int
    audit_errors: int
    accepted: int                # tasks labelled by the model unaided
    coverage: float              # accepted / pool tasks that no person labelled
    bound: float | None          # certified upper bound on the error rate among the accepted
    strata: list[StratumResult]
    classes: dict[str, dict]     # per predicted class: accepted, audit errors, bound or estimate
    blocked: list[str]
    certified: bool              # any task accepted

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A few lines a person reads."""
        lines = [f"target: at most {self.eps:.2%} wrong among the accepted tasks, with {1 - self.delta:.0%} confidence "
                 f"(audit round {self.round}, level {self.level:.3g}, {'per class' if self.per_class else 'overall'})",
                 f"audit: {self.audit_labelled} of {self.audited} labelled, {self.audit_errors} model error(s) found"]
        if self.certified:
            lines.append(f"accepted: {self.accepted} tasks ({self.coverage:.1%} of the unlabelled pool), "
                         f"certified error rate <= {self.bound:.2%}")
        else:
            lines.append("nothing can be accepted yet")
        for name, c in self.classes.items():
            what = "bound" if c.get("certified") else "estimate"
            val = c.get("bound") if c.get("certified") else c.get("estimate")
            lines.append(f"  {name}: {c['accepted']} accepted, {c['audit_errors']} audit error(s) of "
                         f"{c['audit_labelled']}, {what} {('n/a' if val is None else f'{val:.2%}')}")
        lines += [f"blocked: {b}" for b in self.blocked]
        return "\n".join(lines)


METHOD = ("Bernoulli audit sample; exact binomial test of the error count per confidence prefix; "
          "Learn-then-Test fixed-sequence search; Bonferroni over classes (per-class mode) and audit rounds")


def certify(scores: np.ndarray, predicted: Sequence[str], audited: np.ndarray, wrong: np.ndarray,
            human: np.ndarray, rates: dict[str, float], eps: float = DEFAULT_EPS, delta: float = DEFAULT_DELTA,
            round_no: int = 1, per_class: bool = False, min_audit: int = 1,
            starts: dict[str, int] | None = None, hold_back: bool = True) -> tuple[Certificate, np.ndarray]:
    """Certify one audit round; returns the certificate and the mask of tasks accepted.

    All arrays are over the pool as it was when the round was drawn, in one order.
    ``predicted``: the model's label per task (for multi-label, the label set joined, e.g. ``"a;b"``);
    ``rates``: audit inclusion probability per stratum (``{"all": f}``, or one per class with
    ``per_class``); ``starts``: the prefix each stratum's search starts at (:class:`AuditPlan`);
    ``hold_back``: in overall mode, leave to people the predicted classes the audit does not vouch
    for (:func:`held_back`; off for multi-label label sets, which are many and mostly rare).
    See :func:`certify_stratum` for ``audited``, ``wrong`` and ``human``.
    In per-class mode a class with no audit task is blocked (its tasks need a person), the others
    certified as usual: its share of ``delta`` is simply not spent.
    Raises :class:`CertificateError` when the data cannot back any certificate (no audit label).
    """
    check_levels(eps, delta)
    scores, predicted_arr = np.asarray(scores, float), np.asarray([str(p) for p in predicted], dtype=object)
    audited, human, wrong = np.asarray(audited, bool), np.asarray(human, bool), np.asarray(wrong, float)
    names = sorted(set(predicted_arr.tolist())) if per_class else ["all"]
    labelled = _check_inputs(scores, predicted_arr, audited, wrong, human, rates, names, per_class, min_audit)
    level = round_delta(delta, round_no)
    # Bonferroni over the strata that can accept: a class the plan audits at rate 0 (fixed before the draw)
    # accepts nothing and takes no share
    stratum_level = level / max(1, sum(rates[s] > 0 for s in names))
    prefix = np.zeros(len(scores), bool)
    strata = []
    for s in names:
        idx = np.flatnonzero(predicted_arr == s) if per_class else np.arange(len(scores))
        res, mask = certify_stratum(s, scores[idx], audited[idx], wrong[idx], human[idx], eps, stratum_level,
                                    rates[s], (starts or {}).get(s),
                                    predicted_arr[idx] if hold_back and not per_class else None, delta)
        prefix[idx[mask]] = True
        strata.append(res)
    held = np.isin(predicted_arr, [c for r in strata for c in r.held_back])
    accepted = prefix & ~(human | audited) & ~held
    remaining = int((~(human | audited)).sum())
    n_acc = int(accepted.sum())
    # the overall bound: the strata's certified error counts over all accepted tasks
    err_bound = sum(r.bound * r.accepted for r in strata if r.bound is not None)
    classes = _per_class(predicted_arr, audited, wrong, prefix, accepted, strata, per_class)
    cert = Certificate(eps, delta, round_no, level, per_class, METHOD, len(scores), int(audited.sum()),
                       int(labelled.sum()), int((labelled & (wrong > 0)).sum()), n_acc,
                       n_acc / remaining if remaining else 0.0, (err_bound / n_acc) if n_acc else None,
                       strata, classes, [f"{r.name}: {r.blocked}" for r in strata if r.blocked]
                       + [f"{c}: held back, its tasks need a person ({_evidence(classes[c])})"
                          for r in strata for c in r.held_back], n_acc > 0)
    return cert, accepted


def _check_inputs(scores: np.ndarray, predicted: np.ndarray, audited: np.ndarray, wrong: np.ndarray,
                  human: np.ndarray, rates: dict[str, float], names: list[str], per_class: bool,
                  min_audit: int) -> np.ndarray:
    """What the data must hold for a certificate; returns the mask of labelled audit tasks."""
    if not (len(scores) == len(predicted) == len(audited) == len(wrong) == len(human)):
        raise CertificateError("scores, predictions, audit and labels must cover the same tasks")
    if not len(scores):
        raise CertificateError("the pool is empty: every task already has a person's label")
    labelled = audited & ~np.isnan(wrong)
    missing = [s for s in names if s not in rates]
    if missing:
        raise CertificateError(f"no audit rate for {', '.join(missing)}: the audit was drawn for another design")
    if not audited.any():
        why = ("the plan found that at this target no audit lets the model label any task"
               if all(rates[s] <= 0 for s in names) else "none came out of the draw")
        raise CertificateError(f"no audit task was drawn ({why}): every task needs a person, or draw a new round "
                               "(a better model, a larger pool or a looser target changes the plan)")
    if labelled.sum() < min_audit:
        raise CertificateError(f"{int(audited.sum())} audit task(s) drawn, {int(labelled.sum())} labelled: "
                               "label the audit tab's tasks first")
    return labelled


def _unaudited(n: int, rate: float) -> str:
    why = ("the plan found that no audit of them lets the model label any at this target" if rate <= 0
           else f"none was drawn at its audit rate {rate:.3g}")
    return f"no audit task among its {n} tasks ({why}): they need a person, or a new audit round"


def _evidence(row: dict) -> str:
    return (f"{row.get('audit_in_accepted_region', 0)} audit label(s) in the accepted region, "
            f"{row.get('audit_errors_in_region', 0)} wrong")


def frozen_predictions(proba: np.ndarray, classes: Sequence[str],
                       multilabel: bool) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """(confidence, predicted classes) per row of class probabilities.

    Single choice: the top class and its probability. Multi-label: rows centred so every threshold
    is 0.5 (:func:`~labeler.studio.queue.queue_scores`); the classes at or above it (config order)
    and the confidence of the least certain class.
    """
    P = np.asarray(proba, dtype=np.float64).reshape(-1, len(classes))
    if multilabel:
        return 1.0 - multilabel_uncertainty(P, 0.5), [tuple(c for c, q in zip(classes, row) if q >= 0.5) for row in P]
    return P.max(axis=1), [(classes[int(i)],) for i in P.argmax(axis=1)]


def draw_audit(strata: Sequence[str], rates: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """The audit: each task drawn independently with its stratum's probability (a Bernoulli sample)."""
    f = np.array([rates[s] for s in strata], dtype=float)
    return rng.random(len(f)) < f


@dataclass
class AuditPlan:
    """How large an audit to draw: a rate per stratum and what it is expected to buy."""

    rates: dict[str, float]
    starts: dict[str, int]       # the prefix each stratum's search starts at
    expected_audit: int          # audit labels
    expected_accepted: int       # tasks the model would label
    expected_people: int         # audit + tasks left to a person
    pool: int

    @property
    def unaudited(self) -> list[str]:
        """Per class: the classes not worth auditing (rate 0), whose tasks go to people."""
        return [s for s, f in self.rates.items() if f <= 0]

    def summary(self) -> str:
        if not self.expected_accepted:
            return (f"no audit of the {self.pool} unlabelled tasks is expected to let the model label any: at this "
                    "target the audit would cost as much as labelling them (a better model, a larger pool or a "
                    "looser target changes that)")
        skipped = (f"; not audited, their tasks left to a person: {', '.join(self.unaudited)}"
                   if self.unaudited else "")
        return (f"audit about {self.expected_audit} of the {self.pool} unlabelled tasks; expected then: "
                f"{self.expected_accepted} accepted ({self.expected_accepted / max(self.pool, 1):.0%}), "
                f"{self.expected_people - self.expected_audit} left to a person{skipped}")


RATES = np.unique(np.round(np.geomspace(0.005, 1.0, 60), 4))


#: The planner does not know how overconfident the model is (deep networks usually are: Guo et al.,
#: 2017), so it averages its expectation over error models from the stated ``1 - confidence`` to
#: eight times it: a plan that expects too few errors audits too little to certify much.
PLAN_ERROR_FACTORS = (1.0, 2.0, 4.0, 8.0)


def plan_audit(scores: np.ndarray, predicted: Sequence[str], eps: float = DEFAULT_EPS,
               delta: float = DEFAULT_DELTA, round_no: int = 1, per_class: bool = False,
               p_error: np.ndarray | None = None) -> AuditPlan:
    """Choose each stratum's audit rate to minimise the expected human labels (audit + rejected).

    The expectation takes each task's chance of a model error as ``p_error`` (default: averaged over
    ``c * (1 - score)`` for ``c`` in :data:`PLAN_ERROR_FACTORS`; a previous round's audit can
    calibrate it): it only sizes the audit and places the search's start. The guarantee does not
    rest on it: a plan that proves optimistic certifies less, and a new round can add more.
    """
    check_levels(eps, delta)
    scores = np.asarray(scores, float)
    if len(predicted) != len(scores) or (p_error is not None and len(p_error) != len(scores)):
        raise CertificateError("scores, predictions and error chances must cover the same tasks")
    if not np.isfinite(scores).all():
        raise CertificateError(f"{int((~np.isfinite(scores)).sum())} score(s) are not finite: "
                               "leave the tasks the model could not score out of the pool")
    models = ([np.clip(c * (1 - scores), 0, 1) for c in PLAN_ERROR_FACTORS] if p_error is None
              else [np.clip(np.asarray(p_error, float), 0, 1)])
    predicted_arr = np.asarray([str(p) for p in predicted], dtype=object)
    names = sorted(set(predicted_arr.tolist())) if per_class else ["all"]
    level = round_delta(delta, round_no) / len(names)
    rates: dict[str, float] = {}
    starts: dict[str, int] = {}
    audit = accepted = 0.0
    for s in names:
        idx = np.flatnonzero(predicted_arr == s) if per_class else np.arange(len(scores))
        order = idx[np.lexsort((np.arange(len(idx)), -scores[idx]))]
        cum_errs = [np.cumsum(m[order]) for m in models]
        best = (-1.0, 1.0, len(idx) + 1)  # (expected accepted, rate, start)
        for f in RATES:
            got = [_expected_accepted(c, eps, level, float(f)) for c in cum_errs]
            acc = float(np.mean([g[0] for g in got]))
            if acc > best[0] + 1e-9:
                best = (acc, float(f), got[0][1])
        if per_class and best[0] <= 0:  # auditing this class would buy nothing: its tasks go to people
            best = (0.0, 0.0, len(idx) + 1)
        rates[s], starts[s] = best[1], best[2]
        audit += best[1] * len(idx)
        accepted += best[0]
    return AuditPlan(rates, starts, int(round(audit)), int(round(accepted)), int(round(len(scores) - accepted)),
                     len(scores))


def _expected_accepted(cum_err: np.ndarray, eps: float, level: float, f: float) -> tuple[float, int]:
    """About how many tasks an audit at rate ``f`` lets the model label, and where its search
    should start. Prefix ``j`` passes with chance ``P(Poisson(f E_j) <= kappa_j)``, ``kappa_j`` the
    most audit errors it tolerates and ``E_j`` the errors the model expects there; the value is the
    best ``j (1 - f) P(pass)``. The start is the smallest prefix passing with at least 0.98 of the best
    chance: a start where one stray error ends the search would waste the audit."""
    n = len(cum_err)
    first = first_prefix(eps, level, f, n)
    if first > n:
        return 0.0, n + 1
    j = np.unique(np.r_[np.arange(first, n, max(1, int(round(GRID_STEP * n)))), n])
    e0 = null_errors(eps, j, f)
    kappa = binom.ppf(level, e0, f)
    kappa = np.where(binom.cdf(kappa, e0, f) > level, kappa - 1, kappa)
    chance = np.where(kappa >= 0, poisson.cdf(kappa, f * cum_err[j - 1]), 0.0)
    start = int(j[np.argmax(chance >= 0.98 * chance.max())])
    value = j * (1 - f) * chance
    return float(value[j >= start].max()), start


def _per_class(predicted: np.ndarray, audited: np.ndarray, wrong: np.ndarray, prefix: np.ndarray,
               accepted: np.ndarray, strata: list[StratumResult], per_class: bool) -> dict[str, dict]:
    """Per predicted class: tasks accepted, audit labels and errors, and the certified bound (per-class
    mode) or, overall, an estimate: the error rate of the class's labelled audit tasks inside the
    certified prefix. The prefix was chosen on the same audit, so an estimate is not a certificate."""
    by_name = {r.name: r for r in strata}
    out = {}
    for c in sorted(set(predicted.tolist())):
        in_c = predicted == c
        lab = in_c & audited & ~np.isnan(wrong)
        row: dict = {"accepted": int((accepted & in_c).sum()), "audit_labelled": int(lab.sum()),
                     "audit_errors": int((lab & (wrong > 0)).sum()), "certified": per_class}
        if per_class:
            r = by_name[c]
            row.update(bound=r.bound, threshold=r.threshold, blocked=r.blocked)
        else:
            held = any(c in r.held_back for r in strata)
            seen = lab & prefix
            row["estimate"] = float((wrong[seen] > 0).mean()) if seen.any() else None
            row["audit_in_accepted_region"] = int(seen.sum())
            row["audit_errors_in_region"] = int((wrong[seen] > 0).sum())
            row["held_back"] = held
        out[c] = row
    return out
