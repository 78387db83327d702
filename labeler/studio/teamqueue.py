"""Known-label tasks and second opinions in "Next to label" (issue 22): what the queue decides, and what
Label Studio's own next-task logic does.

The queue (:func:`labeler.studio.queue.publish`) decides *which* annotated tasks stay in the tab and
*where*. Honeypots, the tasks with a known label (a Label Studio ``ground_truth`` annotation or a row of the
``LABELER_HONEYPOTS`` CSV), take a share ``LABELER_HONEYPOT_RATE`` of the slots, interleaved with the new
tasks (:func:`interleave`), the least-labelled honeypots first. With ``LABELER_RELABEL`` an annotated task
whose ActiveLab score beats the best new task's goes in front for one more person (:func:`relabel_picks`).
Such a task is *open*: ``data.labeler_open = 1`` keeps it in the tab, whose filter reads "nobody annotated
it, or open".

Label Studio decides *who* gets an open task: its next-task logic (``GET /api/projects/<p>/next?view=<tab>``
and the "Label All Tasks" stream) never serves a person a task they annotated, and serves only tasks with
fewer distinct annotators than the task's ``overlap`` (``is_labeled`` false). So the queue raises an open
task's ``overlap`` (a task field its API writes): a honeypot's to :data:`EVERYONE`, a second opinion's to
its annotators + 1, which closes it by itself once that label is in. Per-user assignment is an Enterprise
API; none is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labeler.errors import StudioError
from labeler.labelconfig import LabelConfig
from labeler.models.consensus import MISSING, relabel_scores
from labeler.studio.client import Studio
from labeler.studio.tasks import iter_tasks
from labeler.studio.team import Team, read_known, team_of

log = logging.getLogger(__name__)

OPEN_FIELD = "labeler_open"
EVERYONE = 10_000  # a honeypot's overlap: served to each person until this many people labelled it


@dataclass(frozen=True)
class TeamQueue:
    """The project's team settings the queue reads (``LABELER_HONEYPOT_RATE``, ``LABELER_HONEYPOTS``,
    ``LABELER_RELABEL``, ``LABELER_CONTROL_RATE``)."""

    honeypot_rate: float = 0.0
    known: Mapping[int, str] = field(default_factory=dict)
    relabel: bool = False
    control_rate: float = 0.0

    @classmethod
    def from_settings(cls, settings: Any) -> "TeamQueue":
        path = getattr(settings, "honeypots", "")
        return cls(getattr(settings, "honeypot_rate", 0.0), read_known(Path(path)) if path else {},
                   bool(getattr(settings, "relabel", False)), getattr(settings, "control_rate", 0.0))

    @property
    def active(self) -> bool:
        return self.honeypot_rate > 0 or self.relabel


@dataclass
class Opened:
    """What one publish keeps open: honeypots in queue order, second opinions best first, and the
    ``overlap`` each open task gets."""

    honeypots: list[int] = field(default_factory=list)
    relabel: list[int] = field(default_factory=list)
    overlap: dict[int, int] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return [*self.relabel, *self.honeypots]


def interleave(new: Sequence[int], extra: Sequence[int], rate: float) -> list[int]:
    """``new`` with ``extra`` mixed in, so that the first ``n`` slots hold ``floor(rate * n)`` of them: slot
    ``p`` is an extra one when ``floor((p + 1) rate) > floor(p rate)`` (rate 0.1: slots 9, 19, ...). Extras
    left when ``new`` runs out follow it."""
    out: list[int] = []
    n = e = 0
    while n < len(new) or e < len(extra):
        p = len(out)
        due = int((p + 1) * rate + 1e-9) > int(p * rate + 1e-9)
        if e < len(extra) and (due or n >= len(new)):
            out.append(int(extra[e]))
            e += 1
        else:
            out.append(int(new[n]))
            n += 1
    return out


def _stable(task_id: int, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{task_id}".encode()).hexdigest()


def honeypot_order(team: Team, present: set[int], seed: int) -> list[int]:
    """Task ids with a known label, the fewest people's labels first (every honeypot measures someone
    before any measures the whole team), ties in a stable pseudo-random order."""
    people = (team.labels != MISSING).sum(axis=1)
    labelled = {tid: int(n) for tid, n, g in zip(team.ids, people, team.gold) if g != MISSING}
    return sorted((t for t in labelled if t in present), key=lambda t: (labelled[t], _stable(t, seed)))


def relabel_picks(team: Team, proba: Mapping[int, np.ndarray], unlabelled: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` annotated tasks whose ActiveLab score (cleanlab) is below the best unlabelled task's, lowest
    first: another label is worth more there than on any new task. Left out: known labels, tasks every
    annotator has labelled, tasks without the model's probabilities. ``proba``: task id to the serving
    model's probabilities (stored by pre-annotation; not out-of-fold, so the model's agreement with the
    labels it trained on is overstated), ``unlabelled``: (U, K) of the new tasks."""
    voted = (team.labels != MISSING).any(axis=1)
    rows = [i for i, tid in enumerate(team.ids) if voted[i] and tid in proba]
    if k <= 0 or not rows or not len(unlabelled):
        return []
    labels = team.labels[rows]
    labels = labels[:, (labels != MISSING).any(axis=0)]
    try:
        scores, new = relabel_scores(labels, np.stack([proba[team.ids[i]] for i in rows]), np.asarray(unlabelled))
    except ValueError as exc:  # cleanlab refuses some inputs (e.g. one class in every label): no second opinion
        log.warning("no second opinions this time: ActiveLab refused the labels (%s)", exc)
        return []
    room = (labels == MISSING).any(axis=1) & (team.gold[rows] == MISSING)
    best_new = float(np.min(new))
    order = [int(j) for j in np.argsort(scores, kind="stable") if room[j] and scores[j] < best_new]
    return [team.ids[rows[j]] for j in order[:k]]


