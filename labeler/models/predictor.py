"""From Label Studio tasks to predictions: fetch images, embed (cached), classify, rank.

The serving model of a project is its promoted registry version if it has one,
else the zero-shot BLIP-2 scorer; either way each prediction carries that
model's version and a confidence score (``1 - uncertainty``: ascending order =
least certain first).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from labeler.config import Settings
from labeler.connection import Connection
from labeler.ids import PROJECT_RE
from labeler.labelconfig import LabelConfig
from labeler.media.fetching import Fetcher, fetch_policy
from labeler.media.images import ImageError, decode
from labeler.media.imagestore import ImageStore
from labeler.models.cache import EmbeddingCache, content_key
from labeler.models.classifiers import Classifier, Sample, load_classifier
from labeler.models.classifiers.base import stack_rows
from labeler.models.devicetier import DeviceTier
from labeler.models.openregistry import registry_for
from labeler.models.uncertainty import confidence, multilabel_uncertainty
from labeler.models.zeroshot import ZeroShotScorer, sigmoid, softmax

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """Per-task outcome of :meth:`Predictor.score`: probabilities or the reason there are none."""

    proba: np.ndarray | None = None
    error: str | None = None
    sample: Sample | None = None
    key: str | None = None
    hidden: Any = None  # vision hidden states for ITM scoring: a device tensor, a host array or a memory map
    thresholds: np.ndarray | None = None  # multi-label: per-class decision thresholds of ``proba``

    # For items known to be decoded (callers filter on ``sample is not None`` first).
    @property
    def decoded(self) -> Sample:
        if self.sample is None:
            raise ValueError(self.error or "no decoded image")
        return self.sample

    @property
    def digest(self) -> str:
        """The image's content key (set with the sample)."""
        if self.key is None:
            raise ValueError(self.error or "no decoded image")
        return self.key


def project_key(project: object) -> str:
    """The registry key of a project: Label Studio sends ``"<id>.<created_at>"``, the key is the id.

    Raises ValueError for anything else: project ids become folder names.
    """
    key = str(project).split(".")[0] if isinstance(project, (str, int)) and not isinstance(project, bool) else ""
    if not PROJECT_RE.fullmatch(key):
        raise ValueError(f"invalid project id {str(project)[:40]!r}: expected digits (Label Studio's project id)")
    return key


