"""Background training jobs: one at a time per project, a bounded number at once, with a visible state.

In this process (:class:`TrainingJobs`), or as Ray jobs when a Ray job server
is configured (:class:`RayTrainingJobs`, README "Scaling out"); :func:`make_jobs`
picks. Both answer the same calls with the same state vocabulary.

State (``queued``/``running``/``done``/``failed`` with the reason and the
current step) is kept in memory and in ``MODEL_DIR/projects/<p>/job.json``. A
trigger that arrives while a job is queued or running queues exactly one
follow-up run, so a burst of annotation events trains once more, not once per
event. Jobs run on a pool of ``LABELER_TRAIN_WORKERS`` threads.

After a crash: a job the last process left ``queued`` or ``running`` is
marked failed ("interrupted") at start-up, and a promotion whose prediction
refresh did not finish (``refresh_pending``) is refreshed by the next job of
that project, which start-up or the next verified ``/setup`` submits.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from labeler.config import Settings
from labeler.errors import ClusterError, DiskFull, StudioError
from labeler.fsutil import atomic_write_text
from labeler.ids import check_project
from labeler.models.predictor import Predictor
from labeler.studio.client import Studio, unreachable
from labeler.studio.tasks import report_to_model_card

log = logging.getLogger(__name__)
ZEROSHOT = "zero-shot"  # what refresh_pending names when no trained version serves
ACTIVE = {"queued", "running"}


class Jobs(Protocol):
    def submit(self, project: str, trigger: str, train: bool = True) -> dict: ...
    def state(self, project: str) -> dict: ...
    def wait(self, project: str, timeout: float = 600) -> dict: ...
    def refresh_serving(self, project: str, trigger: str) -> dict: ...
    def pending_refreshes(self) -> list[str]: ...


def project_studio(studio: Callable[[str], Studio | None], project: str) -> Studio:
    """The Label Studio a job of ``project`` works with, or a TrainingError saying how to connect one."""
    from labeler.learning.training import TrainingError

    found = studio(project)
    if found is None or not found.conn:
        raise TrainingError(f"project {project} has no Label Studio connection: connect this backend "
                            "to the project in Label Studio (Settings > Model), or set "
                            "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    return found


def make_jobs(settings: Settings, predictor: Predictor, studio: Callable[[str], Studio | None]) -> Jobs:
    """Ray jobs when a Ray job server is configured, else a thread pool in this process."""
    if settings.ray_jobs_address:
        return RayTrainingJobs(settings, predictor, studio)
    return TrainingJobs(settings, predictor, studio)


class _JobRecords:
    """A job's state per project: in memory, and in ``MODEL_DIR/projects/<p>/<FILE>`` (crash-safe
    writes), so a restart sees what the last process said. Subclasses set ``FILE`` and ``predictor``."""

    FILE = ""
    predictor: Predictor

    def __init__(self) -> None:
        self._states: dict[str, dict] = {}
        self._lock = threading.Lock()

    def _file(self, project: str) -> Path:
        return self.predictor.registry.project_dir(project) / self.FILE

    def state(self, project: str) -> dict:
        with self._lock:
            if project in self._states:
                return dict(self._states[project])
        return self.state_from_disk(project) or {"status": "none"}

    def state_from_disk(self, project: str) -> dict:
        try:
            return json.loads(self._file(project).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _set(self, project: str, **values) -> dict:
        with self._lock:
            # the first change starts from the last process's record, so a restart keeps what it said
            st = self._states.setdefault(project, self.state_from_disk(project))
            st.update(values, updated=time.time())
            snapshot = dict(st)
        try:
            atomic_write_text(self._file(project), json.dumps(snapshot, indent=2))
        except DiskFull as exc:  # the job goes on: its state is in memory, only a restart would lose it
            log.warning("project %s: %s", project, exc)
        return snapshot


class TrainingJobs(_JobRecords):
    FILE = "job.json"
    RESUME_POLL_S = 5.0        # a job that failed on an unreachable Label Studio checks it this often
    RESUME_FOR_S = 15 * 60.0   # and runs again when it answers within this long

    def __init__(self, settings: Settings, predictor: Predictor,
                 studio: Callable[[str], Studio | None]) -> None:
        super().__init__()
        self.settings = settings
        self.predictor = predictor
        self.studio = studio
        self._rerun: set[str] = set()
        self._resuming: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=settings.train_workers, thread_name_prefix="train")
        self._recover()

    def _recover(self) -> None:
        """Jobs a previous process left active did not finish: say so instead of 'running' forever."""
        for project in self.predictor.registry.projects():
            st = self.state(project)
            if st.get("status") in ACTIVE:
                serving = self.predictor.registry.current(project)
                # killed anywhere between promotion and the end of the refresh: refresh again
                pending = serving if serving and serving != st.get("refreshed_version") else None
                self._set(project, status="failed", step=None, finished=time.time(), refresh_pending=pending,
                          error=f"interrupted: the backend stopped while this job was {st['status']}")

    def pending_refreshes(self) -> list[str]:
        """Projects whose last promotion was not followed by a finished prediction refresh."""
        return [p for p in self.predictor.registry.projects() if self.state(p).get("refresh_pending")]

    def _step(self, project: str, step: str) -> None:
        self._set(project, step=step)

    def refresh_serving(self, project: str, trigger: str) -> dict:
        """Re-predict every task with whatever serves now (after a promotion or rollback by an admin),
        which also re-ranks the "Next to label" queue; survives a restart like any refresh."""
        project = check_project(project)
        self._set(project, refresh_pending=self.predictor.registry.current(project) or ZEROSHOT)
        return self.submit(project, trigger, train=False)

    def submit(self, project: str, trigger: str, train: bool = True) -> dict:
        """Queue a job for ``project`` (or one follow-up after the active one); returns the state.

        ``train=False``: only finish a pending prediction refresh.
        """
        project = check_project(project)
        with self._lock:
            active = self._states.get(project, {}).get("status") in ACTIVE
            if active:
                self._rerun.add(project)
        if active:
            return {**self.state(project), "rerun_queued": True}
        state = self._set(project, status="queued", trigger=trigger, error=None, version=None,
                          job_id=uuid.uuid4().hex[:12], queued_at=time.time())
        self._pool.submit(self._run, project, trigger, train)
        return state

    def wait(self, project: str, timeout: float = 600) -> dict:
        """Block until the project's job is neither queued nor running (for CLI and tests)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.state(project)
            if st.get("status") not in ACTIVE and project not in self._rerun:
                return st
            time.sleep(0.2)
        raise TimeoutError(f"training job of project {project} still running after {timeout} s")

    def _run(self, project: str, trigger: str, train: bool) -> None:
        while True:
            self._set(project, status="running", started=time.time(), step="starting")
            try:
                self._train_and_refresh(project, trigger, train)
            except Exception as exc:  # noqa: BLE001 - a failed job is recorded, never fatal
                log.error("training project %s failed: %s\n%s", project, exc, traceback.format_exc())
                error = f"{type(exc).__name__}: {exc}"
                if unreachable(exc):
                    error = self._resume_when_back(project, train, exc)
                self._set(project, status="failed", error=error, step=None, finished=time.time())
            report_to_model_card(self.studio(project), project, self.state(project), self.predictor)
            with self._lock:
                if project not in self._rerun:
                    return
                self._rerun.discard(project)
            trigger, train = "queued while a job was running", True
            self._set(project, status="queued", trigger=trigger, job_id=uuid.uuid4().hex[:12])

    def _resume_when_back(self, project: str, train: bool, exc: BaseException) -> str:
        """The job failed because Label Studio did not answer: watch its ``/health`` and run the job
        again when it answers (a pending refresh first), for up to ``RESUME_FOR_S``; returns the job's error."""
        studio = self.studio(project)
        where = studio.url if studio is not None else "the project's Label Studio"
        with self._lock:
            if project in self._resuming:
                return f"Label Studio at {where} is unreachable ({exc}); waiting for it to answer"
            self._resuming.add(project)

        def watch() -> None:
            end = time.monotonic() + self.RESUME_FOR_S
            try:
                while time.monotonic() < end:
                    time.sleep(self.RESUME_POLL_S)
                    found = self.studio(project)
                    if found is None:
                        return
                    try:
                        found.check()
                    except StudioError:
                        continue
                    log.info("project %s: Label Studio answers again: resuming the failed job", project)
                    self.submit(project, "resumed: Label Studio answers again", train=train)
                    return
            finally:
                with self._lock:
                    self._resuming.discard(project)

        threading.Thread(target=watch, name=f"resume-{project}", daemon=True).start()
        return (f"Label Studio at {where} is unreachable ({type(exc).__name__}: {exc}); the job runs again "
                f"when it answers (checked every {self.RESUME_POLL_S:g} s for {self.RESUME_FOR_S / 60:g} min)")

    def _train_and_refresh(self, project: str, trigger: str, train: bool) -> None:
        from labeler.learning.training import train_project

        studio = project_studio(self.studio, project)
        pending = self.state(project).get("refresh_pending")
        if pending and pending == (self.predictor.registry.current(project) or ZEROSHOT):
            self._refresh(project, studio, pending)  # finish what a crash interrupted, then train
        self._set(project, refresh_pending=None)
        if not train:
            self._set(project, status="done", step=None, finished=time.time())
            return
        outcome = train_project(self.predictor, project, studio, trigger,
                                report=lambda step: self._step(project, step))
        refresh = None
        if outcome.promoted:
            refresh = self._refresh(project, studio, outcome.version)
        self._set(project, status="done", version=outcome.version, promoted=outcome.promoted,
                  reason=outcome.meta.get("promotion_reason"), refreshed=refresh,
                  metrics=outcome.meta.get("metrics"),
                  unreadable_images=len(outcome.meta.get("unreadable_images") or []),
                  step=None, finished=time.time())

    def _refresh(self, project: str, studio: Studio, version: str) -> dict:
        from labeler.studio.preannotate import preannotate

        self._set(project, step="refreshing predictions", refresh_pending=version)
        rep = preannotate(studio, int(project), self.predictor, progress=False,
                          batch_size=self.predictor.settings.batch_size)
        self._set(project, refresh_pending=None, refreshed_version=version)
        return {"predicted": rep.predicted, "failed": len(rep.failed)}


