"""Self-supervised pretraining on a project's own images (SimCLR), once per project.

ImageNet features know little of 24x24 grayscale crops. SimCLR (Chen et al.,
2020) continues training the ImageNet MobileNetV2 on the project's unlabelled
images: two strongly augmented views of each image are pulled together and
pushed away from the other images of the batch by the NT-Xent loss

    l(i, j) = -log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) ),   s = cosine similarity of projections,

so the encoder learns what stays the same under crops, flips and lighting
changes of *these* images. The projection head is thrown away; the encoder's
weights seed the CNN classifier (:class:`~labeler.models.classifiers.cnn.CNNClassifier`
``encoder=``) and give the queue's diversity features.

It needs no labels and is the same for every retraining, so it runs once per
project (minutes on a CPU for a few thousand small images), not per fit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from labeler.models.classifiers.base import Sample
from labeler.models.classifiers.mobilenet import MobileNetV2, mobilenet_v2
from labeler.models.classifiers.pixels import channels_last, logits_input, strong_augment, threads, to_tensor, train_device

ENCODER_FILE = "encoder.pt"


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two (N, D) projections of the same N images (row i of each is a pair)."""
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))  # an image is not its own negative
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return nn.functional.cross_entropy(sim, target)


class _SimCLR(nn.Module):
    def __init__(self, net: MobileNetV2, dim: int = 128) -> None:
        super().__init__()
        self.features = net.features
        self.head = nn.Sequential(nn.Linear(1280, 512), nn.ReLU(inplace=True), nn.Linear(512, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.head(h)


def pretrain_encoder(samples: Sequence[Sample], steps: int, input_size: int = 48, batch: int = 128,
                     lr: float = 1e-3, temperature: float = 0.2, seed: int = 0,
                     progress: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """SimCLR on ``samples`` from the ImageNet MobileNetV2; returns (the encoder's ``features`` state
    dict, what it measured). ``steps`` optimiser steps of ``batch`` images (two views each)."""
    with threads():
        return _pretrain(samples, input_size, steps, batch, lr, temperature, seed, progress)


def _pretrain(samples: Sequence[Sample], input_size: int, steps: int, batch: int, lr: float,
              temperature: float, seed: int, progress: bool) -> tuple[dict[str, torch.Tensor], dict]:
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net, imagenet = mobilenet_v2(2)
    device = train_device()
    model = channels_last(_SimCLR(net)).to(device)  # type: ignore[arg-type]
    x = to_tensor(samples, input_size).to(device)
    batch = max(2, min(batch, len(x)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="self-supervised pretraining", unit="step", disable=not progress):
        idx = torch.randint(len(x), (batch,), generator=g)
        views = [logits_input(strong_augment(x[idx], g)) for _ in range(2)]
        loss = nt_xent(model(views[0]), model(views[1]), temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    state = {k: v.detach().cpu() for k, v in model.features.state_dict().items()}
    tail = losses[-max(1, steps // 10):]
    return state, {"pretrain_seconds": round(time.perf_counter() - t0, 1), "steps": steps, "batch": batch,
                   "images": len(x), "final_loss": round(float(np.mean(tail)), 4), "imagenet_init": imagenet}


def save_encoder(state: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """Write the encoder's state dict (tensors only, loadable with ``weights_only=True``)."""
    path = Path(folder) / ENCODER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def load_encoder(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(path), map_location="cpu", weights_only=True)
