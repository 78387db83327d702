"""All settings, read from environment variables in one place.

Names follow the Label Studio ML backend conventions where they exist
(``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``, ``MODEL_DIR``,
``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``); labeler's own start with ``LABELER_``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .zeroshot import DEFAULT_MODEL


def _bool(v: str) -> bool:
    return v.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    label_studio_url: str | None = None        # LABEL_STUDIO_URL
    label_studio_api_key: str | None = None    # LABEL_STUDIO_API_KEY
    model_dir: Path = Path("model_dir")        # MODEL_DIR: registry, embedding cache, job state
    zeroshot_model: str | None = DEFAULT_MODEL  # LABELER_ZEROSHOT_MODEL: hub id or folder; "none" disables
    device: str | None = None                  # LABELER_DEVICE: cpu, cuda, cuda:1 (default: CUDA if present)
    dtype: str | None = None                   # LABELER_DTYPE: float32, bfloat16, float16
    batch_size: int = 32                       # LABELER_BATCH_SIZE: images per model batch
    local_files_only: bool = False             # LABELER_LOCAL_FILES_ONLY / HF_HUB_OFFLINE
    uncertainty: str = "least_confidence"      # LABELER_UNCERTAINTY: least_confidence, margin, entropy
    classifier: str = "auto"                   # LABELER_CLASSIFIER: auto, head, cnn
    train_every: int = 0                       # LABELER_TRAIN_EVERY: retrain every N new/updated annotations (0 = off)
    min_per_class: int = 5                     # LABELER_MIN_PER_CLASS: refuse to train with fewer labels of a class
    seed: int = 0                              # LABELER_SEED
    self_train: float = 0.9                    # LABELER_SELF_TRAIN: pseudo-label pool images predicted this surely
    self_train_pool: int = 2000                # LABELER_SELF_TRAIN_POOL: most unlabelled images used (0 = no self-training)
    admin_token: str | None = None             # LABELER_ADMIN_TOKEN: Bearer token for /admin/* (unset = admin API off)
    basic_auth_user: str | None = None         # BASIC_AUTH_USER
    basic_auth_pass: str | None = None         # BASIC_AUTH_PASS
    cache_max_gb: float = 20.0                 # LABELER_CACHE_MAX_GB: embedding cache bound
    predict_budget_s: float = 60.0             # LABELER_PREDICT_BUDGET_S: stop scoring new images after this long
    download_workers: int = 8                  # LABELER_DOWNLOAD_WORKERS
    log_requests: bool = False                 # LABELER_LOG_REQUESTS: log each request Label Studio sends

    _ENV = {
        "label_studio_url": "LABEL_STUDIO_URL", "label_studio_api_key": "LABEL_STUDIO_API_KEY",
        "model_dir": "MODEL_DIR", "zeroshot_model": "LABELER_ZEROSHOT_MODEL",
        "device": "LABELER_DEVICE", "dtype": "LABELER_DTYPE", "batch_size": "LABELER_BATCH_SIZE",
        "local_files_only": "LABELER_LOCAL_FILES_ONLY", "uncertainty": "LABELER_UNCERTAINTY",
        "classifier": "LABELER_CLASSIFIER", "train_every": "LABELER_TRAIN_EVERY",
        "min_per_class": "LABELER_MIN_PER_CLASS", "seed": "LABELER_SEED",
        "self_train": "LABELER_SELF_TRAIN", "self_train_pool": "LABELER_SELF_TRAIN_POOL",
        "admin_token": "LABELER_ADMIN_TOKEN", "basic_auth_user": "BASIC_AUTH_USER",
        "basic_auth_pass": "BASIC_AUTH_PASS", "cache_max_gb": "LABELER_CACHE_MAX_GB",
        "predict_budget_s": "LABELER_PREDICT_BUDGET_S", "download_workers": "LABELER_DOWNLOAD_WORKERS",
        "log_requests": "LABELER_LOG_REQUESTS",
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
            kind = type(f.default)
            if f.name == "model_dir":
                values[f.name] = Path(raw)
            elif kind is bool:
                values[f.name] = _bool(raw)
            elif kind in (int, float):
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
            else:
                values[f.name] = raw
        if _bool(env.get("HF_HUB_OFFLINE", "0")):
            values.setdefault("local_files_only", True)
        if str(values.get("zeroshot_model", "")).lower() in {"none", "off", "false"}:
            values["zeroshot_model"] = None
        values.update(overrides)
        return replace(cls(), **values)
