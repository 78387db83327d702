"""Zero-shot classification with BLIP-2 image-text matching (ITM).

How a class probability is made from the ITM head
--------------------------------------------------
For image ``i`` and prompt ``j`` the ITM head gives two logits (no match,
match); their difference ``m_ij = logit(P(match))`` is the evidence that the
prompt describes the image. A class ``c`` with prompts ``J_c`` scores

    s_ic = mean_{j in J_c} m_ij

(averaging log-odds over paraphrases, so a class with more prompts gets no
advantage), and the class probabilities are a softmax across classes

    P(c | i) = exp(s_ic / T) / sum_c' exp(s_ic' / T)

with a temperature ``T`` (1 by default; fitted on corrected labels by
:func:`labeler.models.calibration.fit_temperature`).

In a multi-label project (``<Choices choice="multiple">``) the classes are not
exclusive: each gets its own probability ``sigmoid(s_ic)`` and is predicted when
that reaches its threshold ``t_c`` (see :func:`sigmoid`).

Why the vision tower runs once per image
----------------------------------------
``Blip2ForImageTextRetrieval.forward`` pairs image ``i`` with text ``i``, so a
straightforward caller repeats each image once per prompt and the ViT (about
95% of the compute) runs K times. Here :meth:`ZeroShotScorer.embed` runs the
vision tower once per image and :meth:`ZeroShotScorer.match_logits` feeds the
same hidden states to the Q-Former for every prompt; the result equals the
model's own pairwise forward (a unit test checks this).

On a CPU
--------
Unless ``LABELER_DTYPE`` says otherwise, the vision tower's linear layers run in
bf16 (CPUs with AVX-512-bf16 or AMX) or int8 (other x86 CPUs with AVX2), if its
answers on calibration images agree with fp32; see :mod:`labeler.models.cpufast`.

On a GPU
--------
Hidden states to re-score may be device tensors (a
:class:`~labeler.models.devicetier.DeviceTier`) or host memory maps; each batch is
assembled on the device by :func:`labeler.models.devicetier.stage` (pinned memory,
one asynchronous copy for the host rows). :meth:`ZeroShotScorer.compile_vision`
compiles the vision tower's encoder layers with ``torch.compile`` (attention
already runs through PyTorch's SDPA kernels); ``benchmarks/throughput.py``
measures both.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import numpy as np
import torch
from PIL import Image
from torch import nn

from labeler.config import DEFAULT_MODEL
from labeler.errors import NoRoomForModel
from labeler.models import cpufast
from labeler.models.cpufast import Precision
from labeler.models.devicetier import stage

HiddenRow: TypeAlias = "torch.Tensor | np.ndarray"  # one image's (L, D) hidden states, on the device or the host

log = logging.getLogger(__name__)


class LogitMemo(Protocol):
    """Where :meth:`ZeroShotScorer.itm_logits` memoises logits (:class:`labeler.models.cache.LogitCache`)."""

    def get(self, keys: list[str], prompts: list[str]) -> np.ndarray: ...

    def put(self, keys: list[str], prompts: list[str], logits: np.ndarray) -> None: ...

MAX_PAIRS_PER_PASS = 512  # image-prompt pairs in one Q-Former pass (hundreds of prompts: several passes)


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
# On a CPU the model loads in fp32 and LABELER_DTYPE names what the vision tower's linear layers become
# (labeler.models.cpufast); "auto" (or unset) picks the CPU's fast path after a check against fp32.
CPU_PATHS = {"auto": "auto", "float32": "fp32", "fp32": "fp32", "bfloat16": "bf16", "bf16": "bf16", "int8": "int8"}


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """The dtype the model loads in: ``dtype`` if given; bf16 (or fp16 where bf16 is missing) on CUDA; fp32 on
    CPU, where :func:`cpu_path` then applies. KeyError for a name labeler does not know (int8 off a CPU)."""
    name = (dtype or "auto").lower()
    if device.type == "cpu" and name in CPU_PATHS:
        return torch.float32
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return _DTYPES[name]


_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def cpu_path(device: torch.device, dtype: str | None = None) -> str | None:
    """On a CPU, what the vision tower's linear layers become: ``auto`` (the CPU's fast path if it agrees with
    fp32), ``fp32``, ``bf16`` or ``int8``; None off a CPU or for fp16 (the whole model in that dtype)."""
    return CPU_PATHS.get((dtype or "auto").lower()) if device.type == "cpu" else None


# What a first load downloads from the model hub (weights, fp32 safetensors, and the processor's files), for the
# checkpoints known here: asking the hub needs the network, which the check runs without. Others: size unknown.
KNOWN_DOWNLOAD_BYTES = {DEFAULT_MODEL: 4_700_000_000}  # 1.17 B parameters in fp32
DOWNLOAD_MARGIN_BYTES = 1_000_000_000  # left free on the disk after a download
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


@dataclass
class Download:
    """A hub download that loading ``model`` would start: where it goes and how big it is (None: unknown)."""

    model: str
    cache_dir: Path
    size: int | None

    def line(self) -> str:
        size = f"about {gigabytes(self.size)}" if self.size else "size unknown"
        return (f"first use of {self.model}: downloading it from the model hub ({size}) into {self.cache_dir} "
                "(HF_HUB_CACHE or HF_HOME moves it); later loads read it from there")


def pending_download(model: str, local_files_only: bool = False, cache_dir: Path | None = None) -> Download | None:
    """What loading ``model`` would download, or None: a local folder, a model already in the hub cache
    (its config and weights), or downloads off (``local_files_only``, ``HF_HUB_OFFLINE``) say nothing."""
    from huggingface_hub import constants, try_to_load_from_cache

    if local_files_only or constants.HF_HUB_OFFLINE or Path(model).expanduser().exists():
        return None
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        return None  # not a hub id: from_pretrained says what is wrong
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    cached = lambda name: isinstance(try_to_load_from_cache(model, name, cache_dir=cache), str)  # noqa: E731
    if cached("config.json") and any(cached(name) for name in _WEIGHT_FILES):
        return None
    return Download(model, cache, KNOWN_DOWNLOAD_BYTES.get(model))


def free_bytes(path: Path) -> int:
    """Free bytes on the disk of ``path`` (or of its nearest existing parent: the cache may not exist yet)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_room(download: Download, free: int) -> None:
    """Refuse (:class:`NoRoomForModel`) a download of known size that ``free`` bytes cannot hold with
    ``DOWNLOAD_MARGIN_BYTES`` to spare; a download of unknown size goes ahead."""
    if download.size is None or free >= download.size + DOWNLOAD_MARGIN_BYTES:
        return
    raise NoRoomForModel(
        f"not downloading {download.model}: it needs about {gigabytes(download.size)} (and "
        f"{gigabytes(DOWNLOAD_MARGIN_BYTES)} to spare) in the model hub cache {download.cache_dir}, which has "
        f"{gigabytes(free)} free. Free space there, point HF_HUB_CACHE (or HF_HOME) at a larger disk, or set "
        "LABELER_ZEROSHOT_MODEL to a folder that holds the model")


