"""The labelling queue: every unlabelled task's priority, by the strategy ``labeler simulate`` measures.

After each prediction refresh (``labeler preannotate``, a promoted retraining, and
Label Studio's "Retrieve predictions" through ``/predict``: :mod:`labeler.studio.autoqueue`)
:func:`publish` orders the project's unlabelled tasks with
:func:`labeler.models.strategies.queue_order` (``margin_diverse`` by default: the
same shortlist and k-center batch logic as the simulation) and writes the
rank into each task's data as ``labeler_priority``. The Label Studio tab
"Next to label" (the first, default tab) sorts on it ascending and shows only
tasks nobody has annotated; annotators take its first row, and
``GET /api/projects/<p>/next?view=<tab>`` serves the same order. (Label
Studio 1.23's "Label All Tasks" button does not: see :func:`ensure_queue_view`.)
The stored prediction score is untouched: it stays an honest confidence.
Each publish also writes the model's answer (the class, readable) into each scored task's data as
``labeler_answer`` (:func:`write_answers`), which both tabs show beside the score in place of the
prediction's raw JSON.

What the strategy needs per task (class probabilities, diversity features,
whether it is annotated) is kept in ``MODEL_DIR/projects/<p>/queue.npz``,
filled while pre-annotation scores the images (:class:`Recorder`), so
publishing downloads nothing and lists no tasks.

Writing 50,000 priorities: Label Studio has no bulk task update, and one
``PATCH /api/tasks/<id>`` per task costs about 20-100 ms each. Its
data-manager action ``add_data_field`` sets one value on any set of tasks in
one request (a bulk ``UPDATE``), so tasks sharing a value are written
together: the first ``exact`` ranks get their own value, and further down
the ranks are grouped into buckets that grow by ``growth`` (ties there are
harmless: the queue is recomputed at every retraining long before annotators
get that far). That is about 260 requests for 50,000 tasks, sent 4 at a time.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labeler.errors import StudioError
from labeler.models.strategies import DEFAULT_STRATEGY, TYPICAL_PER_CLASS, check_strategy, encoder_features, queue_order
from labeler.models.uncertainty import centred
from labeler.studio.client import Studio, unreachable
from labeler.studio.teamqueue import OPEN_FIELD, Opened, TeamQueue, interleave, open_now, plan, set_task_overlap

log = logging.getLogger(__name__)

FIELD = "labeler_priority"
VIEW = "Next to label"
UNRANKED = 1e9  # tasks the queue has no scores for yet sort after every ranked one


# -- what the strategy needs, per task ------------------------------------------------------
IMAGENET = "imagenet"  # QueueState.features_from without a project encoder

@dataclass
class QueueState:
    """Per task: id, annotated?, class probabilities (N, C), diversity features (N, D).

    Multi-label projects (``multilabel``) store threshold-centred probabilities
    (:func:`queue_scores`), ranked by :func:`~labeler.models.uncertainty.multilabel_uncertainty`.
    """

    ids: np.ndarray
    annotated: np.ndarray
    proba: np.ndarray
    features: np.ndarray
    version: str = ""
    multilabel: bool = False
    features_from: str = IMAGENET  # the encoder the features came from: another one's are not comparable

    @classmethod
    def empty(cls) -> "QueueState":
        return cls(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros((0, 0), np.float32),
                   np.zeros((0, 0), np.float16))

    @classmethod
    def load(cls, path: Path) -> "QueueState":
        try:
            with np.load(path, allow_pickle=False) as z:
                multilabel = bool(z["multilabel"]) if "multilabel" in z.files else False
                source = str(z["features_from"]) if "features_from" in z.files else IMAGENET
                return cls(z["ids"], z["annotated"], z["proba"], z["features"], str(z["version"]), multilabel, source)
        except FileNotFoundError:
            return cls.empty()
        except (ValueError, KeyError, OSError) as exc:  # a torn or foreign file: start again, do not crash
            log.warning("ignoring unreadable queue state %s: %s", path, exc)
            return cls.empty()

    def save(self, path: Path) -> None:
        """Atomic: written to a temp file in the same folder, then renamed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as f:
                np.savez(f, ids=self.ids, annotated=self.annotated, proba=self.proba,
                         features=self.features, version=np.array(self.version), multilabel=np.array(self.multilabel),
                         features_from=np.array(self.features_from))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def update(self, task_ids: Sequence[int], proba: np.ndarray, features: np.ndarray, version: str) -> None:
        """Insert or replace rows; a change in the number of classes drops the old rows."""
        ids = np.asarray(task_ids, dtype=np.int64)
        proba = np.asarray(proba, dtype=np.float32)
        features = np.asarray(features, dtype=np.float16)
        if len(self.ids) and (self.proba.shape[1] != proba.shape[1] or self.features.shape[1] != features.shape[1]):
            self.__dict__.update({**QueueState.empty().__dict__, "multilabel": self.multilabel})
        keep = ~np.isin(self.ids, ids)
        old_annotated = dict(zip(self.ids.tolist(), self.annotated.tolist()))
        self.ids = np.concatenate([self.ids[keep], ids])
        self.annotated = np.concatenate([self.annotated[keep],
                                         np.array([old_annotated.get(int(i), False) for i in ids], bool)])
        self.proba = np.concatenate([self.proba[keep].reshape(-1, proba.shape[1]), proba])
        self.features = np.concatenate([self.features[keep].reshape(-1, features.shape[1]), features])
        self.version = version

    def mark(self, annotated: dict[int, bool]) -> None:
        """Record which tasks are annotated (from a task listing)."""
        self.annotated = np.array([annotated.get(int(i), bool(a)) for i, a in zip(self.ids, self.annotated)],
                                  dtype=bool)

    def drop_missing(self, present: Iterable[int]) -> None:
        """Forget tasks deleted from the project."""
        keep = np.isin(self.ids, np.fromiter(present, dtype=np.int64))
        self.ids, self.annotated = self.ids[keep], self.annotated[keep]
        self.proba, self.features = self.proba[keep], self.features[keep]


