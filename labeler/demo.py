"""``labeler demo``: a local Label Studio with a pre-annotated project, from nothing."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image, ImageDraw

from . import localserver
from .studio import connect, uncertainty_view

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def template(name: str) -> str:
    """A labelling config from ``templates/`` by name (``binary``, ``multiclass``) or path."""
    path = Path(name)
    if not path.exists():
        path = TEMPLATES / f"{name}.xml"
    if not path.exists():
        raise FileNotFoundError(f"no template {name!r} (looked in {TEMPLATES})")
    return path.read_text()


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
        from .tiny import build_tiny_blip2

        log.warning("cannot load %s (%s): using a tiny RANDOM BLIP-2 so the loop can run; "
                    "its predictions are meaningless. Pass --zeroshot-model with a local folder "
                    "of Salesforce/blip2-itm-vit-g for real ones.", model, str(exc).splitlines()[0])
        return str(build_tiny_blip2(data_dir / "tiny-blip2")), True


def upload_images(ls_url: str, token: str, project: int, files: list[Path], chunk: int = 50) -> int:
    """Multipart upload (``/data/upload/...`` URLs); one form field per file or only one is kept."""
    n = 0
    for i in range(0, len(files), chunk):
        part = files[i:i + chunk]
        payload = {f"file{j}": (p.name, p.read_bytes()) for j, p in enumerate(part)}
        resp = requests.post(f"{ls_url}/api/projects/{project}/import", files=payload,
                             headers={"Authorization": f"Token {token}"}, timeout=120)
        resp.raise_for_status()
        n += resp.json().get("task_count", len(part))
    return n


def run_demo(images: Path | None, zeroshot_model: str, data_dir: Path, port: int | None,
             template_name: str = "binary", wait: bool = True) -> dict:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "token"
    if not token_file.exists():  # the token applies only when the admin is first created
        token_file.write_text(secrets.token_hex(20))
    token = token_file.read_text().strip()
    username, password = "admin@labeler.local", "labeler-demo"
    if images is None:
        images = synthetic_eyes(data_dir / "sample-images")
    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
    if not files:
        raise SystemExit(f"no images in {images}")
    model, offline = resolve_zeroshot(zeroshot_model, data_dir)

    print(f"starting Label Studio (data in {data_dir / 'label-studio'}) ...", flush=True)
    ls_server = localserver.start_label_studio(data_dir / "label-studio", username, password, token,
                                               port=port)
    print(f"starting the ML backend with {model} ...", flush=True)
    backend = localserver.start_backend(
        {"LABEL_STUDIO_URL": ls_server.url, "LABEL_STUDIO_API_KEY": token,
         "MODEL_DIR": str(data_dir / "model_dir"), "LABELER_ZEROSHOT_MODEL": model,
         **({"HF_HUB_OFFLINE": "1"} if offline else {})}, log_dir=data_dir)
    try:
        ls = connect(ls_server.url, token)
        project = ls.projects.create(title=f"labeler demo ({len(files)} images)",
                                     label_config=template(template_name))
        upload_images(ls_server.url, token, project.id, files)
        ls.ml.create(project=project.id, url=backend.url, title="labeler")
        t = time.perf_counter()
        ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": True, "excluded": []})
        took = time.perf_counter() - t
        view = uncertainty_view(ls, project.id)
        info = {"label_studio": ls_server.url, "project": project.id, "view": view,
                "username": username, "password": password, "token": token, "backend": backend.url,
                "tasks": len(files), "predict_seconds": round(took, 2)}
        print(f"""
labeler demo is ready: {len(files)} tasks pre-annotated in {took:.1f} s
  Label Studio  {ls_server.url}/projects/{project.id}/data?tab={view}
  login         {username} / {password}
  API token     {token}
  ML backend    {backend.url}  (metrics: {backend.url}/metrics)
The "Least confident first" tab lists the least certain images first.""", flush=True)
    except BaseException:
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
