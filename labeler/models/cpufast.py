"""The vision tower on a CPU: fp32, bf16 matrix products or int8 dynamic quantisation, checked against fp32.

Only the vision tower's ``nn.Linear`` layers change
----------------------------------------------------
The vision tower is about 95% of the compute and its linear layers about 85-90% of
that (one ViT-g encoder layer profiled on this CPU). Only their matrix products
change format: layer norms, GELU, the attention softmax, the residual stream and
the Q-Former/ITM head stay fp32, so rounding does not pile up in the residual
stream over 39 layers, and the hidden states handed on are fp32.

- ``bf16``: weights stored in bf16, inputs cast to bf16, outputs back to fp32.
  Fast only where the CPU has bf16 instructions (AVX-512-bf16 or AMX); elsewhere
  PyTorch emulates them (10x slower than fp32 here), so it is never chosen there.
- ``int8``: ``torch.ao`` dynamic quantisation (weights int8 per output channel,
  activations quantised per call). Fast on x86 CPUs with AVX2 or AVX-512.

Chosen automatically, with a check
----------------------------------
:func:`choose` scores fixed calibration images against fixed prompts in fp32 and
with the fast path; the fast path stays only if the winner of every two-class
choice (every image, every pair of prompts) agrees with fp32 at least 99% of the
time, else the vision tower goes back to fp32 with a logged warning. The check
is numeric (does the rounding change answers?), not a quality measure.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

log = logging.getLogger(__name__)

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo flags of CPUs with bf16 matrix instructions
INT8_CAPABILITIES = frozenset({"AVX2", "AVX512"})    # torch.backends.cpu.get_cpu_capability() with fast int8 kernels
MIN_AGREEMENT = 0.99
MIN_FAST_PARAMS = 50_000_000  # smaller vision towers stay fp32: already fast, and quantising costs more than it saves
CALIBRATION_IMAGES = 8
CALIBRATION_PROMPTS = ("a photo of an eye", "a closed eye", "an open eye", "a photo of a cat", "a photo of a dog",
                       "a picture of a face", "a person looking", "an image")  # 28 pairs: 224 two-class choices


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (or the text given); empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no flags, so no bf16 (int8 still goes by torch's capability)
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def fast_cpu_path(flags: Iterable[str] | None = None, capability: str | None = None) -> str:
    """The fast vision path this CPU has: ``bf16`` with bf16 instructions, else ``int8`` on x86 with AVX2
    or AVX-512, else ``fp32``. ``flags`` (``/proc/cpuinfo``) and ``capability`` (torch's) default to this CPU's."""
    found = cpu_flags() if flags is None else frozenset(flags)
    level = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if BF16_FLAGS & found:
        return "bf16"
    if level in INT8_CAPABILITIES:
        return "int8"
    return "fp32"


class Bf16Linear(nn.Module):
    """``nn.Linear`` with bf16 weights: fp32 in, a bf16 matrix product (fp32 accumulation), fp32 out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def int8_linear(linear: nn.Linear) -> nn.Module:
    """``linear`` dynamically quantised: int8 weights per output channel (as accurate as per tensor, as fast)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():  # torch.ao quantisation is deprecated in favour of torchao (not a dependency)
        warnings.simplefilter("ignore")
        linear.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
        try:
            return DynamicLinear.from_float(linear)
        finally:
            del linear.qconfig


FAST_LINEARS: dict[str, Callable[[nn.Linear], nn.Module]] = {"bf16": Bf16Linear, "int8": int8_linear}
Swapped = list[tuple[nn.Module, str, nn.Linear]]


def swap_linears(module: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> Swapped:
    """Replace every ``nn.Linear`` under ``module`` by ``make(linear)``; returns what :func:`restore` puts back
    (the fp32 layers stay referenced there until then: one extra copy of the weights, in the new format)."""
    found: Swapped = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
                      if type(child) is nn.Linear]  # exactly nn.Linear: never a layer swapped before
    for parent, name, child in found:
        setattr(parent, name, make(child))
    return found


def restore(swapped: Swapped) -> None:
    for parent, name, child in swapped:
        setattr(parent, name, child)


@dataclass(frozen=True)
class Precision:
    """How the vision tower computes, how that was decided, and how well it agreed with fp32."""

    path: str                     # fp32, bf16, int8 (CPU linear layers); on a GPU the whole model's dtype
    how: str                      # "automatic", or "LABELER_DTYPE" (an explicit choice: not checked)
    agreement: float | None = None  # share of two-class choices whose winner agrees with fp32 (calibration)
    decisions: int = 0            # how many two-class choices were compared
    fallback_from: str | None = None  # the fast path that disagreed too often
    reason: str = ""              # why no fast path was tried

    def line(self) -> str:
        text = f"vision tower {self.path} ({self.how})"
        if self.agreement is not None:
            text += f", top-1 agreement with fp32 {100 * self.agreement:.1f}% of {self.decisions} two-class choices"
        if self.fallback_from:
            text += f": {self.fallback_from} was below {100 * MIN_AGREEMENT:.0f}%, so fp32"
        return text + (f": {self.reason}" if self.reason else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scorer(Protocol):
    """What :func:`choose` needs of :class:`labeler.models.zeroshot.ZeroShotScorer`."""

    model: Any

    def embed(self, images: Sequence[Image.Image]) -> Any: ...

    def match_logits(self, hidden: Any, prompts: Sequence[str]) -> np.ndarray: ...


def calibration_images(n: int = CALIBRATION_IMAGES, seed: int = 0) -> list[Image.Image]:
    """``n`` fixed 96x96 RGB images: smooth random colour fields, from coarse blobs to fine texture."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cells = 2 + 3 * (i % 6)
        small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        out.append(Image.fromarray(small, "RGB").resize((96, 96), Image.Resampling.BICUBIC))
    return out


def pairwise_agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, int]:
    """(share, count) of two-class choices, every image and every pair of prompts, that both (N, K) logit arrays
    decide alike: the top-1 agreement of every two-class project the prompts could make."""
    i, j = np.triu_indices(reference.shape[1], 1)
    same = (reference[:, i] > reference[:, j]) == (other[:, i] > other[:, j])
    return (float(same.mean()) if same.size else 1.0), int(same.size)


