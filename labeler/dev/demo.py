"""``labeler demo``: a local Label Studio with a pre-annotated project, from nothing."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import requests
from PIL import Image, ImageDraw

from labeler.dev import localserver
from labeler.envfile import write_env_file
from labeler.studio.client import Studio
from labeler.studio.queue import VIEW as QUEUE_VIEW
from labeler.studio.tasks import (
    UNCERTAINTY_VIEW,
    created_id,
    model_card_text,
    uncertainty_view,
    update_model_card,
    upload_images,
)

if TYPE_CHECKING:
    from label_studio_sdk.types import AllRolesProjectList

log = logging.getLogger(__name__)

# templates/ at the top of the repository; pyproject.toml maps it into the wheel as labeler.templates.
TEMPLATES = files("labeler.templates")
ENV_FILE = "labeler.env"


def template(name: str) -> str:
    """A labelling config from ``templates/`` by name (``binary``, ``multiclass``) or path."""
    path = Path(name)
    if path.exists():
        return path.read_text()
    packaged = TEMPLATES / f"{name}.xml"
    if not packaged.is_file():
        raise FileNotFoundError(f"no template {name!r} (looked in {TEMPLATES})")
    return packaged.read_text()


def synthetic_eyes(out: Path, n: int = 24, size: int = 48, seed: int = 0) -> Path:
    """Draw ``n`` grayscale eye-like images, half open (iris and pupil) and half closed (a lid line)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        im = Image.new("L", (size, size), int(rng.integers(150, 210)))
        d = ImageDraw.Draw(im)
        cx, cy = size / 2 + rng.normal(0, 2), size / 2 + rng.normal(0, 2)
        w, h = size * 0.4, size * rng.uniform(0.15, 0.25)
        if i % 2 == 0:
            d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=235, outline=60)
            r = h * 0.9
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=int(rng.integers(40, 110)))
            d.ellipse([cx - r / 2.5, cy - r / 2.5, cx + r / 2.5, cy + r / 2.5], fill=10)
            name = f"open_{i:03d}.png"
        else:
            d.arc([cx - w, cy - h, cx + w, cy + h], 10, 170, fill=50, width=2)
            name = f"closed_{i:03d}.png"
        arr = np.clip(np.asarray(im, dtype=np.float32) + rng.normal(0, 6, im.size[::-1]), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(out / name)
    return out


def resolve_zeroshot(model: str, data_dir: Path) -> tuple[str, bool]:
    """(model to serve, offline?): the hub id or folder if it loads, else a tiny random stand-in."""
    from transformers import AutoConfig

    try:
        if not Path(model).exists():  # fail fast instead of the hub client's minute of retries
            requests.head("https://huggingface.co", timeout=5)
        AutoConfig.from_pretrained(model)
        return model, False
    except Exception as exc:  # noqa: BLE001 - hub unreachable or folder missing
        from labeler.dev.tiny import build_tiny_blip2

        log.warning("cannot load %s (%s): using a tiny RANDOM BLIP-2 so the loop can run; "
                    "its predictions are meaningless. Pass --zeroshot-model with a local folder "
                    "of Salesforce/blip2-itm-vit-g for real ones.", model, str(exc).splitlines()[0])
        return str(build_tiny_blip2(data_dir / "tiny-blip2")), True


def _stop_on_sigterm() -> None:
    """SIGTERM (kill, systemd, a container stop) takes the Ctrl-C path, which stops the servers."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a test runner's thread)
        pass


def _project(studio: Studio, title: str, label_config: str, files: list[Path], ls_url: str,
             token: str) -> tuple[int, bool]:
    """(project id, created?): the demo's project from an earlier run of the same data dir, or a new one."""
    p: AllRolesProjectList  # the SDK's pager is typed as iterating nothing
    for p in studio.projects.list():
        if p.title == title and p.id is not None:
            return p.id, False
    project = created_id(studio.projects.create(title=title, label_config=label_config))
    upload_images(ls_url, token, project, files)
    return project, True


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _demo_secrets(data_dir: Path) -> tuple[str, str]:
    """(API token, admin token), made once per demo folder (readable by the owner only)."""
    out = []
    for name in ("token", "admin-token"):  # the token applies only when the admin is first created
        f = data_dir / name
        if not f.exists():
            fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(20))
        out.append(f.read_text().strip())
    return out[0], out[1]


def _demo_images(images: Path | None, data_dir: Path) -> list[Path]:
    if images is None:
        images = synthetic_eyes(data_dir / "sample-images")
    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images in {images}")
    return files


def _views(studio: Studio, project: int) -> dict[str, int]:
    return {str((v.data or {}).get("title")): v.id for v in studio.views.list(project=project) if v.id is not None}


def wait_for_queue(studio: Studio, project: int, timeout: float = 180) -> int | None:
    """The id of the "Next to label" tab once the backend has published it after "Retrieve predictions"
    (a few seconds after the last /predict: labeler.studio.autoqueue), None if it did not in ``timeout``.
    Published means first among the tabs: moving it there is the publish's last step, after the tab
    is created (a caller that saw the tab exist could still see it second)."""
    end = time.monotonic() + timeout
    while True:
        views = [v for v in studio.views.list(project=project) if v.id is not None]
        if views and (views[0].data or {}).get("title") == QUEUE_VIEW:
            return views[0].id
        if time.monotonic() > end:
            return None
        time.sleep(0.5)


