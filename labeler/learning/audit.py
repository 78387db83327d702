"""The audit round and the certificate of a Label Studio project (``labeler audit``, ``labeler certify``).

The statistics are :mod:`labeler.learning.certify`'s; this module freezes a round's design, reads
people's labels from Label Studio and marks tasks there. State, under
``MODEL_DIR/projects/<p>/audit/``::

    round-<r>.json     the frozen design of audit round r: model version, eps, delta, the pool's
                       tasks with their score, predicted label, stratum and whether drawn, the rates
    certificate.json   the latest certificate, with the task ids accepted and needing a person
    DATASHEET.md       the same for a person to read

In Label Studio, as data fields written in bulk (the queue's data-manager action):
``labeler_audit`` = round number and ``labeler_audit_order`` (a random order) on the drawn tasks,
shown by the tab "Audit"; ``labeler_accepted`` = 1 on the tasks the certificate accepts and
``labeler_needs_person`` = 1 on the unlabelled tasks it does not, shown by the tab "Needs a person".

The guarantee needs the scores and predictions fixed before the draw and never changed after:
the round file is written before anything is marked, a round is never redrawn (a new one is
numbered on and certified at its own level, :func:`~labeler.learning.certify.round_delta`), and the
labels exported for accepted tasks are the frozen ones, whatever model serves later.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from labeler.fsutil import atomic_write_text
from labeler.ids import check_project
from labeler.labelconfig import LabelConfig
from labeler.learning.certify import (
    DEFAULT_DELTA,
    DEFAULT_EPS,
    Certificate,
    CertificateError,
    certify,
    check_levels,
    draw_audit,
    frozen_predictions,
    plan_audit,
    round_delta,
)
from labeler.models.predictor import Predictor
from labeler.models.registry import Registry
from labeler.studio.client import Studio
from labeler.studio.export import Accepted, Finished
from labeler.studio.queue import QueueState, queue_scores, state_path, write_field, write_priorities
from labeler.studio.tasks import (
    ANSWER_COLUMN,
    QUEUE_HIDDEN_COLUMNS,
    ensure_view,
    iter_tasks,
    join_labels,
    pick_label,
    project_config,
)
from labeler.studio.team import consensus_of, team_of

AUDIT_FIELD, ORDER_FIELD = "labeler_audit", "labeler_audit_order"
ACCEPTED_FIELD, NEEDS_FIELD = "labeler_accepted", "labeler_needs_person"
AUDIT_VIEW, NEEDS_VIEW = "Audit", "Needs a person"
SCORE_BATCH = 64  # images scored at once when the pool is scored here


def audit_dir(model_dir: str | Path, project: int | str) -> Path:
    """``MODEL_DIR/projects/<p>/audit`` (the project id validated; created by the first write, not by reads)."""
    return Registry(model_dir).project_dir(check_project(project)) / "audit"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _write(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def load_round(model_dir: str | Path, project: int | str, r: int | None = None) -> dict | None:
    """Audit round ``r`` of ``project`` (default: the latest), or None when there is none."""
    folder = audit_dir(model_dir, project)
    if r is None:
        rounds = [int(p.stem.split("-")[1]) for p in folder.glob("round-*.json") if p.stem.split("-")[1].isdigit()]
        if not rounds:
            return None
        r = max(rounds)
    return _read(folder / f"round-{int(r)}.json")


def load_certificate(model_dir: str | Path, project: int | str) -> dict | None:
    """The latest certificate of ``project`` (``certificate.json``), or None when none was issued."""
    return _read(audit_dir(model_dir, project) / "certificate.json")


# -- the round -----------------------------------------------------------------------------------
def _stored_choice(task: dict, version: str, config: LabelConfig) -> str | None:
    """The label of ``task``'s stored prediction of ``version`` (None: it has none)."""
    for p in task.get("predictions") or []:
        if isinstance(p, dict) and p.get("model_version") == version and p.get("result"):
            chosen = set((p["result"][0].get("value") or {}).get("choices") or [])
            return join_labels([c for c in config.classes if c in chosen])
    return None