class RayTrainingJobs:
    """Training (``labeler train``: train, evaluate, promote, refresh) and prediction refreshes
    (``labeler preannotate``) as Ray jobs: one of each kind per project across every replica, since the
    job id is the lock (:mod:`labeler.distributed.rayjobs`). A job killed mid-way leaves nothing to
    recover here: pre-annotation resumes, and the next job starts afresh; its failure shows on the job."""

    AGENT_WAIT_S = 5.0  # submissions come from requests: a cluster whose job agent is not up is an error

    def __init__(self, settings: Settings, predictor: Predictor, studio: Callable[[str], Studio | None]) -> None:
        from labeler.distributed.rayjobs import RayJobs

        self.ray = RayJobs(str(settings.ray_jobs_address), gpus=settings.ray_train_gpus)
        self._seen: dict[str, dict] = {}  # per project, the last state read: a job the cluster forgot was lost
        self.predictor = predictor
        self.studio = studio

    def _connection_env(self, project: str) -> dict[str, str]:
        """The project's Label Studio for the job, which may come from a /setup only this replica saw."""
        studio = project_studio(self.studio, project)
        return {"LABEL_STUDIO_URL": str(studio.conn.base_url), "LABEL_STUDIO_API_KEY": str(studio.conn.token)}

    def submit(self, project: str, trigger: str, train: bool = True) -> dict:
        project = check_project(project)
        return self.ray.submit(project, trigger, kind="train" if train else "refresh",
                               env=self._connection_env(project), agent_wait_s=self.AGENT_WAIT_S)

    def state(self, project: str) -> dict:
        """The latest job of either kind; a finished training also says what it registered. Read from a
        listing of the cluster's jobs up to a few seconds old, so /metrics lists them once for all projects."""
        from labeler.distributed.rayjobs import LISTING_MAX_AGE_S

        project = check_project(project)
        try:
            st = self.ray.state(project, max_age=LISTING_MAX_AGE_S)
        except ClusterError as exc:
            return self._lost(project, f"{exc}; the job's outcome is unknown")
        if st["status"] == "none" and project in self._seen:
            return self._lost(project, f"the Ray cluster at {self.ray.address} no longer knows this job "
                                       "(its head was restarted); start it again")
        self._seen[project] = st
        if st.get("kind") == "train" and st["status"] == "done":
            made = [m for m in self.predictor.registry.list(project)
                    if m.get("created", 0) >= (st.get("started") or 0)]
            if made:
                m = made[-1]
                st.update(version=m.get("version"), promoted=m.get("promoted"), reason=m.get("promotion_reason"),
                          metrics=m.get("metrics"))
        return st

    def _lost(self, project: str, why: str) -> dict:
        """The last job seen of ``project``, reported lost when it was queued or running (else as it was)."""
        last = self._seen.get(project)
        if last is None or last.get("status") not in ACTIVE:
            return {**(last or {"status": "none"}), "cluster_error": why}
        return {**last, "status": "lost", "error": f"job {last.get('job_id')} was lost: {why}"}

    def wait(self, project: str, timeout: float = 600) -> dict:
        self.ray.wait(check_project(project), timeout)
        return self.state(project)

    def refresh_serving(self, project: str, trigger: str) -> dict:
        return self.submit(project, trigger, train=False)

    def pending_refreshes(self) -> list[str]:
        return []  # a refresh job that failed says so on the job; the next promotion or rollback runs another


