"""Where a project's self-supervised encoder is kept and which one is current.

Trained by :mod:`labeler.learning.pretraining`; read by training (the CNN starts from it) and by
the labelling queue (its diversity features come from it). A registry of their own, beside the
model versions: ``MODEL_DIR/encoders/projects/<p>/versions/v1-simclr``, or ``<LABELER_REGISTRY_URL>/encoders``.
"""

from __future__ import annotations

from pathlib import Path

from labeler.errors import RegistryError
from labeler.models.openregistry import open_registry
from labeler.models.pretrain import ENCODER_FILE
from labeler.models.registry import Registry


def encoder_registry(settings) -> Registry:
    """Where ``settings``' encoders are kept (the newest three per project)."""
    url = settings.registry_url.rstrip("/") + "/encoders" if settings.registry_url else None
    return open_registry(Path(settings.model_dir) / "encoders", url, keep=3)


def current_encoder(settings, project: str | int) -> tuple[str, Path] | None:
    """(version, file) of the encoder ``project`` uses, or None: ImageNet's weights (none yet, or
    ``LABELER_PRETRAIN=off``)."""
    if getattr(settings, "pretrain", "off") == "off":
        return None
    reg = encoder_registry(settings)
    version = reg.current(str(project))
    if version is None:
        return None
    return version, reg.path(str(project), version) / ENCODER_FILE


def serving_encoder(settings, registry: Registry, project: str | int) -> tuple[str, Path] | None:
    """The encoder the serving model version was trained from (its meta's ``encoder``), or None.

    The queue's diversity features follow the serving version, not the newest encoder: they switch
    when a version trained from a new encoder is promoted, whose refresh re-scores every task, so
    features of two encoders never mix in one queue."""
    serving = registry.current(str(project))
    name = registry.meta(str(project), serving).get("encoder") if serving else None
    if not name:
        return None
    try:
        return name, encoder_registry(settings).path(str(project), name) / ENCODER_FILE
    except RegistryError:  # pruned (only the newest few are kept): ImageNet features until the next version
        return None