def plan(studio: Studio, project: int, config: LabelConfig, team_queue: TeamQueue, proba: Mapping[int, np.ndarray],
         unlabelled: np.ndarray, k: int, seed: int = 0) -> Opened:
    """The open tasks of one publish (one listing of the project's tasks with their annotations)."""
    tasks = list(iter_tasks(studio, project))
    team = team_of(tasks, config, team_queue.control_rate, team_queue.known)
    out = Opened()
    if team_queue.honeypot_rate > 0:
        out.honeypots = honeypot_order(team, {int(t["id"]) for t in tasks}, seed)
        out.overlap.update({t: EVERYONE for t in out.honeypots})
    if team_queue.relabel and not config.multiple:
        out.relabel = relabel_picks(team, proba, unlabelled, k)
        people = {tid: int(n) for tid, n in zip(team.ids, (team.labels != MISSING).sum(axis=1))}
        out.overlap.update({t: people[t] + 1 for t in out.relabel})
    return out


def open_now(studio: Studio, project: int) -> dict[int, int]:
    """The tasks a past publish left open: task id to its annotation count (one filtered listing)."""
    query = {"filters": {"conjunction": "and", "items": [
        {"filter": f"filter:tasks:data.{OPEN_FIELD}", "operator": "equal", "type": "Number", "value": 1}]}}
    resp = studio.request("GET", "api/tasks/", params={"project": project, "page_size": 1_000_000, "fields": "task_only",
                                                       "include": "id,total_annotations", "query": json.dumps(query)})
    if resp.status_code >= 400:
        raise StudioError(f"listing the open tasks of project {project} failed: HTTP {resp.status_code}")
    return {int(t["id"]): int(t.get("total_annotations") or 0) for t in resp.json().get("tasks", [])}


def set_task_overlap(studio: Studio, project: int, overlap: Mapping[int, int], closed: Mapping[int, int]) -> None:
    """Open tasks get their ``overlap`` and ``is_labeled`` false (Label Studio recomputes it only on a new
    annotation); tasks no longer open go back to one person (``closed``: id to annotation count)."""
    bodies = {**{t: {"overlap": 1, "is_labeled": n > 0} for t, n in closed.items()},
              **{t: {"overlap": n, "is_labeled": False} for t, n in overlap.items()}}
    for tid, body in bodies.items():
        resp = studio.request("PATCH", f"api/tasks/{tid}/", json=body)
        if resp.status_code >= 400:
            raise StudioError(f"setting the overlap of task {tid} (project {project}) failed: HTTP {resp.status_code} "
                              f"{resp.text[:200]}")
