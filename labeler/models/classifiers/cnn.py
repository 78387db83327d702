"""A CNN fine-tuned on the pixels: ImageNet MobileNetV2, for when no zero-shot model is
configured or when the images are tiny crops that BLIP-2 features describe poorly.

Fine-tuning a pretrained network beats training from scratch by a wide margin
at a few hundred labels. Images are upscaled to ``input_size`` (small crops
have too little area for MobileNetV2's 32x downsampling otherwise). Training
augments with horizontal flips, small shifts and zooms, and brightness and
contrast jitter, all in one batched ``grid_sample``; prediction averages the
image and its mirror. The number of optimiser steps is bounded
(``max_steps``), so training time stays bounded for any number of labels.

Warm start (:meth:`CNNClassifier.init_from`): a fit that begins from a
previous model of the same classes (last round's model in the simulation, the
teacher in self-training) already knows most of the data, so it runs
``warm_fraction`` of the steps a cold fit would (at least ``warm_min_steps``).

Consistency training (FixMatch, Sohn et al., 2020; ``consistency > 0`` and ``fit(..., unlabelled=pool)``):
each step also draws ``unlabelled_ratio`` times the batch from the unlabelled pool; where the
network's answer on a weakly augmented view is at least ``consistency_threshold`` sure, that answer
becomes the target of a strongly augmented view of the same image (:func:`fixmatch_loss`). The three
batches go through the network together, so BatchNorm sees one distribution. Unlike the paper's
recipe (for 2^20 steps on a GPU): no EMA model, ``unlabelled_ratio`` 2 rather than 7, the SimCLR
augmentation as the strong view (no RandAugment/Cutout), the unlabelled loss not class-weighted, and
the same bounded step budget as a plain fit.

A linear probe for the fewest labels (``probe_only_below``, 10): a cold fit from a self-supervised
encoder with fewer than ``probe_only_below`` labels of some class trains no weights of the network, only
its head: a logistic regression on the frozen features of the labels and of the unlabelled images the fit
is given (``fit(..., unlabelled=pool)``), those labelled by seeded k-means
(:mod:`labeler.models.classifiers.seeded`; :meth:`CNNClassifier._start_head`). Fine-tuning a whole network
on a few images of a class undoes what pretraining learnt; the probe keeps it, and the clusters show where
the classes lie. Without them (no pool, a pool smaller than the labels, or clusters that do not follow the
labels) a probe of the labels alone only beats fine-tuning with one label of a class, so only such a fit
stays probe-only. Measured (README, "Learning from few labels"): one label per class, digits 0.76 accuracy
fine-tuned, 0.88 probed, 0.97 with the pool's clusters; eyes24 0.60, 0.75 and 0.90; at 10 labels per class
on eyes24, 0.934 fine-tuned and 0.948 probed with clusters, at 25 fine-tuning wins (0.957 against 0.949).

Pixels, augmentations and CPU threads: :mod:`labeler.models.classifiers.pixels`.

Saved without pickle: the weights with ``torch.save`` of a plain state dict
(loaded with ``weights_only=True``), the settings as JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from labeler.models.classifiers.base import Classifier, Sample, balanced_weights
from labeler.models.classifiers.mobilenet import mobilenet_v2
from labeler.models.classifiers.pixels import (
    channels_last,
    logits_input,
    strong_augment,
    threads,
    to_tensor,
    train_device,
    weak_augment,
)
from labeler.models.classifiers.seeded import seeded_kmeans

PROBE_IMAGES = 2048  # labelled images the linear probe of a cold fit sees (a random subset of more)
MAX_UNLABELLED = 4096  # pool images a consistency fit or a probe's clustering holds (a random subset, drawn with the seed)


def fixmatch_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                  threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss ``mean_i 1[max_c p_ic >= t] * CE(strong_i, argmax_c p_ic)``, ``p`` the
    softmax of the (detached) weak-view logits, ``t`` the threshold (rows below it add zero); and
    the share of rows above it (a tensor: no device sync per step)."""
    conf, target = weak_logits.detach().softmax(-1).max(-1)
    mask = (conf >= threshold).float()
    ce = nn.functional.cross_entropy(strong_logits, target, reduction="none")
    return (ce * mask).mean(), mask.mean()