def queue_scores(proba: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
    """What the queue stores of a task's probabilities: as they are (single choice), or, with a
    multi-label model's ``thresholds``, centred so each threshold is 0.5 (versions rank together)."""
    return np.asarray(proba) if thresholds is None else centred(proba, thresholds)


def state_path(model_dir: Path, project: int | str) -> Path:
    from labeler.models.registry import Registry

    return Registry(model_dir).project_dir(str(project), create=True) / "queue.npz"


class Recorder:
    """Collects what pre-annotation scored, for :func:`publish`: ``add`` per batch, then ``save``."""

    def __init__(self, model_dir: Path, project: int | str, n_classes: int, multilabel: bool = False,
                 encoder: tuple[str, Path] | None = None) -> None:
        self.path = state_path(model_dir, project)
        self.n_classes = n_classes
        self.encoder = encoder  # (version, file) of the project's encoder (labeler.models.encoders); None: ImageNet
        self.state = QueueState.load(self.path)
        source = encoder[0] if encoder else IMAGENET
        if self.state.multilabel != multilabel or self.state.features_from != source:
            self.state = QueueState.empty()  # the config or the encoder changed: old rows mean something else
            self.state.multilabel, self.state.features_from = multilabel, source
        self.annotated: dict[int, bool] = {}
        self.present: set[int] = set()
        self._saved = time.monotonic()

    def saw(self, task: dict) -> None:
        """Every task of the listing, scored or skipped: is it annotated, does it exist."""
        self.present.add(int(task["id"]))
        self.annotated[int(task["id"])] = bool(task.get("total_annotations"))

    def add(self, tasks: Sequence[dict], items: Sequence, version: str) -> None:
        """Tasks and their scored items (``Scored`` with ``proba`` and ``sample``), as pre-annotation made them.

        An image with no probabilities (no model yet) is kept with NaN ones: its
        features still serve the cold start's k-center batch.
        """
        ok = [(t, it) for t, it in zip(tasks, items) if it.sample is not None]
        if not ok:
            return
        feats = encoder_features([it.sample for _, it in ok], self.encoder[1] if self.encoder else None)
        proba = np.stack([queue_scores(it.proba, it.thresholds) if it.proba is not None
                          else np.full(self.n_classes, np.nan) for _, it in ok])
        self.state.update([t["id"] for t, _ in ok], proba, feats, version)
        if time.monotonic() - self._saved > 60:  # an interrupted run keeps what it scored
            self.state.save(self.path)
            self._saved = time.monotonic()

    def save(self) -> QueueState:
        if self.present:
            self.state.drop_missing(self.present)
        self.state.mark(self.annotated)
        self.state.save(self.path)
        return self.state


# -- priorities -> Label Studio ---------------------------------------------------------------
def bucket_values(n: int, exact: int = 200, growth: float = 0.1) -> np.ndarray:
    """The value written for ranks ``0..n-1``: non-decreasing, exact for ranks below ``exact``.

    Further down, buckets start at ``b_0 = exact``, ``b_{k+1} = max(b_k + 1, ceil(b_k (1 + growth)))``
    and rank ``r`` is written as the start of its bucket, so the number still reads as
    "about this far down the queue". Distinct values for 50,000 ranks (exact 200,
    growth 0.1): about 260.
    """
    starts = [exact]
    while starts[-1] < n:
        starts.append(max(starts[-1] + 1, math.ceil(starts[-1] * (1 + growth))))
    r = np.arange(n, dtype=np.int64)
    b = np.asarray(starts, dtype=np.int64)
    return np.where(r < exact, r, b[np.clip(np.searchsorted(b, r, side="right") - 1, 0, None)])


def _action(studio: Studio, project: int, ids: Sequence[int], value: float | str, attempts: int = 4,
            field: str = FIELD) -> None:
    body = {"selectedItems": {"all": False, "included": [int(i) for i in ids]},
            "value_name": field, "value_type": "String" if isinstance(value, str) else "Number", "value": value}
    for attempt in range(attempts):
        resp = studio.request("POST", "api/dm/actions/", params={"id": "add_data_field", "project": project},
                              json=body)
        if resp.status_code < 400:
            return
        if attempt + 1 == attempts or resp.status_code not in {409, 423, 429, 500, 502, 503}:
            raise StudioError(f"writing {field} for {len(ids)} tasks of project {project} failed: "
                              f"HTTP {resp.status_code} {resp.text[:200]}")
        time.sleep(0.5 * (attempt + 1))  # SQLite "database is locked" under concurrent writes: retry


def write_priorities(studio: Studio, project: int, ordered_ids: Sequence[int], unranked_ids: Sequence[int] = (),
                     exact: int = 200, growth: float = 0.1, workers: int = 4, field: str = FIELD) -> int:
    """Write ``labeler_priority`` (or ``field``) = bucketed rank into the data of ``ordered_ids`` (first = 0),
    :data:`UNRANKED` into ``unranked_ids``; returns the number of requests."""
    values = bucket_values(len(ordered_ids), exact, growth)
    ordered = np.asarray(ordered_ids, dtype=np.int64)
    groups: list[tuple[np.ndarray, float]] = []
    if len(values):
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        ends = np.r_[starts[1:], len(values)]
        groups = [(ordered[s:e], float(values[s])) for s, e in zip(starts, ends)]
    if len(unranked_ids):
        groups.append((np.asarray(unranked_ids, dtype=np.int64), UNRANKED))
    # Chunks of at most 5,000 ids keep each UPDATE (and request body) modest.
    calls = [(ids[i:i + 5000], v) for ids, v in groups for i in range(0, len(ids), 5000)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda c: _action(studio, project, c[0], c[1], field=field), calls))
    return len(calls)


