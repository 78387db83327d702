"""All settings, read from environment variables in one place.

Names follow the Label Studio ML backend conventions where they exist
(``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``, ``MODEL_DIR``,
``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``); labeler's own start with ``LABELER_``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from labeler.errors import SettingsError

# The defaults that belong to higher floors, named here so that settings import nothing above them
# (labeler.models.zeroshot and labeler.models.uncertainty use these very values).
DEFAULT_MODEL = "Salesforce/blip2-itm-vit-g"
UNCERTAINTY_MEASURES = ("least_confidence", "margin", "entropy")


def _bool(v: str) -> bool:
    return v.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    label_studio_url: str | None = None        # LABEL_STUDIO_URL
    label_studio_api_key: str | None = None    # LABEL_STUDIO_API_KEY
    model_dir: Path = Path("model_dir")        # MODEL_DIR: registry, embedding cache, job state
    # LABELER_REGISTRY_URL: model versions on object storage (s3://bucket/prefix), shared by replicas;
    # unset: under MODEL_DIR. Credentials and endpoint: the store's own (AWS_* for s3://).
    registry_url: str = ""
    zeroshot_model: str | None = DEFAULT_MODEL  # LABELER_ZEROSHOT_MODEL: hub id or folder; "none" disables
    device: str | None = None                  # LABELER_DEVICE: cpu, cuda, cuda:1 (default: CUDA if present)
    dtype: str | None = None                   # LABELER_DTYPE: auto (unset), float32, bfloat16, float16, int8 (CPU)
    batch_size: int = 32                       # LABELER_BATCH_SIZE: images per model batch
    local_files_only: bool = False             # LABELER_LOCAL_FILES_ONLY / HF_HUB_OFFLINE
    uncertainty: str = "least_confidence"      # LABELER_UNCERTAINTY: least_confidence, margin, entropy
    classifier: str = "auto"                   # LABELER_CLASSIFIER: auto, head, cnn
    train_every: int = 0                       # LABELER_TRAIN_EVERY: retrain every N new/updated annotations (0 = off)
    min_per_class: int = 5                     # LABELER_MIN_PER_CLASS: refuse to train with fewer labels of a class
    seed: int = 0                              # LABELER_SEED
    self_train: float = 0.9                    # LABELER_SELF_TRAIN: pseudo-label pool images predicted this surely
    self_train_pool: int = 2000                # LABELER_SELF_TRAIN_POOL: most unlabelled images (0 = off)
    consistency: str = "auto"                  # LABELER_CONSISTENCY: FixMatch, not self-training: auto (3+ classes), on, off
    ensemble: str = "auto"                     # LABELER_ENSEMBLE: serve three CNNs averaged: auto (< 300 labels), on, off
    pretrain: str = "auto"                     # LABELER_PRETRAIN: auto (self-supervised encoder for the CNN), off
    probe_only_below: int = 10                 # LABELER_PROBE_ONLY_BELOW: fewer labels of a class: the CNN from the
    #                                            encoder trains its head only, on the pool's clusters, while few in all
    pretrain_steps: int = 900                  # LABELER_PRETRAIN_STEPS: SimCLR optimiser steps (128 images each;
    #                                            300 left the encoder half-trained: README, Learning from few labels)
    pretrain_min_images: int = 200             # LABELER_PRETRAIN_MIN_IMAGES: fewer task images: ImageNet weights only
    pretrain_max_images: int = 10_000          # LABELER_PRETRAIN_MAX_IMAGES: a stable sample of larger projects
    admin_token: str | None = None             # LABELER_ADMIN_TOKEN: Bearer token for /admin/* (unset = admin API off)
    basic_auth_user: str | None = None         # BASIC_AUTH_USER
    basic_auth_pass: str | None = None         # BASIC_AUTH_PASS
    cache_max_gb: float = 20.0                 # LABELER_CACHE_MAX_GB: embedding cache bound
    predict_budget_s: float = 60.0             # LABELER_PREDICT_BUDGET_S: stop scoring new images after this long
    download_workers: int = 8                  # LABELER_DOWNLOAD_WORKERS
    log_requests: bool = False                 # LABELER_LOG_REQUESTS: log each request Label Studio sends
    # -- security and resource bounds (README, "Security model") --
    webhook_secret: str | None = None          # LABELER_WEBHOOK_SECRET: X-Labeler-Webhook-Secret header
    public_url: str | None = None              # LABELER_PUBLIC_URL: this backend's URL as Label Studio calls it
    max_tasks_per_predict: int = 10_000        # LABELER_MAX_TASKS_PER_PREDICT: more: pre-annotated in the background
    allowed_hosts: str = ""                    # LABELER_ALLOWED_HOSTS: other image hosts ("a.com,*.cdn.net")
    local_root: Path | None = None             # LABELER_LOCAL_ROOT: CLI/offline: local images under this root
    max_image_bytes: int = 20 * 2**20          # LABELER_MAX_IMAGE_BYTES: per downloaded image
    max_image_pixels: int = 40_000_000         # LABELER_MAX_IMAGE_PIXELS: checked before decoding
    download_timeout_s: float = 20.0           # LABELER_DOWNLOAD_TIMEOUT_S: total per image download
    max_request_mb: float = 32.0               # LABELER_MAX_REQUEST_MB: request body limit (413 above)
    max_concurrent_predicts: int = 6           # LABELER_MAX_CONCURRENT_PREDICTS: more wait briefly, then 503
    train_workers: int = 1                     # LABELER_TRAIN_WORKERS: training jobs run at once (others queue)
    keep_versions: int = 20                    # LABELER_KEEP_VERSIONS: newest versions kept per project (+ serving)
    image_cache_mb: float = 2048.0             # LABELER_IMAGE_CACHE_MB: task image bytes kept to avoid re-downloads
    gpu_tier_gb: float = 8.0                   # LABELER_GPU_TIER_GB: hidden states kept on the GPU (CUDA only)
    image_ttl_s: float = 600.0                 # LABELER_IMAGE_TTL_S: reuse of non-upload image URLs (uploads: always)
    # -- Ray (optional, README "Scaling out"); Ray's own names, as `ray job submit` reads them --
    ray_address: str = ""                      # RAY_ADDRESS: the cluster a driver joins (head:6379, ray://..., auto)
    ray_api_server_address: str = ""           # RAY_API_SERVER_ADDRESS: its job server (http://head:8265)
    ray_train_gpus: float = 0.0                # LABELER_RAY_TRAIN_GPUS: GPUs a training job asks for (1: on a GPU worker)
    # -- teams of annotators (README "Teams") --
    control_rate: float = 0.0                  # LABELER_CONTROL_RATE: share of tasks the backend leaves blind (no prediction)
    consensus_min_confidence: float = 0.7      # LABELER_CONSENSUS_MIN_CONFIDENCE: below it a consensus label is not clean
    honeypot_rate: float = 0.0                 # LABELER_HONEYPOT_RATE: share of "Next to label" slots given to known-label tasks
    honeypots: str = ""                        # LABELER_HONEYPOTS: CSV of task_id,label known labels (besides ground truth)
    relabel: bool = False                      # LABELER_RELABEL: the queue may ask a second person (ActiveLab); off: it lost

    _ENV = {
        "label_studio_url": "LABEL_STUDIO_URL", "label_studio_api_key": "LABEL_STUDIO_API_KEY",
        "model_dir": "MODEL_DIR", "registry_url": "LABELER_REGISTRY_URL", "zeroshot_model": "LABELER_ZEROSHOT_MODEL",
        "device": "LABELER_DEVICE", "dtype": "LABELER_DTYPE", "batch_size": "LABELER_BATCH_SIZE",
        "local_files_only": "LABELER_LOCAL_FILES_ONLY", "uncertainty": "LABELER_UNCERTAINTY",
        "classifier": "LABELER_CLASSIFIER", "train_every": "LABELER_TRAIN_EVERY",
        "min_per_class": "LABELER_MIN_PER_CLASS", "seed": "LABELER_SEED",
        "self_train": "LABELER_SELF_TRAIN", "self_train_pool": "LABELER_SELF_TRAIN_POOL",
        "consistency": "LABELER_CONSISTENCY", "ensemble": "LABELER_ENSEMBLE", "pretrain": "LABELER_PRETRAIN",
        "pretrain_steps": "LABELER_PRETRAIN_STEPS", "probe_only_below": "LABELER_PROBE_ONLY_BELOW",
        "pretrain_min_images": "LABELER_PRETRAIN_MIN_IMAGES", "pretrain_max_images": "LABELER_PRETRAIN_MAX_IMAGES",
        "admin_token": "LABELER_ADMIN_TOKEN", "basic_auth_user": "BASIC_AUTH_USER",
        "basic_auth_pass": "BASIC_AUTH_PASS", "cache_max_gb": "LABELER_CACHE_MAX_GB",
        "predict_budget_s": "LABELER_PREDICT_BUDGET_S", "download_workers": "LABELER_DOWNLOAD_WORKERS",
        "log_requests": "LABELER_LOG_REQUESTS", "webhook_secret": "LABELER_WEBHOOK_SECRET",
        "public_url": "LABELER_PUBLIC_URL", "max_tasks_per_predict": "LABELER_MAX_TASKS_PER_PREDICT",
        "allowed_hosts": "LABELER_ALLOWED_HOSTS", "local_root": "LABELER_LOCAL_ROOT",
        "max_image_bytes": "LABELER_MAX_IMAGE_BYTES", "max_image_pixels": "LABELER_MAX_IMAGE_PIXELS",
        "download_timeout_s": "LABELER_DOWNLOAD_TIMEOUT_S", "max_request_mb": "LABELER_MAX_REQUEST_MB",
        "max_concurrent_predicts": "LABELER_MAX_CONCURRENT_PREDICTS", "train_workers": "LABELER_TRAIN_WORKERS",
        "keep_versions": "LABELER_KEEP_VERSIONS", "image_cache_mb": "LABELER_IMAGE_CACHE_MB",
        "image_ttl_s": "LABELER_IMAGE_TTL_S", "gpu_tier_gb": "LABELER_GPU_TIER_GB",
        "ray_address": "RAY_ADDRESS", "ray_api_server_address": "RAY_API_SERVER_ADDRESS",
        "ray_train_gpus": "LABELER_RAY_TRAIN_GPUS", "control_rate": "LABELER_CONTROL_RATE",
        "consensus_min_confidence": "LABELER_CONSENSUS_MIN_CONFIDENCE", "honeypot_rate": "LABELER_HONEYPOT_RATE",
        "honeypots": "LABELER_HONEYPOTS", "relabel": "LABELER_RELABEL",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Settings from ``env`` (default ``os.environ``); keyword overrides win."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in fields(cls):
            name = cls._ENV.get(f.name)
            if name is None or name not in env or env[name] == "":
                continue
            raw = env[name]
            kind: Any = type(f.default)  # the field's type, from its default
            if f.name in {"model_dir", "local_root"}:
                values[f.name] = Path(raw)
            elif kind is bool:
                values[f.name] = _bool(raw)
            elif kind in (int, float):
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
            else:
                values[f.name] = raw
        if _bool(env.get("HF_HUB_OFFLINE", "0")):
            values.setdefault("local_files_only", True)
        if str(values.get("zeroshot_model", "")).lower() in {"none", "off", "false"}:
            values["zeroshot_model"] = None
        values.update(overrides)
        return replace(cls(), **values).validated()

    def validated(self) -> "Settings":
        """Self, or a ValueError naming the environment variable that is wrong."""
        checks = [
            ("uncertainty", self.uncertainty in UNCERTAINTY_MEASURES, f"one of {', '.join(UNCERTAINTY_MEASURES)}"),
            ("classifier", self.classifier in {"auto", "head", "cnn"}, "auto, head or cnn"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("min_per_class", self.min_per_class >= 2, "at least 2 (evaluation needs a label to hold out)"),
            ("train_every", self.train_every >= 0, "0 (off) or more"),
            ("train_workers", self.train_workers >= 1, "at least 1"),
            ("keep_versions", self.keep_versions >= 1, "at least 1"),
            ("max_concurrent_predicts", self.max_concurrent_predicts >= 1, "at least 1"),
            ("self_train", 0 < self.self_train <= 1, "in (0, 1]"),
            ("pretrain", self.pretrain in {"auto", "off"}, "auto or off"),
            ("consistency", self.consistency in {"auto", "on", "off"}, "auto, on or off"),
            ("ensemble", self.ensemble in {"auto", "on", "off"}, "auto, on or off"),
            ("pretrain_steps", self.pretrain_steps >= 1, "at least 1"),
            ("probe_only_below", self.probe_only_below >= 0, "0 (never) or more"),
            ("pretrain_max_images", self.pretrain_max_images >= self.pretrain_min_images >= 2,
             "at least LABELER_PRETRAIN_MIN_IMAGES (itself at least 2)"),
            ("max_image_bytes", self.max_image_bytes > 0, "positive"),
            ("max_image_pixels", self.max_image_pixels > 0, "positive"),
            ("max_request_mb", self.max_request_mb > 0, "positive"),
            ("max_tasks_per_predict", self.max_tasks_per_predict >= 1, "at least 1"),
            ("ray_train_gpus", self.ray_train_gpus >= 0, "0 or more"),
            ("control_rate", 0 <= self.control_rate < 1, "in [0, 1)"),
            ("consensus_min_confidence", 0 <= self.consensus_min_confidence <= 1, "in [0, 1]"),
            ("honeypot_rate", 0 <= self.honeypot_rate < 1, "in [0, 1)"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise SettingsError(f"{self._ENV[name]}={getattr(self, name)!r}: must be {want}")
        return self

    @property
    def ray_jobs_address(self) -> str | None:
        """Where training and refresh jobs go (the backend runs them in-process without one):
        ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS`` when it is a job server's http(s) URL, as Ray's
        own ``ray job submit`` decides."""
        if self.ray_api_server_address:
            return self.ray_api_server_address
        return self.ray_address if self._ray_address_is_job_server else None

    @property
    def ray_driver_address(self) -> str | None:
        """The cluster the bulk path joins with ``ray.init``: ``RAY_ADDRESS`` unless it is a job server's
        URL, which a driver cannot join (None then, or when unset)."""
        return self.ray_address if self.ray_address and not self._ray_address_is_job_server else None

    @property
    def _ray_address_is_job_server(self) -> bool:
        return self.ray_address.startswith(("http://", "https://"))
