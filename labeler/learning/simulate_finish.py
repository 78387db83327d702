"""Finishing a dataset offline: queue labels, then an audit, then certified auto-accept.

``labeler simulate --certify EPS`` runs the procedure the backend runs on a Label Studio project
(:mod:`labeler.learning.audit`) with a simulated annotator, on a labelled folder whose every
label is known, so the claim can be checked against the truth:

1. the queue: ``budget`` labels picked by the strategy, the model retrained after each batch
   (:func:`labeler.learning.simulate.run`, the same loop as the learning curves);
2. the audit: the final model scores the rest of the folder (the pool), :func:`~labeler.learning.
   certify.plan_audit` sizes the audit, :func:`~labeler.learning.certify.draw_audit` draws it and
   the annotator labels it;
3. the certificate: :func:`~labeler.learning.certify.certify` picks the tasks the model labels;
   the rest of the pool goes to a person.

Every image ends with a label: the queue's and the audit's from the annotator, the accepted ones
from the model, the others from a person. The *realized* error of the accepted labels is known
here, so each run says whether its claim held. ``redraws`` repeats steps 2-3 on the same model
with fresh audits: the guarantee is over the audit draw, so this measures it directly.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labeler.learning import certify as cert
from labeler.learning.simulate import run
from labeler.models.classifiers import Classifier, Sample


@dataclass
class FinishResult:
    """One simulated finish: who labelled what, the claim and the truth."""

    strategy: str
    seed: int
    images: int
    queue: int                  # labels picked by the queue
    audit: int                  # audit labels
    to_person: int              # pool tasks the certificate left to a person
    accepted: int               # labelled by the model
    coverage: float             # accepted / (pool - audit)
    claimed_bound: float | None
    realized_error: float | None
    violated: bool               # realized error above eps
    exceeded_bound: bool         # realized error above the claimed bound (what the method controls directly)
    certificate: cert.Certificate | None    # None: the audit could back none (``blocked`` says why)
    eps: float
    delta: float
    blocked: list[str]
    accepted_idx: np.ndarray = field(repr=False)
    predicted: np.ndarray = field(repr=False)   # class index per image (meaningful where accepted)
    redraws: int = 0
    redraw_violations: int = 0
    redraw_exceeded: int = 0
    redraw_coverage: float | None = None
    redraw_people: float | None = None   # mean human share of the images over the redraws

    @property
    def people(self) -> int:
        """Human labels for a finished dataset: queue + audit + the tasks left to a person."""
        return self.queue + self.audit + self.to_person

    def row(self) -> dict:
        return {"strategy": self.strategy, "seed": self.seed, "images": self.images, "queue": self.queue,
                "audit": self.audit, "to_person": self.to_person, "people": self.people,
                "people_share": round(self.people / self.images, 4), "accepted": self.accepted,
                "coverage": round(self.coverage, 4),
                "claimed_bound": None if self.claimed_bound is None else round(self.claimed_bound, 5),
                "realized_error": None if self.realized_error is None else round(self.realized_error, 5),
                "violated": self.violated, "exceeded_bound": self.exceeded_bound, "eps": self.eps, "delta": self.delta,
                "redraws": self.redraws, "redraw_violations": self.redraw_violations, "redraw_exceeded": self.redraw_exceeded,
                "redraw_coverage": None if self.redraw_coverage is None else round(self.redraw_coverage, 4),
                "redraw_people": None if self.redraw_people is None else round(self.redraw_people, 4)}


@dataclass
class QueueOutcome:
    """What the queue phase leaves: the images it had labelled and the final model's probabilities
    on the rest (the pool). Saved, it lets the audit and certificate be re-run without training."""

    strategy: str
    seed: int
    queried: np.ndarray
    pool: np.ndarray
    proba: np.ndarray

    def save(self, path: Path) -> None:
        np.savez(path, strategy=np.array(self.strategy), seed=np.array(self.seed), queried=self.queried,
                 pool=self.pool, proba=self.proba)

    @classmethod
    def load(cls, path: Path) -> "QueueOutcome":
        with np.load(path, allow_pickle=False) as z:
            return cls(str(z["strategy"]), int(z["seed"]), z["queried"], z["pool"], z["proba"])


def queue_phase(samples: Sequence[Sample], y: np.ndarray, classes: list[str], strategy: str, budget: int,
                batch: int, seed: int, estimator: Classifier, features: np.ndarray | None = None,
                zeroshot: np.ndarray | None = None, self_train: float | None = None, start: int | None = None,
                progress: bool = True, **select_options) -> QueueOutcome:
    """``budget`` queue labels (the learning-curve loop with no hold-out), then the model's view of the pool;
    ``select_options`` go to :func:`labeler.models.strategies.select` (a cold start)."""
    res, annotator = run(samples, y, classes, strategy, budget, batch, np.zeros(0, dtype=int), seed, estimator,
                         zeroshot=zeroshot, features=features, start=start, progress=progress,
                         self_train=self_train, **select_options)
    if res.model is None:
        raise cert.CertificateError(f"the queue's {budget} labels never covered every class: no model to certify")
    queried = np.array(sorted(annotator.queried), dtype=int)
    pool = np.setdiff1d(np.arange(len(y)), queried)
    return QueueOutcome(strategy, seed, queried, pool, res.model.predict_proba([samples[i] for i in pool]))


def certify_phase(q: QueueOutcome, y: np.ndarray, classes: Sequence[str], eps: float, delta: float,
                  per_class: bool = False, redraws: int = 0, plan: cert.AuditPlan | None = None) -> FinishResult:
    """Plan and draw the audit on the pool, certify, and check the claim against the known labels.
    ``plan``: another audit plan than :func:`~labeler.learning.certify.plan_audit`'s (to measure the plan)."""
    cert.check_levels(eps, delta)
    pool, proba = q.pool, q.proba
    pred, score = proba.argmax(1), proba.max(1)
    names = np.asarray(classes, dtype=object)[pred]
    plan = plan or cert.plan_audit(score, names, eps, delta, per_class=per_class)
    strata = list(names) if per_class else ["all"] * len(pool)
    wrong_truth = (pred != y[pool]).astype(float)
    rng = np.random.default_rng([q.seed, 21])  # the audit's own stream: not the queue's

    def one_audit() -> tuple[cert.Certificate | str, np.ndarray, np.ndarray]:
        audited = cert.draw_audit(strata, plan.rates, rng)
        wrong = np.where(audited, wrong_truth, np.nan)  # the annotator labels the audit
        try:
            c, acc = cert.certify(score, names, audited, wrong, np.zeros(len(pool), bool), plan.rates, eps, delta,
                                  per_class=per_class, starts=plan.starts)
        except cert.CertificateError as exc:  # e.g. an audit that drew nothing: people label the rest
            return str(exc), np.zeros(len(pool), bool), audited
        return c, acc, audited

    certificate, acc, audited = one_audit()
    realized = float(wrong_truth[acc].mean()) if acc.any() else None
    c = certificate if isinstance(certificate, cert.Certificate) else None
    out = FinishResult(q.strategy, q.seed, len(y), len(q.queried), int(audited.sum()),
                       int(len(pool) - audited.sum() - acc.sum()), int(acc.sum()), c.coverage if c else 0.0,
                       c.bound if c else None, realized, bool(realized is not None and realized > eps),
                       bool(realized is not None and c is not None and realized > (c.bound or 0) + 1e-12), c, eps, delta,
                       c.blocked if c else [str(certificate)], pool[acc], np.full(len(y), -1))
    out.predicted[pool] = pred
    if redraws:
        violations, exceeded, coverage, people = 0, 0, [], []
        for _ in range(redraws):
            got, a, drawn = one_audit()
            violations += bool(a.any() and wrong_truth[a].mean() > eps)
            exceeded += bool(a.any() and isinstance(got, cert.Certificate) and wrong_truth[a].mean() > (got.bound or 0) + 1e-12)
            coverage.append(got.coverage if isinstance(got, cert.Certificate) else 0.0)
            people.append((len(q.queried) + len(pool) - a.sum()) / len(y))
        out.redraws, out.redraw_violations, out.redraw_exceeded = redraws, violations, exceeded
        out.redraw_coverage, out.redraw_people = float(np.mean(coverage)), float(np.mean(people))
    return out


def finish(samples: Sequence[Sample], y: np.ndarray, classes: list[str], strategy: str, budget: int, batch: int,
           seed: int, estimator: Classifier, eps: float, delta: float, per_class: bool = False,
           features: np.ndarray | None = None, zeroshot: np.ndarray | None = None, self_train: float | None = None,
           start: int | None = None, redraws: int = 0, progress: bool = True) -> FinishResult:
    """Simulate finishing the folder ``samples`` (labels ``y``): queue, audit, certificate."""
    cert.check_levels(eps, delta)
    q = queue_phase(samples, y, classes, strategy, budget, batch, seed, estimator, features, zeroshot, self_train,
                    start, progress)
    return certify_phase(q, y, classes, eps, delta, per_class, redraws)


def write_accepted(path: Path, result: FinishResult, names: Sequence[str], classes: Sequence[str]) -> int:
    """``image,label`` for every image the model labelled (the image as the input CSV names it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        for i in sorted(result.accepted_idx.tolist()):
            w.writerow([names[i], classes[int(result.predicted[i])]])
    return len(result.accepted_idx)


def write_results(rows: list[dict], out: Path) -> Path:
    """``finish.csv``: one row per strategy and seed."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "finish.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
