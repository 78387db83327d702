"""The Ray path (issue 14): a local Ray cluster with a declared GPU, the tiny BLIP-2, a real Label Studio."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from labeler.config import Settings
from labeler.dev.demo import template, upload_images
from labeler.models.predictor import Predictor
from labeler.studio.client import Studio
from labeler.studio.preannotate import preannotate
from labeler.studio.tasks import prediction_versions


def test_prediction_versions_reads_every_listing_shape():
    assert prediction_versions({"predictions": [{"model_version": "v2-head"}, "junk"]}) == {"v2-head"}
    assert prediction_versions({"predictions_model_versions": "zeroshot-1a,v3-head"}) == {"zeroshot-1a", "v3-head"}
    assert prediction_versions({"predictions_model_versions": "v1-head, v2-head"}) == {"v1-head", "v2-head"}
    assert prediction_versions({"predictions_model_versions": ""}) == set()
    cut = ",".join(f"v{i}-head" for i in range(80))[:500]  # Label Studio cuts the string at 500 characters
    got = prediction_versions({"predictions_model_versions": cut})
    assert cut.endswith(",v56-he") and "v55-head" in got and not any(v.startswith("v56") for v in got)


@pytest.fixture(scope="module")
def ray_cluster():
    """Two CPUs and one declared GPU: GPU actors are placed (and run on the CPU) on a machine without one."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'labeler[ray]')")
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def _settings(tmp_path, tiny_model, image_dir) -> Settings:
    return Settings(model_dir=tmp_path / "md", zeroshot_model=str(tiny_model), local_files_only=True,
                    local_root=image_dir)


def _project(url, token, files, title):
    ls = Studio(url, token)
    proj = ls.projects.create(title=title, label_config=template("binary"))
    upload_images(url, token, proj.id, files)
    ls.projects.import_tasks(id=proj.id, request=[{"image": "/data/upload/does-not-exist.png"}])
    return ls, proj.id


def _predictions(ls, project, key: str = "name") -> dict[str, list[tuple]]:
    """Per image file name (or whole URL): every prediction (version, choice, score) Label Studio holds."""
    tasks = ls.request(
        "GET", "api/tasks/", params={"project": project, "fields": "all", "page_size": 100}).json()["tasks"]
    out = {}
    for t in tasks:
        name = t["data"]["image"]
        name = name.rsplit("-", 1)[-1] if key == "name" else name  # uploads are named <random>-<file name>
        out[name] = sorted((p["model_version"], tuple(r["value"]["choices"][0] for r in p["result"]),
                            p.get("score")) for p in t["predictions"])
    return out


@pytest.mark.integration
def test_ray_predictions_equal_in_process_ones(ray_cluster, label_studio, tmp_path, tiny_model, image_dir):
    from labeler.distributed.bulk import preannotate_ray

    url, token = label_studio
    files = sorted(image_dir.iterdir())
    ls_a, local_project = _project(url, token, files, "in-process")
    ls_b, ray_project = _project(url, token, files, "on Ray")

    predictor = Predictor(_settings(tmp_path / "a", tiny_model, image_dir))
    predictor.load_scorer()
    local = preannotate(ls_a, local_project, predictor, batch_size=4, progress=False)
    remote = preannotate_ray(ls_b, ray_project, _settings(tmp_path / "b", tiny_model, image_dir),
                             batch_size=4, import_batch=5, progress=False)

    assert remote.version == local.version
    assert (remote.total, remote.predicted, remote.skipped_existing) == (local.total, local.predicted, 0)
    assert len(remote.failed) == 1 and "cannot download" in remote.failed[0][1]
    a, b = _predictions(ls_a, local_project), _predictions(ls_b, ray_project)
    assert a == b, "same tasks, same predictions, task for task"
    assert sum(len(p) for p in b.values()) == len(files)


_DRIVER = """
import sys
from pathlib import Path
from labeler.config import Settings
from labeler.distributed.bulk import preannotate_ray
from labeler.studio.client import Studio
url, token, project, model_dir, tiny = sys.argv[1:6]
s = Settings(model_dir=Path(model_dir), zeroshot_model=tiny, local_files_only=True, allowed_hosts="127.0.0.1")
preannotate_ray(Studio.connect(url, token), int(project), s, batch_size=2, import_batch=2,
                progress=False)
"""


