"""Start a local Label Studio (SQLite, loopback) and the ML backend as child processes.

Used by ``labeler demo`` and the integration tests. The settings come from
``../shared/docs/label-studio.md``: loopback backends need
``LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false``, the token must be set at the
first start with legacy tokens enabled, and stray ``HOST``/``PORT``/...
variables must not leak into the server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from labeler.studio.flags import FAST_IMPORT_FLAG

_LEAKY = ("USERNAME", "PASSWORD", "HOST", "PORT", "DEBUG", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")


def free_port() -> int:
    """A port free now; it may be taken before a child binds it, hence :func:`_on_free_port`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """The server could not bind its port (another process took it first)."""


def _on_free_port(start: Callable[[int], Server], port: int | None, attempts: int = 3) -> Server:
    """``start(port)``; without a port, on a free one, and again on another if that one was taken
    between :func:`free_port` and the child's bind (parallel test runs do this)."""
    if port is not None:
        return start(port)
    for attempt in range(attempts):
        try:
            return start(free_port())
        except PortTaken:
            if attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


def _gave_up(server: Server, what: str) -> RuntimeError:
    """Stop ``server`` and describe why it did not start (:class:`PortTaken` when its port was taken)."""
    server.stop()
    text = server.log.read_text(errors="replace")[-3000:] if server.log.exists() else ""
    kind = PortTaken if ("Address already in use" in text or "Errno 98" in text) else RuntimeError
    return kind(f"{what} did not start; see {server.log}:\n{text}")


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """Stop the server and its children: each server runs in its own session (process group)."""
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait(5)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session=True made the child its group's leader
    except ProcessLookupError:
        pass


def start_label_studio(data_dir: Path, username: str, password: str, token: str,
                       port: int | None = None, files_root: Path | None = None,
                       timeout: float = 180) -> Server:
    """A Label Studio server on 127.0.0.1 with an admin ``username`` and API ``token``."""
    exe = shutil.which("label-studio") or str(Path(sys.executable).with_name("label-studio"))
    if not Path(exe).exists():
        raise RuntimeError("the label-studio server is not installed: pip install 'labeler[studio]'")
    return _on_free_port(lambda p: _start_label_studio(exe, data_dir, username, password, token, p, files_root,
                                                       timeout), port)


def _start_label_studio(exe: str, data_dir: Path, username: str, password: str, token: str, port: int,
                        files_root: Path | None, timeout: float) -> Server:
    url = f"http://127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS="false",
               LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true", PYTHONUNBUFFERED="1")
    # No telemetry, error reports or version checks: offline they only fill the log with retries.
    for name, value in (("LABEL_STUDIO_COLLECT_ANALYTICS", "false"), ("LABEL_STUDIO_SENTRY_DSN", ""),
                        ("LABEL_STUDIO_FRONTEND_SENTRY_DSN", ""), ("LABEL_STUDIO_LATEST_VERSION_CHECK", "false")):
        env.setdefault(name, value)
    # Imports predictions without recounting the project's tasks each time: 827/s instead of about 43/s
    # (falling as the project grows); see README "Scaling out". LABELER_LS_FAST_IMPORT=0 turns it off.
    if os.environ.get("LABELER_LS_FAST_IMPORT", "1") != "0":
        env.setdefault(FAST_IMPORT_FLAG, "true")
    if files_root is not None:
        env.update(LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
                   LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(files_root))
    log = data_dir / "label-studio.log"
    proc = subprocess.Popen(
        [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
         "--host", url, "--username", username, "--password", password, "--user-token", token,
         "--enable-legacy-api-token"],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(url, proc, log)
    try:
        wait_http(f"{url}/health", timeout, proc)
    except Exception:  # noqa: BLE001 - whatever went wrong, stop the child and show its log
        raise _gave_up(server, "Label Studio") from None
    return server


def _model_ready(url: str) -> bool:
    """True once /health says the model is loaded; a slow answer (a loaded machine) is not an error."""
    try:
        return bool(requests.get(f"{url}/health", timeout=5).json().get("model_ready"))
    except (requests.RequestException, ValueError):
        return False


def start_backend(env_extra: dict[str, str], port: int | None = None, log_dir: Path | None = None,
                  timeout: float = 120) -> Server:
    """The ML backend under gunicorn (one worker, threads), waiting until its model is ready."""
    return _on_free_port(lambda p: _start_backend(env_extra, p, log_dir, timeout), port)


def _start_backend(env_extra: dict[str, str], port: int, log_dir: Path | None, timeout: float) -> Server:
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    log = (log_dir or Path.cwd()) / "backend.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:ml_backend.gunicorn_conf", "--bind", f"127.0.0.1:{port}",
         "ml_backend.wsgi:app"],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(url, proc, log)
    end = time.monotonic() + timeout
    try:
        wait_http(f"{url}/health", timeout, proc)
        while not _model_ready(url):
            if time.monotonic() > end or proc.poll() is not None:
                raise TimeoutError("model not ready")
            time.sleep(0.3)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, stop the child and show its log
        with log.open("a") as f:
            f.write(f"\n[start_backend] gave up: {type(exc).__name__}: {exc}\n")
        raise _gave_up(server, "the ML backend") from None
    return server
