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

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from labeler.models.classifiers.base import Classifier, Sample, balanced_weights
from labeler.models.classifiers.mobilenet import mobilenet_v2
from labeler.models.classifiers.pixels import channels_last, logits_input, threads, to_tensor, train_device, weak_augment


class CNNClassifier(Classifier):
    kind = "cnn"
    _init: dict[str, torch.Tensor] | None = None  # weights the next fit starts from (init_from)

    def __init__(self, classes: Sequence[str], seed: int = 0, input_size: int = 48,
                 epochs: int = 15, batch_size: int = 32, lr: float = 1e-3,
                 max_steps: int = 400, min_steps: int = 150, pretrained: bool = True,
                 progress: bool = True, warm_fraction: float = 0.35, warm_min_steps: int = 60,
                 encoder: str | None = None) -> None:
        super().__init__(classes, seed)
        self.encoder = encoder  # a self-supervised encoder (labeler.models.pretrain) to start from
        self.input_size = input_size
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.max_steps, self.min_steps = max_steps, min_steps
        self.warm_fraction, self.warm_min_steps = warm_fraction, warm_min_steps
        self.pretrained = pretrained
        self.progress = progress

    def init_from(self, previous: Classifier) -> bool:
        """Begin the next :meth:`fit` from ``previous``'s weights (a fitted CNN, same classes and size)."""
        net = getattr(previous, "net_", None)
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
    # the targets, the loss and the output activation.
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
        n = len(yt)
        per_epoch = math.ceil(n / self.batch_size)
        steps = self.steps_for(n)
        self._init = None  # one warm start per call
        loss_fn = self._loss_fn(y, device)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps, pct_start=0.15)
        self.net_.train()
        step = 0
        bar = tqdm(total=steps, desc="training CNN", unit="step", disable=not self.progress, leave=False)
        while step < steps:
            for idx in torch.randperm(n, generator=g).split(self.batch_size):
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                loss = loss_fn(self._logits(weak_augment(x[idx], g)), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                if step >= steps:
                    break
        bar.close()
        self.net_.eval()
        return {"train_seconds": time.perf_counter() - t0, "steps": steps,
                "epochs": round(steps / per_epoch, 2), "imagenet_init": loaded, "warm_start": warm,
                "encoder": bool(self.encoder) and not warm}

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
        (folder / "cnn.json").write_text(json.dumps({"input_size": self.input_size}))

    @classmethod
    def _load(cls, folder: Path, classes: list[str]) -> "CNNClassifier":
        """Weights only (``weights_only=True``: tensors, never arbitrary objects); settings from JSON.

        Folders written before the JSON existed hold ``{"state_dict", "input_size"}`` in ``cnn.pt``.
        """
        state = torch.load(folder / "cnn.pt", map_location="cpu", weights_only=True)
        meta = folder / "cnn.json"
        if meta.exists():
            input_size = int(json.loads(meta.read_text())["input_size"])
        else:
            state, input_size = state["state_dict"], int(state["input_size"])
        model = cls(classes, input_size=input_size, pretrained=False)
        model.net_, _ = mobilenet_v2(len(classes), pretrained=False)
        model.net_.load_state_dict(state)
        model.net_ = channels_last(model.net_).eval()
        return model
