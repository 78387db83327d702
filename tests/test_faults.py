"""Faults an operator meets, with real servers: each test states the promise it checks (README "Reliability").

Label Studio is stopped and started again (same data, same port) while the backend trains, refreshes
predictions and publishes the queue; the disk fills up (a size-limited tmpfs) while a version, the embedding
cache and an export are written; the object store fails or is slow (a moto server behind a proxy that
injects faults) while replicas promote and serve.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from labeler.dev.demo import template

from .conftest import eyes_project, start_tiny_backend

pytestmark = [pytest.mark.integration, pytest.mark.faults]
ADMIN = {"Authorization": "Bearer admin-secret"}
TOKEN = "labeler-faults-token-0123456789"


class RestartableStudio:
    """A real Label Studio that a test can stop and start again on the same port, with the same data."""

    def __init__(self, data_dir: Path) -> None:
        from labeler.dev.localserver import free_port

        self.data_dir, self.port = data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self) -> None:
        from labeler.dev.localserver import start_label_studio

        self.server = start_label_studio(self.data_dir, "admin@example.com", "test-pass-123", TOKEN, port=self.port)

    def kill_mid_request(self) -> None:
        """Freeze Label Studio (SIGSTOP: requests in flight hang), then kill -9 it: a crash at that point."""
        assert self.server is not None
        os.killpg(self.server.proc.pid, signal.SIGSTOP)
        os.killpg(self.server.proc.pid, signal.SIGKILL)
        self.server.proc.wait(10)
        self.server = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        with contextlib.suppress(requests.RequestException):
            requests.get(f"{self.url}/health", timeout=2)
            raise AssertionError("Label Studio still answers after stop()")


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Iterator[RestartableStudio]:
    if shutil.which("label-studio") is None and not (Path(sys.executable).parent / "label-studio").exists():
        pytest.skip("the label-studio server is not installed (pip install -e '.[test]')")
    ls = RestartableStudio(tmp_path_factory.mktemp("ls-restartable"))
    ls.start()
    yield ls
    ls.stop()


@pytest.fixture(scope="module")
def backend(studio, tmp_path_factory, tiny_model):
    """The real backend (gunicorn, the tiny model), small batches so that a refresh takes many requests."""
    model_dir = tmp_path_factory.mktemp("faults-model-dir")
    server = start_tiny_backend(model_dir, tiny_model, LABELER_MIN_PER_CLASS="3", LABELER_BATCH_SIZE="4",
                                LABELER_SELF_TRAIN_POOL="0")
    yield server.url, model_dir
    server.stop()


def job(url: str, pid: int) -> dict:
    return requests.get(f"{url}/admin/projects/{pid}/job", headers=ADMIN, timeout=10).json()


def wait_for(what: Callable[[], object], timeout: float, every: float = 0.25, message: str = "") -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if got := what():
            return got
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s: {message}")


def finished(url: str, pid: int, timeout: float = 240) -> dict:
    return wait_for(lambda: (st := job(url, pid))["status"] in {"done", "failed"} and st, timeout,
                    message=f"job of project {pid} did not end")  # type: ignore[return-value]


def predictions_per_task(ls, pid: int) -> dict[int, list[str]]:
    tasks = ls.request("GET", "api/tasks/", params={"project": pid, "fields": "all", "page_size": 1000}).json()["tasks"]
    return {t["id"]: sorted(p["model_version"] for p in t["predictions"]) for t in tasks}


def annotate(ls, task: dict, label: str) -> None:
    ls.annotations.create(id=task["id"], result=[{"from_name": "choice", "to_name": "image", "type": "choices",
                                                  "value": {"choices": [label]}}])


@pytest.fixture(scope="module")
def project(studio, backend, tmp_path_factory):
    """120 eye images, pre-annotated through Label Studio's "Retrieve predictions", 24 of them labelled."""
    ls, pid = eyes_project((studio.url, TOKEN), tmp_path_factory.mktemp("eyes"), 120, "faults")
    ls.ml.create(project=pid, url=backend[0], title="labeler")
    ls.actions.create(id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []})
    tasks = ls.request("GET", "api/tasks/", params={"project": pid, "page_size": 1000}).json()["tasks"]
    for label in ("open", "closed"):
        for t in [t for t in tasks if f"{label}_" in t["data"]["image"]][:12]:
            annotate(ls, t, label)
    return ls, pid


