"""The vision tower on a CPU (labeler.models.cpufast): bf16 only where the CPU has it, int8, the fp32 check."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from labeler.models import cpufast
from labeler.models.zeroshot import ZeroShotScorer, softmax

from .conftest import png_bytes

PROMPTS = {"open": ["open eye"], "closed": ["closed eye"]}
AMD_AVX2 = "processor\t: 0\nflags\t\t: fpu vme sse sse2 avx avx2 fma\n"  # as /proc/cpuinfo writes it


def load(tiny_model, dtype: str | None = None) -> ZeroShotScorer:
    return ZeroShotScorer.load(str(tiny_model), dtype=dtype, batch_size=8, local_files_only=True)


def eye_images(n: int = 24) -> list[Image.Image]:
    return [Image.open(io.BytesIO(png_bytes(i, size=24 + i % 9))) for i in range(n)]


def linears(scorer: ZeroShotScorer) -> set[type]:
    return {type(m) for m in scorer.model.vision_model.modules() if "Linear" in type(m).__name__}


class Scrambled(nn.Module):
    """A deliberately wrong fast path: the layer's weights with their output rows shuffled."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        order = torch.randperm(linear.out_features, generator=torch.Generator().manual_seed(0))
        self.inner = nn.Linear(linear.in_features, linear.out_features)
        with torch.no_grad():
            self.inner.weight.copy_(linear.weight[order])
            self.inner.bias.copy_(linear.bias[order])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_bf16_only_on_a_cpu_with_bf16_instructions():
    assert cpufast.cpu_flags(AMD_AVX2) == {"fpu", "vme", "sse", "sse2", "avx", "avx2", "fma"}
    assert cpufast.fast_cpu_path(cpufast.cpu_flags(AMD_AVX2), "AVX2") == "int8"  # never bf16 without the hardware
    assert cpufast.fast_cpu_path({"sse2"}, "DEFAULT") == "fp32"  # neither bf16 nor AVX2: stays fp32
    assert cpufast.fast_cpu_path({"avx2", "avx512f", "avx512_bf16"}, "AVX512") == "bf16"
    assert cpufast.fast_cpu_path({"avx2", "amx_bf16", "amx_tile"}, "AVX512") == "bf16"
    assert cpufast.fast_cpu_path() in {"fp32", "int8", "bf16"}  # this machine's own flags and capability


def test_low_agreement_falls_back_to_fp32_with_a_warning(tiny_model, caplog):
    scorer = load(tiny_model, "fp32")
    key, before = scorer.key, scorer.match_logits(scorer.embed(eye_images()).hidden, ["open eye", "closed eye"])
    with caplog.at_level(logging.WARNING, logger="labeler.models.cpufast"):
        precision = cpufast.choose(scorer, "int8", make=Scrambled)
    assert precision.path == "fp32" and precision.fallback_from == "int8"
    assert precision.agreement is not None and precision.agreement < cpufast.MIN_AGREEMENT
    assert precision.decisions == 8 * 28  # calibration images x pairs of calibration prompts
    assert "agreed with fp32 on only" in caplog.text and "int8 was below 99%, so fp32" in precision.line()
    assert linears(scorer) == {nn.Linear}  # the fp32 layers are back, the very same ones
    after = scorer.match_logits(scorer.embed(eye_images()).hidden, ["open eye", "closed eye"])
    assert np.array_equal(before, after) and scorer.key == key


def test_an_agreeing_fast_path_stays_and_gets_its_own_cache_key(tiny_model):
    scorer = load(tiny_model, "fp32")
    fp32_key = scorer.key
    scorer.precision = cpufast.choose(scorer, "bf16", min_agreement=0.5)  # the tiny model is chaotic: see below
    assert scorer.precision.path == "bf16" and scorer.precision.how == "automatic"
    assert linears(scorer) == {cpufast.Bf16Linear}
    assert scorer.key == fp32_key + "-bf16"  # cached hidden states of bf16 are not served as fp32 ones


def test_bf16_probabilities_close_to_fp32(tiny_model):
    # The tiny model's weights are drawn wide (init range 0.5) so that scores spread, which makes it chaotic:
    # rounding moves its logits far more than a well-conditioned model's (measured: mean |dp| 0.035, top-1 97%;
    # int8 0.098 and 89%). The full-size check is benchmarks/throughput.py.
    fp32, bf16 = load(tiny_model, "fp32"), load(tiny_model, "bf16")
    assert bf16.precision.path == "bf16" and bf16.precision.how == "LABELER_DTYPE"  # explicit: not checked
    assert linears(bf16) == {cpufast.Bf16Linear} and bf16.key.endswith("-bf16")
    images = eye_images(64)
    p32 = softmax(fp32.class_scores(fp32.embed(images).hidden, PROMPTS))
    p16 = softmax(bf16.class_scores(bf16.embed(images).hidden, PROMPTS))
    assert bf16.embed(images[:2]).hidden.dtype == torch.float32  # the Q-Former/ITM head stays fp32
    assert np.abs(p16 - p32).mean() < 0.05
    assert (p16.argmax(1) == p32.argmax(1)).mean() >= 0.95


def test_explicit_int8_and_fp32_and_the_automatic_choice(tiny_model):
    int8 = load(tiny_model, "int8")
    assert int8.precision.path == "int8" and int8.key.endswith("-int8")
    assert nn.Linear not in linears(int8)
    assert "torch.ao.nn.quantized.dynamic.modules.linear" in {t.__module__ for t in linears(int8)}
    assert np.isfinite(int8.match_logits(int8.embed(eye_images(4)).hidden, ["open eye"])).all()
    fp32 = load(tiny_model, "float32")
    assert fp32.precision.path == "fp32" and fp32.precision.how == "LABELER_DTYPE" and linears(fp32) == {nn.Linear}
    auto = load(tiny_model)  # unset: automatic, and a tiny vision tower is not worth it
    assert auto.precision.path == "fp32" and "small vision tower" in auto.precision.reason
    assert auto.key == fp32.key and not auto.key.endswith(("-int8", "-bf16"))
    nothing = cpufast.automatic(auto, flags={"sse2"}, capability="DEFAULT", min_params=0)
    assert nothing.path == "fp32" and "neither bf16 instructions nor AVX2" in nothing.reason
    checked = cpufast.automatic(auto, flags={"amx_bf16"}, capability="AVX512", min_params=0)
    assert checked.agreement is not None and checked.decisions == 224  # bf16 tried, and checked against fp32


def test_pairwise_agreement_is_top1_of_every_two_class_choice():
    ref = np.array([[3.0, 2.0, 1.0]])
    assert cpufast.pairwise_agreement(ref, ref) == (1.0, 3)
    assert cpufast.pairwise_agreement(ref, np.array([[2.0, 3.0, 1.0]])) == (pytest.approx(2 / 3), 3)


def test_the_backend_reports_the_path_and_agreement(tiny_model, tmp_path):
    from labeler.config import Settings
    from ml_backend import create_app

    app = create_app(Settings(model_dir=tmp_path, zeroshot_model=str(tiny_model), local_files_only=True, device="cpu",
                              dtype="int8"), load_in_background=False)
    precision = app.test_client().get("/metrics").json["zeroshot_precision"]
    assert precision["path"] == "int8" and precision["how"] == "LABELER_DTYPE" and precision["agreement"] is None
