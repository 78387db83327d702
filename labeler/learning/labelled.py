"""A project's labelled set: its usable labels with their images downloaded, embedded and scored
by the zero-shot model; what training and review start from. Also the unlabelled pool that
self-training draws on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from labeler.labelconfig import LabelConfig
from labeler.models.classifiers import Sample
from labeler.models.consensus import informative
from labeler.models.predictor import Predictor, Scored
from labeler.studio.client import Studio
from labeler.studio.tasks import Labelled
from labeler.studio.team import Team, clean_labels, consensus_labelled, project_team, read_known


@dataclass
class LabelledSet:
    """A project's usable labels with their images: what training and review start from."""

    keep: list[tuple[Labelled, Scored]]  # readable images, embedded, zero-shot evidence attached
    bad: list[tuple[int, str]]           # (task id, why its image could not be used)
    y: np.ndarray                        # class indices of ``keep``; multi-label: (N, C) 0/1 label sets
    skipped_tasks: int                   # annotated tasks without a usable label
    unlabelled: list[tuple[int, str]]    # (task id, image URL) of tasks nobody annotated
    votes: dict[int, np.ndarray] | None = None  # the classifier's out-of-fold probabilities, where it voted


T = TypeVar("T")


def stable_sample(items: Iterable[T], limit: int, key: Callable[[T], str] = str) -> list[T]:
    """At most ``limit`` of ``items``: those whose ``key`` has the smallest SHA-1, so a capped sample is
    the same on every run whatever the items' order, and changes little as items are added. Used for
    the pretraining images (key: the URL) and the self-training pool (key: the task id)."""
    return sorted(items, key=lambda it: hashlib.sha1(key(it).encode()).hexdigest())[:limit]


# The classifier as one more voter (issue 22): its out-of-fold probabilities for the given samples and
# consensus labels, or None where it cannot give them (too few labels per class).
Voter = Callable[[list[Sample], np.ndarray], "np.ndarray | None"]


def load_labelled(predictor: Predictor, studio: Studio, project: int, config: LabelConfig,
                  voter: Voter | None = None) -> LabelledSet:
    """Fetch the labelled tasks, download and embed their images, attach zero-shot evidence.

    A task's label is its consensus (:mod:`labeler.studio.team`; honeypot CSV ``LABELER_HONEYPOTS`` as known
    labels); one below the setting ``consensus_min_confidence`` is not a clean label and counts as skipped.
    With ``voter``, where some task has two labels or a known one, the consensus is fitted again with the
    classifier's out-of-fold probabilities as one more annotator (:func:`_model_votes`)."""
    settings = getattr(predictor, "settings", None)
    min_conf = getattr(settings, "consensus_min_confidence", 0.0)
    tasks, team, will_vote = None, None, False
    if config.multiple:
        labelled, skipped, unlabelled = consensus_labelled(studio, project, config)
    else:
        path = getattr(settings, "honeypots", "")
        tasks, team = project_team(studio, project, config, getattr(settings, "control_rate", 0.0),
                                   read_known(Path(path)) if path else None)
        will_vote = voter is not None and bool(informative(team.labels, team.gold).any())
        labelled, skipped, unlabelled = clean_labels(tasks, team, config, 0.0 if will_vote else min_conf)
    items = predictor.samples([lab.url for lab in labelled], studio.conn)
    bad = [(lab.task_id, it.error or "unreadable") for lab, it in zip(labelled, items) if it.sample is None]
    keep = [(lab, it) for lab, it in zip(labelled, items) if it.sample is not None]
    predictor.zeroshot_scores([it for _, it in keep], config)
    votes = None
    if will_vote and tasks is not None and team is not None and voter is not None:
        keep, skipped, votes = _model_votes(keep, tasks, team, config, min_conf, voter)
    y: np.ndarray
    if config.multiple:
        y = np.array([[c in lab.labels for c in config.classes] for lab, _ in keep], dtype=int).reshape(-1, len(config.classes))
    else:
        y = np.array([config.classes.index(lab.label) for lab, _ in keep], dtype=int)
    return LabelledSet(keep, bad, y, skipped, unlabelled, votes)


def _model_votes(keep: list[tuple[Labelled, Scored]], tasks: list[dict], team: Team, config: LabelConfig,
                 min_conf: float, voter: Voter,
                 ) -> tuple[list[tuple[Labelled, Scored]], int, dict[int, np.ndarray] | None]:
    """The people's consensus (every annotated task) trains the out-of-fold model; its probabilities then
    vote in the consensus (tasks whose image could not be read: no model vote), which is cut at ``min_conf``
    again. Returns (the kept tasks with their new labels, annotated tasks skipped, the votes or None)."""
    y = np.array([config.classes.index(lab.label) for lab, _ in keep], dtype=int)
    proba = voter([it.decoded for _, it in keep], y) if len(keep) else None
    votes = None if proba is None else {lab.task_id: p for (lab, _), p in zip(keep, proba)}
    labelled, skipped, _ = clean_labels(tasks, team, config, min_conf, votes)  # no votes: the people's alone
    by_id = {lab.task_id: lab for lab in labelled}
    return [(by_id[lab.task_id], it) for lab, it in keep if lab.task_id in by_id], skipped, votes


def self_training_pool(predictor: Predictor, data: LabelledSet, config: LabelConfig, studio: Studio,
                       limit: int) -> list[Sample]:
    """Up to ``limit`` unlabelled images (a stable choice by task id), downloaded and embedded.

    Unreadable ones are left out: they only cost the pseudo-labels they would have given.
    """
    chosen = stable_sample(data.unlabelled, limit, key=lambda t: str(t[0]))
    items = predictor.samples([url for _, url in chosen], studio.conn)
    predictor.zeroshot_scores(items, config)
    return [it.sample for it in items if it.sample is not None]
