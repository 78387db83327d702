"""Checks of this machine: the zero-shot model (what would load, where), free disk, the Ray cluster."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

from labeler.config import Settings
from labeler.doctor.result import Check, failed, passed, warned

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
MODEL_FIX = ("set LABELER_ZEROSHOT_MODEL to a folder holding Salesforce/blip2-itm-vit-g (config.json and its "
             "weights, as save_pretrained writes them), to a hub id, or to none (CNN classifier only)")


def _device(settings: Settings) -> tuple[str, str] | Check:
    """(device, dtype) the model would load with, or a failed check naming the bad setting."""
    import torch

    from labeler.models.zeroshot import cpu_path, pick_device, pick_dtype

    try:
        device = pick_device(settings.device)
    except RuntimeError as exc:
        return failed("zero-shot model", f"LABELER_DEVICE={settings.device!r}: {exc}", "e.g. cpu, cuda, cuda:1")
    if device.type == "cuda" and not torch.cuda.is_available():
        return failed("zero-shot model", f"LABELER_DEVICE={settings.device!r}, but PyTorch sees no GPU",
                      "unset LABELER_DEVICE (CPU then), or install a CUDA build of torch (make ... TORCH=...)")
    try:
        dtype = pick_dtype(device, settings.dtype)
    except KeyError:
        return failed("zero-shot model", f"LABELER_DTYPE={settings.dtype!r} is not a dtype labeler knows here",
                      "set LABELER_DTYPE to float32, bfloat16, float16, auto or (on a CPU) int8, or unset it")
    path = cpu_path(device, settings.dtype)
    if path == "auto":
        return str(device), "float32 (vision tower in bf16 or int8 where this CPU gains and it agrees with fp32)"
    if path in ("bf16", "int8"):
        return str(device), f"float32 (vision tower's linear layers in {path}, LABELER_DTYPE)"
    return str(device), str(dtype).removeprefix("torch.")


def _folder_problem(folder: Path) -> str | None:
    if not (folder / "config.json").is_file():
        return f"{folder} has no config.json"
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        return f"{folder} has no weights (*.safetensors or *.bin)"
    return None


def _hub_cached(model: str) -> str | None:
    """The cached config.json of a hub model, or None when it would be downloaded."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model, "config.json")
    return found if isinstance(found, str) else None


def zeroshot_model(settings: Settings, load: bool = False) -> Check:
    """What would load for the zero-shot model, and where; with ``load``, load it (multi-GB for the real one)."""
    name, model = "zero-shot model", settings.zeroshot_model
    if model is None:
        return passed(name, "none (LABELER_ZEROSHOT_MODEL=none): the CNN classifier only")
    device = _device(settings)
    if isinstance(device, Check):
        return device
    on = f"on {device[0]} as {device[1]}"
    if Path(model).expanduser().is_dir():
        problem = _folder_problem(Path(model).expanduser())
        if problem:
            return failed(name, f"LABELER_ZEROSHOT_MODEL: {problem}", MODEL_FIX)
        source = f"folder {model}"
    elif not HUB_ID.fullmatch(model) or model.startswith((".", "~")):
        return failed(name, f"LABELER_ZEROSHOT_MODEL={model}: no such folder", MODEL_FIX)
    elif _hub_cached(model):
        source = f"hub model {model} (in the local hub cache)"
    elif settings.local_files_only:
        return failed(name, f"hub model {model} is not in the local hub cache, and downloads are off (HF_HUB_OFFLINE)",
                      f"download it where the hub is reachable (huggingface-cli download {model}) into this hub "
                      "cache, or set LABELER_ZEROSHOT_MODEL to a folder holding it")
    else:
        from labeler.models.zeroshot import KNOWN_DOWNLOAD_BYTES, gigabytes

        size = KNOWN_DOWNLOAD_BYTES.get(model)
        return warned(name, f"hub model {model} would be downloaded at the first load "
                            f"({'about ' + gigabytes(size) if size else 'size unknown'}) into {hub_cache_dir()}, "
                            f"then run {on}", f"huggingface-cli download {model} ahead of time")
    if not load:
        return passed(name, f"{source} would load {on} (--load-model loads it)")
    return _load(settings, source)


