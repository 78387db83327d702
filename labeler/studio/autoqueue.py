"""The labelling queue after Label Studio's own "Retrieve predictions" (``POST /predict``).

``labeler preannotate`` and the refresh after a promoted retraining publish the "Next to label" tab
themselves (:func:`labeler.studio.queue.refresh`). A project pre-annotated from Label Studio's
"Retrieve predictions" goes through ``/predict`` instead, which must answer within Label Studio's
timeout; so ``/predict`` only notes which tasks got a prediction (:meth:`QueuePublisher.observe`,
a dictionary update), and a background thread publishes once the burst is over: a quiet time
(``quiet_s``) after the last noted ``/predict`` of the project, and at most once per
``min_interval_s``, so a burst of calls (Label Studio falls back to one ``/predict`` per task when a
reply's count differs, and opening a task without a prediction calls it) publishes once.

Publishing (:func:`publish_after_predict`) scores the noted tasks again with the serving model, from
the backend's caches (image bytes, embeddings, ITM logits: nothing is downloaded or embedded again
for a task ``/predict`` just scored), records what the queue needs (:class:`~labeler.studio.queue.Recorder`),
makes the "Least confident first" tab and publishes "Next to label" first with the model's answers
(:func:`~labeler.studio.queue.refresh`). It holds the project's pre-annotation lock, the one
``labeler preannotate`` holds, so the two never write the queue's state at once; a busy lock puts
the publish off, and so does an unreachable Label Studio (it may be restarting: the publish is tried again
every ``UNREACHABLE_RETRY_S``). Any other failed publish is logged, never raised: predictions matter more than
the tab.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from filelock import FileLock, Timeout

from labeler.labelconfig import LabelConfig
from labeler.models.encoders import serving_encoder
from labeler.models.predictor import Predictor
from labeler.studio.client import Studio, unreachable
from labeler.studio.queue import QueueReport, Recorder, annotated_tasks, refresh
from labeler.studio.tasks import uncertainty_view
from labeler.studio.teamqueue import TeamQueue

log = logging.getLogger(__name__)

QUIET_S = 2.0          # publish this long after the last /predict of a project
MIN_INTERVAL_S = 15.0  # and at most once per this long per project
BUSY_RETRY_S = 30.0    # a pre-annotation holds the project's lock: try again after this
UNREACHABLE_RETRY_S = 10.0  # Label Studio did not answer: try again after this (until it does)
SCORE_BATCH = 64


def preannotate_lock(predictor: Predictor, project: int | str) -> FileLock:
    """The project's pre-annotation lock (``MODEL_DIR/projects/<p>/preannotate.lock``), shared with
    :func:`labeler.studio.preannotate.preannotate`."""
    return FileLock(predictor.registry.project_dir(str(project), create=True) / "preannotate.lock")


def publish_after_predict(studio: Studio, predictor: Predictor, project: int, refs: dict[int, object],
                          config: LabelConfig, lock_wait_s: float = 600) -> QueueReport | None:
    """Score the tasks ``refs`` (task id -> image reference) from the caches, record them into the
    project's queue state and publish both tabs. Raises :class:`filelock.Timeout` when a pre-annotation
    holds the project for longer than ``lock_wait_s``; returns :func:`~labeler.studio.queue.refresh`'s
    report (None when writing the queue failed, logged)."""
    settings = predictor.settings
    with preannotate_lock(predictor, project).acquire(timeout=lock_wait_s):
        recorder = Recorder(settings.model_dir, project, len(config.classes), config.multiple,
                            serving_encoder(settings, predictor.registry, project))
        for tid, annotated in annotated_tasks(studio, project).items():
            recorder.saw({"id": tid, "total_annotations": annotated})
        ids = [i for i in refs if i in recorder.present]  # deleted since: forgotten
        for start in range(0, len(ids), SCORE_BATCH):
            chunk = ids[start:start + SCORE_BATCH]
            items = predictor.fetch([refs[i] for i in chunk], studio.conn)
            predictor.embed(items)
            version, items = predictor.score_items(str(project), items, config)
            recorder.add([{"id": i} for i in chunk], items, version)
        uncertainty_view(studio, project)
        return refresh(studio, project, recorder, batch=settings.train_every or 25, seed=settings.seed,
                       team=TeamQueue.from_settings(settings))


@dataclass
class _Pending:
    config: LabelConfig
    refs: dict[int, object] = field(default_factory=dict)
    due: float = 0.0


class QueuePublisher:
    """Publishes a project's queue in the background after its ``/predict`` calls (see the module)."""

    def __init__(self, predictor: Predictor, studio_for: Callable[[str], Studio | None],
                 quiet_s: float = QUIET_S, min_interval_s: float = MIN_INTERVAL_S,
                 publish: Callable[..., QueueReport | None] = publish_after_predict) -> None:
        self.predictor = predictor
        self.studio_for = studio_for
        self.quiet_s, self.min_interval_s = quiet_s, min_interval_s
        self._publish = publish
        self._pending: dict[str, _Pending] = {}
        self._last: dict[str, float] = {}   # per project: when its last publish ended
        self._running: str | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.published: dict[str, QueueReport | None] = {}  # per project: the last publish's report

    def observe(self, project: str, tasks: Sequence[object], config: LabelConfig,
                results: Sequence[object]) -> int:
        """Note the tasks of one ``/predict`` that got a prediction (``results`` in the tasks' order);
        returns how many. Cheap: no I/O, the publish runs later in the background thread."""
        refs = {}
        for task, result in zip(tasks, results):
            if (isinstance(task, dict) and type(task.get("id")) is int and isinstance(result, dict)
                    and result.get("result")):
                refs[task["id"]] = config.image_ref(task)
        if not refs:
            return 0
        with self._cond:
            pending = self._pending.setdefault(project, _Pending(config))
            pending.config = config  # the latest: a changed config has a new model version anyway
            pending.refs.update(refs)
            now = time.monotonic()
            pending.due = max(now + self.quiet_s, self._last.get(project, -float("inf")) + self.min_interval_s)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="queue-publisher", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return len(refs)

    def idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or publishing (tests, shutdown); False on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._running is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def _next(self) -> tuple[str, _Pending]:
        with self._cond:
            while True:
                if not self._pending:
                    self._cond.wait()
                    continue
                project, pending = min(self._pending.items(), key=lambda kv: kv[1].due)
                wait = pending.due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                del self._pending[project]
                self._running = project
                return project, pending

    def _run(self) -> None:
        while True:
            project, pending = self._next()
            try:
                self._publish_one(project, pending)
            finally:
                with self._cond:
                    self._running = None
                    self._last[project] = time.monotonic()
                    self._cond.notify_all()

    def _publish_one(self, project: str, pending: _Pending) -> None:
        try:
            studio = self.studio_for(project)
            if studio is None:
                log.info("project %s: no Label Studio connection known: the queue is not published", project)
                return
            t = time.perf_counter()
            rep = self._publish(studio, self.predictor, int(project), pending.refs, pending.config, lock_wait_s=5)
            self.published[project] = rep
            log.info("project %s: queue published after /predict of %d tasks in %.1f s", project,
                     len(pending.refs), time.perf_counter() - t)
        except Timeout:  # a pre-annotation runs: put the publish off, merged with what came since
            self._put_off(project, pending, BUSY_RETRY_S)
            log.info("project %s: a pre-annotation holds the project: publishing the queue later", project)
        except Exception as exc:  # noqa: BLE001 - the SDK raises ApiError and httpx errors; never fatal
            if unreachable(exc):  # Label Studio restarts: publish again later, merged with what came since
                self._put_off(project, pending, UNREACHABLE_RETRY_S)
                log.warning("project %s: Label Studio is unreachable: publishing the queue again in %g s (%s)",
                            project, UNREACHABLE_RETRY_S, exc)
                return
            log.error("project %s: could not publish the labelling queue after /predict: %s", project, exc)

    def _put_off(self, project: str, pending: _Pending, delay_s: float) -> None:
        with self._cond:
            later = self._pending.setdefault(project, _Pending(pending.config))
            later.refs = {**pending.refs, **later.refs}
            later.due = max(later.due, time.monotonic() + delay_s)