def _demo_project(ls_url: str, token: str, backend_url: str, files: list[Path], template_name: str) -> dict:
    """Create (or reuse) the project, connect the backend, pre-annotate every task through Label Studio's
    "Retrieve predictions" (as a user would), and wait for the backend to publish the "Next to label"
    tab; returns what to print."""
    studio = Studio(ls_url, token)
    pid, created = _project(studio, f"labeler demo ({len(files)} images)", template(template_name), files, ls_url, token)
    for old in studio.ml.list(project=pid):  # an earlier run's backend listened on another port
        studio.ml.delete(id=old.id)
    studio.ml.create(project=pid, url=backend_url, title="labeler")
    t = time.perf_counter()
    studio.actions.create(id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []})
    took = time.perf_counter() - t
    view = wait_for_queue(studio, pid)
    if view is None:  # the backend could not publish it (its log says why): the score tab at least
        log.warning('the backend did not publish the "%s" tab (see backend.log); showing "%s"', QUEUE_VIEW,
                    UNCERTAINTY_VIEW)
    least = uncertainty_view(studio, pid) if view is None else _views(studio, pid).get(UNCERTAINTY_VIEW)
    update_model_card(studio, pid, *model_card_text("zero-shot", None, {}, f"{backend_url}/dashboard"))
    return {"project": pid, "view": view if view is not None else least, "queue": view is not None,
            "least_confident_view": least, "created": created, "predict_seconds": round(took, 2)}


def _print_ready(info: dict, data_dir: Path) -> None:
    again = "" if info["created"] else " (the project of an earlier run)"
    print(f"""
labeler demo is ready: {info['tasks']} tasks pre-annotated in {info['predict_seconds']:.1f} s{again}
  Label Studio  {info['label_studio']}/projects/{info['project']}/data?tab={info['view']}
  login         {info['username']} / {info['password']}
  API token     {info['token']}
  ML backend    {info['backend']}
  admin page    {info['backend']}/dashboard   (admin token: {info['admin_token']})
  CLI           commands run from {data_dir.parent} read {info['env_file']}; elsewhere: source {info['env_file']}
                e.g. labeler versions; labeler train; labeler export --format csv --out labels
{_tabs_text(info)}""", flush=True)


def _tabs_text(info: dict) -> str:
    if not info.get("queue"):
        return (f'The "{UNCERTAINTY_VIEW}" tab lists the least certain images first, with the model\'s answer '
                "(labeler_answer) and its confidence (Prediction score).")
    return (f'Label from the "{QUEUE_VIEW}" tab (the first; the URL above opens it): the unlabelled images in the '
            "order the model learns most from\n(least certain, yet unlike each other), each with the model's "
            f'answer (labeler_answer) and its confidence (Prediction score).\n"{UNCERTAINTY_VIEW}", beside it, '
            "lists every image by that confidence alone. Open a row: the model's choice is preselected.")


def run_demo(images: Path | None, zeroshot_model: str, data_dir: Path, port: int | None,
             template_name: str = "binary", wait: bool = True) -> dict:
    """Label Studio + backend + a pre-annotated project; re-running on the same ``data_dir`` reuses them."""
    _stop_on_sigterm()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    token, admin_token = _demo_secrets(data_dir)
    username, password = "admin@labeler.local", "labeler-demo"
    files = _demo_images(images, data_dir)
    model, offline = resolve_zeroshot(zeroshot_model, data_dir)

    print(f"starting Label Studio (data in {data_dir / 'label-studio'}) ...", flush=True)
    ls_server = localserver.start_label_studio(data_dir / "label-studio", username, password, token, port=port)
    backend_env = {"LABEL_STUDIO_URL": ls_server.url, "LABEL_STUDIO_API_KEY": token,
                   "MODEL_DIR": str(data_dir / "model_dir"), "LABELER_ZEROSHOT_MODEL": model,
                   "LABELER_ADMIN_TOKEN": admin_token, **({"HF_HUB_OFFLINE": "1"} if offline else {})}
    backend = None
    try:
        print(f"starting the ML backend with {model} ...", flush=True)
        backend = localserver.start_backend(backend_env, log_dir=data_dir)
        info = _demo_project(ls_server.url, token, backend.url, files, template_name)
        # The login lets `labeler doctor` read Label Studio's feature flags (a page for logged-in users only).
        env_file = write_env_file(data_dir / ENV_FILE, {**backend_env, "LABELER_PROJECT": info["project"],
                                                        "LABELER_BACKEND_URL": backend.url,
                                                        "LABELER_LS_USER": username, "LABELER_LS_PASSWORD": password})
        info.update(label_studio=ls_server.url, username=username, password=password, token=token,
                    admin_token=admin_token, backend=backend.url, tasks=len(files), env_file=str(env_file))
        _print_ready(info, data_dir)
    except BaseException:
        if backend is not None:
            backend.stop()
        ls_server.stop()
        raise
    if not wait:
        info["servers"] = [ls_server, backend]
        return info
    print("Press Ctrl-C to stop.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        backend.stop()
        ls_server.stop()
    return info