def _from_queue(model_dir: Path, project: str, version: str, pool: list[dict], config: LabelConfig) -> np.ndarray | None:
    """The pool's probabilities from the last pre-annotation (``queue.npz``), or None unless all of them are
    the serving version's: the file names that version, has a row for every pool task, and each row's label
    is the one Label Studio stores for the task under that version (a row left from an older version is not)."""
    state = QueueState.load(state_path(model_dir, project))
    if state.version != version or state.multilabel != config.multiple or not len(state.ids):
        return None
    row = {int(i): k for k, i in enumerate(state.ids.tolist())}
    if any(t["id"] not in row for t in pool):
        return None
    P = state.proba[[row[t["id"]] for t in pool]].astype(np.float64)
    if P.shape[1] != len(config.classes) or not np.isfinite(P).all():
        return None
    _, predicted = frozen_predictions(P, config.classes, config.multiple)
    if any(_stored_choice(t, version, config) != join_labels(p) for t, p in zip(pool, predicted)):
        return None
    return P


def _score_pool(predictor: Predictor, studio: Studio, project: str, pool: list[dict], config: LabelConfig,
                version: str) -> tuple[np.ndarray, list[str | None]]:
    """Score the pool with the serving model: probabilities (NaN rows where it failed) and the errors."""
    P = np.full((len(pool), len(config.classes)), np.nan)
    errors: list[str | None] = [None] * len(pool)
    for s in range(0, len(pool), SCORE_BATCH):
        refs = [config.image_ref(t) for t in pool[s:s + SCORE_BATCH]]
        got, items = predictor.score(project, refs, config, studio.conn)
        if got != version:
            raise CertificateError(f"the serving model changed from {version} to {got} while the pool was scored: "
                                   "run labeler audit again")
        for k, it in enumerate(items):
            if it.proba is None:
                errors[s + k] = it.error or "no prediction"
            else:
                P[s + k] = queue_scores(it.proba, it.thresholds)
    return P, errors


def _same_design(rnd: dict, eps: float | None, delta: float | None, per_class: bool | None,
                 seed: int | None) -> None:
    asked = {"eps": eps, "delta": delta, "per_class": per_class, "seed": seed}
    differ = [f"{k} {rnd[k]} (asked {v})" for k, v in asked.items() if v is not None and v != rnd[k]]
    if differ:
        raise CertificateError(f"audit round {rnd['round']} of project {rnd['project']} was drawn with "
                               f"{', '.join(differ)}: a drawn round is never changed; pass --new-round to draw "
                               "another with these settings")