def one_prediction_each(ls, pid: int, version: str) -> None:
    held = predictions_per_task(ls, pid)
    assert len(held) == 120
    wrong = {t: v for t, v in held.items() if v != [version]}
    assert not wrong, f"tasks without exactly one prediction of {version}: {dict(list(wrong.items())[:5])}"


def test_studio_down_when_training_starts_fails_plainly_then_resumes(studio, backend, project):
    """Promise: a training that cannot reach Label Studio fails with a reason that names it, and runs again
    by itself when Label Studio answers; then every task holds exactly one prediction, the new version's."""
    url, _ = backend
    ls, pid = project
    studio.stop()
    try:
        assert requests.post(f"{url}/admin/projects/{pid}/train", headers=ADMIN, timeout=10).status_code in (200, 202)
        st = finished(url, pid)
        assert st["status"] == "failed", st
        assert f"Label Studio at {studio.url} is unreachable" in st["error"] and "runs again when it answers" in st["error"]
        assert requests.get(f"{url}/health", timeout=10).json()["status"] == "UP"
    finally:
        studio.start()
    st = wait_for(lambda: (s := job(url, pid))["status"] == "done" and s, 240, 1.0, "the job did not resume")
    assert st["trigger"] == "resumed: Label Studio answers again" and st["promoted"], st
    one_prediction_each(ls, pid, st["version"])