class Predictor:
    """Holds the models of one process; thread-safe for concurrent requests."""

    def __init__(self, settings: Settings, local_files: bool = True) -> None:
        self.settings = settings
        self.policy = fetch_policy(settings, local_files=local_files)
        self.images = ImageStore(settings.model_dir / "cache" / "images.sqlite",
                                 int(settings.image_cache_mb * 2**20), settings.image_ttl_s)
        self.registry = registry_for(settings)
        self._scorer: ZeroShotScorer | None = None
        self._scorer_error: str | None = None
        self._scorer_ready = threading.Event()
        self._models: dict[tuple[str, str], Classifier] = {}
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # torch modules are not re-entrant under inference
        if settings.zeroshot_model is None:
            self._scorer_ready.set()

    # -- models -----------------------------------------------------------------
    def load_scorer(self) -> None:
        """Load the zero-shot model (call at start-up, in the background)."""
        if self.settings.zeroshot_model is None or self._scorer_ready.is_set():
            return
        try:
            self._scorer = ZeroShotScorer.load(
                self.settings.zeroshot_model, device=self.settings.device, dtype=self.settings.dtype,
                batch_size=self.settings.batch_size, local_files_only=self.settings.local_files_only)
            self.cache = EmbeddingCache(self.settings.model_dir / "cache", self._scorer.key,
                                        int(self.settings.cache_max_gb * 2**30))
            if self._scorer.device.type == "cuda" and self.settings.gpu_tier_gb > 0:
                # hidden states of recently used images stay on the GPU: new prompts re-score without disk reads
                self.cache.attach_tier(DeviceTier(self._scorer.device, int(self.settings.gpu_tier_gb * 2**30)))
        except Exception as exc:  # noqa: BLE001 - reported on /health, never fatal
            self._scorer_error = f"cannot load zero-shot model {self.settings.zeroshot_model!r}: {exc}"
            log.error(self._scorer_error)
        finally:
            self._scorer_ready.set()

    @property
    def ready(self) -> bool:
        return self._scorer_ready.is_set()

    @property
    def scorer(self) -> ZeroShotScorer | None:
        self._scorer_ready.wait()
        return self._scorer

    @property
    def scorer_error(self) -> str | None:
        return self._scorer_error

    def classifier(self, project: str) -> tuple[str | None, Classifier | None]:
        """(serving version, its classifier); (None, None) when zero-shot serves.

        Reads the registry's pointer on every call, so a newly promoted (or
        rolled back) version serves from the next request on, with no restart.
        """
        version = self.registry.current(project)
        if version is None:
            return None, None
        with self._lock:
            model = self._models.get((project, version))
            if model is None:
                model = load_classifier(self.registry.path(project, version))
                self._models[(project, version)] = model
        return version, model

    def model_version(self, project: str, config: LabelConfig) -> str:
        """The version string Label Studio stores with each prediction."""
        version, _ = self.classifier(project)
        if version is not None:
            return version
        if self.settings.zeroshot_model is None:
            return "untrained"
        key = self.scorer.key if self.scorer else self.settings.zeroshot_model
        t = self.registry.temperature(project)
        calibration = f"{t:.4g}"
        if config.multiple:  # new thresholds change the predictions: a new version
            calibration = "ml:" + ",".join(f"{x:.4g}" for x in self.registry.thresholds(project, list(config.classes)))
        digest = hashlib.sha1(f"{key}|{config.signature()}|{calibration}".encode()).hexdigest()[:8]
        return f"zeroshot-{digest}"

    # -- scoring ------------------------------------------------------------------
    def fetch(self, refs: Sequence[object], conn: Connection, deadline: float | None = None) -> list[Scored]:
        """Download (concurrently, under the fetch policy) and decode every image; failures are per item.

        Images downloaded before come from the local image store instead (:mod:`labeler.media.imagestore`).
        """
        fetched: list[bytes | ImageError | None] = list(self.images.get_many(conn, refs))
        todo = [i for i, data in enumerate(fetched) if data is None]
        if todo:
            new = Fetcher(self.policy, conn, deadline).get_many([refs[i] for i in todo],
                                                                workers=self.settings.download_workers)
            for i, data in zip(todo, new):
                fetched[i] = data
            self.images.put_many(conn, [(refs[i], d) for i, d in zip(todo, new) if isinstance(d, bytes)])
        out: list[Scored] = []
        decoded: dict[str, Scored] = {}  # the same bytes twice in a request are decoded once
        for got in fetched:
            if isinstance(got, ImageError) or got is None:
                out.append(Scored(error=str(got)))
                continue
            if deadline is not None and time.monotonic() > deadline:
                out.append(Scored(error="not decoded: the request's time budget ran out (retry to continue)"))
                continue
            key = content_key(got)
            if key in decoded:
                out.append(replace(decoded[key]))  # its own item, the decoded sample shared
                continue
            try:
                out.append(Scored(sample=Sample(decode(got, self.settings.max_image_pixels)), key=key))
            except ImageError as exc:
                out.append(Scored(error=str(exc)))
            decoded[key] = out[-1]
        return out

    def samples(self, urls: Sequence[object], conn: Connection, deadline: float | None = None,
                ) -> list[Scored]:
        """:meth:`fetch` then :meth:`embed`."""
        items = self.fetch(urls, conn, deadline)
        self.embed(items, deadline)
        return items

    def embed(self, items: Sequence[Scored], deadline: float | None = None) -> None:
        """Attach cached or fresh BLIP-2 embeddings to the decoded items.

        Past ``deadline`` no new image is embedded (its item gets an error):
        a huge /predict batch answers within Label Studio's timeout and the
        next request continues, as cached work is not redone.
        """
        scorer = self.scorer
        items = [it for it in items if it.sample is not None]
        if scorer is None or not items:
            return
        # Known images: the pooled feature from the memo; hidden states are read only if a prompt
        # needs them (see _load_hidden), so re-scoring with a new head opens no embedding file.
        rest = []
        for it, feature in zip(items, self.cache.pooled.get([it.digest for it in items])):
            if feature is None:
                rest.append(it)
            else:
                it.decoded.features = feature
        missing = self._from_cache(rest)
        bs = self.settings.batch_size
        for start in range(0, len(missing), bs):
            if deadline is not None and time.monotonic() > deadline:
                for it in missing[start:]:
                    it.error = "not scored: the request's time budget ran out (retry to continue)"
                    it.sample = None
                break
            self._embed_chunk(scorer, missing[start:start + bs])

    def _from_cache(self, items: Sequence[Scored]) -> list[Scored]:
        """Attach hidden states and features from the embedding cache; returns the items it lacks."""
        missing = []
        hits = self.cache.get_many([it.digest for it in items]) if items else []
        for it, hit in zip(items, hits):
            if hit is None:
                missing.append(it)
            else:
                it.hidden, it.decoded.features = hit
        found = [it for it in items if it.hidden is not None]
        if found:
            self.cache.pooled.put([it.digest for it in found], stack_rows([it.decoded.features for it in found]))
        return missing

    def _load_hidden(self, items: Sequence[Scored], prompts: Sequence[str]) -> None:
        """Hidden states for the items whose logits for ``prompts`` are not all memoised (the cache,
        or the model again where the cache has lost them); the rest never touch the disk."""
        scorer = self.scorer
        if scorer is None:
            return
        logits = self.cache.logits.get([it.digest for it in items], list(prompts))
        need = [it for it, gap in zip(items, np.isnan(logits).any(axis=1)) if gap and it.hidden is None]
        lost = self._from_cache(need)
        for start in range(0, len(lost), self.settings.batch_size):
            self._embed_chunk(scorer, lost[start:start + self.settings.batch_size])

    def _embed_chunk(self, scorer: ZeroShotScorer, chunk: Sequence[Scored]) -> None:
        """Embed a batch; if the batch fails, embed one by one so only the bad image fails."""
        try:
            with self._model_lock:
                emb = scorer.embed([it.decoded.image for it in chunk])
            # To the device tier and, by an asynchronous copy to pinned memory, to disk in the background;
            # scoring goes on with the hidden states where they are (on a GPU: no wait for the host copy).
            self.cache.put_embeddings([it.digest for it in chunk], emb)
            # fp16 as the cache stores them: an image scores the same fresh or from the cache
            hidden, pooled = emb.hidden.half(), emb.pooled.half().float().cpu().numpy()
            self.cache.pooled.put([it.digest for it in chunk], pooled)
        except Exception as exc:  # noqa: BLE001 - any image the model cannot take is that image's error
            if len(chunk) == 1:
                log.warning("embedding failed: %s", exc)
                chunk[0].error, chunk[0].sample = f"the model could not process this image: {exc}", None
                return
            for it in chunk:
                self._embed_chunk(scorer, [it])
            return
        for i, it in enumerate(chunk):
            it.hidden, it.decoded.features = hidden[i], pooled[i]

    def zeroshot_scores(self, items: Sequence[Scored], config: LabelConfig) -> None:
        """Attach ``s_ic`` (zero-shot class evidence) to every embedded item."""
        scorer = self.scorer
        ready = [it for it in items if it.sample is not None and it.key is not None]
        if scorer is None or not ready:
            return
        self._load_hidden(ready, [p for ps in config.prompts.values() for p in ps])
        ready = [it for it in ready if it.sample is not None]  # an image the model failed on now
        with self._model_lock:
            s = scorer.class_scores([it.hidden for it in ready], config.prompts,
                                    keys=[it.digest for it in ready], memo=self.cache.logits)
        for it, row in zip(ready, s):
            it.decoded.zeroshot = row

    def score(self, project: str, urls: Sequence[object], config: LabelConfig, conn: Connection,
              deadline: float | None = None) -> tuple[str, list[Scored]]:
        """Class probabilities for every URL with the project's serving model."""
        return self.score_items(project, self.samples(urls, conn, deadline), config)

    def score_items(self, project: str, items: list[Scored], config: LabelConfig,
                    ) -> tuple[str, list[Scored]]:
        """Class probabilities for fetched and embedded items (see :meth:`samples`)."""
        version, model = self.classifier(project)
        self.zeroshot_scores(items, config)
        ok = [it for it in items if it.sample is not None]
        thresholds = None
        if model is not None:
            check_serving(version, model, config)
            if model.needs_features and self.scorer is None:
                for it in ok:
                    it.error = "the serving model needs the zero-shot model, which is not loaded"
                ok = []
            with self._model_lock:
                proba = model.predict_proba([it.decoded for it in ok]) if ok else np.zeros((0, 0))
            if config.multiple:
                thresholds = np.asarray(model.thresholds_, dtype=np.float64)
        elif self.scorer is not None:
            proba, thresholds = self._zeroshot_proba(project, ok, config)
        else:
            for it in ok:
                it.error = self._scorer_error or "no model: configure a zero-shot model or train one"
            ok, proba = [], np.zeros((0, 0))
        for it, p in zip(ok, proba):
            it.proba, it.thresholds = p, thresholds
        return self.model_version(project, config), items

    def _zeroshot_proba(self, project: str, ok: Sequence[Scored], config: LabelConfig,
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """Zero-shot probabilities of embedded items, and the per-class thresholds (multi-label only):
        a softmax across classes (with the fitted temperature), or per class ``sigmoid(s_ic)``."""
        if not ok:
            return np.zeros((0, 0)), None
        s = stack_rows([it.decoded.zeroshot for it in ok])
        if config.multiple:
            return sigmoid(s), np.asarray(self.registry.thresholds(project, list(config.classes)))
        return softmax(s, self.registry.temperature(project)), None

    def predictions(self, tasks: Sequence[dict], config: LabelConfig, project: str,
                    conn: Connection) -> list[dict]:
        """One Label Studio prediction per task, in order; an empty one where scoring failed."""
        urls = [config.image_ref(t) for t in tasks]
        deadline = time.monotonic() + self.settings.predict_budget_s
        version, items = self.score(project, urls, config, conn, deadline)
        results = []
        for task, it in zip(tasks, items):
            if it.proba is None:
                log.warning("task %s: no prediction: %s", task.get("id") if isinstance(task, dict) else "?", it.error)
                # No score: a failed task must not masquerade as the least confident one.
                results.append({"model_version": version, "result": []})
                continue
            results.append(to_prediction(it.proba, config, version, self.settings.uncertainty, it.thresholds))
        return results


def check_serving(version: str | None, model: Classifier, config: LabelConfig) -> None:
    """ValueError when the serving model no longer fits the label config (classes, or single/multi-label)."""
    if list(model.classes) != list(config.classes):
        raise ValueError(f"serving model {version} knows classes {list(model.classes)}, "
                         f"the label config has {list(config.classes)}: retrain or roll back")
    if bool(getattr(model, "multilabel", False)) != config.multiple:
        kind = "multi-label" if config.multiple else "single-choice"
        raise ValueError(f"serving model {version} was not trained for a {kind} label config: retrain or roll back")


def to_prediction(proba: np.ndarray, config: LabelConfig, version: str, measure: str,
                  thresholds: np.ndarray | None = None) -> dict:
    """A Label Studio prediction: the chosen class(es), a confidence score and the model version.

    Single choice: the top class; the score is ``1 - uncertainty`` by ``measure``.
    Multi-label: every class whose probability reaches its threshold (0.5 without
    ``thresholds``), possibly none (an empty ``choices`` list, which Label Studio
    accepts and shows as nothing ticked); the score is ``1 - multilabel_uncertainty``,
    the margin of the least decided class.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if config.multiple:
        t = np.broadcast_to(0.5 if thresholds is None else np.asarray(thresholds, dtype=np.float64), proba.shape)
        chosen = [c for c, p, tc in zip(config.classes, proba, t) if p >= tc]
        score = 1.0 - float(multilabel_uncertainty(proba[None, :], t)[0])
    else:
        chosen = [config.classes[int(np.argmax(proba))]]
        score = float(confidence(proba[None, :], measure)[0])
    return {
        "model_version": version,
        "score": round(score, 6),
        "result": [{
            "from_name": config.from_name, "to_name": config.to_name, "type": "choices",
            "value": {"choices": chosen},
        }],
    }