def write_field(studio: Studio, project: int, ids: Sequence[int], value: float | str, field: str) -> int:
    """Set the data field ``field`` = ``value`` on the tasks ``ids`` (bulk, as the priorities); returns the requests."""
    ids = [int(i) for i in ids]
    for i in range(0, len(ids), 5000):
        _action(studio, project, ids[i:i + 5000], value, field=field)
    return (len(ids) + 4999) // 5000


def answers(state: QueueState, classes: Sequence[str]) -> dict[str, list[int]]:
    """The model's answer of every scored task in ``state``, as task ids per answer text: the top class
    (the class ``to_prediction`` chooses), or for multi-label the classes at or over their thresholds
    joined ``"a;b"`` (the stored probabilities are centred, thresholds at 0.5), :data:`NO_ANSWER` for none.
    Tasks without probabilities, or scored for another number of classes, get none."""
    from labeler.studio.tasks import NO_ANSWER, join_labels

    out: dict[str, list[int]] = {}
    if not len(state.ids) or state.proba.ndim != 2 or state.proba.shape[1] != len(classes):
        return out
    scored = np.isfinite(state.proba).all(1)
    for tid, p in zip(state.ids[scored].tolist(), state.proba[scored]):
        if state.multilabel:
            text = join_labels([c for c, q in zip(classes, p) if q >= 0.5]) or NO_ANSWER
        else:
            text = classes[int(np.argmax(p))]
        out.setdefault(text, []).append(int(tid))
    return out


