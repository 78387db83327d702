"""A project's annotations as a team's: who labelled what, known labels, what was preselected (issue 22).

Turns Label Studio tasks into the matrices :mod:`labeler.models.consensus` reads, and gives each task
its consensus label, confidence and contributing annotators. Single-choice projects only: a multi-label
project keeps :func:`labeler.studio.tasks.winning_annotation` (a label set per vote would make a class
of every combination).

Known labels: Label Studio's ``ground_truth`` annotations (set in its UI or API) and, optionally, a
``known`` mapping of task id to class (a honeypot CSV). A ground-truth annotation is the key, not a
vote: it is left out of the annotators' matrix. Control tasks (:func:`is_control`) are the ones the
backend gives no pre-annotation, so the people label them blind.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labeler.labelconfig import LabelConfig
from labeler.models.consensus import MISSING, Consensus, dawid_skene
from labeler.studio.client import Studio
from labeler.studio.tasks import Labelled, annotation_labels, iter_tasks, labelled_tasks


def is_control(task_id: int, rate: float, salt: str = "control") -> bool:
    """Whether a task is a blind control task: a stable hash of its id below ``rate`` (the backend and
    the reports agree without keeping a list; a new rate changes which tasks are controls)."""
    if rate <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(f"{salt}:{task_id}".encode()).digest()[:8], "big")
    return h / 2**64 < rate


def annotator_name(annotation: dict, users: Mapping[int, str] | None = None) -> str:
    """Who made an annotation: the e-mail where Label Studio gives one (task listings give the user id:
    ``users`` maps ids to e-mails, :func:`user_emails`), else the user id."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("id"))
    if users and isinstance(who, int) and who in users:
        return users[who]
    return str(who) if who is not None else "unknown"


def user_emails(studio: Studio) -> dict[int, str]:
    """Label Studio's users, id to e-mail (every member of the organisation)."""
    return {int(u.id): str(u.email or u.id) for u in studio.users.list() if u.id is not None}