class PreannotateJobs(_JobRecords):
    """Bulk pre-annotation in the background: the tasks of a "Retrieve predictions" selection that did not
    fit one ``/predict`` (``LABELER_MAX_TASKS_PER_PREDICT``), scored as ``labeler preannotate`` scores them
    (:func:`labeler.studio.preannotate.preannotate`, whose lock under ``MODEL_DIR`` keeps one pre-annotation
    per project at a time, the CLI's and a training's refresh included).

    Always in this process (also beside Ray training jobs), one project after another on one thread.
    Tasks asked for while a project's job runs join a follow-up run of that project; tasks that got a
    prediction of the serving version meanwhile are skipped. The state (``queued``/``running``/``done``/
    ``failed``, the progress, the rate measured on this device and the time left) is kept in memory and in
    ``MODEL_DIR/projects/<p>/preannotate.json``, and shown on Label Studio's model card while it runs.
    """

    FILE = "preannotate.json"
    CARD_EVERY_S = 1.0  # model card updates while running (Label Studio re-validates the backend on each)

    def __init__(self, settings: Settings, predictor: Predictor, studio: Callable[[str], Studio | None],
                 training_state: Callable[[str], dict] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.predictor = predictor
        self.studio = studio
        self.training_state = training_state
        self._pending: dict[str, set[int]] = {}
        self._active: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preannotate")
        for project in predictor.registry.projects():
            if self.state(project).get("status") in ACTIVE:
                self._set(project, status="failed", finished=time.time(),
                          error="interrupted: the backend stopped while this pre-annotation ran "
                                "(ask again, or run labeler preannotate)")

    def submit(self, project: str, task_ids: set[int], trigger: str) -> dict:
        """Pre-annotate ``task_ids`` of ``project`` (ids not in the project are ignored); returns the state.
        The caller has checked that the project has a verified Label Studio connection."""
        project = check_project(project)
        with self._lock:
            self._pending.setdefault(project, set()).update(task_ids)
            running = project in self._active
            self._active.add(project)
        if running:
            return {**self.state(project), "follow_up_queued": True}
        state = self._set(project, status="queued", trigger=trigger, job_id=uuid.uuid4().hex[:12],
                          queued_at=time.time(), requested=len(task_ids), error=None, finished=None,
                          progress=None)
        self._pool.submit(self._run, project, trigger)
        return state

    def wait(self, project: str, timeout: float = 600) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if project not in self._active:
                    return self.state(project)
            time.sleep(0.2)
        raise TimeoutError(f"pre-annotation of project {project} still running after {timeout} s")

    def _run(self, project: str, trigger: str) -> None:
        while True:
            with self._lock:
                ids = self._pending.pop(project, set())
                if not ids:
                    self._active.discard(project)
                    return
            self._set(project, status="running", trigger=trigger, requested=len(ids), started=time.time(),
                      progress=None, error=None, finished=None)
            try:
                self._preannotate(project, ids)
            except Exception as exc:  # noqa: BLE001 - a failed job is recorded, never fatal
                log.error("pre-annotating project %s failed: %s\n%s", project, exc, traceback.format_exc())
                self._set(project, status="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time())
            self._card(project)
            trigger = "asked for while a pre-annotation ran"

    def _preannotate(self, project: str, ids: set[int]) -> None:
        from labeler.studio.preannotate import Progress, preannotate

        studio = project_studio(self.studio, project)
        last_card = [0.0]

        def progress(p: Progress) -> None:
            self._set(project, progress=p.as_dict())
            if time.monotonic() - last_card[0] >= self.CARD_EVERY_S:
                last_card[0] = time.monotonic()
                self._card(project)

        rep = preannotate(studio, int(project), self.predictor, progress=False, task_ids=ids,
                          batch_size=self.settings.batch_size, on_progress=progress)
        log.info("project %s, background pre-annotation: %s", project, rep.summary().splitlines()[0])
        self._set(project, status="done", version=rep.version, predicted=rep.predicted, failed=len(rep.failed),
                  skipped=rep.skipped_existing, finished=time.time())

    def _card(self, project: str) -> None:
        """The model card shows the training job's outcome and this job's progress (never raises)."""
        training: dict = {}
        if self.training_state is not None:
            try:
                training = self.training_state(project)
            except Exception as exc:  # noqa: BLE001 - e.g. the Ray job server is down
                log.warning("project %s: training job state unavailable for the model card: %s", project, exc)
        report_to_model_card(self.studio(project), project, training, self.predictor,
                             preannotation=self.state(project))