class CNNClassifier(Classifier):
    kind = "cnn"
    _init: dict[str, torch.Tensor] | None = None  # weights the next fit starts from (init_from)
    _pool: list[Sample] | None = None  # unlabelled images of the next fit (consistency training)
    _unlabelled: list[Sample] = []  # unlabelled images of the next fit, whatever uses them
    supports_consistency = True
    _clustered = 0  # unlabelled images the last probe learnt from seeded k-means
    probe_only_ = False  # the fitted model's network is the encoder's, only its head was trained

    def __init__(self, classes: Sequence[str], seed: int = 0, input_size: int = 48,
                 epochs: int = 15, batch_size: int = 32, lr: float = 1e-3,
                 max_steps: int = 400, min_steps: int = 150, pretrained: bool = True,
                 progress: bool = True, warm_fraction: float = 0.35, warm_min_steps: int = 60,
                 encoder: str | None = None, consistency: float = 0.0, consistency_threshold: float = 0.95,
                 unlabelled_ratio: int = 2, probe: bool = False, probe_only_below: int = 10,
                 probe_only: bool | None = None) -> None:
        super().__init__(classes, seed)
        self.probe_only_below = probe_only_below  # fewer labels of some class, from an encoder: a linear probe only
        # None: decided from the labels a fit gets; True/False: decided for it, as cross-validation's folds (4/5
        # of the labels) follow the decision of the fit on all of them (labeler.learning.training.make_model)
        self.probe_only = probe_only
        # A cold fit's head starts as a linear probe of the pretrained features (LP-FT). Off: on digits it
        # helped with one label per class and hurt with ten (README, "Learning from few labels").
        self.probe = probe
        self.consistency, self.consistency_threshold = consistency, consistency_threshold
        self.unlabelled_ratio = unlabelled_ratio
        self.encoder = encoder  # a self-supervised encoder (labeler.models.pretrain) to start from
        self.input_size = input_size
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.max_steps, self.min_steps = max_steps, min_steps
        self.warm_fraction, self.warm_min_steps = warm_fraction, warm_min_steps
        self.pretrained = pretrained
        self.progress = progress

    def fit(self, X: Sequence[Sample], y: np.ndarray, unlabelled: Sequence[Sample] | None = None) -> "CNNClassifier":
        """Train on ``X``/``y``. ``unlabelled`` images serve FixMatch (``consistency > 0``) and a probe-only
        fit (:meth:`_start_head`). A pool of fewer than two images is left out of FixMatch, and ``fit_info_``
        says so."""
        self._unlabelled = list(unlabelled) if unlabelled is not None else []
        wanted = self.consistency > 0 and unlabelled is not None
        usable = self.supports_consistency and len(self._unlabelled) > 1
        self._pool = self._unlabelled if wanted and usable else None
        try:
            super().fit(X, y)
        finally:
            skipped = wanted and self._pool is None
            self._pool, self._unlabelled = None, []
        if skipped:
            self.fit_info_["consistency_skipped"] = "pool < 2"
        return self

    def init_from(self, previous: Classifier) -> bool:
        """Begin the next :meth:`fit` from ``previous``'s weights (a fitted CNN, same classes and size; of an
        ensemble of them, its first member's)."""
        previous = (getattr(previous, "members_", None) or [previous])[0]
        net = getattr(previous, "net_", None)
        if getattr(previous, "probe_only_", False):  # only its head was fitted: a cold fit learns more
            return False
        if not (isinstance(previous, CNNClassifier) and net is not None
                and list(previous.classes) == list(self.classes) and previous.input_size == self.input_size):
            return False
        self._init = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return True

    def steps_for(self, n: int) -> int:
        """Optimiser steps for ``n`` training images.

        Cold: ``clip(epochs * ceil(n / batch), min_steps, max_steps)``, times
        ``step_fraction``; warm-started: ``max(warm_min_steps, warm_fraction * cold)``.
        """
        cold = min(self.max_steps, max(self.min_steps, self.epochs * math.ceil(n / self.batch_size)))
        if self._init is not None:
            return int(max(self.warm_min_steps, math.ceil(self.warm_fraction * cold)))
        return int(max(1, math.ceil(self.step_fraction * cold)))

    # What a multi-label subclass changes (labeler.models.classifiers.multilabel.MultiLabelCNN):
    # the targets, the losses and the output activation.
    def _targets(self, y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(y, dtype=torch.long)

    def _loss_fn(self, y: np.ndarray, device: torch.device):
        """Cross-entropy with class weights ``N / (C n_c)`` (balanced)."""
        weight = torch.as_tensor(balanced_weights(np.asarray(y), len(self.classes)), dtype=torch.float32,
                                 device=device)
        return lambda logits, target: nn.functional.cross_entropy(logits, target, weight=weight)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net_(logits_input(x))

    def _fit(self, samples: list[Sample], y: np.ndarray) -> dict:
        with threads():
            return self._train(samples, y)

    def _train(self, samples: list[Sample], y: np.ndarray) -> dict:
        t0 = time.perf_counter()
        torch.manual_seed(self.seed)
        g = torch.Generator().manual_seed(self.seed)
        warm = self._init is not None
        self.net_, loaded = mobilenet_v2(len(self.classes), pretrained=self.pretrained and not warm)
        if self._init is not None:
            self.net_.load_state_dict(self._init)
        elif self.encoder:
            self.net_.features.load_state_dict(torch.load(self.encoder, map_location="cpu", weights_only=True))
        device = train_device()
        self.net_ = channels_last(self.net_).to(device)
        x = to_tensor(samples, self.input_size).to(device)
        yt = self._targets(y).to(device)
        pool = self._pool_tensor(self._pool, g, device)  # FixMatch's (the probe's clusters reuse it)
        probed, probe_only = self._start_head(x, y, g, warm, pool)
        self.probe_only_ = probe_only  # saved with the weights: a later fit does not warm-start from them
        steps = 0 if probe_only else self.steps_for(len(yt))
        self._init = None  # one warm start per call
        masked = self._optimise(x, yt, pool, self._loss_fn(y, device), steps, g) if steps else 0.0
        self.net_.eval()
        info = {"probe_only": steps == 0, "train_seconds": time.perf_counter() - t0, "steps": steps,
                "pseudo_labels": self._clustered if probe_only else 0,
                "epochs": round(steps / math.ceil(len(yt) / self.batch_size), 2), "imagenet_init": loaded,
                "warm_start": warm, "encoder": bool(self.encoder) and not warm, "probed_head": probed}
        if pool is not None and steps:  # FixMatch trained on it (a probe-only fit learnt its clusters instead)
            info.update(unlabelled=len(pool), confident_share=round(masked, 4))
        return info

    def learns_pool_itself(self, y: np.ndarray) -> bool:
        """A cold fit from an encoder with fewer than ``probe_only_below`` labels of some class: the pool's
        seeded k-means classes teach its probe (measured on digits, 3 seeds: accuracy 0.95-0.96 at 20-50
        labels after self-training, 0.99-1.00 with the clusters)."""
        return self._probe_only(np.asarray(y), self._init is not None)

    def _probe_only(self, y: np.ndarray, warm: bool) -> bool:
        """Whether this fit may train the head only: cold, from an encoder, some class under ``probe_only_below``
        and fewer labels in all than ``probe_only_below`` of each class would make (or as ``probe_only`` says).
        The probe won on few labels in all (balanced draws); a rare class among hundreds of labels of the
        others is left to fine-tuning with balanced class weights, the path measured before the probe."""
        if warm or not self.encoder or np.asarray(y).ndim != 1:
            return False
        if self.probe_only is not None:
            return self.probe_only
        few = self.probe_only_below
        return self._fewest(y) < few and len(y) < few * len(self.classes)

    def _fewest(self, y: np.ndarray) -> int:
        return int(np.bincount(y, minlength=len(self.classes)).min())

    def _start_head(self, x: torch.Tensor, y: np.ndarray, g: torch.Generator, warm: bool,
                    pool: torch.Tensor | None) -> tuple[bool, bool]:
        """(whether the head starts as a linear probe, whether only the head is trained). A probe-only fit
        learns the unlabelled images' seeded k-means classes too; where those cannot be had, it stays
        probe-only with one label of some class only (with two or more, fine-tuning beat a probe of the
        labels alone)."""
        self._clustered = 0
        probe_only = self._probe_only(y, warm)
        if warm or not (self.probe or probe_only):
            return False, False
        fitted = self._probe_weights(*self._probe_data(x, y, g, cluster=probe_only, pool=pool))
        probe_only = probe_only and (self._clustered > 0 or self._fewest(y) < 2)
        if fitted is None or not (self.probe or probe_only):
            return False, False
        head = self.net_.classifier[1]
        assert isinstance(head, nn.Linear)
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(fitted[0]))
            head.bias.copy_(torch.as_tensor(fitted[1]))
        return True, probe_only

    def _probe_data(self, x: torch.Tensor, y: np.ndarray, g: torch.Generator, cluster: bool,
                    pool: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(features, targets) of the linear probe. LP-FT (Kumar et al., 2022): the new head starts as a
        probe (:meth:`_probe_weights`) of the frozen features of the labelled images (at most
        ``PROBE_IMAGES``, every class kept) and a weak view of each, so the first steps do not push a random
        head's gradients into the pretrained features. With ``cluster`` (a probe-only fit), also the fit's
        unlabelled images (``pool``: already as a tensor), labelled by :func:`seeded_kmeans`, where there are
        at least as many as labels: k-means on fewer would mostly cluster the labels themselves."""
        perm = torch.randperm(len(x), generator=g).numpy()
        pick = perm[:PROBE_IMAGES]
        if y.ndim == 1 and len(pick) < len(perm):  # a rare class must not fall out of the sample
            classes, first = np.unique(y[perm], return_index=True)
            pick = np.concatenate([pick, perm[first[~np.isin(classes, y[pick])]]])
        targets = self._targets(y).numpy()[pick]
        xp = x[torch.as_tensor(pick).to(x.device)]
        feats = self._frozen_features(torch.cat([xp, weak_augment(xp, g)]))
        targets = np.concatenate([targets, targets])
        if cluster and len(self._unlabelled) >= len(x):
            feats, targets = self._with_clusters(feats, targets, g, x.device, pool)
        return feats, targets

    @torch.no_grad()
    def _frozen_features(self, x: torch.Tensor) -> np.ndarray:
        """The network's pooled features of ``x`` (eval mode), 256 images at a time."""
        self.net_.eval()
        return np.concatenate([
            nn.functional.adaptive_avg_pool2d(self.net_.features(logits_input(b)), 1).flatten(1).cpu().numpy()
            for b in x.split(256)])

    def _with_clusters(self, feats: np.ndarray, targets: np.ndarray, g: torch.Generator, device: torch.device,
                       pool_x: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``feats``/``targets`` plus the unlabelled images (at most ``MAX_UNLABELLED``; ``pool_x`` where FixMatch
        drew them already) that seeded k-means assigns a class; unchanged where the clusters do not follow
        the labels."""
        pool_x = pool_x if pool_x is not None else self._pool_tensor(self._unlabelled, g, device)
        assert pool_x is not None  # only called with unlabelled images
        pool = self._frozen_features(pool_x)
        found = seeded_kmeans(pool, feats, targets, len(self.classes), random_state=self.seed)
        if found is None:
            return feats, targets
        self._clustered = len(found)
        return np.vstack([feats, pool]), np.concatenate([targets, found])

    def _probe_weights(self, feats: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(weight, bias) of the head from a balanced logistic regression of ``targets`` (class indices) on
        ``feats``; None when some class has no label."""
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(targets)) != len(self.classes):
            return None
        probe = LogisticRegression(max_iter=500, class_weight="balanced").fit(feats, targets)
        w, b = probe.coef_, probe.intercept_
        if len(self.classes) == 2:  # one logit difference: split it between the two outputs
            w, b = np.vstack([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
        return w, b

    def _pool_tensor(self, images: Sequence[Sample] | None, g: torch.Generator,
                     device: torch.device) -> torch.Tensor | None:
        """At most ``MAX_UNLABELLED`` of the unlabelled ``images`` (drawn with ``g``) as a tensor; None for none."""
        if not images:
            return None
        pick = torch.randperm(len(images), generator=g)[:MAX_UNLABELLED].tolist()
        return to_tensor([images[i] for i in sorted(pick)], self.input_size).to(device)

    def _optimise(self, x: torch.Tensor, yt: torch.Tensor, pool: torch.Tensor | None, loss_fn, steps: int,
                  g: torch.Generator) -> float:
        """``steps`` AdamW steps (one-cycle schedule) over shuffled batches; returns the mean share of
        unlabelled images confident enough to train on (0 without a pool)."""
        opt = torch.optim.AdamW(self.net_.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = self._schedule(opt, steps)
        self.net_.train()
        step, confident = 0, torch.zeros(())
        bar = tqdm(total=steps, desc="training CNN", unit="step", disable=not self.progress, leave=False)
        while step < steps:
            for idx in torch.randperm(len(yt), generator=g).split(self.batch_size):
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                loss, share = self._batch_loss(x[idx], yt[idx], pool, loss_fn, g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step, confident = step + 1, confident + share
                self._after_step(step, steps)
                bar.update(1)
                if step >= steps:
                    break
        bar.close()
        return float(confident) / max(1, steps)

    def _schedule(self, opt: torch.optim.Optimizer, steps: int) -> Any:
        """The learning-rate schedule, stepped once per optimiser step: one cycle over ``steps``."""
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps, pct_start=0.15)

    def _after_step(self, step: int, steps: int) -> None:
        """Called after optimiser step ``step`` of ``steps``; weight averaging hooks in here
        (``benchmarks/cnn_recipes.py``: SWA, snapshot ensembles)."""

    def _batch_loss(self, xb: torch.Tensor, yb: torch.Tensor, pool: torch.Tensor | None, loss_fn,
                    g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The supervised loss of a batch, plus ``consistency`` times :func:`fixmatch_loss` on
        ``unlabelled_ratio`` times as many pool images; and the share of those above the threshold."""
        if pool is None:
            return loss_fn(self._logits(weak_augment(xb, g)), yb), torch.zeros(())
        u = pool[torch.randint(len(pool), (self.unlabelled_ratio * len(xb),), generator=g).to(pool.device)]
        logits = self._logits(torch.cat([weak_augment(xb, g), weak_augment(u, g), strong_augment(u, g)]))
        lx, lw, ls = logits.split([len(xb), len(u), len(u)])
        unsupervised, share = self._unlabelled_loss(lw, ls)
        return loss_fn(lx, yb) + self.consistency * unsupervised, share.detach().cpu()

    def _unlabelled_loss(self, weak_logits: torch.Tensor, strong_logits: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        return fixmatch_loss(weak_logits, strong_logits, self.consistency_threshold)

    @torch.inference_mode()
    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        if not samples:
            return np.zeros((0, len(self.classes)))
        with threads():
            return self._predict(samples)

    def _predict(self, samples: Sequence[Sample]) -> np.ndarray:
        out = []
        device = next(self.net_.parameters()).device
        for start in range(0, len(samples), 256):
            x = to_tensor(samples[start:start + 256], self.input_size).to(device)
            p = self._activate(self._logits(x)) + self._activate(self._logits(x.flip(-1)))
            out.append((p / 2).cpu())
        return torch.cat(out).numpy().astype(np.float64)

    def _save(self, folder: Path) -> None:
        torch.save(self.net_.state_dict(), folder / "cnn.pt")
        (folder / "cnn.json").write_text(json.dumps({"input_size": self.input_size,
                                                     "probe_only": self.probe_only_}))

    @classmethod
    def _load(cls, folder: Path, classes: list[str]) -> "CNNClassifier":
        """Weights only (``weights_only=True``: tensors, never arbitrary objects); settings from JSON.

        Folders written before the JSON existed hold ``{"state_dict", "input_size"}`` in ``cnn.pt``.
        """
        state = torch.load(folder / "cnn.pt", map_location="cpu", weights_only=True)
        meta = folder / "cnn.json"
        settings = json.loads(meta.read_text()) if meta.exists() else {}
        if settings:
            input_size = int(settings["input_size"])
        else:
            state, input_size = state["state_dict"], int(state["input_size"])
        model = cls(classes, input_size=input_size, pretrained=False)
        model.probe_only_ = bool(settings.get("probe_only", False))
        model.net_, _ = mobilenet_v2(len(classes), pretrained=False)
        model.net_.load_state_dict(state)
        model.net_ = channels_last(model.net_).eval()
        return model
