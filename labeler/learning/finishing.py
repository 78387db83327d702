""""Can we stop labelling?" for one project, from what ``MODEL_DIR`` holds; ``labeler status`` and the
admin page's "Finishing" section show it.

Three answers, each a line for people and numbers for programs (:func:`finishing_report`):

1. **forecast**: labels still to annotate to reach a target held-out metric, with an interval
   (:func:`labeler.learning.forecast.forecast` on the versions' held-out errors);
2. **plateau**: whether the last ``window`` labels improved the model beyond the hold-out's noise
   (:func:`labeler.learning.forecast.plateau`);
3. **cost to finish**: the latest audit certificate (:mod:`labeler.learning.audit`) where one was
   issued; otherwise the audit plan (:func:`labeler.learning.certify.plan_audit`) on the serving
   version's scores of the unlabelled tasks (``queue.npz``).

The metric, as an error (lower is better): ``1 - accuracy`` for single-choice projects (what
promotion compares, and a plain proportion of the hold-out, so its noise is binomial), the EER for
two classes where the versions have it (what ``labeler simulate`` tracks for two classes), and
``1 - macro-F1`` for multi-label projects (their promotion metric). ``metric=...`` picks another.
Targets are given on the metric's own scale (accuracy 0.95, EER 0.03), as ``labeler simulate
--targets`` takes them.

The curve uses the versions of the newest version's kind and classes: a CNN and an embedding
head, or a changed label config, are different curves.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from labeler.learning.certify import DEFAULT_DELTA, DEFAULT_EPS, check_levels, frozen_predictions, plan_audit
from labeler.learning.forecast import Point, eer_effective_size, forecast, plateau
from labeler.models.registry import Registry

#: What each metric is called, and its default target (on the metric's own scale).
METRICS = {"accuracy": ("accuracy", 0.95), "eer": ("EER", 0.03), "eer_macro": ("mean one-vs-rest EER", 0.03),
           "macro_f1": ("macro-F1", 0.95)}
LOWER_IS_BETTER = {"eer", "eer_macro"}
DEFAULT_WINDOW = 100


def choose_metric(meta: dict, metric: str = "auto") -> str:
    """``metric`` unless "auto": macro-F1 for multi-label, EER for two classes where measured, else accuracy."""
    if metric != "auto":
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from auto, {', '.join(METRICS)}")
        return metric
    if meta.get("multilabel"):
        return "macro_f1"
    if isinstance((meta.get("metrics") or {}).get("eer"), float):  # evaluate() gives it for two classes only
        return "eer"
    return "accuracy"


def to_error(metric: str, value: float) -> float:
    """A value on the metric's scale as an error: itself for EER, ``1 - value`` for accuracy and F1."""
    return value if metric in LOWER_IS_BETTER else 1.0 - value


def from_error(metric: str, error: float) -> float:
    return to_error(metric, error)  # the map is its own inverse


def effective_size(meta: dict, metric: str) -> float:
    """Held-out items behind the metric's noise: the hold-out size, or for a two-class EER
    ``4 / (1/n_pos + 1/n_neg)`` from the classes' supports (:func:`~labeler.learning.forecast.eer_effective_size`)."""
    m = meta.get("metrics") or {}
    n = float(m.get("n") or meta.get("n_eval") or 0)
    support = [c.get("support") for c in (m.get("per_class") or {}).values()]
    if metric == "eer" and len(support) == 2 and all(isinstance(s, int) for s in support):
        return eer_effective_size(support[0], support[1])
    return n


def curve_points(versions: list[dict], metric: str) -> list[Point]:
    """One point per version (oldest first) of the newest version's kind and classes that has ``metric``."""
    if not versions:
        return []
    newest = versions[-1]
    points = []
    for v in versions:
        value = (v.get("metrics") or {}).get(metric)
        if v.get("kind") != newest.get("kind") or v.get("classes") != newest.get("classes"):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value) and v.get("n_train"):
            points.append(Point(int(v["n_train"]), float(to_error(metric, value)), effective_size(v, metric),
                                str(v.get("version", ""))))
    return points


