"""A CNN fine-tuned on the pixels: ImageNet MobileNetV2, for when no zero-shot model is
configured or when the images are tiny crops that BLIP-2 features describe poorly.

Fine-tuning a pretrained network beats training from scratch by a wide margin
at a few hundred labels. Images are upscaled to ``input_size`` (small crops
have too little area for MobileNetV2's 32x downsampling otherwise). Training
augments with horizontal flips, small shifts and zooms, and brightness and
contrast jitter, all in one batched ``grid_sample``; prediction averages the
image and its mirror. The number of optimiser steps is bounded
(``max_steps``), so training time stays bounded for any number of labels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .base import Classifier, Sample, balanced_weights
from .mobilenet import MobileNetV2, mobilenet_v2

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _to_tensor(samples: Sequence[Sample], size: int) -> torch.Tensor:
    """(N, 3, size, size) floats in [0, 1]."""
    from PIL import Image

    arr = np.stack([np.asarray(s.image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
                    for s in samples])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def _augment(x: torch.Tensor, g: torch.Generator, shift: float = 0.1) -> torch.Tensor:
    """Random flip, shift (+-``shift`` of the width), zoom (0.9-1.1) and brightness/contrast."""
    n = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    scale = 0.9 + 0.2 * r(n)
    flip = torch.where(r(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = (r(n, 2) * 2 - 1) * 2 * shift
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (0.8 + 0.4 * r(n)).view(n, 1, 1, 1)
    bright = (r(n) * 0.2 - 0.1).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + bright).clamp_(0, 1)


class CNNClassifier(Classifier):
    kind = "cnn"

    def __init__(self, classes: Sequence[str], seed: int = 0, input_size: int = 48,
                 epochs: int = 15, batch_size: int = 32, lr: float = 1e-3,
                 max_steps: int = 400, min_steps: int = 150, pretrained: bool = True,
                 progress: bool = True) -> None:
        super().__init__(classes, seed)
        self.input_size = input_size
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.max_steps, self.min_steps = max_steps, min_steps
        self.pretrained = pretrained
        self.progress = progress
        self.net: MobileNetV2 | None = None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x - _MEAN) / _STD).contiguous(memory_format=torch.channels_last))

    def fit(self, samples: Sequence[Sample], y: np.ndarray) -> dict:
        t0 = time.perf_counter()
        torch.manual_seed(self.seed)
        g = torch.Generator().manual_seed(self.seed)
        self.net, loaded = mobilenet_v2(len(self.classes), pretrained=self.pretrained)
        self.net = self.net.to(memory_format=torch.channels_last)
        x = _to_tensor(samples, self.input_size)
        yt = torch.as_tensor(y, dtype=torch.long)
        n = len(yt)
        per_epoch = math.ceil(n / self.batch_size)
        steps = int(min(self.max_steps, max(self.min_steps, self.epochs * per_epoch)))
        weight = torch.as_tensor(balanced_weights(np.asarray(y), len(self.classes)), dtype=torch.float32)
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps, pct_start=0.15)
        self.net.train()
        step = 0
        bar = tqdm(total=steps, desc="training CNN", unit="step", disable=not self.progress, leave=False)
        while step < steps:
            for idx in torch.randperm(n, generator=g).split(self.batch_size):
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                loss = nn.functional.cross_entropy(self._logits(_augment(x[idx], g)), yt[idx], weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                if step >= steps:
                    break
        bar.close()
        self.net.eval()
        return {"train_seconds": time.perf_counter() - t0, "steps": steps,
                "epochs": round(steps / per_epoch, 2), "imagenet_init": loaded}

    @torch.inference_mode()
    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        if not samples:
            return np.zeros((0, len(self.classes)))
        out = []
        for start in range(0, len(samples), 256):
            x = _to_tensor(samples[start:start + 256], self.input_size)
            p = self._logits(x).softmax(-1) + self._logits(x.flip(-1)).softmax(-1)
            out.append(p / 2)
        return torch.cat(out).numpy().astype(np.float64)

    def _save(self, folder: Path) -> None:
        torch.save({"state_dict": self.net.state_dict(), "input_size": self.input_size}, folder / "cnn.pt")

    @classmethod
    def _load(cls, folder: Path, classes: list[str]) -> "CNNClassifier":
        state = torch.load(folder / "cnn.pt", map_location="cpu", weights_only=True)
        model = cls(classes, input_size=state["input_size"], pretrained=False)
        model.net, _ = mobilenet_v2(len(classes), pretrained=False)
        model.net.load_state_dict(state["state_dict"])
        model.net = model.net.to(memory_format=torch.channels_last).eval()
        return model
