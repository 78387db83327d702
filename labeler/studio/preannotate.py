"""Bulk pre-annotation: score every task of a project and write predictions in bulk.

Resumable by construction: each batch is written to Label Studio before the
next is scored, and tasks that already hold a prediction of the serving
version are skipped, so a restarted run picks up where the last one stopped.
Images of the next batch download while the model scores the current one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from labeler.config import Settings
from labeler.errors import Busy
from labeler.models.encoders import serving_encoder
from labeler.models.predictor import Predictor, to_prediction
from labeler.studio.client import Studio
from labeler.studio.queue import QueueReport, Recorder
from labeler.studio.queue import refresh as refresh_queue
from labeler.studio.tasks import (
    delete_stale_predictions,
    import_predictions,
    iter_tasks,
    prediction_versions,
    project_config,
    set_model_version,
    uncertainty_view,
)
from labeler.studio.team import is_control
from labeler.studio.teamqueue import TeamQueue

log = logging.getLogger(__name__)


@dataclass
class Report:
    version: str
    total: int = 0
    skipped_existing: int = 0
    predicted: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    queue: QueueReport | None = None  # the "Next to label" tab's, None if not published

    def summary(self) -> str:
        lines = [f"model version {self.version}: {self.predicted} tasks predicted, "
                 f"{self.skipped_existing} already had a prediction of this version, "
                 f"{len(self.failed)} failed (of {self.total})"]
        lines += [f"  task {tid}: {why}" for tid, why in self.failed[:50]]
        if len(self.failed) > 50:
            lines.append(f"  ... and {len(self.failed) - 50} more")
        if self.queue is not None:
            lines.append(self.queue.summary())
        return "\n".join(lines)


def human_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 05 min``, ``3 d 4 h``: an estimate's precision, not a stopwatch's."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    if s < 86400:
        h, m = divmod(round(s / 60), 60)
        return f"{h} h {m:02d} min"
    d, h = divmod(round(s / 3600), 24)
    return f"{d} d {h} h"


@dataclass
class Progress:
    """Where a bulk pre-annotation stands, and what the rate measured so far says about the rest.

    ``done`` of ``total`` tasks were scored and written in ``elapsed_s`` seconds (since the first image
    download of the run). The estimate assumes the rest goes at the same rate: ``rate`` tasks per second,
    ``total_s`` for every task of the run, ``left_s`` from now.
    """

    done: int
    total: int
    elapsed_s: float
    predicted: int = 0
    failed: int = 0
    device: str = "this device"

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else math.inf

    @property
    def total_s(self) -> float:
        return self.total / self.rate if self.rate > 0 else math.inf

    @property
    def left_s(self) -> float:
        return max(0, self.total - self.done) / self.rate if self.rate > 0 else math.inf

    def estimate(self) -> str:
        """One line: the rate on this device and the time for the whole run, and what is left."""
        if not self.done or not math.isfinite(self.total_s):
            return f"{self.done:,} of {self.total:,} tasks, no rate yet"
        return (f"{self.rate:.3g} tasks/s on {self.device}: about {human_duration(self.total_s)} for all "
                f"{self.total:,} tasks, {human_duration(self.left_s)} left")

    def as_dict(self) -> dict:
        finite = lambda x: round(x, 3) if math.isfinite(x) else None  # noqa: E731 - JSON has no infinity
        return {**asdict(self), "elapsed_s": round(self.elapsed_s, 3), "rate": finite(self.rate),
                "total_s": finite(self.total_s), "left_s": finite(self.left_s),
                "left": human_duration(self.left_s) if math.isfinite(self.left_s) and self.done else None,
                "estimate": self.estimate()}


class PreannotateBusy(Busy):
    """Another pre-annotation of the same project is running (it would write duplicate predictions)."""


def preannotate(studio: Studio, project: int, predictor: Predictor,
                only_missing: bool = True, batch_size: int = 64, progress: bool = True,
                max_tasks: int | None = None, wait_s: float = 600, task_ids: Collection[int] | None = None,
                on_progress: Callable[[Progress], None] | None = None) -> Report:
    """Predict every task of ``project`` (or only those without a current-version prediction).

    ``task_ids``: only these tasks (those not in the project are ignored: the listing is the project's).
    ``on_progress`` is called after every batch. After the first batch the measured rate gives an
    estimate of the whole run on this device, logged (and printed under the progress bar).

    One run per project at a time (a lock file under ``MODEL_DIR``, shared by the
    CLI and the backend): a second run waits up to ``wait_s`` and then re-reads
    which tasks still need a prediction, so no task gets two.
    """
    lock = FileLock(predictor.registry.project_dir(str(project), create=True) / "preannotate.lock")
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise PreannotateBusy(f"another pre-annotation of project {project} is still running") from None
    try:
        return _preannotate(studio, project, predictor, only_missing, batch_size, progress, max_tasks, task_ids,
                            on_progress)
    finally:
        lock.release()


def _preannotate(studio: Studio, project: int, predictor: Predictor, only_missing: bool,
                 batch_size: int, progress: bool, max_tasks: int | None, task_ids: Collection[int] | None = None,
                 on_progress: Callable[[Progress], None] | None = None) -> Report:
    config = project_config(studio, project)
    pkey = str(project)
    version = predictor.model_version(pkey, config)
    report = Report(version)
    recorder = Recorder(predictor.settings.model_dir, project, len(config.classes), config.multiple,  # the queue's inputs
                        serving_encoder(predictor.settings, predictor.registry, project))
    todo = tasks_to_predict(studio, project, version, only_missing, max_tasks, recorder, report)
    wanted, rate = (None if task_ids is None else set(task_ids)), getattr(predictor.settings, "control_rate", 0.0)
    todo = [t for t in todo if (wanted is None or t.get("id") in wanted)
            and not is_control(int(t["id"]), rate)]  # blind controls: never pre-annotated
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    urls = lambda b: [config.image_ref(t) for t in b]  # noqa: E731
    bar = tqdm(total=len(todo), desc=f"pre-annotating project {project}", unit="task", disable=not progress)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        ahead = [prefetch.submit(predictor.fetch, urls(b), studio.conn) for b in batches[:1]]  # one batch ahead
        for i, batch in enumerate(batches):
            items = ahead.pop().result()
            if i + 1 < len(batches):
                ahead.append(prefetch.submit(predictor.fetch, urls(batches[i + 1]), studio.conn))
            predictor.embed(items)
            version, items = predictor.score_items(pkey, items, config)
            preds = []
            for task, it in zip(batch, items):
                if it.proba is None:
                    report.failed.append((task["id"], it.error or "unknown error"))
                    continue
                preds.append({"task": task["id"], **to_prediction(it.proba, config, version,
                                                                  predictor.settings.uncertainty, it.thresholds)})
            import_predictions(studio, project, preds)
            recorder.add(batch, items, version)
            report.predicted += len(preds)
            bar.update(len(batch))
            done = sum(len(b) for b in batches[:i + 1])
            state = Progress(done, len(todo), time.perf_counter() - t0, report.predicted, len(report.failed),
                             _device(predictor))
            if i == 0 and len(batches) > 1:
                line = f"pre-annotating project {project}: first batch of {done} in {state.elapsed_s:.1f} s, " + \
                    state.estimate()
                log.info("%s", line)
                if progress:
                    bar.write(line)
            if on_progress is not None:
                on_progress(state)
    bar.close()
    report.version = version
    return finish(studio, project, report, recorder, predictor.settings)


def _device(predictor: Predictor) -> str:
    """What scores the images, for the estimate: the zero-shot model's device (the CPU without one)."""
    scorer = predictor.scorer if predictor.ready else None
    return str(getattr(scorer, "device", None) or "cpu")


def tasks_to_predict(studio: Studio, project: int, version: str, only_missing: bool, max_tasks: int | None,
                     recorder: Recorder, report: Report) -> list[dict]:
    """The project's tasks (narrow listing) that need a prediction of ``version``; counts them
    into ``report`` and tells ``recorder`` (the queue's inputs) about every task."""
    todo = []
    for task in iter_tasks(studio, project, narrow=True):
        recorder.saw(task)
        report.total += 1
        if only_missing and version in prediction_versions(task):
            report.skipped_existing += 1
        else:
            todo.append(task)
    return todo if max_tasks is None else todo[:max_tasks]


def finish(studio: Studio, project: int, report: Report, recorder: Recorder, settings: Settings) -> Report:
    """The end steps of every pre-annotation: the project's model version, the score tab, one
    prediction per task (the serving version's), and the "Next to label" queue."""
    if report.predicted or report.skipped_existing:
        set_model_version(studio, project, report.version)
        uncertainty_view(studio, project)
        delete_stale_predictions(studio, project, report.version)
    # The queue (labeler.studio.queue) is published also before any model exists (a k-center cold start).
    report.queue = refresh_queue(studio, project, recorder, batch=settings.train_every or 25, seed=settings.seed,
                                 team=TeamQueue.from_settings(settings))
    return report
