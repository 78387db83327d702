"""``labeler review``: flag annotations that a model trained without them contradicts.

Out-of-fold probabilities come from the project's classifier kind under
5-fold cross-validation (:func:`labeler.learning.training.cross_val_proba`), then
:func:`labeler.learning.label_errors.find_label_issues` picks and ranks suspects. They
are published in Label Studio as the tab "Suspected label errors": each flagged
task gets ``data.labeler_suspicion = 1 - P(given label)`` (cleared again when a
later review no longer flags it), and the tab filters on it, most suspicious first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labeler.errors import TrainingError
from labeler.learning.label_errors import find_label_issues
from labeler.learning.labelled import load_labelled
from labeler.learning.training import choose_kind, cross_val_proba, model_voter
from labeler.models.classifiers import KINDS
from labeler.models.predictor import Predictor
from labeler.studio.client import Studio
from labeler.studio.tasks import QUEUE_HIDDEN_COLUMNS, ensure_view, iter_tasks, project_config

FIELD = "labeler_suspicion"
VIEW = "Suspected label errors"


@dataclass
class Suspect:
    task_id: int
    given: str
    suggested: str
    suspicion: float


def review(studio: Studio, project: int, predictor: Predictor, publish: bool = True) -> list[Suspect]:
    s = predictor.settings
    config = project_config(studio, project)
    if config.multiple:  # confident learning is defined for one class per image
        raise TrainingError(f"project {project} is multi-label: label-error review supports single-choice projects only")
    data = load_labelled(predictor, studio, project, config, model_voter(predictor, list(config.classes)))
    keep, y = data.keep, data.y
    classes = list(config.classes)
    counts = np.bincount(y, minlength=len(classes))
    if len(y) == 0 or counts.min() < 2:
        raise TrainingError(f"too few labels to review: {dict(zip(classes, counts.tolist()))}")
    kind = choose_kind(s.classifier, predictor.scorer is not None)
    samples = [it.sample for _, it in keep if it.sample is not None]  # all: load_labelled keeps read images only
    proba = cross_val_proba(KINDS[kind](classes, seed=s.seed), samples, y, folds=int(min(5, counts.min())), seed=s.seed)
    suspects = [Suspect(keep[i][0].task_id, classes[y[i]], classes[int(proba[i].argmax())],
                        round(float(1 - proba[i, y[i]]), 4)) for i in find_label_issues(proba, y)]
    if publish:
        _publish(studio, project, suspects)
    return suspects


def _publish(studio: Studio, project: int, suspects: list[Suspect]) -> int:
    flagged = {sp.task_id: sp.suspicion for sp in suspects}
    for task in iter_tasks(studio, project):
        data = dict(task.get("data") or {})
        if task["id"] in flagged:
            data[FIELD] = flagged[task["id"]]
        elif FIELD in data:
            data.pop(FIELD)
        else:
            continue
        studio.tasks.update(id=task["id"], data=data)
    # the person's label beside the model's answer: the annotation results stay visible here
    hidden = {k: [c for c in v if c != "tasks:annotations_results"] for k, v in QUEUE_HIDDEN_COLUMNS.items()}
    return ensure_view(studio, project, VIEW, [f"-tasks:data.{FIELD}"], {
        "conjunction": "and",
        "items": [{"filter": f"filter:tasks:data.{FIELD}", "operator": "greater", "type": "Number", "value": 0}]},
        hidden)