def write_answers(studio: Studio, project: int, state: QueueState, classes: Sequence[str]) -> int:
    """Write ``labeler_answer`` (:func:`answers`) into the data of every scored task, one bulk request per
    answer and 5,000 tasks; returns the requests. Sequential, never beside the priorities' writes: on SQLite
    Label Studio's action rewrites each task's whole ``data``, so two writes to one task at once lose one."""
    from labeler.studio.tasks import ANSWER_FIELD

    return sum(write_field(studio, project, ids, text, ANSWER_FIELD) for text, ids in answers(state, classes).items())


def ensure_queue_view(studio: Studio, project: int, with_open: bool = False) -> int:
    """The "Next to label" tab: unannotated tasks (``with_open``: and the open ones of
    :mod:`~labeler.studio.teamqueue`) by ``labeler_priority``, first among the tabs, with
    "Least confident first" (:func:`~labeler.studio.tasks.uncertainty_view`) second where it exists.

    The project's sampling is left as it is (``uncertainty_view`` sets "Uncertainty sampling"):
    Label Studio 1.23's "Label All Tasks" sends no tab (``POST /api/dm/actions?id=next_task``
    with only the project in the body), so it serves by the project's sampling, never by a
    tab's order; sequential sampling would make it serve task ids in order, least confident
    first is the better of the two.
    """
    from labeler.studio.tasks import QUEUE_COLUMN_WIDTHS, QUEUE_HIDDEN_COLUMNS, UNCERTAINTY_VIEW

    column = f"tasks:data.{FIELD}"
    # Only unannotated tasks: the annotation count would read 0 on every row. The rank shows here only.
    # The open flag is hidden too: a honeypot must not look like one.
    hidden = {k: [*(c for c in v if c != column), "tasks:total_annotations", f"tasks:data.{OPEN_FIELD}"]
              for k, v in QUEUE_HIDDEN_COLUMNS.items()}
    items = [{"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]
    if with_open:
        items.append({"filter": f"filter:tasks:data.{OPEN_FIELD}", "operator": "equal", "type": "Number", "value": 1})
    data = {"title": VIEW, "ordering": [column], "filters": {"conjunction": "or", "items": items},
            "columnsDisplayType": {column: "Number"},  # numeric, not text, ordering of the field
            "hiddenColumns": hidden, "columnsWidth": QUEUE_COLUMN_WIDTHS}
    views = list(studio.views.list(project=project))
    ours = [v for v in views if (v.data or {}).get("title") == VIEW]
    if ours:
        vid = ours[0].id
        studio.views.update(id=vid, project=project, data=data)
    else:
        vid = studio.views.create(project=project, data=data).id
    second = [v.id for v in views if (v.data or {}).get("title") == UNCERTAINTY_VIEW and v.id != vid][:1]
    ids = [vid, *second] + [v.id for v in views if v.id != vid and v.id not in second]
    studio.request("POST", "api/dm/views/order/", json={"project": project, "ids": ids})
    return vid


@dataclass
class QueueReport:
    ranked: int = 0
    unranked: int = 0
    requests: int = 0
    answers: int = 0  # tasks whose labeler_answer was written
    order_s: float = 0.0
    write_s: float = 0.0
    view: int | None = None
    top: list[int] = field(default_factory=list)
    honeypots: int = 0  # known-label tasks interleaved (LABELER_HONEYPOT_RATE)
    relabel: int = 0    # annotated tasks put in front for one more person (LABELER_RELABEL)

    def summary(self) -> str:
        team = f", {self.honeypots} honeypots mixed in, {self.relabel} second opinions first" \
            if self.honeypots or self.relabel else ""
        return (f'queue "{VIEW}": {self.ranked} tasks ranked ({self.order_s:.1f} s){team}, '
                f"{self.unranked} without scores last; {self.requests} bulk writes in {self.write_s:.1f} s")


def cold_start(state: QueueState) -> dict:
    """How the first batches are chosen: where the features come from the project's self-supervised
    encoder, TypiClust's typical images while there is no model (and until ``TYPICAL_PER_CLASS`` labels
    per class; on eyes24 the pair halved the EER at 25 labels and neither helped alone, see README
    "Learning from few labels"; once labels exist and still no model, half of each batch comes from
    k-center greedy, which finds a missing class), else k-center greedy while there is no model."""
    if state.features_from == IMAGENET or not state.proba.size:
        return {}
    return {"cold_start": "typiclust", "typical_until": TYPICAL_PER_CLASS * state.proba.shape[1]}


def _rank(state: QueueState, strategy: str, batch: int, seed: int, exact: int, leave_out: Sequence[int] = (),
          ) -> tuple[np.ndarray, list[int]]:
    """The unannotated tasks of ``state`` in queue order (``leave_out``: placed by the team queue instead),
    and those left unranked (no scores while others have some)."""
    scored = np.isfinite(state.proba).all(1) if state.proba.size else np.zeros(len(state.ids), bool)
    unlabelled = ~state.annotated & ~np.isin(state.ids, np.asarray(leave_out, dtype=np.int64))
    labelled = np.flatnonzero(state.annotated)
    feats = state.features.astype(np.float32) if state.features.size else None
    unranked: list[int] = []
    if (unlabelled & scored).any():  # a model has scored them: unscored ones go last
        pool, proba = np.flatnonzero(unlabelled & scored), state.proba[unlabelled & scored]
        unranked = state.ids[unlabelled & ~scored].tolist()
    else:  # cold start, no model yet: batches that cover the pool (see cold_start)
        pool, proba = np.flatnonzero(unlabelled), None
    order = queue_order(strategy, proba, pool, labelled, batch, feats, seed, diverse_top=max(exact, 4 * batch),
                        multilabel=state.multilabel, **cold_start(state))
    return state.ids[order], unranked


def _team_plan(studio: Studio, project: int, state: QueueState, team: TeamQueue, batch: int, seed: int) -> Opened:
    """The honeypots and second opinions the queue keeps open (:mod:`labeler.studio.teamqueue`)."""
    from labeler.studio.tasks import project_config

    if not team.active:
        return Opened()
    scored = np.isfinite(state.proba).all(1) if state.proba.size else np.zeros(len(state.ids), bool)
    proba = {int(i): p for i, p in zip(state.ids[scored & state.annotated], state.proba[scored & state.annotated])}
    new = state.proba[scored & ~state.annotated & ~np.isin(state.ids, list(team.known))]
    return plan(studio, project, project_config(studio, project), team, proba, new, batch, seed)


def _write_open(studio: Studio, project: int, opened: Opened) -> int:
    """``data.labeler_open`` and the overlap of the tasks opened now, and of those no longer open."""
    was = open_now(studio, project)
    still = set(opened.ids)
    closed = {t: n for t, n in was.items() if t not in still}
    requests = write_field(studio, project, opened.ids, 1, OPEN_FIELD) + write_field(studio, project, list(closed), 0,
                                                                                       OPEN_FIELD)
    set_task_overlap(studio, project, opened.overlap, closed)
    return requests + len(opened.overlap) + len(closed)


def publish(studio: Studio, project: int, state: QueueState, strategy: str = DEFAULT_STRATEGY, batch: int = 25,
            seed: int = 0, unranked_ids: Sequence[int] = (), exact: int = 200,
            classes: Sequence[str] | None = None, team: TeamQueue | None = None) -> QueueReport:
    """Rank the unannotated tasks of ``state`` with ``strategy`` and write the ranks to Label Studio, then
    the model's answers (``classes``: the label config's, read from the project when not given). ``team``:
    honeypots interleaved and second opinions in front (:mod:`labeler.studio.teamqueue`)."""
    check_strategy(strategy)
    team = team or TeamQueue()
    rep = QueueReport()
    t = time.perf_counter()
    opened = _team_plan(studio, project, state, team, batch, seed)
    new_ids, more_unranked = _rank(state, strategy, batch, seed, exact, opened.honeypots)
    placed = set(opened.ids)
    unranked_ids = [i for i in [*unranked_ids, *more_unranked] if i not in placed]
    ordered_ids = [*opened.relabel, *interleave(new_ids.tolist(), opened.honeypots, team.honeypot_rate)]
    rep.order_s = time.perf_counter() - t
    t = time.perf_counter()
    if classes is None:
        from labeler.studio.tasks import project_config

        classes = project_config(studio, project).classes
    # The answers first: Label Studio lists data columns in the order they first appear, so the answer
    # sits next to the image, the rank after it.
    rep.requests = write_answers(studio, project, state, classes)
    rep.requests += write_priorities(studio, project, ordered_ids, unranked_ids, exact=max(exact, batch))
    rep.requests += _write_open(studio, project, opened)
    rep.answers = int(np.isfinite(state.proba).all(1).sum()) if state.proba.size else 0
    rep.view = ensure_queue_view(studio, project, with_open=bool(opened.ids))
    rep.write_s = time.perf_counter() - t
    rep.ranked, rep.unranked, rep.top = len(ordered_ids), len(unranked_ids), ordered_ids[:10]
    rep.honeypots, rep.relabel = len(opened.honeypots), len(opened.relabel)
    return rep


def refresh(studio: Studio, project: int, recorder: Recorder, strategy: str = DEFAULT_STRATEGY, batch: int = 25,
            seed: int = 0, team: TeamQueue | None = None) -> QueueReport | None:
    """After a prediction refresh: save what was scored, then publish. A refused write is logged, not
    raised: the predictions are written already, and a stale queue is better than a failed refresh. An
    unreachable Label Studio raises :class:`StudioError`, so the caller can publish again when it answers
    (a half-written queue is rewritten whole by the next publish)."""
    state = recorder.save()
    try:
        unranked = sorted(i for i, a in recorder.annotated.items() if not a and i not in set(state.ids.tolist()))
        rep = publish(studio, project, state, strategy, batch, seed, unranked, team=team)
        log.info("project %s: %s", project, rep.summary())
        return rep
    except Exception as exc:  # noqa: BLE001 - the SDK raises ApiError and httpx errors
        if unreachable(exc):
            raise StudioError(f"Label Studio at {studio.url} is unreachable: the labelling queue of project "
                              f"{project} was not published ({exc})") from exc
        log.error("project %s: could not publish the labelling queue: %s", project, exc)
        return None


def republish(studio: Studio, project: int, model_dir: Path, strategy: str = DEFAULT_STRATEGY, batch: int = 25,
              seed: int = 0, team: TeamQueue | None = None) -> QueueReport:
    """Re-rank from the stored state without scoring anything (e.g. another strategy or batch size);
    which tasks are annotated is read from Label Studio first."""
    path = state_path(model_dir, project)
    state = QueueState.load(path)
    if not len(state.ids):
        raise StudioError(f"no queue state for project {project} yet: run labeler preannotate --project {project}")
    annotated = annotated_tasks(studio, project)
    state.drop_missing(annotated)
    state.mark(annotated)
    state.save(path)
    known = set(state.ids.tolist())
    unranked = sorted(i for i, a in annotated.items() if not a and i not in known)
    return publish(studio, project, state, strategy, batch, seed, unranked, team=team)


def annotated_tasks(studio: Studio, project: int) -> dict[int, bool]:
    """Every task id of ``project``: annotated or not (one narrow listing)."""
    resp = studio.request("GET", "api/tasks/", params={
        "project": project, "page_size": 1_000_000, "fields": "task_only", "include": "id,total_annotations"})
    if resp.status_code >= 400:
        raise StudioError(f"listing tasks of project {project} failed: HTTP {resp.status_code}")
    return {int(t["id"]): bool(t.get("total_annotations")) for t in resp.json().get("tasks", [])}