class _OncePerImage(nn.Module):
    """``linear`` applied to one row in ``k``: the rows repeat each image ``k`` times."""

    def __init__(self, linear: nn.Linear, k: int) -> None:
        super().__init__()
        self.linear, self.k = linear, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[:: self.k]).repeat_interleave(self.k, dim=0)


@contextmanager
def _cross_attention_once_per_image(qformer: Any, k: int) -> Iterator[None]:
    """Project each image's keys and values once, not once per prompt.

    In ITM the Q-Former cross-attends to the image for every prompt; the
    key/value projections of the 257 image tokens are about half of the
    head's compute, and identical for the K prompts of an image. Not
    thread-safe (it swaps modules): callers hold the model lock.
    """
    swapped = []
    if k > 1:
        for layer in qformer.encoder.layer:
            att = getattr(getattr(layer, "crossattention", None), "attention", None)
            if att is not None:
                swapped.append((att, att.key, att.value))
                att.key, att.value = _OncePerImage(att.key, k), _OncePerImage(att.value, k)
    try:
        yield
    finally:
        for att, key, value in swapped:
            att.key, att.value = key, value


@dataclass
class ImageEmbeddings:
    """What the vision tower produced for a batch of images.

    ``hidden`` (N, L, D) is what the Q-Former cross-attends to (needed to
    re-score against new prompts); ``pooled`` (N, D) is a compact image
    feature for trained classifiers.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor

    def cache_rows(self) -> np.ndarray:
        """(N, L + 1, D) fp16 on the host: hidden states with the pooled feature as last row.

        Concatenated and cast on the device, so half as many bytes cross to the host.
        """
        both = torch.cat([self.hidden, self.pooled[:, None, :]], dim=1)
        return both.to(torch.float16).cpu().numpy()

    def host_rows(self) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """:meth:`cache_rows` without waiting: (N, L + 1, D) fp16 host tensor and the event after which
        it is filled (None when it already is). On CUDA the copy goes to pinned memory asynchronously."""
        both = torch.cat([self.hidden, self.pooled[:, None, :]], dim=1).to(torch.float16)
        if both.device.type != "cuda":
            return both.cpu(), None
        host = torch.empty(both.shape, dtype=both.dtype, pin_memory=True)
        host.copy_(both, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event


class ZeroShotScorer:
    """Scores images against text prompts with a BLIP-2 ITM checkpoint.

    ``model`` is a hub id (default ``Salesforce/blip2-itm-vit-g``) or a local
    folder written by ``save_pretrained``.
    """

    def __init__(self, model, processor, model_id: str, batch_size: int = 32) -> None:
        """Wrap a loaded ``Blip2ForImageTextRetrieval`` and its processor (see :meth:`load`)."""
        self.model = model.eval()
        self.processor = processor
        self.model_id = model_id
        self.device = next(model.parameters()).device
        self.dtype = next(model.vision_model.parameters()).dtype
        self.batch_size = batch_size
        ip = processor.image_processor
        self._size = (int(ip.size["width"]), int(ip.size["height"]))
        self._mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self._rescale = float(ip.rescale_factor)
        self._resample = Image.Resampling(int(ip.resample))
        digest = hashlib.sha1(model.config.to_json_string().encode())
        digest.update(str(model_id).encode())
        self._base_key = f"blip2itm-{digest.hexdigest()[:12]}"
        self.precision = Precision(_SHORT.get(self.dtype, str(self.dtype)), "as given")

    @property
    def key(self) -> str:
        """The cache key: same architecture, source and vision precision give the same key.

        bf16 and int8 hidden states differ slightly from fp32 ones: cached rows and memoised logits of one
        precision are not served as another's (fp32 keeps the key it always had)."""
        return self._base_key if self.precision.path == "fp32" else f"{self._base_key}-{self.precision.path}"

    def set_precision(self, dtype: str | None = None) -> Precision:
        """How the vision tower computes (``LABELER_DTYPE``, :mod:`labeler.models.cpufast`): on a CPU, unset or
        ``auto`` picks the CPU's fast path if it agrees with fp32; elsewhere this records the loaded dtype."""
        path = cpu_path(self.device, dtype)
        if path == "auto":
            self.precision = cpufast.automatic(self)
        elif path is not None:
            self.precision = cpufast.apply(self, path)
        elif dtype and dtype.lower() != "auto":
            self.precision = Precision(self.precision.path, "LABELER_DTYPE")
        else:
            self.precision = Precision(self.precision.path, "automatic")
        return self.precision

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None,
             batch_size: int = 32, local_files_only: bool = False) -> "ZeroShotScorer":
        """Load from a hub id (default ``Salesforce/blip2-itm-vit-g``) or a local folder.

        A hub model that is not in the hub cache yet is downloaded: its size (when known) and the cache
        folder are logged first, and :class:`~labeler.errors.NoRoomForModel` refuses it when that disk
        cannot hold it."""
        from transformers import AutoProcessor, Blip2ForImageTextRetrieval

        download = pending_download(model, local_files_only)
        if download is not None:  # first use: say how big and where, refuse what the disk cannot hold
            check_room(download, free_bytes(download.cache_dir))
            log.warning("%s", download.line())
        dev = pick_device(device)
        processor = AutoProcessor.from_pretrained(model, local_files_only=local_files_only)
        net: Any = Blip2ForImageTextRetrieval.from_pretrained(
            model, dtype=pick_dtype(dev, dtype), local_files_only=local_files_only)
        net = net.to(dev)
        scorer = cls(net, processor, model, batch_size)
        scorer.set_precision(dtype)
        log.info("zero-shot model %s on %s, %s (key %s)", model, scorer.device, scorer.precision.line(), scorer.key)
        return scorer

    # -- images -------------------------------------------------------------
    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resized RGB images as one uint8 tensor (N, 3, H, W), as the checkpoint's processor resizes.

        Done by hand because the transformers PIL processor converts image by
        image through float numpy arrays, which dominates small models' run
        time; rescaling and normalising happen in :meth:`normalize`, on the
        model's device.
        """
        arrays = [np.asarray(im.convert("RGB").resize(self._size, self._resample)) for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device, non_blocking=True).float()
        x = (x * self._rescale - self._mean.to(self.device)) / self._std.to(self.device)
        return x.to(self.dtype)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """What the checkpoint's image processor would give (``pixel_values``)."""
        return self.normalize(self.pixels(images))

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image]) -> ImageEmbeddings:
        """Run the vision tower once per image (in batches)."""
        hidden, pooled = [], []
        for start in range(0, len(images), self.batch_size):
            out = self.model.vision_model(pixel_values=self.preprocess(images[start:start + self.batch_size]))
            hidden.append(out.last_hidden_state)
            pooled.append(out.pooler_output)
        if not hidden:
            raise ValueError("no images to embed")
        return ImageEmbeddings(torch.cat(hidden), torch.cat(pooled))

    def compile_vision(self, **options) -> None:
        """``torch.compile`` each encoder layer of the vision tower (same code, one compilation).

        Fuses the layer norms, GELU and residual adds around the matrix
        products; ``options`` go to ``torch.compile``. Worth it on a GPU
        (measured in ``benchmarks/throughput.py``), not on a CPU.
        """
        for layer in self.model.vision_model.encoder.layers:
            layer.compile(**options)

    # -- text ---------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        # An over-long prompt (a label config is untrusted) is cut to the text encoder's positions.
        limit = min(self.processor.tokenizer.model_max_length,
                    self.model.config.qformer_config.max_position_embeddings)
        tok = self.processor.tokenizer(list(prompts), padding=True, truncation=True, max_length=limit,
                                       return_tensors="pt")
        return {"input_ids": tok["input_ids"].to(self.device),
                "attention_mask": tok["attention_mask"].to(self.device)}

    @torch.inference_mode()
    def match_logits(self, hidden: torch.Tensor | Sequence[HiddenRow], prompts: Sequence[str]) -> np.ndarray:
        """ITM log-odds ``logit(P(match))`` of every image against every prompt: (N, K).

        The same computation as the ITM branch of
        ``Blip2ForImageTextRetrieval.forward``, with each image's vision
        hidden states (and their cross-attention keys and values) shared by
        its K prompts. ``hidden`` is one (N, L, D) tensor or N rows (device
        tensors, host arrays, memory maps), staged batch by batch.
        """
        tok = self.tokenize(prompts)
        k = len(prompts)
        out = []
        for start in range(0, len(hidden), self.batch_size):
            h = stage(hidden[start:start + self.batch_size], self.device, self.dtype)
            step = max(1, MAX_PAIRS_PER_PASS // h.shape[0])  # many prompts: a few at a time, memory stays bounded
            out.append(torch.cat([self._itm(h, {name: t[j:j + step] for name, t in tok.items()})
                                  for j in range(0, k, step)], dim=1))
        if not out:
            return np.zeros((0, k), dtype=np.float32)
        return torch.cat(out).cpu().numpy()  # one copy to the host, one wait

    def _itm(self, h: torch.Tensor, tok: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n, k) ITM log-odds of the n images whose hidden states are ``h`` against k tokenized prompts."""
        model = self.model
        n, k = h.shape[0], tok["input_ids"].shape[0]
        image_embeds = h.repeat_interleave(k, dim=0)
        input_ids = tok["input_ids"].repeat(n, 1)
        attention_mask = tok["attention_mask"].repeat(n, 1)
        query_tokens = model.query_tokens.expand(n * k, -1, -1)
        if model.config.image_token_index is not None:
            input_ids = input_ids[:, model.config.num_query_tokens:]
            attention_mask = attention_mask[:, model.config.num_query_tokens:]
        query_mask = torch.ones(query_tokens.shape[:-1], dtype=torch.long, device=self.device)
        attention_mask = torch.cat([query_mask, attention_mask], dim=1)
        embeds = model.embeddings(input_ids=input_ids, query_embeds=query_tokens)
        with _cross_attention_once_per_image(model.qformer, k):
            text_out = model.qformer(
                query_embeds=embeds,
                query_length=query_tokens.shape[1],
                attention_mask=attention_mask,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device),
            ).last_hidden_state
        text_out = text_out.to(model.itm_head.weight.dtype)
        logits = model.itm_head(text_out[:, : query_tokens.shape[1], :]).mean(dim=1)
        return (logits[:, 1] - logits[:, 0]).float().view(n, k)

    def class_scores(self, hidden: torch.Tensor | Sequence[HiddenRow],
                     prompts: Mapping[str, Sequence[str]], keys: Sequence[str] | None = None,
                     memo: LogitMemo | None = None) -> np.ndarray:
        """Per-class ITM evidence ``s_ic`` (N, C), classes in ``prompts`` order.

        With ``memo`` and the images' content ``keys``, logits of (image,
        prompt) pairs seen before are read from the memo; the Q-Former runs
        only for the images and prompts that are new, and only their
        ``hidden`` rows are read (they may be lazy memory maps).
        """
        flat = [p for ps in prompts.values() for p in ps]
        if memo is None or keys is None:
            return class_evidence(self.match_logits(hidden, flat), prompts)
        logits = memo.get(list(keys), flat)
        rows = np.flatnonzero(np.isnan(logits).any(axis=1))
        if len(rows):
            cols = np.flatnonzero(np.isnan(logits[rows]).any(axis=0))
            fresh = self.match_logits([hidden[i] for i in rows], [flat[j] for j in cols])
            logits[np.ix_(rows, cols)] = fresh
            memo.put([keys[i] for i in rows], [flat[j] for j in cols], fresh)
        return class_evidence(logits, prompts)


def class_evidence(logits: np.ndarray, prompts: Mapping[str, Sequence[str]]) -> np.ndarray:
    """``s_ic = mean_{p in prompts(c)} logit_ip``: (N, K) prompt logits to (N, C) class evidence."""
    cols, start = [], 0
    for ps in prompts.values():
        cols.append(logits[:, start:start + len(ps)].mean(axis=1))
        start += len(ps)
    return np.stack(cols, axis=1)


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``exp(s / T) / sum exp(s / T)``, numerically stable."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(scores: np.ndarray) -> np.ndarray:
    """Element-wise ``1 / (1 + exp(-s))``, numerically stable: multi-label class probabilities.

    For multi-label projects each class is decided on its own: ``s_ic`` is the
    (prompt-averaged) ITM log-odds that class ``c``'s prompts describe image
    ``i``, so ``sigmoid(s_ic)`` is that match probability, compared with the
    class's threshold ``t_c`` (0.5 until training calibrates it).
    """
    s = np.asarray(scores, dtype=np.float64)
    e = np.exp(-np.abs(s))
    return np.where(s >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