def draw_round(studio: Studio, project: int | str, predictor: Predictor, eps: float | None = None,
               delta: float | None = None, per_class: bool | None = None, seed: int | None = None,
               new_round: bool = False) -> dict:
    """The project's audit round: the latest one as drawn (marked in Label Studio again), or, with
    ``new_round`` or when there is none, a new one drawn from the pool as it is now.

    The pool is every task without a person's usable label (:func:`~labeler.studio.tasks.pick_label`),
    scored by the serving model version only: the last pre-annotation's ``queue.npz`` when it is that
    version's for every pool task, else scored here. Tasks the model cannot score stay out of the pool
    (listed in the round as ``unscored``; they need a person). ``eps``/``per_class`` default to the latest
    round's, else :data:`~labeler.learning.certify.DEFAULT_EPS` and overall; ``delta`` to round 1's, else
    ``DEFAULT_DELTA``; ``seed`` (default: from the OS,
    so nobody can know the draw before it is made; recorded in the round) and the round number seed
    the draw, so rounds are independent. Later rounds keep round 1's ``delta``: the rounds share it.
    Raises :class:`CertificateError` when there is no serving model or no prediction, when
    ``eps``/``delta`` are not in (0, 1), when the pool is empty, when the latest round was drawn with
    other settings than those given and no ``new_round``, and when a new round asks another ``delta``.
    """
    key = check_project(project)
    model_dir = predictor.settings.model_dir
    latest = load_round(model_dir, key)
    if latest is not None and not new_round:
        _same_design(latest, eps, delta, per_class, seed)
        publish_round(studio, int(key), latest)
        return latest
    # a new round keeps the design it follows unless told otherwise
    eps = eps if eps is not None else latest["eps"] if latest else DEFAULT_EPS
    per_class = per_class if per_class is not None else bool(latest and latest["per_class"])
    first = load_round(model_dir, key, 1) if latest is not None else None
    if first is not None and delta is not None and delta != first["delta"]:
        raise CertificateError(f"the audit rounds of project {key} share round 1's delta {first['delta']} "
                               f"(round r spends its share of it); a new round cannot use delta {delta}")
    delta = first["delta"] if first is not None else DEFAULT_DELTA if delta is None else delta
    check_levels(eps, delta)
    seed = secrets.randbits(63) if seed is None else seed
    config = project_config(studio, int(key))
    version = _serving_version(predictor, key, config, per_class)
    pool, P, errors, source = _pool_scores(studio, predictor, key, config, version)
    rnd = _draw(key, latest["round"] + 1 if latest else 1, version, config, eps, delta, per_class, seed,
                pool, P, errors)
    rnd["scores_from"] = source
    _write(audit_dir(model_dir, key) / f"round-{rnd['round']}.json", rnd)  # frozen before anything is marked
    publish_round(studio, int(key), rnd)
    return rnd


def _serving_version(predictor: Predictor, key: str, config: LabelConfig, per_class: bool) -> str:
    """The version to certify, or CertificateError: no model serves, or a per-class multi-label audit."""
    if per_class and config.multiple:
        raise CertificateError(f"project {key} is multi-label: its certificate is on the whole label set of a task "
                               "(subset error), one stratum; per-class audits are for single-choice projects")
    if predictor.classifier(key)[0] is None and predictor.scorer is None:
        raise CertificateError(f"project {key} has no serving model to certify: "
                               f"{predictor.scorer_error or 'train one or set LABELER_ZEROSHOT_MODEL'}")
    return predictor.model_version(key, config)


def _pool_scores(studio: Studio, predictor: Predictor, key: str, config: LabelConfig,
                 version: str) -> tuple[list[dict], np.ndarray, list[str | None], str]:
    """(pool tasks by id, their probabilities (NaN rows: unscored), errors, where the scores came from)."""
    pool = sorted((t for t in iter_tasks(studio, int(key)) if pick_label(t.get("annotations") or [], config) is None),
                  key=lambda t: t["id"])
    if not pool:
        raise CertificateError(f"the pool of project {key} is empty: every task already has a person's label")
    P = _from_queue(predictor.settings.model_dir, key, version, pool, config)
    if P is not None:
        return pool, P, [None] * len(pool), "queue"
    P, errors = _score_pool(predictor, studio, key, pool, config, version)
    if not np.isfinite(P).all(axis=1).any():
        raise CertificateError(f"the model {version} gave no prediction for any of the {len(pool)} unlabelled tasks "
                               f"of project {key}: {next((e for e in errors if e), 'no scores')}")
    return pool, P, errors, "scored"


