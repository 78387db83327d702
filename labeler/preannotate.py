"""Bulk pre-annotation: score every task of a project and write predictions in bulk.

Resumable by construction: each batch is written to Label Studio before the
next is scored, and tasks that already hold a prediction of the serving
version are skipped, so a restarted run picks up where the last one stopped.
Images of the next batch download while the model scores the current one.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from filelock import FileLock, Timeout
from label_studio_sdk import LabelStudio
from tqdm.auto import tqdm

from .connection import Connection
from .errors import Busy
from .predictor import Predictor, to_prediction
from .queue import Recorder
from .queue import refresh as refresh_queue
from .studio import (
    delete_stale_predictions,
    import_predictions,
    iter_tasks,
    prediction_versions,
    project_config,
    set_model_version,
    uncertainty_view,
)

log = logging.getLogger(__name__)


@dataclass
class Report:
    version: str
    total: int = 0
    skipped_existing: int = 0
    predicted: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    queue: object | None = None  # labeler.queue.QueueReport of the "Next to label" tab, None if not published

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


class PreannotateBusy(Busy):
    """Another pre-annotation of the same project is running (it would write duplicate predictions)."""


def preannotate(ls: LabelStudio, project: int, predictor: Predictor, conn: Connection,
                only_missing: bool = True, batch_size: int = 64, progress: bool = True,
                max_tasks: int | None = None, wait_s: float = 600) -> Report:
    """Predict every task of ``project`` (or only those without a current-version prediction).

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
        return _preannotate(ls, project, predictor, conn, only_missing, batch_size, progress, max_tasks)
    finally:
        lock.release()


def _preannotate(ls: LabelStudio, project: int, predictor: Predictor, conn: Connection, only_missing: bool,
                 batch_size: int, progress: bool, max_tasks: int | None) -> Report:
    config = project_config(ls, project)
    pkey = str(project)
    version = predictor.model_version(pkey, config)
    report = Report(version)
    todo = []
    recorder = Recorder(predictor.settings.model_dir, project, len(config.classes))  # the queue's inputs
    for task in iter_tasks(ls, project, narrow=True):
        recorder.saw(task)
        report.total += 1
        have = prediction_versions(task)
        if only_missing and version in have:
            report.skipped_existing += 1
        else:
            todo.append(task)
    if max_tasks is not None:
        todo = todo[:max_tasks]
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    urls = lambda b: [config.image_ref(t) for t in b]  # noqa: E731
    bar = tqdm(total=len(todo), desc=f"pre-annotating project {project}", unit="task", disable=not progress)
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        pending = prefetch.submit(predictor.fetch, urls(batches[0]), conn) if batches else None
        for i, batch in enumerate(batches):
            items = pending.result()
            if i + 1 < len(batches):
                pending = prefetch.submit(predictor.fetch, urls(batches[i + 1]), conn)
            predictor.embed(items)
            version, items = predictor.score_items(pkey, items, config)
            preds = []
            for task, it in zip(batch, items):
                if it.proba is None:
                    report.failed.append((task["id"], it.error or "unknown error"))
                    continue
                preds.append({"task": task["id"], **to_prediction(it.proba, config, version,
                                                                  predictor.settings.uncertainty)})
            import_predictions(ls, project, preds)
            recorder.add(batch, items, version)
            report.predicted += len(preds)
            bar.update(len(batch))
    bar.close()
    report.version = version
    if report.predicted or report.skipped_existing:
        set_model_version(ls, project, version)
        uncertainty_view(ls, project)
        delete_stale_predictions(ls, project, version)  # one prediction per task: the serving version's
    # The "Next to label" tab (labeler.queue), also before any model exists (a k-center cold start).
    report.queue = refresh_queue(ls, project, recorder, batch=predictor.settings.train_every or 25,
                                 seed=predictor.settings.seed)
    return report
