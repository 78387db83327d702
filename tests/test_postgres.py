"""Label Studio on a real PostgreSQL started by the test (the cluster shape, docker-compose.cluster.yml).

Skips where PostgreSQL is not installed (Debian: apt-get install postgresql).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from labeler.config import Settings
from labeler.dev.demo import template, upload_images
from labeler.models.predictor import Predictor
from labeler.studio.client import Studio
from labeler.studio.preannotate import preannotate

pytestmark = pytest.mark.integration


def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A throw-away PostgreSQL on 127.0.0.1; yields (port, run-psql)."""
    from labeler.dev.localserver import free_port

    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    # Not under pytest's folder: as root that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="labeler-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    # initdb refuses to run as root: run the server as the postgres user where we are root.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        try:
            shutil.chown(root, "postgres")
            shutil.chown(sock, "postgres")
        except (LookupError, PermissionError) as exc:
            pytest.skip(f"cannot run PostgreSQL as root and no postgres user to run it as: {exc}")
    port = free_port()

    def run(*cmd: str) -> str:
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "start", "-o",
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1")

    def psql(sql: str, db: str = "labelstudio") -> str:
        return run(str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db, "-tAc", sql)

    try:
        psql("CREATE USER labelstudio PASSWORD 'pg-test-pass'", db="postgres")
        psql("CREATE DATABASE labelstudio OWNER labelstudio", db="postgres")
        yield port, psql
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def label_studio_pg(postgres, tmp_path_factory):
    from labeler.dev.localserver import start_label_studio

    port, _ = postgres
    env = {"DJANGO_DB": "default", "POSTGRE_NAME": "labelstudio", "POSTGRE_USER": "labelstudio",
           "POSTGRE_PASSWORD": "pg-test-pass", "POSTGRE_HOST": "127.0.0.1", "POSTGRE_PORT": str(port)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # start_label_studio passes the environment on
    try:
        server = start_label_studio(tmp_path_factory.mktemp("ls-pg"), "admin@example.com", "test-pass-123",
                                    "labeler-pg-token-0123456789", timeout=300)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield server.url, "labeler-pg-token-0123456789"
    server.stop()


def test_preannotate_on_label_studio_with_postgresql(label_studio_pg, postgres, tmp_path, tiny_model, image_dir):
    url, token = label_studio_pg
    _, psql = postgres
    ls = Studio(url, token)
    project = ls.projects.create(title="on postgres", label_config=template("binary")).id
    files = sorted(image_dir.iterdir())
    upload_images(url, token, project, files)
    predictor = Predictor(Settings(model_dir=tmp_path / "md", zeroshot_model=str(tiny_model), local_files_only=True))
    predictor.load_scorer()

    first = preannotate(ls, project, predictor, batch_size=5, max_tasks=7, progress=False)
    assert first.predicted == 7
    # PostgreSQL lists prediction versions in its own format ("v1, v2"): resuming must still read them.
    second = preannotate(ls, project, predictor, batch_size=5, progress=False)
    assert (second.skipped_existing, second.predicted) == (7, len(files) - 7)
    stored = psql(f"SELECT count(*), count(DISTINCT task_id) FROM prediction WHERE project_id = {project}")
    assert stored.strip() == f"{len(files)}|{len(files)}", "the predictions live in PostgreSQL, one per task"
