"""The project's self-supervised encoder: pretrained once per project, versioned, used by every retraining.

SimCLR (:mod:`labeler.models.pretrain`) on the project's task images, labelled or not, needs no labels
and is the same for every retraining, so the training job runs it only when the project has no encoder
yet, has grown to ``GROWTH`` times the images its encoder saw, or its encoder had fewer steps than
``LABELER_PRETRAIN_STEPS`` asks for (an upgrade's longer default); retraining then costs what it did.
Encoders live in a registry of their own (``MODEL_DIR/encoders/projects/<p>/versions/v1-simclr``, or
``<LABELER_REGISTRY_URL>/encoders``), written atomically like model versions, so a crash mid-way
leaves the previous encoder in use. The CNN classifier starts from the current one and the queue's
diversity features come from it; a model version's meta names the encoder it was trained from.

A failed attempt (fewer than ``LABELER_PRETRAIN_MIN_IMAGES`` of the sampled images readable, or
pretraining raised) is recorded in the encoder registry's project folder, ``pretrain_failed.json``
(the project's task count then, the readable count, the error), and is not repeated until the
project has grown to ``GROWTH`` times those tasks: otherwise every retraining would download the
same sample to give up again. A success clears the record; deleting the file retries sooner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from labeler.errors import RegistryError
from labeler.learning.labelled import stable_sample
from labeler.models.encoders import current_encoder, encoder_registry
from labeler.models.pretrain import pretrain_encoder, save_encoder

log = logging.getLogger(__name__)

GROWTH = 2.0  # pretrain again once the project has this many times the images its encoder saw (or
#                the tasks of a failed attempt)


def needs_pretraining(settings, project: str, n_images: int) -> str | None:
    """Why the project's encoder should be (re)trained now, or None: off, too few images, current, or
    an attempt failed at more than ``n_images / GROWTH`` tasks."""
    if settings.pretrain == "off" or n_images < settings.pretrain_min_images:
        return None
    reg = encoder_registry(settings)
    failed = reg.pretrain_failed(str(project))
    if n_images < GROWTH * failed.get("tasks", 0):
        log.info("project %s: pretraining failed at %d tasks (%s readable images, error: %s); "
                 "not tried again before %d tasks", project, failed["tasks"], failed.get("readable"),
                 failed.get("error"), GROWTH * failed["tasks"])
        return None
    version = reg.current(str(project))
    if version is None:
        return f"no encoder yet ({n_images} images)"
    meta = reg.meta(str(project), version)
    seen = int(meta.get("images", 0))
    if n_images >= GROWTH * seen and seen < settings.pretrain_max_images:
        return f"the project grew from {seen} to {n_images} images"
    if int(meta.get("steps") or settings.pretrain_steps) < settings.pretrain_steps:  # e.g. an older default
        return f"its encoder had {meta['steps']} SimCLR steps, LABELER_PRETRAIN_STEPS asks for {settings.pretrain_steps}"
    return None


def record_failure(settings, project: str, tasks: int, readable: int | None, error: str | None = None) -> None:
    """Remember a failed pretraining of ``project`` at ``tasks`` tasks, so that :func:`needs_pretraining`
    waits for growth; a registry that cannot take the note only costs a retry."""
    try:
        encoder_registry(settings).set_pretrain_failed(
            str(project), {"tasks": tasks, "readable": readable, "error": error, "at": time.time()})
    except (OSError, RegistryError) as exc:
        log.warning("project %s: could not record the failed pretraining (%s)", project, exc)


def pretrain_project(predictor, project: str, urls: Sequence[str], conn, why: str,
                     report: Callable[[str], None] = lambda s: None) -> str | None:
    """SimCLR on the images at ``urls`` (a stable sample of at most ``LABELER_PRETRAIN_MAX_IMAGES``),
    stored and made current; returns the encoder version, or None when too few images could be read
    (recorded: see :func:`record_failure`)."""
    s = predictor.settings
    chosen = stable_sample(list(dict.fromkeys(urls)), s.pretrain_max_images)
    report(f"self-supervised pretraining ({why}): fetching {len(chosen)} images")
    samples = [it.sample for it in predictor.samples(chosen, conn) if it.sample is not None]
    if len(samples) < s.pretrain_min_images:
        log.warning("project %s: only %d readable images, fewer than LABELER_PRETRAIN_MIN_IMAGES=%d: no encoder",
                    project, len(samples), s.pretrain_min_images)
        record_failure(s, project, len(urls), len(samples))
        return None
    report(f"self-supervised pretraining on {len(samples)} images ({s.pretrain_steps} steps)")
    state, info = pretrain_encoder(samples, steps=s.pretrain_steps, seed=s.seed, progress=False)

    def write(folder: Path) -> dict:
        save_encoder(state, folder)
        return {**info, "kind": "simclr", "why": why}

    reg = encoder_registry(s)
    version = reg.add(str(project), write)
    reg.promote(str(project), version)
    if reg.pretrain_failed(str(project)):
        reg.set_pretrain_failed(str(project), {})
    log.info("project %s: encoder %s pretrained on %d images in %.0f s", project, version, len(samples),
             info["pretrain_seconds"])
    return version


def ensure_encoder(predictor, project: str, data, conn, kind: str,
                   report: Callable[[str], None] = lambda s: None) -> tuple[str, Path] | None:
    """The encoder a CNN of ``project`` should start from, pretraining it first when
    :func:`needs_pretraining` says so (``data``: the :class:`~labeler.learning.labelled.LabelledSet`,
    whose labelled and unlabelled tasks give the images). A failed pretraining is logged and recorded
    (not retried before the project grows) and leaves the previous encoder (or ImageNet's weights) in
    use: it never fails the training."""
    if kind != "cnn":
        return None
    urls = [lab.url for lab, _ in data.keep] + [url for _, url in data.unlabelled]
    why = needs_pretraining(predictor.settings, project, len(urls))
    if why:
        try:
            pretrain_project(predictor, project, urls, conn, why, report)
        except (OSError, RuntimeError, ValueError) as exc:
            log.error("project %s: self-supervised pretraining failed (%s: %s); training goes on without it",
                      project, type(exc).__name__, exc)
            record_failure(predictor.settings, project, len(urls), None, f"{type(exc).__name__}: {exc}"[:500])
    return current_encoder(predictor.settings, project)