def train_share(meta: dict) -> float:
    """The share of new labels a version trains on: ``n_train / (n_train + n_eval)`` under the hash
    hold-out (about 0.8), 1 under cross-validation (every label trains the served model)."""
    if meta.get("evaluation") != "holdout":
        return 1.0
    n_train, n_eval = meta.get("n_train") or 0, meta.get("n_eval") or 0
    return n_train / (n_train + n_eval) if n_train else 1.0


@functools.lru_cache(maxsize=64)
def _forecast(points: tuple[Point, ...], target: float, share: float, text: str) -> dict:
    # the bootstrap takes a fraction of a second: the admin page, refreshed every 5 s while a job runs, reuses it
    return forecast(list(points), target, train_share=share, target_text=text).to_dict()


def queue_scores(model_dir: str | Path, project: str) -> tuple[np.ndarray, list[str], str, bool] | None:
    """(confidence, predicted label, scoring version, multi-label) of every unlabelled task in ``queue.npz``, or None
    when the project has no scores yet. Confidence and prediction as the audit freezes them: the top class
    and its probability; multi-label, the classes at or above their (centred, 0.5) threshold and the
    certainty of the least decided one."""
    from labeler.studio.queue import QueueState
    from labeler.studio.tasks import join_labels

    folder = Registry(model_dir).project_dir(project)
    if not (folder / "queue.npz").exists():  # state_path() would create the folder; reading creates nothing
        return None
    state = QueueState.load(folder / "queue.npz")
    if not len(state.ids):
        return None
    P = np.asarray(state.proba, np.float64)[~np.asarray(state.annotated, bool)]
    P = P[np.isfinite(P).all(axis=1)]  # as the audit does: a task the model could not score needs a person
    conf, sets = frozen_predictions(P, [str(i) for i in range(P.shape[1])], state.multilabel)
    return conf, [join_labels(s) for s in sets], state.version, bool(state.multilabel)


def _certificate(model_dir: str | Path, project: str) -> dict | None:
    try:
        from labeler.learning.audit import load_certificate
    except ImportError:  # the audit module is optional here: without it, the plan is the answer
        return None
    return load_certificate(model_dir, project)


@functools.lru_cache(maxsize=16)
def _plan(model_dir: str, project: str, stamp: int, eps: float, delta: float, per_class: bool) -> dict | None:
    """The audit plan on the stored scores; ``stamp`` (the file's mtime) keys the cache."""
    scored = queue_scores(model_dir, project)
    if scored is None:
        return None
    conf, predicted, version, multilabel = scored
    if not len(conf):
        return {"pool": 0, "version": version}
    # as labeler audit: a multi-label project is certified on whole label sets, in one stratum
    plan = plan_audit(conf, predicted, eps, delta, per_class=per_class and not multilabel)
    return {"pool": plan.pool, "version": version, "audit": plan.expected_audit, "accepted": plan.expected_accepted,
            "to_person": plan.expected_people - plan.expected_audit, "rates": plan.rates}


def cost_to_finish(model_dir: str | Path, project: str, eps: float = DEFAULT_EPS, delta: float = DEFAULT_DELTA,
                   per_class: bool = False) -> dict:
    """The latest certificate where one exists, else the audit plan on the serving version's scores:
    ``{"source", "line", ...}`` (``source``: "certificate", "plan" or "none")."""
    check_levels(eps, delta)  # refused even where a certificate answers: the options must mean something
    cert = _certificate(model_dir, project)
    if cert is not None:
        needs = cert.get("needs_person_ids")
        return {"source": "certificate", "line": _certificate_line(cert),
                "to_person": len(needs) if isinstance(needs, list) else None,
                **{k: cert.get(k) for k in ("version", "round", "accepted", "coverage", "bound", "eps", "delta",
                                            "audited", "audit_labelled", "pool", "certified", "blocked")}}
    path = Registry(model_dir).project_dir(project) / "queue.npz"
    plan = _plan(str(model_dir), project, path.stat().st_mtime_ns, eps, delta, per_class) if path.exists() else None
    if plan is None:
        return {"source": "none", "line": "no scores of the unlabelled tasks yet (run labeler preannotate)"}
    return {"source": "plan", "eps": eps, "delta": delta, **plan, "line": _plan_line(plan, eps, delta)}