def _load(settings: Settings, source: str) -> Check:
    from labeler.models.zeroshot import ZeroShotScorer

    t0 = time.perf_counter()
    try:
        scorer = ZeroShotScorer.load(str(settings.zeroshot_model), device=settings.device, dtype=settings.dtype,
                                     local_files_only=settings.local_files_only)
    except Exception as exc:  # noqa: BLE001 - transformers and torch raise many kinds
        return failed("zero-shot model", f"{source} does not load: {str(exc)[:300]}", MODEL_FIX)
    return passed("zero-shot model", f"{source} loaded on {scorer.device} in {time.perf_counter() - t0:.1f} s, "
                                     f"{scorer.precision.line()}")


def loaded_model(ready: bool, error: str | None, scorer: object | None, model: str | None) -> Check:
    """The backend's own zero-shot model, as it loaded (the service: no second load)."""
    name = "zero-shot model"
    if model is None:
        return passed(name, "none (LABELER_ZEROSHOT_MODEL=none): the CNN classifier only")
    if error:
        return failed(name, error, MODEL_FIX + "; see the backend log, then restart it")
    if not ready or scorer is None:
        return warned(name, f"{model} is still loading", "wait; /health says model_ready when it is done")
    precision = getattr(scorer, "precision", None)
    how = precision.line() if precision is not None else "as " + str(getattr(scorer, "dtype", "?")).removeprefix("torch.")
    return passed(name, f"{model} loaded on {getattr(scorer, 'device', '?')}, {how}")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (MODEL_DIR may not exist yet)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def disk_space(places: dict[str, Path], min_free_gb: float) -> list[Check]:
    """Free space where each of ``places`` lives, one check per file system; a warning under ``min_free_gb``,
    a failure under a tenth of it."""
    by_fs: dict[int, list[tuple[str, Path]]] = {}
    for what, path in places.items():
        found = _existing(path)
        by_fs.setdefault(os.stat(found).st_dev, []).append((what, found))
    checks = []
    for named in by_fs.values():
        free = shutil.disk_usage(named[0][1]).free / 2**30
        name, where = "disk " + ", ".join(w for w, _ in named), named[0][1]
        fix = f"free space at {where}, or move {named[0][0]} to a larger disk"
        if free < min_free_gb / 10:
            checks.append(failed(name, f"{free:.1f} GB free at {where}", fix))
        elif free < min_free_gb:
            checks.append(warned(name, f"{free:.1f} GB free at {where}, under {min_free_gb:g} GB", fix))
        else:
            checks.append(passed(name, f"{free:.1f} GB free at {where}"))
    return checks


def _tcp_open(address: str, default_port: int) -> str | None:
    """None when ``host:port`` accepts a connection, else why not."""
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":") if ":" in bare else (bare, "", "")
    try:
        with socket.create_connection((host, int(port or default_port)), timeout=5):
            return None
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def ray_cluster(settings: Settings) -> Check:
    """With RAY_ADDRESS / RAY_API_SERVER_ADDRESS set: Ray installed, the job server answers, the cluster's
    port accepts connections."""
    name = "ray"
    jobs, driver = settings.ray_jobs_address, settings.ray_driver_address
    if not jobs and not driver:
        return passed(name, "not configured (RAY_ADDRESS, RAY_API_SERVER_ADDRESS unset): jobs run in-process")
    from labeler.distributed import ray_installed

    if not ray_installed():
        return failed(name, "RAY_ADDRESS or RAY_API_SERVER_ADDRESS is set, but Ray is not installed",
                      "pip install 'labeler[ray]' (or unset them)")
    found = []
    if jobs:
        from labeler.distributed.rayjobs import RayJobs

        try:
            listed = RayJobs(jobs, timeout=5).client.list_jobs()
        except Exception as exc:  # noqa: BLE001 - Ray's client raises requests, auth and runtime errors
            return failed(name, f"the Ray job server at {jobs} does not answer: {str(exc)[:200]}",
                          "start the Ray head (its job server, port 8265) or fix RAY_API_SERVER_ADDRESS; with "
                          "Ray's token auth, set RAY_AUTH_TOKEN")
        found.append(f"job server {jobs} answers ({len(listed)} jobs)")
    if driver and driver != "auto":
        why = _tcp_open(driver, 6379 if not driver.startswith("ray://") else 10001)
        if why:
            return failed(name, f"RAY_ADDRESS={driver} does not accept connections: {why}",
                          "start the Ray head, or set RAY_ADDRESS to its address (head:6379)")
        found.append(f"cluster {driver} accepts connections")
    return passed(name, "; ".join(found) or f"RAY_ADDRESS={driver} (a local cluster, started on demand)")