def test_studio_stopped_during_a_refresh_resumes_and_leaves_one_prediction_per_task(studio, backend, project):
    """Promise: Label Studio stopping in the middle of a prediction refresh fails the job plainly; the refresh
    resumes when it answers, and no task is left with two predictions of different versions, or none."""
    url, _ = backend
    ls, pid = project
    r = requests.post(f"{url}/admin/projects/{pid}/promote", json={"version": None}, headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    wait_for(lambda: job(url, pid).get("step") == "refreshing predictions", 60, 0.02, "no refresh started")

    def new_ones() -> int:
        held = ls.request("GET", "api/predictions/", params={"project": pid}).json()
        return sum(p["model_version"].startswith("zeroshot-") for p in held)

    wait_for(lambda: 0 < new_ones() < 100, 30, 0.02, "no task got its new prediction")
    studio.kill_mid_request()  # some tasks hold the new version now, the rest the old one (or none, mid-batch)
    try:
        st = finished(url, pid)
        assert st["status"] == "failed" and "unreachable" in st["error"], st
        assert st["refresh_pending"] == "zero-shot", st
    finally:
        studio.start()
    st = wait_for(lambda: (s := job(url, pid))["status"] == "done" and s, 240, 1.0, "the refresh did not resume")
    zeroshot = ls.projects.get(id=pid).model_version
    assert zeroshot.startswith("zeroshot-") and not st.get("refresh_pending"), st
    one_prediction_each(ls, pid, zeroshot)


def test_studio_down_during_a_queue_publish_publishes_when_back(studio, backend, project):
    """Promise: a queue publish that finds Label Studio down is tried again until it answers, and then the
    tasks that ``/predict`` scored meanwhile carry the model's answer in the "Next to label" tab."""
    url, _ = backend
    ls, pid = project
    tasks = ls.request("GET", "api/tasks/", params={"project": pid, "page_size": 1000}).json()["tasks"]
    fresh = [t for t in tasks if not t["total_annotations"]][:6]
    ls.projects.import_tasks(id=pid, request=[{"image": t["data"]["image"]} for t in fresh])  # no answer yet
    new = [t for t in ls.request("GET", "api/tasks/", params={"project": pid, "page_size": 1000}).json()["tasks"]
           if t["id"] > max(x["id"] for x in tasks)]
    assert len(new) == 6 and not any("labeler_answer" in t["data"] for t in new)
    studio.stop()
    try:  # the images were downloaded before (uploads are reused): /predict answers, the publish cannot
        body = {"tasks": new, "label_config": template("binary"), "project": f"{pid}.0"}
        results = requests.post(f"{url}/predict", json=body, timeout=60).json()["results"]
        assert len(results) == 6 and all(r["result"] for r in results), results
        time.sleep(14)  # the first try (after 2 s) and a retry (10 s later) find Label Studio down
    finally:
        studio.start()

    def answered() -> bool:
        data = [ls.tasks.get(id=t["id"]).data for t in new]
        return all("labeler_answer" in d for d in data)

    wait_for(answered, 60, 1.0, "the queue was not published after Label Studio came back")


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 48 MiB tmpfs (needs root: CI and this project's machines run tests as root)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one ballast file; returns it (delete it to make room again)."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (2**20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(disk).free < 8192
    return ballast


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name or ".partial-" in p.name]


def test_full_disk_keeps_the_serving_version_and_removes_partial_files(studio, tiny_model, small_disk, tmp_path):
    """Promise: when the disk fills up, a training fails with "disk full" and the folder, leaving no partial
    version; the serving version still serves, also new images (their embeddings are not cached, with a
    warning); an export fails the same way and leaves nothing behind; with room again, training works."""
    from labeler.dev.demo import synthetic_eyes, upload_images
    from labeler.dev.localserver import start_backend

    model_dir = small_disk / "model_dir"  # the log goes to tmp_path: a full disk cannot take it
    server = start_backend({"MODEL_DIR": str(model_dir), "LABELER_ZEROSHOT_MODEL": str(tiny_model), "HF_HUB_OFFLINE": "1",
                            "LABELER_ADMIN_TOKEN": "admin-secret", "LABELER_MIN_PER_CLASS": "3",
                            "LABELER_SELF_TRAIN_POOL": "0"}, log_dir=tmp_path)
    try:
        ls, pid = eyes_project((studio.url, TOKEN), tmp_path / "eyes", 30, "disk full")
        ls.ml.create(project=pid, url=server.url, title="labeler")
        tasks = ls.request("GET", "api/tasks/", params={"project": pid, "page_size": 100}).json()["tasks"]
        for label in ("open", "closed"):
            for t in [t for t in tasks if f"{label}_" in t["data"]["image"]][:8]:
                annotate(ls, t, label)
        train = lambda: requests.post(f"{server.url}/admin/projects/{pid}/train", headers=ADMIN, timeout=10)  # noqa: E731
        assert train().status_code in (200, 202) and finished(server.url, pid)["status"] == "done"
        serving = requests.get(f"{server.url}/metrics", timeout=10).json()["projects"][str(pid)]["serving"]

        ballast = fill(small_disk)
        assert train().status_code in (200, 202)
        st = finished(server.url, pid)
        versions = model_dir / "projects" / str(pid) / "versions"
        assert st["status"] == "failed" and "disk full: a new model version" in st["error"], st
        assert str(versions) in st["error"] and not leftovers(model_dir), leftovers(model_dir)

        upload_images(studio.url, TOKEN, pid, sorted(synthetic_eyes(tmp_path / "new", n=4, seed=9).iterdir()))
        new = ls.request("GET", "api/tasks/", params={"project": pid, "page_size": 100}).json()["tasks"][-4:]
        body = {"tasks": new, "label_config": template("binary"), "project": f"{pid}.0"}
        r = requests.post(f"{server.url}/predict", json=body, timeout=60)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [r["model_version"] for r in results] == [serving] * 4 and all(r["result"] for r in results)
        assert not leftovers(model_dir)
        assert "predictions go on without caching" in (tmp_path / "backend.log").read_text()

        env = {**os.environ, "LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": TOKEN}
        out = small_disk / "export"
        cli = subprocess.run([str(Path(sys.executable).with_name("labeler")), "export", "--project", str(pid),
                              "--format", "imagefolder", "--out", str(out)], env=env, capture_output=True, text=True)
        assert cli.returncode != 0 and f"disk full: the export of project {pid}" in cli.stderr, cli.stderr[-2000:]
        assert not out.exists() and not leftovers(small_disk), leftovers(small_disk)

        ballast.unlink()
        assert train().status_code in (200, 202) and finished(server.url, pid)["status"] == "done"
    finally:
        server.stop()


class FaultyProxy:
    """An HTTP proxy in front of a moto S3 server that injects faults: ``down`` (every request answered 503),
    ``fail_puts_after`` (PUTs after the first N answered 503) and ``delay_s`` (each request held that long)."""

    def __init__(self, target: str) -> None:
        import http.server
        import threading

        self.target, self.down, self.fail_puts_after, self.delay_s, self.puts = target, False, None, 0.0, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(proxy.delay_s)
                if self.command == "PUT":
                    proxy.puts += 1
                failing = proxy.fail_puts_after is not None and self.command == "PUT" and \
                    proxy.puts > proxy.fail_puts_after
                if proxy.down or failing:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = requests.request(self.command, proxy.target + self.path, data=body, headers=headers, timeout=30)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any  # noqa: N815 - http.server's names

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def s3(tmp_path):
    """(proxy, url, make_replica): a moto S3 server behind a :class:`FaultyProxy`, a fresh bucket, and a
    factory of registries on it, each with its own MODEL_DIR as a replica has."""
    pytest.importorskip("s3fs", reason="object storage needs pip install 'labeler[cloud]'")
    import uuid

    import boto3
    from moto.server import ThreadedMotoServer

    from labeler.dev.localserver import free_port
    from labeler.models.objectregistry import ObjectRegistry

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    proxy = FaultyProxy(f"http://127.0.0.1:{port}")
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    options = {"key": "testing", "secret": "testing", "endpoint_url": proxy.url, "skip_instance_cache": True,
               "client_kwargs": {"region_name": "us-east-1"}}
    yield proxy, lambda name: ObjectRegistry(tmp_path / name, f"s3://{bucket}/labeler", storage_options=options)
    proxy.close()
    moto.stop()


def version_of(files: int) -> Callable[[Path], dict]:
    def write(folder: Path) -> dict:
        for i in range(files):
            (folder / f"part{i}.bin").write_bytes(os.urandom(1000) * (i + 1))
        return {"kind": "head"}
    return write


def test_store_failing_mid_upload_never_shows_a_half_version(s3):
    """Promise: an upload cut short by a failing object store fails plainly and is never listed, served or
    promotable on any replica; the serving version stays; once the store answers, the next upload works."""
    from labeler.errors import RegistryError, RegistryStoreError

    proxy, replica = s3
    a, b = replica("a"), replica("b")
    v1 = a.add("1", version_of(2))
    a.promote("1", v1)
    proxy.fail_puts_after = proxy.puts + 2  # the claim and one file go through, the rest fail
    with pytest.raises(RegistryStoreError, match="failed"):
        a.add("1", version_of(4))
    proxy.fail_puts_after = None
    assert [m["version"] for m in b.list("1")] == [v1] and [m["version"] for m in a.list("1")] == [v1]
    assert not leftovers(a.versions_dir("1"))
    with pytest.raises(RegistryError):
        b.promote("1", "v2-head")
    time.sleep(b.current_ttl_s)
    assert (a.current("1"), b.current("1")) == (v1, v1)
    v3 = a.add("1", version_of(4))
    assert v3 == "v3-head" and [m["version"] for m in b.list("1")] == [v1, v3]


def test_store_down_promotion_is_all_or_nothing_and_replicas_keep_serving(s3):
    """Promise: with the object store down, a promotion fails plainly and changes nothing; replicas keep
    serving the version they last read; when the store is back they all see the same serving version."""
    from labeler.errors import RegistryStoreError

    proxy, replica = s3
    a, b = replica("a"), replica("b")
    v1, v2 = a.add("1", version_of(1)), a.add("1", version_of(1))
    a.promote("1", v1)
    time.sleep(b.current_ttl_s)
    assert b.current("1") == v1
    proxy.down = True
    with pytest.raises(RegistryStoreError):
        a.promote("1", v2)
    time.sleep(b.current_ttl_s)
    assert b.current("1") == v1, "a replica keeps serving through an outage"
    proxy.down = False
    time.sleep(max(a.current_ttl_s, b.current_ttl_s))
    assert (a.current("1"), b.current("1")) == (v1, v1)


def test_slow_store_replicas_see_a_version_only_when_complete(s3):
    """Promise: with a slow object store (0.2 s a request), a replica polling while another uploads never lists
    or downloads a version before all of its files are there, and then gets every byte."""
    import threading

    proxy, replica = s3
    a, b = replica("a"), replica("b")
    proxy.delay_s = 0.2
    made: list[str] = []
    upload = threading.Thread(target=lambda: made.append(a.add("1", version_of(5))))
    upload.start()
    seen_early = []
    while upload.is_alive():
        listed = [m["version"] for m in b.list("1")]
        if listed and upload.is_alive():
            seen_early.append(listed)
        time.sleep(0.05)
    upload.join()
    assert not seen_early or all(len(list(b.path("1", v).glob("part*.bin"))) == 5 for v in seen_early[0])
    folder = b.path("1", made[0])
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(f"part{i}.bin" for i in range(5)), "meta.json"])
    assert [(folder / f"part{i}.bin").stat().st_size for i in range(5)] == [1000 * (i + 1) for i in range(5)]