@pytest.mark.integration
def test_killed_ray_run_resumes_without_duplicates(ray_cluster, label_studio, tmp_path, tiny_model, image_dir,
                                                   slow_image_server):
    from labeler.distributed.bulk import preannotate_ray

    url, token = label_studio
    ls = Studio(url, token)
    project = ls.projects.create(title="killed", label_config=template("binary")).id
    # 36 tasks: the 12 images three times over (distinct URLs), slow enough to be killed mid-way.
    files = [f"{slow_image_server}/{f.name}?copy={k}" for k in range(3) for f in sorted(image_dir.iterdir())]
    ls.projects.import_tasks(id=project, request=[{"image": f} for f in files])
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, url, token, str(project), str(tmp_path / "md"),
                               str(tiny_model)], env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    count = lambda: sum(len(p) for p in _predictions(ls, project, key="image").values())  # noqa: E731
    deadline = time.monotonic() + 300
    while count() == 0:
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no prediction arrived"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies mid-run; Ray ends its actors
    driver.wait()
    time.sleep(2)  # a request already on the wire lands (or not) before the listing
    done = count()
    assert 0 < done < len(files), f"the run was not killed mid-way ({done} of {len(files)} predicted)"

    settings = Settings(model_dir=tmp_path / "md", zeroshot_model=str(tiny_model), local_files_only=True,
                        allowed_hosts="127.0.0.1")
    rep = preannotate_ray(ls, project, settings, batch_size=4, progress=False)
    assert (rep.skipped_existing, rep.predicted, rep.failed) == (done, len(files) - done, [])
    per_task = _predictions(ls, project, key="image")
    assert all(len(p) == 1 for p in per_task.values()), per_task
    assert len(per_task) == len(files)


