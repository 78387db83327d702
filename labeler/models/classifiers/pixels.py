"""Pixels as the CNNs take them: tensors from images, ImageNet normalisation, the weak and strong
augmentations, and the CPU threads and device training runs on.

One home for what the CNN classifier (:mod:`labeler.models.classifiers.cnn`), self-supervised
pretraining (:mod:`labeler.models.pretrain`), consistency training and the queue's encoder features
share. Augmentations are batched ``affine_grid``/``grid_sample`` calls drawing from a CPU generator,
so the same seed gives the same views on any device.

CPU threads: PyTorch's OpenMP threads spin while they wait for each other,
so on a machine whose cores are busy with other work a two-thread training
step was measured 5x slower than a one-thread step (2 cores, load average 7).
Training and prediction use as many threads as cores are idle at the start
(:func:`cpu_threads`), unless ``OMP_NUM_THREADS`` says otherwise.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from labeler.models.classifiers.base import Sample
from labeler.models.classifiers.mobilenet import MobileNetV2

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from ``/proc/stat``."""
    with open("/proc/stat") as f:
        parts = [int(v) for v in f.readline().split()[1:]]
    return parts[3] + parts[4], sum(parts[:8])


def cpu_threads(window: float = 0.05) -> int:
    """Threads worth using now: ``clip(round(cores * idle), 1, cores)``, ``idle`` the share of CPU
    time that was idle during ``window`` seconds (sampled before this process starts working)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        idle0, total0 = _cpu_times()
        time.sleep(window)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return cores  # not Linux: leave PyTorch's choice alone
    idle = (idle1 - idle0) / max(1, total1 - total0)
    return int(min(cores, max(1, round(cores * idle))))


@contextmanager
def threads() -> Iterator[None]:
    """Run the block with :func:`cpu_threads` PyTorch CPU threads (``OMP_NUM_THREADS`` wins)."""
    before = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    torch.set_num_threads(min(before, cpu_threads()))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_device() -> torch.device:
    """Where the CNN trains: a GPU when PyTorch sees one (a 24 px CNN is cheap, but a GPU still
    trains it several times faster than a few CPU cores), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def channels_last(net: MobileNetV2) -> MobileNetV2:
    """NHWC weights: faster convolutions on CPU (oneDNN) and on tensor cores."""
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks it


def to_tensor(samples: Sequence[Sample], size: int) -> torch.Tensor:
    """(N, 3, size, size) floats in [0, 1]."""
    from PIL import Image

    arr = np.stack([np.asarray(s.image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
                    for s in samples])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def logits_input(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] as the network takes them: ImageNet-normalised, channels-last."""
    return ((x - _MEAN.to(x.device)) / _STD.to(x.device)).contiguous(memory_format=torch.channels_last)


def weak_augment(x: torch.Tensor, g: torch.Generator, shift: float = 0.1) -> torch.Tensor:
    """Random flip, shift (+-``shift`` of the width), zoom (0.9-1.1) and brightness/contrast."""
    n = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=g).to(x.device)  # noqa: E731  # CPU stream: same draws on any device
    scale = 0.9 + 0.2 * r(n)
    flip = torch.where(r(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = (r(n, 2) * 2 - 1) * 2 * shift
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (0.8 + 0.4 * r(n)).view(n, 1, 1, 1)
    bright = (r(n) * 0.2 - 0.1).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + bright).clamp_(0, 1)


def strong_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """SimCLR views of a batch in [0, 1]: crop to 55-100 % of the side, rotate +-20 degrees, flip,
    shift, contrast 0.5-1.5, brightness +-0.25, gamma 0.7-1.4 and pixel noise, all batched."""
    n = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=g).to(x.device)  # noqa: E731  # CPU stream: same draws anywhere
    scale = 0.55 + 0.45 * r(n)
    angle = (r(n) * 2 - 1) * math.radians(20)
    flip = torch.where(r(n) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, (r(n) * 2 - 1) * (1 - scale)], 1),
                         torch.stack([sin * flip, cos, (r(n) * 2 - 1) * (1 - scale)], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = x.clamp(1e-4, 1).pow((0.7 + 0.7 * r(n)).view(n, 1, 1, 1))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (0.5 + r(n)).view(n, 1, 1, 1) + mean + (r(n) * 0.5 - 0.25).view(n, 1, 1, 1)
    noise = torch.randn(x.shape, generator=g).to(x.device) * 0.04 * r(n).view(n, 1, 1, 1)
    return (x + noise).clamp_(0, 1)