def _draw(key: str, r: int, version: str, config: LabelConfig, eps: float, delta: float, per_class: bool, seed: int,
          pool: list[dict], P: np.ndarray, errors: list[str | None]) -> dict:
    """Plan and draw round ``r`` over the scored pool tasks; the round's record."""
    ok = np.isfinite(P).all(axis=1)
    scores, sets = frozen_predictions(P[ok], config.classes, config.multiple)
    predicted = [join_labels(c) for c in sets]  # multi-label: the set as one label, "a;b" (as the export writes it)
    plan = plan_audit(scores, predicted, eps, delta, r, per_class)
    strata = list(predicted) if per_class else ["all"] * len(predicted)
    rng = np.random.default_rng([seed, r])  # the round in the seed: a new round's draw is independent of the last
    drawn = draw_audit(strata, plan.rates, rng)
    ids = [t["id"] for t, good in zip(pool, ok) if good]
    return {
        "project": key, "round": r, "version": version, "eps": eps, "delta": delta, "level": round_delta(delta, r),
        "per_class": per_class, "multilabel": config.multiple, "classes": list(config.classes),
        "created": _now(), "seed": seed, "rng": "numpy.random.default_rng([seed, round])",
        "rates": plan.rates, "starts": plan.starts,
        "plan": {"pool": plan.pool, "expected_audit": plan.expected_audit,
                 "expected_accepted": plan.expected_accepted, "expected_people": plan.expected_people,
                 "unaudited": plan.unaudited},
        "tasks": [{"id": i, "score": round(float(s), 6), "predicted": p, "stratum": st, "drawn": bool(d),
                   **({"labels": list(c)} if config.multiple else {})}
                  for i, s, p, c, st, d in zip(ids, scores, predicted, sets, strata, drawn)],
        "order": [int(i) for i in rng.permutation(np.asarray(ids, dtype=np.int64)[drawn])],
        "unscored": [{"id": t["id"], "error": e} for t, e, good in zip(pool, errors, ok) if not good],
    }


def publish_round(studio: Studio, project: int, rnd: dict) -> int:
    """Mark the round's drawn tasks (``labeler_audit`` = round, a random ``labeler_audit_order``) and
    create or update the tab "Audit"; returns its id. Idempotent: run again after an interruption."""
    order = rnd["order"]
    if order:
        write_field(studio, project, order, rnd["round"], AUDIT_FIELD)
        write_priorities(studio, project, order, field=ORDER_FIELD)
    column = f"tasks:data.{ORDER_FIELD}"
    # auditors should judge the image, not the model's answer: the tab hides the prediction columns
    hidden = {k: [*v, "tasks:predictions_results", "tasks:predictions_score", ANSWER_COLUMN]
              for k, v in QUEUE_HIDDEN_COLUMNS.items()}
    return ensure_view(studio, project, AUDIT_VIEW, [column], _field_filter(AUDIT_FIELD, rnd["round"]), hidden,
                       numeric=[column])


def _field_filter(field: str, value: float, *more: dict) -> dict:
    return {"conjunction": "and", "items": [
        {"filter": f"filter:tasks:data.{field}", "operator": "equal", "type": "Number", "value": value}, *more]}


# -- the certificate -----------------------------------------------------------------------------
def certify_project(studio: Studio, project: int | str, model_dir: str | Path, min_confidence: float = 0.0,
                    control_rate: float = 0.0, known: dict[int, str] | None = None) -> Certificate:
    """Certify the latest audit round with the labels people have given by now; save ``certificate.json``
    and ``DATASHEET.md`` and mark the accepted and the needs-a-person tasks in Label Studio.

    A pool task's label is wrong (1) when a person's label differs from the frozen prediction, right (0)
    when it agrees, unknown (NaN) while nobody labelled it; a task deleted since the draw counts as
    labelled by a person with its label unknown (never accepted). A task's label is its consensus
    (:func:`people_labels`): one below ``min_confidence`` is no clean label, so an audit task with it
    counts as not yet labelled (an error in the test) and no task with it is accepted. Raises :class:`CertificateError`
    (certify's message) when there is no round, no audit task drawn or none labelled; nothing is written then.
    """
    key = check_project(project)
    rnd = load_round(model_dir, key)
    if rnd is None:
        raise CertificateError(f"project {key} has no audit round: run labeler audit --project {key} first")
    config = project_config(studio, int(key))
    tasks = {t["id"]: t for t in iter_tasks(studio, int(key))}
    labels, unclean = people_labels(list(tasks.values()), config, min_confidence, control_rate, known)
    pool = rnd["tasks"]
    ids = np.array([t["id"] for t in pool], dtype=np.int64)
    wrong, human = outcomes(pool, labels, unclean)
    cert, mask = certify(np.array([t["score"] for t in pool], dtype=float), [t["predicted"] for t in pool],
                         np.array([t["drawn"] for t in pool], dtype=bool), wrong, human, rnd["rates"], rnd["eps"],
                         rnd["delta"], rnd["round"], rnd["per_class"], starts=rnd.get("starts"),
                         hold_back=not rnd["multilabel"])
    accepted = set(ids[mask].tolist())
    needs = sorted(i for i, lab in labels.items() if lab is None and i not in accepted)
    record = {**cert.to_dict(), "project": key, "version": rnd["version"], "round": rnd["round"],
              "created": _now(), "round_created": rnd["created"], "multilabel": rnd["multilabel"],
              "accepted_ids": sorted(accepted), "needs_person_ids": needs}
    folder = audit_dir(model_dir, key)
    _write(folder / "certificate.json", record)
    atomic_write_text(folder / "DATASHEET.md", datasheet(record, rnd))
    _mark(studio, int(key), tasks, accepted, set(needs))
    return cert