@pytest.fixture(scope="module")
def ray_jobs_cluster(tmp_path_factory):
    """A one-node Ray cluster with its job server (``ray start --head --block``), ended by its process group."""
    pytest.importorskip("ray.job_submission", reason="Ray is not installed (pip install 'labeler[ray]')")
    pytest.importorskip("aiohttp", reason="Ray's job server needs ray[default] (pip install 'labeler[ray]')")
    from labeler.dev.localserver import free_port, wait_http

    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    # The dashboard agent's HTTP port is fixed (52365) by default: the in-process cluster of the tests above
    # already holds it, and a head whose agent cannot bind it answers "No available agent" to every job.
    port, dash, agent = free_port(), free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rayj-")  # its own: /tmp/ray/ray_current_cluster would outlive the cluster
    # Ray's token authentication (on by default since 2.60), with a token of the test's own; only the head's
    # environment gets it: Ray reads RAY_AUTH_MODE once per process, so setting it here would turn token auth
    # on for the in-process clusters of the other tests too.
    token = secrets.token_hex(32)
    log = (tmp_path_factory.mktemp("ray-head") / "ray.log").open("wb")
    # Jobs run `labeler ...`: the cluster has labeler installed, as a cluster built from labeler's image does.
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    proc = subprocess.Popen([exe, "start", "--head", "--block", "--num-cpus=1", "--num-gpus=0", f"--port={port}",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--dashboard-agent-listen-port={agent}", "--disable-usage-stats", f"--temp-dir={temp}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_http(f"http://127.0.0.1:{dash}/api/gcs_healthz", 120, proc)  # answers without Ray's auth token
        yield f"http://127.0.0.1:{dash}", token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _sleeper(project: str, kind: str) -> str:
    # The job's command is replaced by a sleep: what is under test is who may submit, not training.
    return f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(60)'"


@pytest.mark.integration
def test_second_training_submission_for_a_project_is_refused(ray_jobs_cluster):
    from labeler.distributed.rayjobs import RayJobs
    from labeler.errors import ClusterError

    address, token = ray_jobs_cluster
    replica_a = RayJobs(address, env={}, entrypoint=_sleeper, token=token)
    replica_b = RayJobs(address, env={}, entrypoint=_sleeper, token=token)
    try:
        first = replica_a.submit("9007", trigger="START_TRAINING")
    except ClusterError as exc:
        if "No available agent" not in str(exc):
            raise
        # Seen in fresh CI clones on this 2-core machine: the head's job agent never came up (60 s waited).
        pytest.skip(f"Ray's job agent did not start on this machine: {exc}")
    assert (first["refused"], first["job_id"]) == (False, "labeler-p9007-1")
    again = replica_b.submit("9007", trigger="START_TRAINING")  # another replica, same project
    assert (again["refused"], again["job_id"]) == (True, "labeler-p9007-1")
    assert replica_b.submit("9008", trigger="START_TRAINING")["refused"] is False  # other projects are not held up

    replica_a.client.stop_job("labeler-p9007-1")
    assert replica_a.wait("9007", timeout=60)["status"] == "failed"
    retry = replica_b.submit("9007", trigger="after a failure")
    assert (retry["refused"], retry["job_id"]) == (False, "labeler-p9007-2"), "a failed job does not block the next"

    # Two replicas racing for the same project: the job id decides, exactly one job starts.
    replica_a.client.stop_job("labeler-p9007-2")
    replica_a.wait("9007", timeout=60)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda r: r.submit("9007", trigger="race"), (replica_a, replica_b)))
    assert sorted(o["refused"] for o in outcomes) == [False, True]
    assert {o["job_id"] for o in outcomes} == {"labeler-p9007-3"}

    # A refresh is its own series: it runs beside a training (pre-annotation has its own lock).
    refresh = replica_b.submit("9007", trigger="rollback", kind="refresh")
    assert (refresh["refused"], refresh["job_id"]) == (False, "labeler-p9007-refresh-1")
    replica_a.client.stop_job("labeler-p9007-refresh-1")

    # A deleted job frees no number twice: the next id is one more than the highest left.
    for sid in ("labeler-p9007-3", "labeler-p9008-1"):
        replica_a.client.stop_job(sid)
    replica_a.wait("9007", timeout=60, kind="train")  # the latest job of any kind is the refresh
    replica_a.client.delete_job("labeler-p9007-1")
    nxt = replica_a.submit("9007", trigger="after a delete")
    assert (nxt["refused"], nxt["job_id"]) == (False, "labeler-p9007-4")
    replica_a.client.stop_job("labeler-p9007-4")

    # Display reads (/metrics: every project's state) share one listing of the cluster's jobs for a moment.
    listings = []
    real_list = replica_b.client.list_jobs
    replica_b.client.list_jobs = lambda: listings.append(1) or real_list()
    states = [replica_b.state("9007")] + [replica_b.state(p, max_age=60) for p in ("9008", "9009")]
    assert len(listings) == 1, "one listing for three projects"
    assert [s.get("job_id") for s in states] == ["labeler-p9007-4", "labeler-p9008-1", None]
    replica_b.state("9007")
    assert len(listings) == 2  # max_age 0 (what submit reads): listed again


def test_jobs_get_no_backend_credentials_and_a_dead_cluster_is_a_clear_error():
    from labeler.dev.localserver import free_port
    from labeler.distributed.rayjobs import RayJobs
    from labeler.errors import ClusterError

    pytest.importorskip("ray.job_submission", reason="Ray is not installed (pip install 'labeler[ray]')")
    env = {"LABELER_ADMIN_TOKEN": "a", "LABELER_WEBHOOK_SECRET": "w", "BASIC_AUTH_PASS": "p", "PATH": "/bin",
           "LABELER_ZEROSHOT_MODEL": "m", "MODEL_DIR": "/d", "LABEL_STUDIO_API_KEY": "k", "HF_HUB_OFFLINE": "1"}
    jobs = RayJobs(f"http://127.0.0.1:{free_port()}", env=env)  # nothing listens there
    assert jobs.env == {"LABELER_ZEROSHOT_MODEL": "m", "MODEL_DIR": "/d", "LABEL_STUDIO_API_KEY": "k",
                        "HF_HUB_OFFLINE": "1"}
    with pytest.raises(ClusterError, match="cannot be reached"):
        jobs.state("1")
    with pytest.raises(ClusterError):
        jobs.submit("1", trigger="t", agent_wait_s=0)


