"""A project's labelled set: its usable labels with their images downloaded, embedded and scored
by the zero-shot model; what training and review start from. Also the unlabelled pool that
self-training draws on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from labeler.labelconfig import LabelConfig
from labeler.models.classifiers import Sample
from labeler.models.predictor import Predictor, Scored
from labeler.studio.client import Studio
from labeler.studio.tasks import Labelled
from labeler.studio.team import consensus_labelled


@dataclass
class LabelledSet:
    """A project's usable labels with their images: what training and review start from."""

    keep: list[tuple[Labelled, Scored]]  # readable images, embedded, zero-shot evidence attached
    bad: list[tuple[int, str]]           # (task id, why its image could not be used)
    y: np.ndarray                        # class indices of ``keep``; multi-label: (N, C) 0/1 label sets
    skipped_tasks: int                   # annotated tasks without a usable label
    unlabelled: list[tuple[int, str]]    # (task id, image URL) of tasks nobody annotated


def load_labelled(predictor: Predictor, studio: Studio, project: int, config: LabelConfig) -> LabelledSet:
    """Fetch the labelled tasks, download and embed their images, attach zero-shot evidence.

    A task's label is its consensus (:mod:`labeler.studio.team`); one below the setting
    ``consensus_min_confidence`` is not a clean label and counts as skipped."""
    settings = getattr(predictor, "settings", None)
    labelled, skipped, unlabelled = consensus_labelled(studio, project, config,
                                                       getattr(settings, "consensus_min_confidence", 0.0),
                                                       getattr(settings, "control_rate", 0.0))
    items = predictor.samples([lab.url for lab in labelled], studio.conn)
    bad = [(lab.task_id, it.error or "unreadable") for lab, it in zip(labelled, items) if it.sample is None]
    keep = [(lab, it) for lab, it in zip(labelled, items) if it.sample is not None]
    predictor.zeroshot_scores([it for _, it in keep], config)
    y: np.ndarray
    if config.multiple:
        y = np.array([[c in lab.labels for c in config.classes] for lab, _ in keep], dtype=int).reshape(-1, len(config.classes))
    else:
        y = np.array([config.classes.index(lab.label) for lab, _ in keep], dtype=int)
    return LabelledSet(keep, bad, y, skipped, unlabelled)


def self_training_pool(predictor: Predictor, data: LabelledSet, config: LabelConfig, studio: Studio,
                       limit: int) -> list[Sample]:
    """Up to ``limit`` unlabelled images (a stable choice by task id), downloaded and embedded.

    Unreadable ones are left out: they only cost the pseudo-labels they would have given.
    """
    chosen = sorted(data.unlabelled, key=lambda t: hashlib.sha1(str(t[0]).encode()).hexdigest())[:limit]
    items = predictor.samples([url for _, url in chosen], studio.conn)
    predictor.zeroshot_scores(items, config)
    return [it.sample for it in items if it.sample is not None]
