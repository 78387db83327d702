"""Shared fixtures: a tiny BLIP-2 built offline, test images, a real Label Studio server."""

from __future__ import annotations

import functools
import http.server
import io
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["LABELER_ENV_FILE"] = os.devnull  # CLI tests never read a demo's labeler-demo/labeler.env

EYES24 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "eyes24"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from labeler.dev.tiny import build_tiny_blip2

    return build_tiny_blip2(tmp_path_factory.mktemp("tiny-blip2"))


def png_bytes(seed: int, size: int = 24) -> bytes:
    """A grayscale PNG with real content (Label Studio's UI rejects files under 100 bytes)."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("images")
    for i in range(12):
        (d / f"img{i:02d}.png").write_bytes(png_bytes(i))
    return d


@pytest.fixture(scope="session")
def eyes24() -> Path:
    if not (EYES24 / "labels.csv").exists():
        pytest.skip("../shared/datasets/eyes24 is not here")
    return EYES24


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio on loopback with SQLite; yields (url, token)."""
    if shutil.which("label-studio") is None and not (Path(os.sys.executable).parent / "label-studio").exists():
        pytest.skip("the label-studio server is not installed (pip install -e '.[test]')")
    from labeler.dev.localserver import start_label_studio

    token = "labeler-test-token-0123456789"
    server = start_label_studio(tmp_path_factory.mktemp("ls-data"), "admin@example.com", "test-pass-123", token)
    yield server.url, token
    server.stop()


def start_tiny_backend(model_dir: Path, tiny_model: Path, **settings: str):
    """The real ML backend (gunicorn) serving the tiny model, admin token ``admin-secret``, plus ``settings``
    (environment variables); the caller stops it."""
    from labeler.dev.localserver import start_backend

    env = {"MODEL_DIR": str(model_dir), "LABELER_ZEROSHOT_MODEL": str(tiny_model), "HF_HUB_OFFLINE": "1",
           "LABELER_ADMIN_TOKEN": "admin-secret", **settings}
    return start_backend(env, log_dir=model_dir)


def eyes_project(label_studio: tuple[str, str], folder: Path, n: int, title: str, seed: int = 0):
    """A binary open/closed project in the real Label Studio with ``n`` synthetic eye images uploaded
    (drawn with ``seed``, written to ``folder``); returns (Studio, project id)."""
    from labeler.dev.demo import synthetic_eyes, template, upload_images
    from labeler.studio.client import Studio

    url, token = label_studio
    ls = Studio(url, token)
    pid = ls.projects.create(title=title, label_config=template("binary")).id
    upload_images(url, token, pid, sorted(synthetic_eyes(folder, n=n, seed=seed).iterdir()))
    return ls, pid


@pytest.fixture(scope="module")
def backend(tmp_path_factory, tiny_model):
    """The real ML backend (gunicorn) serving the tiny model; yields (url, model_dir)."""
    model_dir = tmp_path_factory.mktemp("model_dir")
    server = start_tiny_backend(model_dir, tiny_model, LABELER_MIN_PER_CLASS="3", LABELER_LOG_REQUESTS="1")
    yield server.url, model_dir
    server.stop()


class _SlowImages(http.server.SimpleHTTPRequestHandler):
    """Serves the test images, each after a delay, so a run is still going when it is killed."""

    delay_s = 0.6

    def do_GET(self):  # noqa: N802 - http.server's name
        time.sleep(self.delay_s)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture()
def slow_image_server(image_dir):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_SlowImages, directory=str(image_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