def test_a_job_server_that_never_answers_is_a_clear_error_in_bounded_time():
    from labeler.distributed.rayjobs import RayJobs
    from labeler.errors import ClusterError

    pytest.importorskip("ray.job_submission", reason="Ray is not installed (pip install 'labeler[ray]')")
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        jobs = RayJobs(f"http://127.0.0.1:{silent.getsockname()[1]}", env={}, timeout=0.5)
        t = time.monotonic()
        with pytest.raises(ClusterError, match="cannot be reached.*timed out"):
            jobs.state("1")
        for project in ("2", "3", "4"):  # /metrics: one timeout for all projects, not one each
            with pytest.raises(ClusterError, match="timed out"):
                jobs.state(project, max_age=60)
        assert time.monotonic() - t < 5


@pytest.mark.integration
def test_backend_trains_as_one_ray_job_per_project(ray_jobs_cluster, label_studio, tiny_model, tmp_path):
    """A backend with RAY_API_SERVER_ADDRESS: Label Studio's "Start training" becomes the Ray job
    ``labeler-p<project>-1`` (the real ``labeler train``: train, promote, refresh the predictions); a second
    start while it runs is answered with the same job, and the tasks end up predicted by the new version."""
    from labeler.distributed.rayjobs import RayJobs
    from labeler.errors import ClusterError

    from .conftest import eyes_project, start_tiny_backend

    address, token = ray_jobs_cluster
    ls, pid = eyes_project(label_studio, tmp_path / "eyes", 16, "trained on Ray")
    server = start_tiny_backend(tmp_path / "md", tiny_model, LABELER_MIN_PER_CLASS="3", LABELER_SELF_TRAIN_POOL="0",
                                RAY_API_SERVER_ADDRESS=address, RAY_AUTH_TOKEN=token)
    try:
        ml = ls.ml.create(project=pid, url=server.url, title="labeler")
        for t in ls.tasks.list(project=pid):
            label = "open" if "open_" in t.data["image"] else "closed"
            ls.annotations.create(id=t.id, result=[{"from_name": "choice", "to_name": "image", "type": "choices",
                                                    "value": {"choices": [label]}}])
        try:
            RayJobs(address, entrypoint=lambda p, k: "true", token=token).submit("0", trigger="probe",
                                                                                 agent_wait_s=120)
        except ClusterError as exc:
            if "No available agent" not in str(exc):
                raise
            pytest.skip(f"Ray's job agent did not start on this machine: {exc}")
        ls.ml.train(id=ml.id)  # Label Studio's "Start training": POST /webhook START_TRAINING
        again = requests.post(f"{server.url}/webhook", json={"action": "START_TRAINING", "project": {"id": pid}},
                              timeout=30)
        assert again.json()["job"] == f"labeler-p{pid}-1", "a second start while the job runs is that job"
        admin = {"Authorization": "Bearer admin-secret"}
        end = time.monotonic() + 300
        while (job := requests.get(f"{server.url}/admin/projects/{pid}/job", headers=admin, timeout=10).json()
               )["status"] in ("queued", "running"):
            if time.monotonic() > end:
                logs = RayJobs(address, token=token).client.get_job_logs(job["job_id"])
                pytest.fail(f"the Ray job did not finish in 300 s: {job}\n{logs[-3000:]}")
            time.sleep(1)
        logs = RayJobs(address, token=token).client.get_job_logs(job["job_id"])
        assert (job["status"], job["job_id"], job["kind"]) == ("done", f"labeler-p{pid}-1", "train"), logs[-3000:]
        serving = requests.get(f"{server.url}/metrics", timeout=10).json()["projects"][str(pid)]["serving"]
        assert serving.startswith("v1-")
        per_task = _predictions(ls, pid, key="image")
        assert len(per_task) == 16 and all([p[0] for p in preds] == [serving] for preds in per_task.values())
    finally:
        server.stop()
