"""Issue 23's levers in ``labeler simulate --levers``: each one on and off in the same run.

A lever changes how the loop learns from few labels:

- ``pretrain``: SimCLR on the set's own images (:mod:`labeler.models.pretrain`, no labels used);
  the CNN starts from that encoder and the diversity features come from it;
- ``typiclust``: the first batches are TypiClust's typical images
  (:func:`labeler.models.strategies.typiclust`) instead of k-center's, until ``typical_until``
  labels; then margin + diversity as before;
- ``fixmatch``: consistency training on the pool (FixMatch, :func:`labeler.models.classifiers.cnn.fixmatch_loss`)
  instead of self-training on the last round's confident answers;
- ``ensemble``: three CNNs from three seeds, probabilities averaged
  (:class:`labeler.models.classifiers.ensemble.Ensemble`), three times the training.

The variants of a run: random labels and today's default (no lever), every lever on, and every
lever on but one, so a lever that does not pay shows as "all but X" doing as well as "all".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import clone

from labeler.errors import LabelerError
from labeler.models.classifiers import Classifier, Ensemble, Sample
from labeler.models.pretrain import ENCODER_FILE, pretrain_encoder, save_encoder
from labeler.models.strategies import DEFAULT_STRATEGY

LEVERS = ("pretrain", "typiclust", "fixmatch", "ensemble")
ENSEMBLE_MEMBERS = 3
MODEL_LEVERS = frozenset({"pretrain", "fixmatch", "ensemble"})  # levers of the model: random labels get them too


@dataclass(frozen=True)
class Variant:
    name: str
    strategy: str
    levers: frozenset[str]

    @property
    def consistency(self) -> bool:
        """Whether this variant's CNN trains with FixMatch on the pool (and without self-training)."""
        return "fixmatch" in self.levers

    def estimator(self, make: Classifier) -> Classifier:
        """``make`` as this variant trains it: FixMatch on with ``fixmatch``, three seeds with ``ensemble``."""
        if self.consistency:
            make = clone(make).set_params(consistency=1.0)
        return Ensemble(make, members=ENSEMBLE_MEMBERS) if "ensemble" in self.levers else make

    def select_options(self, n_classes: int, per_class: int) -> dict:
        """:func:`labeler.models.strategies.select`'s cold-start options for this variant."""
        if "typiclust" not in self.levers:
            return {}
        return {"cold_start": "typiclust", "typical_until": per_class * n_classes}


def check_levers(levers: Sequence[str]) -> list[str]:
    unknown = [lev for lev in levers if lev not in LEVERS]
    if unknown:
        raise LabelerError(f"unknown lever(s) {', '.join(unknown)}; choose from {', '.join(LEVERS)}")
    return list(dict.fromkeys(levers))


def variants(levers: Sequence[str]) -> list[Variant]:
    """random, default, ``all`` (every lever) and ``all-X`` for each lever X (when there are several);
    with one lever, ``all`` is that lever on."""
    on = frozenset(check_levers(levers))
    model_only = on & MODEL_LEVERS  # random labels get the same model; a cold start has no meaning there
    out = [Variant("random" + "".join(f"+{lev}" for lev in sorted(model_only)), "random", model_only),
           Variant("default", DEFAULT_STRATEGY, frozenset()),
           Variant("all", DEFAULT_STRATEGY, on)]
    if len(on) > 1:
        out += [Variant(f"all-{lev}", DEFAULT_STRATEGY, on - {lev}) for lev in sorted(on)]
    return out


def pick_variants(chosen: list[Variant], names: Sequence[str]) -> list[Variant]:
    """The variants named in ``names`` (all when empty), in ``chosen``'s order; unknown names are an error."""
    if not names:
        return chosen
    known = {v.name for v in chosen}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LabelerError(f"unknown variant(s) {', '.join(unknown)}; these levers make {', '.join(sorted(known))}")
    return [v for v in chosen if v.name in names]


def images_digest(samples: Sequence[Sample]) -> str:
    """A digest of the pixels, so a cached encoder is only reused for the same images."""
    h = hashlib.sha1()
    for s in samples:
        h.update(np.asarray(s.image.convert("L")).tobytes())
    return h.hexdigest()


def simulation_encoder(samples: Sequence[Sample], out: Path, steps: int, progress: bool = True) -> tuple[Path, dict]:
    """The SimCLR encoder of ``samples`` in ``out`` (pretrained once, reused while the images and steps
    are the same); returns (its path, what pretraining measured)."""
    path, meta_path = out / ENCODER_FILE, out / "encoder.json"
    digest = images_digest(samples)
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("images_digest") == digest and meta.get("steps") == steps:
            return path, {**meta, "reused": True}
    state, info = pretrain_encoder(samples, steps=steps, progress=progress)
    save_encoder(state, out)
    meta = {**info, "images_digest": digest}
    meta_path.write_text(json.dumps(meta, indent=2))
    return path, meta
