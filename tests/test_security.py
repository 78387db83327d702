"""Attacks on the real gunicorn backend (and a real Label Studio where needed), each asserting the secure outcome.

Loopback "canary" servers stand in for internal services and attacker hosts and
record every request they get. Resource attacks are bounded in time and use
loopback only.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from labeler.dev.demo import template
from labeler.dev.localserver import start_backend
from labeler.studio.client import Connection, Studio

from .conftest import png_bytes

pytestmark = pytest.mark.integration
GOOD = "data:image/png;base64," + base64.b64encode(png_bytes(7)).decode()


class Canary:
    """A loopback HTTP server that records requests; ``mode`` says how it answers."""

    def __init__(self, host: str = "127.0.0.1", mode: str = "image", target: str = "") -> None:
        self.hits: list[dict] = []
        canary = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                canary.hits.append({"path": self.path, "headers": dict(self.headers)})
                if mode == "backend":  # someone else's ML backend: answers Label Studio's /health
                    body = b'{"status": "UP", "model_class": "Theirs"}'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif mode == "drip":  # one byte every 2 s, forever
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(60):
                            self.wfile.write(b"\x89")
                            self.wfile.flush()
                            time.sleep(2)
                    except OSError:
                        pass
                elif mode == "huge":  # endless body without a length
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        for _ in range(2000):
                            self.wfile.write(b"\0" * 65536)
                    except OSError:
                        pass
                else:
                    body = png_bytes(3)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                canary.hits.append({"path": self.path, "headers": dict(self.headers)})
                body = b'{"model_version": "theirs"}' if mode == "backend" else b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid-looking PNG header that claims ``width`` x ``height`` pixels, in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def canaries():
    made = {"internal": Canary(), "public": Canary("127.0.0.2"), "drip": Canary("127.0.0.2", mode="drip"),
            "huge": Canary("127.0.0.2", mode="huge")}
    made["redirect"] = Canary("127.0.0.2", mode="redirect", target=made["internal"].url + "/secret.png")
    made["backend"] = Canary("127.0.0.2", mode="backend")
    yield made
    for c in made.values():
        c.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory, tiny_model, canaries):
    """The backend as a team would run it: basic auth, webhook secret, admin token, one allowed image host."""
    model_dir = tmp_path_factory.mktemp("secured")
    allowed = ",".join(canaries[k].url.split("//")[1] for k in ("public", "redirect", "huge", "drip"))
    env = {"MODEL_DIR": str(model_dir), "LABELER_ZEROSHOT_MODEL": str(tiny_model), "HF_HUB_OFFLINE": "1",
           "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "pw", "LABELER_WEBHOOK_SECRET": "hook-secret",
           "LABELER_ADMIN_TOKEN": "admin-secret", "LABELER_ALLOWED_HOSTS": allowed,
           "LABELER_DOWNLOAD_TIMEOUT_S": "3", "LABELER_MAX_IMAGE_BYTES": str(4 * 2**20),
           "LABELER_LOG_REQUESTS": "1"}
    server = start_backend(env, log_dir=model_dir)
    yield server.url, model_dir
    server.stop()


AUTH = ("ls", "pw")


def wait_until(fn, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.3)


def predict(url: str, refs: list, config: str | None = None, auth=AUTH, project: str = "1.1", timeout=60):
    tasks = [{"id": i, "data": {"image": r}} for i, r in enumerate(refs)]
    return requests.post(f"{url}/predict", auth=auth, timeout=timeout,
                         json={"tasks": tasks, "label_config": config or template("binary"), "project": project})


def test_local_files_and_devices_are_never_read(secured, tmp_path):
    url, _ = secured
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refs = ["/etc/passwd", "file:///etc/passwd", "/proc/self/environ", "/dev/zero", str(fifo), str(tmp_path),
            "/" + "a" * 5000, "../../etc/passwd", "C:\\Windows\\win.ini", GOOD]
    t0 = time.monotonic()
    r = predict(url, refs)
    assert r.status_code == 200 and time.monotonic() - t0 < 30
    results = r.json()["results"]
    assert [bool(x["result"]) for x in results] == [False] * (len(refs) - 1) + [True]
    assert "score" not in results[0]


def test_internal_hosts_redirects_and_tokens(secured, canaries):
    url, _ = secured
    internal = canaries["internal"]
    refs = [internal.url + "/a.png", internal.url.replace("127.0.0.1", "localhost") + "/b.png",
            "http://[::1]:%s/c.png" % internal.url.rsplit(":", 1)[1], "http://169.254.169.254/latest/meta-data/",
            canaries["redirect"].url + "/go.png", "gopher://127.0.0.1/x", "ftp://127.0.0.1/x.png",
            canaries["public"].url + "/data/upload/1/ok.png", GOOD]
    r = predict(url, refs)
    assert r.status_code == 200
    ok = [bool(x["result"]) for x in r.json()["results"]]
    assert ok == [False] * 7 + [True, True]
    assert internal.hits == [], "an internal service was reached"
    # the allowed host got its image, and no token or credentials with it
    assert canaries["public"].hits and all("Authorization" not in h["headers"] for h in canaries["public"].hits)


def test_oversized_and_bomb_images_fail_alone(secured, canaries):
    url, _ = secured
    bomb = bomb_png()
    refs = ["data:image/png;base64," + base64.b64encode(bomb).decode(), canaries["huge"].url + "/big.png",
            "data:image/png;base64," + base64.b64encode(b"\0" * (6 * 2**20)).decode(), GOOD]
    r = predict(url, refs)
    assert r.status_code == 200
    assert [bool(x["result"]) for x in r.json()["results"]] == [False, False, False, True]
    big = requests.post(f"{url}/predict", auth=AUTH, data=b"{" + b" " * (40 * 2**20) + b"}",
                        headers={"Content-Type": "application/json"}, timeout=60)
    assert big.status_code == 413


def test_malformed_tasks_and_configs_are_per_task_errors(secured):
    url, _ = secured
    tasks = [{"id": 1, "data": "a string"}, {"id": 2, "data": ["a", "list"]}, {"id": 3}, "not a task",
             {"id": 4, "data": {"image": ["x"]}}, {"id": 5, "data": {"image": GOOD}}]
    r = requests.post(f"{url}/predict", auth=AUTH, json={"tasks": tasks, "label_config": template("binary"),
                                                         "project": "1.1"})
    assert r.status_code == 200
    assert [bool(x["result"]) for x in r.json()["results"]] == [False] * 5 + [True]
    long_hint = template("binary").replace('hint="closed eye;', 'hint="' + "closed eye " * 400 + ";")
    r = predict(url, [GOOD], config=long_hint)
    assert r.status_code == 200 and r.json()["results"][0]["result"]
    for body in ([1], "x", 5, None):  # request logging is on: any JSON body gets a 4xx, not a 500
        for route in ("/predict", "/setup", "/webhook"):
            got = requests.post(f"{url}{route}", auth=AUTH, json=body, timeout=10)
            assert got.status_code in (400, 401), (route, body, got.status_code)
    for route in ("/predict", "/setup", "/webhook"):  # nested deeper than the JSON parser goes
        got = requests.post(f"{url}{route}", auth=AUTH, data="[" * 5000, timeout=10,
                            headers={"Content-Type": "application/json", "X-Labeler-Webhook-Secret": "hook-secret"})
        assert got.status_code == 400, (route, got.status_code, got.text[:200])
    for config in (5, ["<View/>"], {"x": 1}):  # a label config that is not text
        got = requests.post(f"{url}/predict", auth=AUTH, json={"tasks": [], "label_config": config, "project": "1"})
        assert got.status_code == 400 and "XML text" in got.json()["error"], got.text
        got = requests.post(f"{url}/setup", auth=AUTH, json={"project": "1", "schema": config})
        assert got.status_code == 400, got.text
    many = template("binary").replace('hint="closed eye;', 'hint="' + "a;" * 5000)  # the first 16 are used
    r = predict(url, [GOOD], config=many)
    assert r.status_code == 200 and r.json()["results"][0]["result"]
    wide = template("binary").replace('<Choice value="closed"', "".join(f'<Choice value="c{i}"/>' for i in range(1001))
                                      + '<Choice value="closed"')
    got = requests.post(f"{url}/predict", auth=AUTH, json={"tasks": [], "label_config": wide, "project": "1"})
    assert got.status_code == 400 and "classes" in got.json()["error"]
    huge = template("binary").replace("<View>", "<View>" + "<Header value='x'/>" * 120_000)  # 2.3 MB of XML
    got = requests.post(f"{url}/predict", auth=AUTH, json={"tasks": [], "label_config": huge, "project": "1"})
    assert got.status_code == 400 and "characters refused" in got.json()["error"]
    # past LABELER_MAX_TASKS_PER_PREDICT (10,000) nothing more is done in the request: those tasks get no prediction
    # (an empty list) and, with no verified Label Studio connection for project 1, no background job either
    got = requests.post(f"{url}/predict", auth=AUTH, json={"tasks": [0] * 10_001, "label_config": template("binary"),
                                                           "project": "1"})
    assert got.status_code == 200 and len(got.json()["results"]) == 10_001 and got.json()["results"][-1] == []
    job = requests.get(f"{url}/metrics", auth=AUTH).json()["projects"]
    assert job.get("1", {}).get("preannotation", {}).get("status", "none") == "none"
    # one malformed reference is that task's error, not the request's
    r = predict(url, ["http://[::1/x.png", "http://h:99999/x.png", GOOD])
    assert r.status_code == 200 and [bool(x["result"]) for x in r.json()["results"]] == [False, False, True]
    assert requests.post(f"{url}/setup", auth=AUTH, json={"project": "1", "schema": template("binary"),
                                                          "hostname": "http://[::1"}).status_code in (200, 403)
    assert requests.post(f"{url}/setup", headers={"Authorization": "Basic abc"}, json={}).status_code == 401


def test_paths_from_the_network_stay_under_model_dir(secured):
    url, model_dir = secured
    for project in ("../x", "/abs/path", "1/../../x", "..", "1e3"):
        assert predict(url, [GOOD], project=project).status_code == 400
        hook = requests.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": project}},
                             headers={"X-Labeler-Webhook-Secret": "hook-secret"})
        assert hook.status_code == 200 and hook.json()["status"] == "ignored"
    admin = {"Authorization": "Bearer admin-secret"}
    for version in ("../..", "/etc/passwd", "v1-head/../../x"):
        r = requests.post(f"{url}/admin/projects/1/promote", json={"version": version}, headers=admin)
        assert r.status_code == 400
    outside = [p for p in Path(model_dir).parent.iterdir() if p.name in {"x", "abs"}]
    assert outside == [] and not Path("/abs/path").exists()


def test_webhooks_need_credentials_and_a_known_project(secured):
    url, model_dir = secured
    start = {"action": "START_TRAINING", "project": {"id": 41}}
    assert requests.post(f"{url}/webhook", json=start).status_code == 401
    for i in range(50):  # a flood of new ids makes no folders and no threads
        r = requests.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": 1000 + i}},
                          headers={"X-Labeler-Webhook-Secret": "hook-secret"})
        assert r.json()["status"] == "ignored"
    assert not any(p.name.startswith("10") for p in (Path(model_dir) / "projects").glob("*"))
    metrics = requests.get(f"{url}/metrics", auth=AUTH).json()
    assert "unreadable_images" not in json.dumps(metrics)


def test_health_answers_while_every_predict_thread_is_stuck(secured, canaries):
    """8 clients keep /predict busy with images that drip one byte every 2 s; /health stays under 1 s."""
    url, _ = secured
    slow = [canaries["drip"].url + f"/slow{i}.png" for i in range(4)] + [GOOD]
    end = time.monotonic() + 8

    def client() -> list[int]:
        codes = []
        while time.monotonic() < end:
            codes.append(predict(url, slow, timeout=60).status_code)
        return codes

    health = []
    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(client) for _ in range(8)]
        time.sleep(1)
        while time.monotonic() < end:
            t0 = time.monotonic()
            ok = requests.get(f"{url}/health", timeout=5).status_code == 200
            health.append((ok, time.monotonic() - t0))
            time.sleep(0.25)
        codes = [c for j in jobs for c in j.result()]
    assert all(ok for ok, _ in health) and max(dt for _, dt in health) < 1.0, health
    assert set(codes) <= {200, 503} and 200 in codes
    assert len(canaries["drip"].hits) >= 8  # the slow downloads really ran


def test_setup_cannot_hijack_a_project(label_studio, secured, canaries, image_dir):
    """With a real Label Studio: its /setup binds the backend; an attacker's /setup changes nothing."""
    url, model_dir = secured
    ls_url, token = label_studio
    ls = Studio(ls_url, token)
    proj = ls.projects.create(title="victim", label_config=template("binary"))
    # someone who may edit the project adds an ML backend of their own first: Label Studio makes it a webhook too
    theirs = canaries["backend"]
    ls.ml.create(project=proj.id, url=theirs.url, title="theirs")
    ls.ml.create(project=proj.id, url=url, title="labeler", auth_method="BASIC_AUTH",
                 basic_auth_user="ls", basic_auth_pass="pw")
    assert json.loads((Path(model_dir) / "studio.json").read_text())["origin"] == ls_url
    attacker = canaries["public"]
    before = len(attacker.hits)
    for pid in (str(proj.id), "999"):
        r = requests.post(f"{url}/setup", auth=AUTH, json={"project": pid, "schema": template("binary"),
                                                           "hostname": attacker.url, "access_token": "x"})
        assert r.status_code == 403 and ls_url in r.json()["error"]
    # a wrong token for the right Label Studio is not remembered either (it cannot read the project)
    r = requests.post(f"{url}/setup", auth=AUTH, json={"project": str(proj.id), "schema": template("binary"),
                                                       "hostname": ls_url, "access_token": "wrong-token-123"})
    assert r.status_code == 200
    assert len(attacker.hits) == before, "the backend contacted the attacker's host"
    # a query or fragment would turn the check into a GET of some unauthenticated page of Label Studio's
    for trick in (f"{ls_url}/version?", f"{ls_url}/version#", ls_url.replace("//", "//me:pw@")):
        r = requests.post(f"{url}/setup", auth=AUTH, json={"project": "998", "schema": template("binary"),
                                                           "hostname": trick, "access_token": "x"})
        assert r.status_code == 403, (trick, r.text)
    assert not (Path(model_dir) / "projects" / "998").exists(), "a project became known without proof"
    assert not Connection(canaries["backend"].url, "t").can_read_project("5"), "any 200 is not the project"
    # Label Studio's auto-created webhook now carries the backend's secret, so annotation events get through
    hooks = [h for h in ls.webhooks.list(project=str(proj.id)) if h.url == url + "/webhook"]
    wait_until(lambda: all((h.headers or {}).get("X-Labeler-Webhook-Secret") == "hook-secret"
                           for h in ls.webhooks.list(project=str(proj.id)) if h.url == url + "/webhook"),
               timeout=60)
    assert hooks
    their_hooks = [h for h in ls.webhooks.list(project=str(proj.id)) if h.url.startswith(theirs.url)]
    assert their_hooks and not any((h.headers or {}) for h in their_hooks), "our secret went to their webhook"
    r = requests.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": 999}},
                      headers={"X-Labeler-Webhook-Secret": "hook-secret"})
    assert r.json()["status"] == "ignored"


def test_restart_after_a_crash_leaves_no_running_job_and_no_temp_files(tmp_path, tiny_model):
    """The state a kill -9 leaves (job 'running', half-written version, temp pointer) is repaired on start."""
    pdir = tmp_path / "projects" / "3"
    (pdir / "versions" / ".tmp-abc").mkdir(parents=True)
    (pdir / "versions" / ".tmp-abc" / "cnn.pt").write_bytes(b"half")
    (pdir / ".CURRENT.tmp-x").write_text("v9-cnn")
    (pdir / "job.json").write_text(json.dumps({"status": "running", "step": "training"}))
    env = {"MODEL_DIR": str(tmp_path), "LABELER_ZEROSHOT_MODEL": "none", "LABELER_ADMIN_TOKEN": "a"}
    server = start_backend(env, log_dir=tmp_path)
    try:
        job = requests.get(f"{server.url}/admin/projects/3/job", headers={"Authorization": "Bearer a"}).json()
    finally:
        server.stop()
    assert job["status"] == "failed" and "interrupted" in job["error"]
    assert not list((pdir / "versions").iterdir()) and not (pdir / ".CURRENT.tmp-x").exists()