def people_labels(tasks: Sequence[dict], config: LabelConfig, min_confidence: float = 0.0, control_rate: float = 0.0,
                  known: dict[int, str] | None = None) -> tuple[dict[int, str | None], set[int]]:
    """Every task's label from people (None: none usable) and the tasks whose label is not clean. Single
    choice: the consensus of :mod:`labeler.studio.team` (several annotations weighed by the annotators'
    estimated accuracy, ground truth first), not clean below ``min_confidence``; multi-label: the
    majority rule of :func:`~labeler.studio.tasks.pick_label`, always clean."""
    if config.multiple:
        return {int(t["id"]): pick_label(t.get("annotations") or [], config) for t in tasks}, set()
    by_task, _ = consensus_of(team_of(tasks, config, control_rate, known))
    unclean = {i for i, c in by_task.items()
               if c.label is not None and not c.known and c.confidence is not None and c.confidence < min_confidence}
    return {i: None if i in unclean else c.label for i, c in by_task.items()}, unclean


def outcomes(pool: Sequence[dict], labels: dict[int, str | None], unclean: set[int] | frozenset[int] = frozenset(),
             ) -> tuple[np.ndarray, np.ndarray]:
    """(wrong, human) over a round's pool, from people's labels now (``labels``: every task of the project,
    None where it has no usable label). ``wrong``: 1 where the label differs from the frozen prediction, 0
    where it agrees, NaN where there is none; ``human``: labelled since the draw, or deleted (never accepted),
    or labelled with no clean label (``unclean``: people disagree, the task is theirs to settle)."""
    now = [labels.get(t["id"]) for t in pool]
    wrong = np.array([np.nan if lab is None else float(lab != t["predicted"]) for t, lab in zip(pool, now)])
    human = np.array([t["id"] not in labels or lab is not None or t["id"] in unclean for t, lab in zip(pool, now)],
                     dtype=bool)
    return wrong, human


