"""The project's self-supervised encoder: pretrained once per project, versioned, used by every retraining.

SimCLR (:mod:`labeler.models.pretrain`) on the project's task images, labelled or not, needs no labels
and is the same for every retraining, so the training job runs it only when the project has no encoder
yet, or has grown to ``GROWTH`` times the images its encoder saw; retraining then costs what it did.
Encoders live in a registry of their own (``MODEL_DIR/encoders/projects/<p>/versions/v1-simclr``, or
``<LABELER_REGISTRY_URL>/encoders``), written atomically like model versions, so a crash mid-way
leaves the previous encoder in use. The CNN classifier starts from the current one and the queue's
diversity features come from it; a model version's meta names the encoder it was trained from.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from labeler.models.encoders import current_encoder, encoder_registry
from labeler.models.pretrain import pretrain_encoder, save_encoder

log = logging.getLogger(__name__)

GROWTH = 2.0  # pretrain again once the project has this many times the images its encoder saw


def needs_pretraining(settings, project: str, n_images: int) -> str | None:
    """Why the project's encoder should be (re)trained now, or None: off, too few images, or current."""
    if settings.pretrain == "off" or n_images < settings.pretrain_min_images:
        return None
    reg = encoder_registry(settings)
    version = reg.current(str(project))
    if version is None:
        return f"no encoder yet ({n_images} images)"
    seen = int(reg.meta(str(project), version).get("images", 0))
    if n_images >= GROWTH * seen and seen < settings.pretrain_max_images:
        return f"the project grew from {seen} to {n_images} images"
    return None


def stable_sample(urls: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` of ``urls``, the same ones on every run (by hash), so a capped sample is stable."""
    return sorted(urls, key=lambda u: hashlib.sha1(u.encode()).hexdigest())[:limit]


def pretrain_project(predictor, project: str, urls: Sequence[str], conn, why: str,
                     report: Callable[[str], None] = lambda s: None) -> str | None:
    """SimCLR on the images at ``urls`` (a stable sample of at most ``LABELER_PRETRAIN_MAX_IMAGES``),
    stored and made current; returns the encoder version, or None when too few images could be read."""
    s = predictor.settings
    chosen = stable_sample(list(dict.fromkeys(urls)), s.pretrain_max_images)
    report(f"self-supervised pretraining ({why}): fetching {len(chosen)} images")
    samples = [it.sample for it in predictor.samples(chosen, conn) if it.sample is not None]
    if len(samples) < s.pretrain_min_images:
        log.warning("project %s: only %d readable images, fewer than LABELER_PRETRAIN_MIN_IMAGES=%d: no encoder",
                    project, len(samples), s.pretrain_min_images)
        return None
    report(f"self-supervised pretraining on {len(samples)} images ({s.pretrain_steps} steps)")
    state, info = pretrain_encoder(samples, steps=s.pretrain_steps, seed=s.seed, progress=False)

    def write(folder: Path) -> dict:
        save_encoder(state, folder)
        return {**info, "kind": "simclr", "why": why}

    reg = encoder_registry(s)
    version = reg.add(str(project), write)
    reg.promote(str(project), version)
    log.info("project %s: encoder %s pretrained on %d images in %.0f s", project, version, len(samples),
             info["pretrain_seconds"])
    return version


def ensure_encoder(predictor, project: str, data, conn, kind: str,
                   report: Callable[[str], None] = lambda s: None) -> tuple[str, Path] | None:
    """The encoder a CNN of ``project`` should start from, pretraining it first when
    :func:`needs_pretraining` says so (``data``: the :class:`~labeler.learning.labelled.LabelledSet`,
    whose labelled and unlabelled tasks give the images). A failed pretraining is logged and leaves
    the previous encoder (or ImageNet's weights) in use: it never fails the training."""
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
    return current_encoder(predictor.settings, project)