def _plan_line(plan: dict, eps: float, delta: float) -> str:
    pool = plan["pool"]
    if not pool:
        return "every task has a person's label"
    if not plan["accepted"]:
        return (f"no audit lets the model label tasks at <= {eps:.1%} wrong ({1 - delta:.0%} confidence) yet: "
                f"all {pool:,} unlabelled tasks need a person")
    rest = pool - plan["audit"]
    return (f"audit {plan['audit']:,} more tasks, then about {plan['accepted'] / max(rest, 1):.0%} of the remaining "
            f"{rest:,} can be accepted at <= {eps:.1%} wrong ({1 - delta:.0%} confidence); the other "
            f"{plan['to_person']:,} need a person (expected, if the model's confidences hold)")


def _certificate_line(cert: dict) -> str:
    """The latest certificate in a line: what it accepts, at which bound, and what is left to people
    (``needs_person_ids``: unlabelled tasks it does not accept, audit tasks still unlabelled included)."""
    todo = (cert.get("audited") or 0) - (cert.get("audit_labelled") or 0)
    first = f"label the {todo:,} audit tasks left, then certify again; " if todo > 0 else ""
    eps, conf = cert.get("eps") or 0.0, 1 - (cert.get("delta") or 0.0)
    which = f"certificate of {cert.get('version', 'the audited version')} (audit round {cert.get('round', 1)})"
    if not cert.get("certified"):
        why = "; ".join(cert.get("blocked") or []) or "no prefix passed its test"
        return f"{first}{which}: nothing accepted at <= {eps:.1%} wrong yet ({why})"
    accepted, coverage = cert.get("accepted") or 0, cert.get("coverage") or 0.0
    needs = cert.get("needs_person_ids")
    person = f"; the other {len(needs):,} need a person" if isinstance(needs, list) else ""
    return (f"{first}{which}: {accepted:,} tasks ({coverage:.0%} of the unlabelled) accepted at <= "
            f"{cert.get('bound') or 0.0:.2%} wrong ({conf:.0%} confidence, target {eps:.1%}){person}")


def finishing_report(registry: Registry, model_dir: str | Path, project: str, metric: str = "auto",
                     target: float | None = None, eps: float = DEFAULT_EPS, delta: float = DEFAULT_DELTA,
                     window: int = DEFAULT_WINDOW, per_class: bool = False) -> dict:
    """Forecast, plateau and cost to finish for ``project`` (JSON-able; each part has its ``line``)."""
    versions = registry.list(project)
    metric = choose_metric(versions[-1] if versions else {}, metric)
    name, default = METRICS[metric]
    target = default if target is None else target
    points = curve_points(versions, metric)
    text = f"{name} {target:g}"
    share = train_share(versions[-1]) if versions else 1.0
    fc = _forecast(tuple(points), to_error(metric, target), share, text)
    pl = plateau(points, window).to_dict()
    return {"metric": metric, "metric_name": name, "target": target, "target_error": to_error(metric, target),
            "lower_is_better": metric in LOWER_IS_BETTER, "train_share": share,
            "points": [{"version": p.version, "labels": p.labels, "error": p.error, "value": from_error(metric, p.error),
                        "size": p.size} for p in points],
            "forecast": {**fc, "line": fc["message"]}, "plateau": {**pl, "line": pl["message"]},
            "cost": cost_to_finish(model_dir, project, eps, delta, per_class)}
