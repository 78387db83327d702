"""Replaying a simulated annotator through a real Label Studio, to check the queue against ``labeler simulate``.

The annotator takes the first task of the "Next to label" tab
(:func:`next_task`), submits its true label, and after
every ``batch`` labels the service retrains and refreshes its predictions and
the queue, exactly as its background job does (:func:`labeler.learning.training.train_project`,
then :func:`labeler.studio.preannotate.preannotate` when the new version is promoted).
After each retraining the newly trained version is scored on held-out images
that are not in the project, so the learning curve can be laid beside the
simulation's for the same images, strategy, batch and seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from labeler.learning.metrics import evaluate
from labeler.models.classifiers import Sample, load_classifier
from labeler.studio.client import Studio
from labeler.studio.queue import VIEW

log = logging.getLogger(__name__)


def queue_view(studio: Studio, project: int) -> int:
    for v in studio.views.list(project=project):
        if (v.data or {}).get("title") == VIEW:
            return v.id
    raise LookupError(f'project {project} has no "{VIEW}" tab: run labeler preannotate first')


def next_task(studio: Studio, project: int, view: int) -> dict | None:
    """The first task of the tab (None when it is empty): what an annotator working down the
    "Next to label" tab opens next."""
    resp = studio.request("GET", "api/tasks/", params={
        "project": project, "view": view, "page_size": 1, "fields": "task_only"})
    resp.raise_for_status()
    tasks = resp.json().get("tasks") or []
    return tasks[0] if tasks else None


def replay(studio: Studio, project: int, predictor, truth: dict[int, str], budget: int, batch: int,
           holdout: Sequence[Sample], holdout_y: np.ndarray, classes: list[str],
           annotate: Callable[[int, str], None] | None = None, progress: Callable[[str], None] = log.info,
           ) -> tuple[list[dict], list[int]]:
    """Label ``budget`` tasks through the queue; returns (one metrics row per retraining, task ids in order).

    ``truth`` maps task id to its true class name; ``holdout``/``holdout_y`` are
    the images and class indices the curve is measured on.
    """
    from labeler.learning.training import TrainingError, train_project
    from labeler.studio.preannotate import preannotate
    from labeler.studio.tasks import project_config

    config = project_config(studio, project)

    def submit(task_id: int, label: str) -> None:
        studio.annotations.create(id=task_id, result=[{"from_name": config.from_name, "to_name": config.to_name,
                                                   "type": "choices", "value": {"choices": [label]}}])

    annotate = annotate or submit
    preannotate(studio, project, predictor, progress=False)  # the cold-start queue
    view = queue_view(studio, project)
    order: list[int] = []
    rows: list[dict] = []
    exhausted = False
    while len(order) < budget and not exhausted:
        exhausted = _label_batch(studio, project, view, truth, min(batch, budget - len(order)), annotate, order)
        t = time.perf_counter()
        try:
            out = train_project(predictor, str(project), studio, trigger="replay")
        except TrainingError as exc:  # e.g. not every class labelled yet: label on, as simulate does
            progress(f"{len(order)} labels: no training ({exc})")
            continue
        train_s = time.perf_counter() - t
        if out.promoted:
            preannotate(studio, project, predictor, progress=False)
        model = load_classifier(predictor.registry.path(str(project), out.version))
        m = evaluate(holdout_y, model.predict_proba(list(holdout)), classes)
        rows.append({"labels": len(order), "eer": m.get("eer"), "accuracy": m["accuracy"],
                     "macro_f1": m["macro_f1"], "version": out.version, "promoted": out.promoted,
                     "train_seconds": round(train_s, 1)})
        progress(f"{len(order)} labels: {out.version} EER {m.get('eer')} accuracy {m['accuracy']:.4f}"
                 f"{'' if out.promoted else ' (not promoted: the queue keeps the serving model)'}")
    return rows, order


def _label_batch(studio: Studio, project: int, view: int, truth: dict[int, str], k: int,
                 annotate: Callable[[int, str], None], order: list[int]) -> bool:
    """Take the queue's first task and label it, ``k`` times; True when the queue ran dry."""
    for _ in range(k):
        task = next_task(studio, project, view)
        if task is None:
            return True
        annotate(task["id"], truth[task["id"]])
        order.append(task["id"])
    return False


def project_from_folder(studio: Studio, url: str, token: str, paths: Sequence, labels: Sequence[str], classes: list[str],
                        title: str = "replay") -> tuple[int, dict[int, str]]:
    """A project with one task per image (uploaded in the given order) and its hidden truth by task id.

    The label config lists ``classes`` in order, so its first class is the EER's
    positive class as in ``labeler simulate``.
    """
    from xml.sax.saxutils import quoteattr

    from labeler.studio.tasks import created_id, iter_tasks, upload_images

    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
    xml = (f'<View><Image name="image" value="$image"/>'
           f'<Choices name="choice" toName="image" choice="single">{choices}</Choices></View>')
    project = created_id(studio.projects.create(title=title, label_config=xml))
    upload_images(url, token, project, list(paths))
    by_name = {str(getattr(p, "name", p)): lab for p, lab in zip(paths, labels)}
    truth: dict[int, str] = {}
    for t in iter_tasks(studio, project):
        name = t["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[-1]  # /data/upload/<p>/<hash>-<name>
        truth[t["id"]] = by_name[name]
    if len(truth) != len(paths):
        raise RuntimeError(f"uploaded {len(paths)} images, Label Studio lists {len(truth)} tasks")
    return project, truth