def _mark(studio: Studio, project: int, tasks: dict[int, dict], accepted: set[int], needs: set[int]) -> None:
    """Set ``labeler_accepted``/``labeler_needs_person`` to 1 where they hold and back to 0 where they held before."""
    for field, now in ((ACCEPTED_FIELD, accepted), (NEEDS_FIELD, needs)):
        before = {i for i, t in tasks.items() if (t.get("data") or {}).get(field) == 1}
        write_field(studio, project, sorted(now - before), 1, field)
        write_field(studio, project, sorted(before - now), 0, field)
    unlabelled = {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
    ensure_view(studio, project, NEEDS_VIEW, ["tasks:id"], _field_filter(NEEDS_FIELD, 1, unlabelled))


def finished(model_dir: str | Path, project: int | str) -> Finished:
    """What ``labeler export --finished`` needs of the certificate: the accepted tasks with their frozen
    labels and scores, and the files to copy. Raises :class:`CertificateError` when there is none."""
    key = check_project(project)
    cert = load_certificate(model_dir, key)
    rnd = load_round(model_dir, key, cert["round"]) if cert else None
    if cert is None or rnd is None:
        raise CertificateError(f"project {key} has no certificate: run labeler audit --project {key}, label the "
                               f"tasks of the tab \"{AUDIT_VIEW}\", then labeler certify --project {key}")
    ids = set(cert["accepted_ids"])
    accepted = {t["id"]: Accepted(t["predicted"], tuple(t.get("labels", [t["predicted"]])), t["score"])
                for t in rnd["tasks"] if t["id"] in ids}
    folder = audit_dir(model_dir, key)
    summary = {k: cert[k] for k in ("version", "round", "created", "eps", "delta", "bound", "accepted")}
    return Finished(accepted, cert["version"], [folder / "certificate.json", folder / "DATASHEET.md"], summary)


def datasheet(cert: dict, rnd: dict) -> str:
    """``DATASHEET.md``: what was certified, how, and what the guarantee does and does not say."""
    subset = " (a task counts as wrong when any of its classes is: subset error)" if cert["multilabel"] else ""
    bound = "none" if cert["bound"] is None else f"{cert['bound']:.2%}"
    lines = [
        f"# Datasheet: Label Studio project {cert['project']}", "",
        f"- Issued: {cert['created']} (audit round {cert['round']}, drawn {cert['round_created']})",
        f"- Model version certified: {cert['version']} (its scores and labels frozen at the draw)",
        f"- Target: at most {cert['eps']:.2%} wrong labels among the tasks the model labels unaided{subset}, "
        f"with probability at least {1 - cert['delta']:.0%} (delta {cert['delta']:g}; this round's level "
        f"{cert['level']:.3g})",
        f"- Method: {cert['method']}; {'per predicted class' if cert['per_class'] else 'overall'}",
        f"- Pool (unlabelled at the draw): {cert['pool']} tasks; audit rates "
        + ", ".join(f"{k} {v:.3f}" for k, v in rnd["rates"].items()),
        f"- Audit: {cert['audited']} drawn, {cert['audit_labelled']} labelled, {cert['audit_errors']} model error(s) "
        "found (unlabelled audit tasks count as errors)",
        f"- Accepted: {cert['accepted']} tasks, {cert['coverage']:.1%} of the pool tasks no person labelled; "
        f"certified error bound {bound}",
        f"- Needing a person: {len(cert['needs_person_ids'])} tasks (tab \"{NEEDS_VIEW}\")",
        "- Confidence thresholds (lowest score accepted; of tasks tied at it, the lower ids): " + ", ".join(
            f"{s['name']} {'-' if s['threshold'] is None else format(s['threshold'], '.4f')}" for s in cert["strata"]),
        "", "| predicted class | accepted | audit labels | audit errors | " +
        ("certified bound |" if cert["per_class"] else "estimate (not certified) |"), "|---|---|---|---|---|"]
    for name, c in cert["classes"].items():
        val = c.get("bound") if cert["per_class"] else c.get("estimate")
        lines.append(f"| {name or '(none)'} | {c['accepted']} | {c['audit_labelled']} | {c['audit_errors']} | "
                     f"{'n/a' if val is None else f'{val:.2%}'} |")
    lines += [f"\nBlocked: {b}" for b in cert["blocked"]]
    lines += ["", "## What the guarantee means", "",
              f"Among the tasks whose label is the model's ({cert['version']}), the share of wrong labels is at most "
              f"{cert['eps']:.2%} with probability at least {1 - cert['delta']:.0%} over labeler's random audit draw. "
              "It rests on that draw alone (each unlabelled task audited independently with a known probability), "
              "not on any assumption about the images or the model; every other label in the dataset is a "
              "person's.", "",
              "## What it does not cover", "",
              "- Labels given by people: they are taken as the truth, audit labels included (auditors should not "
              "be shown the model's answer).",
              "- Each task's own label: a bound on a share, not on any one task.",
              "- Tasks added after the draw, and tasks the model could not score: they need a person.",
              "- Another model version, or labels changed after this certificate: certify again.",
              "- Data outside this project, or how well a model trained on it will generalise."]
    return "\n".join(lines) + "\n"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