def vision_params(scorer: Scorer) -> int:
    return sum(p.numel() for p in scorer.model.vision_model.parameters())


def choose(scorer: Scorer, path: str, images: Sequence[Image.Image] | None = None,
           prompts: Sequence[str] = CALIBRATION_PROMPTS, min_agreement: float = MIN_AGREEMENT,
           make: Callable[[nn.Linear], nn.Module] | None = None) -> Precision:
    """Switch ``scorer``'s vision tower to ``path`` (or to ``make``'s layers) if it agrees with fp32 on the
    calibration images at least ``min_agreement`` of the time; otherwise put fp32 back and warn."""
    images = calibration_images() if images is None else images
    reference = scorer.match_logits(scorer.embed(images).hidden, prompts)
    swapped = swap_linears(scorer.model.vision_model, make or FAST_LINEARS[path])
    fast = scorer.match_logits(scorer.embed(images).hidden, prompts)
    agreement, decisions = pairwise_agreement(reference, fast)
    if agreement >= min_agreement:
        log.info("zero-shot vision tower in %s: top-1 agreement with fp32 %.1f%% (%d choices)",
                 path, 100 * agreement, decisions)
        return Precision(path, "automatic", agreement, decisions)
    restore(swapped)
    log.warning("zero-shot vision tower: %s agreed with fp32 on only %.1f%% of %d two-class choices (< %.0f%%): "
                "running fp32 (slower). LABELER_DTYPE=%s forces it anyway",
                path, 100 * agreement, decisions, 100 * min_agreement, path)
    return Precision("fp32", "automatic", agreement, decisions, fallback_from=path)


def apply(scorer: Scorer, path: str) -> Precision:
    """Switch to ``path`` unchecked: an explicit ``LABELER_DTYPE``."""
    if path != "fp32":
        swap_linears(scorer.model.vision_model, FAST_LINEARS[path])
    return Precision(path, "LABELER_DTYPE")


def automatic(scorer: Scorer, flags: Iterable[str] | None = None, capability: str | None = None,
              min_params: int = MIN_FAST_PARAMS) -> Precision:
    """The fast path this CPU has, if the vision tower is big enough to gain and its answers agree with fp32."""
    path = fast_cpu_path(flags, capability)
    if path == "fp32":
        return Precision("fp32", "automatic", reason="this CPU has neither bf16 instructions nor AVX2")
    if vision_params(scorer) < min_params:
        return Precision("fp32", "automatic", reason="a small vision tower: fast already")
    return choose(scorer, path)