def read_known(path: Path | None) -> dict[int, str]:
    """A honeypot CSV: ``task_id,label`` rows (a header row is skipped)."""
    if path is None:
        return {}
    out = {}
    with Path(path).open(newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[0].strip().isdigit():
                out[int(row[0])] = row[1].strip()
    return out


@dataclass
class Team:
    """N tasks x M annotators: ``labels`` (class index or MISSING), ``lead_times`` (s, nan), per task the
    ``gold`` class (MISSING), the ``shown`` (preselected) class, ``control`` flag, and task ``ids``."""

    ids: list[int]
    names: list[str]
    classes: list[str]
    labels: np.ndarray
    lead_times: np.ndarray
    gold: np.ndarray
    shown: np.ndarray
    control: np.ndarray


def _shown(task: dict, config: LabelConfig) -> str | None:
    """The class preselected on a task: its newest prediction's choice (None: no prediction)."""
    preds = [p for p in task.get("predictions") or [] if isinstance(p, dict) and p.get("result")]
    if not preds:
        return None
    choices = ((preds[-1]["result"][0] or {}).get("value") or {}).get("choices") or []
    return choices[0] if len(choices) == 1 else None


def team_of(tasks: Sequence[dict], config: LabelConfig, control_rate: float = 0.0,
            known: Mapping[int, str] | None = None, users: Mapping[int, str] | None = None) -> Team:
    """The team matrices of ``tasks`` (every annotation of each; an annotator's newest one per task;
    ``users``: id to e-mail, for the names)."""
    classes, index = list(config.classes), {c: k for k, c in enumerate(config.classes)}
    names: dict[str, int] = {}
    cells: list[tuple[int, int, int, float]] = []
    gold = np.full(len(tasks), MISSING)
    shown = np.full(len(tasks), MISSING)
    for i, t in enumerate(tasks):
        for a in sorted(t.get("annotations") or [], key=lambda a: (a.get("updated_at") or "", a.get("id") or 0)):
            lab = annotation_labels(a, config)
            if lab is None or len(lab) != 1:
                continue
            if a.get("ground_truth"):
                gold[i] = index[lab[0]]
                continue
            j = names.setdefault(annotator_name(a, users), len(names))
            lead = a.get("lead_time")
            cells.append((i, j, index[lab[0]], float(lead) if isinstance(lead, (int, float)) else np.nan))
        if known and t.get("id") in known and known[t["id"]] in index:
            gold[i] = index[known[t["id"]]]
        s = _shown(t, config)
        shown[i] = index.get(s, MISSING) if s is not None else MISSING
    labels, lead_times = np.full((len(tasks), len(names)), MISSING), np.full((len(tasks), len(names)), np.nan)
    for i, j, k, lead in cells:  # sorted by time: an annotator's newest label of a task wins
        labels[i, j], lead_times[i, j] = k, lead
    control = np.array([is_control(int(t["id"]), control_rate) for t in tasks], dtype=bool)
    return Team([int(t["id"]) for t in tasks], list(names), classes, labels, lead_times, gold, shown, control)


@dataclass
class TaskConsensus:
    label: str | None             # None: no usable label
    confidence: float | None      # None: not estimable (one label per task, no model, no honeypot) or known label
    annotators: tuple[str, ...]   # who labelled the task (ground truth not counted)
    known: bool = False           # the label is a known one (ground truth or honeypot CSV)


def consensus_of(team: Team, pred_probs: Mapping[int, np.ndarray] | np.ndarray | None = None,
                 ) -> tuple[dict[int, TaskConsensus], Consensus]:
    """Each task's consensus (ground truth wins), and the fitted model of the annotators. ``pred_probs``:
    the classifier's out-of-fold probabilities as one more voter, (N, K) or task id to (K,) (a task
    without them: the model does not vote on it)."""
    if isinstance(pred_probs, Mapping):
        rows = [pred_probs.get(tid) for tid in team.ids]
        pred_probs = np.array([np.full(len(team.classes), np.nan) if r is None else r for r in rows]) \
            if any(r is not None for r in rows) else None
    c = dawid_skene(team.labels, len(team.classes), pred_probs=pred_probs, gold=team.gold)
    out = {}
    for i, tid in enumerate(team.ids):
        who = tuple(team.names[j] for j in np.flatnonzero(team.labels[i] != MISSING))
        k = int(c.label[i])
        conf = float(c.confidence[i]) if np.isfinite(c.confidence[i]) else None
        out[tid] = TaskConsensus(team.classes[k] if k != MISSING else None, conf, who, bool(team.gold[i] != MISSING))
    return out, c


def project_team(studio: Studio, project: int, config: LabelConfig, control_rate: float = 0.0,
                 known: Mapping[int, str] | None = None) -> tuple[list[dict], Team]:
    """Every task of ``project`` (one listing) and its team matrices."""
    tasks = list(iter_tasks(studio, project))
    return tasks, team_of(tasks, config, control_rate, known)


def clean_labels(tasks: Sequence[dict], team: Team, config: LabelConfig, min_confidence: float = 0.0,
                 pred_probs: Mapping[int, np.ndarray] | None = None,
                 ) -> tuple[list[Labelled], int, list[tuple[int, str]]]:
    """(tasks with a clean consensus label, annotated tasks skipped (cancelled/empty, or a consensus below
    ``min_confidence``), (task id, image URL) of the tasks nobody annotated). ``pred_probs``: see
    :func:`consensus_of`."""
    by_task, _ = consensus_of(team, pred_probs)
    out, skipped, unlabelled = [], 0, []
    for t in tasks:
        ref = config.image_ref(t)
        url = ref if isinstance(ref, str) else ""
        if not t.get("total_annotations", 0):
            if url:
                unlabelled.append((t["id"], url))
            continue
        c = by_task[int(t["id"])]
        low = not c.known and c.confidence is not None and c.confidence < min_confidence
        if c.label is None or not url or low:
            skipped += 1
            continue
        out.append(Labelled(t["id"], url, c.label, (c.label,), c.confidence, c.annotators))
    return out, skipped, unlabelled


def consensus_labelled(studio: Studio, project: int, config: LabelConfig, min_confidence: float = 0.0,
                       control_rate: float = 0.0, known: Mapping[int, str] | None = None,
                       ) -> tuple[list[Labelled], int, list[tuple[int, str]]]:
    """:func:`labeler.studio.tasks.labelled_tasks` with the people's consensus as each task's label
    (:func:`clean_labels`). Multi-label projects keep the majority rule."""
    if config.multiple:
        return labelled_tasks(studio, project, config)
    tasks, team = project_team(studio, project, config, control_rate, known)
    return clean_labels(tasks, team, config, min_confidence)


def votes_path(model_dir: str | Path, project: int | str) -> Path:
    """Where the last training left the classifier's out-of-fold probabilities of the labelled tasks."""
    from labeler.models.registry import Registry

    return Registry(Path(model_dir)).project_dir(str(project), create=True) / "model_votes.json"


def save_votes(model_dir: str | Path, project: int | str, votes: Mapping[int, np.ndarray], version: str = "") -> None:
    """Keep ``votes`` (task id to out-of-fold probabilities), so that the reports weigh the same voters as
    training did without fitting anything."""
    from labeler.fsutil import atomic_write_text

    atomic_write_text(votes_path(model_dir, project), json.dumps(
        {"trained": version, "tasks": [int(t) for t in votes], "proba": [np.round(p, 5).tolist() for p in votes.values()]}))


def load_votes(model_dir: str | Path, project: int | str) -> dict[int, np.ndarray] | None:
    """The votes :func:`save_votes` kept (None: none, or an unreadable file)."""
    try:
        raw = json.loads(votes_path(model_dir, project).read_text())
        return {int(t): np.asarray(p, dtype=float) for t, p in zip(raw["tasks"], raw["proba"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def set_overlap(studio: Studio, project: int, annotations: int, share: float) -> None:
    """Label Studio's own overlap (open source too): ``share`` of the tasks go to ``annotations`` people
    in its "Label All Tasks" stream (``maximum_annotations``, ``overlap_cohort_percentage``), overlapping
    tasks first (``show_overlap_first``). Who gets which task stays Label Studio's: its API has no
    per-user assignment outside Enterprise."""
    if annotations < 1 or not 0 <= share <= 1:
        raise ValueError(f"annotations must be 1 or more and share in [0, 1], got {annotations} and {share}")
    studio.projects.update(id=project, maximum_annotations=annotations, overlap_cohort_percentage=round(share * 100),
                           show_overlap_first=True)