def test_two_replicas_promoting_at_once_agree_on_one_winner(s3):
    """Promise: two replicas promoting different versions at the same moment end with one winner, and both
    serve it within about a second (the serving pointer's cache time)."""
    import threading

    proxy, replica = s3
    a, b = replica("a"), replica("b")
    v1, v2 = a.add("1", version_of(1)), b.add("1", version_of(1))
    for _ in range(5):
        go = threading.Barrier(2)
        threads = [threading.Thread(target=lambda r=r, v=v: (go.wait(), r.promote("1", v))) for r, v in ((a, v1), (b, v2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t0 = time.monotonic()
        while (a.current("1"), b.current("1")) != (winner := replica("probe").current("1"),) * 2:
            assert time.monotonic() - t0 < 2.5, (a.current("1"), b.current("1"), winner)
            time.sleep(0.1)
        assert winner in (v1, v2)


class RayHead:
    """``ray start --head --block`` on fixed ports with Ray's token auth, killable (-9) and startable again
    at the same address (the backend's RAY_API_SERVER_ADDRESS); as tests/test_ray.py starts its cluster."""

    def __init__(self, log_dir: Path) -> None:
        import secrets

        from labeler.dev.localserver import free_port

        self.port, self.dash, self.agent = free_port(), free_port(), free_port()
        self.address, self.token, self.log_dir = f"http://127.0.0.1:{self.dash}", secrets.token_hex(32), log_dir
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import tempfile

        from labeler.dev.localserver import wait_http

        exe = os.path.join(os.path.dirname(sys.executable), "ray")
        env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.temp = tempfile.mkdtemp(prefix="rayf-")
        self.proc = subprocess.Popen(
            [exe, "start", "--head", "--block", "--num-cpus=1", "--num-gpus=0", f"--port={self.port}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
             f"--dashboard-agent-listen-port={self.agent}", "--disable-usage-stats", f"--temp-dir={self.temp}"],
            stdout=(self.log_dir / "ray.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
        wait_http(f"{self.address}/api/gcs_healthz", 120, self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None
            shutil.rmtree(self.temp, ignore_errors=True)
            time.sleep(2)  # the ports are freed


def test_ray_head_killed_during_a_training_job_is_reported_lost_and_a_new_start_works(studio, tiny_model, tmp_path):
    """Promise: when the Ray head dies under a training job, the backend answers for the job (status "lost",
    with the reason) instead of an error, and once a head is back at the same address a new start trains."""
    pytest.importorskip("ray.job_submission", reason="Ray is not installed (pip install 'labeler[ray]')")
    head = RayHead(tmp_path)
    head.start()
    server = start_tiny_backend(tmp_path / "md", tiny_model, LABELER_MIN_PER_CLASS="3", LABELER_SELF_TRAIN_POOL="0",
                                RAY_API_SERVER_ADDRESS=head.address, RAY_AUTH_TOKEN=head.token)
    try:
        ls, pid = eyes_project((studio.url, TOKEN), tmp_path / "eyes", 16, "ray head killed")
        ls.ml.create(project=pid, url=server.url, title="labeler")
        for t in ls.request("GET", "api/tasks/", params={"project": pid, "page_size": 100}).json()["tasks"]:
            annotate(ls, t, "open" if "open_" in t["data"]["image"] else "closed")
        train = lambda: requests.post(f"{server.url}/admin/projects/{pid}/train", headers=ADMIN, timeout=120)  # noqa: E731
        r = train()
        if "No available agent" in r.text:
            pytest.skip(f"Ray's job agent did not start on this machine: {r.text}")
        assert r.status_code in (200, 202), r.text
        wait_for(lambda: job(server.url, pid)["status"] == "running", 120, 0.5, "the Ray job did not start")
        head.kill()
        st = wait_for(lambda: (s := job(server.url, pid))["status"] == "lost" and s, 60, 1.0, "no 'lost' job")
        assert st["job_id"] == f"labeler-p{pid}-1" and "was lost" in st["error"] and head.address in st["error"], st
        head.start()
        st = job(server.url, pid)
        assert st["status"] == "lost" and "no longer knows this job" in st["error"], st
        r = train()
        assert r.status_code in (200, 202), r.text
        st = wait_for(lambda: (s := job(server.url, pid))["status"] in ("done", "failed") and s, 300, 1.0, "no end")
        assert st["status"] == "done" and st["version"], st
    finally:
        server.stop()
        head.kill()


_BULK_DRIVER = """
import sys
from pathlib import Path
from labeler.config import Settings
from labeler.distributed.bulk import preannotate_ray
from labeler.studio.client import Studio
url, token, project, model_dir, tiny = sys.argv[1:6]
s = Settings(model_dir=Path(model_dir), zeroshot_model=tiny, local_files_only=True, allowed_hosts="127.0.0.1")
rep = preannotate_ray(Studio.connect(url, token), int(project), s, batch_size=2, import_batch=2, progress=False)
print("REPORT", rep.skipped_existing, rep.predicted, len(rep.failed))
"""


def test_ray_head_killed_during_bulk_preannotation_resumes_where_it_stopped(studio, tiny_model, image_dir,
                                                                           slow_image_server, tmp_path):
    """Promise: a bulk pre-annotation on Ray whose head dies mid-run ends with an error (never hangs); run again
    on a new head, it skips the tasks already written and predicts the rest, no task twice."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'labeler[ray]')")
    from labeler.studio.client import Studio

    head = RayHead(tmp_path)
    head.start()
    ls = Studio(studio.url, TOKEN)
    pid = ls.projects.create(title="ray head killed in bulk", label_config=template("binary")).id
    files = [f"{slow_image_server}/{f.name}?copy={k}" for k in range(3) for f in sorted(image_dir.iterdir())]
    ls.projects.import_tasks(id=pid, request=[{"image": f} for f in files])
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{head.port}", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head.token}
    args = [sys.executable, "-c", _BULK_DRIVER, studio.url, TOKEN, str(pid), str(tmp_path / "md"), str(tiny_model)]
    count = lambda: sum(len(v) for v in predictions_per_task(ls, pid).values())  # noqa: E731
    try:
        driver = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: count() > 0 or driver.poll() is not None, 300, 0.1, "no prediction arrived")
        head.kill()
        out = driver.communicate(timeout=180)[0].decode()
        assert driver.returncode != 0 and "REPORT" not in out, out[-3000:]
        done = count()
        assert 0 < done < len(files), f"the run was not cut mid-way ({done} of {len(files)})"
        head.start()
        again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        report = [line.split()[1:] for line in again.stdout.splitlines() if line.startswith("REPORT")]
        assert report == [[str(done), str(len(files) - done), "0"]], again.stdout[-2000:] + again.stderr[-3000:]
        held = predictions_per_task(ls, pid)
        assert len(held) == len(files) and all(len(v) == 1 for v in held.values()), held
    finally:
        head.kill()
