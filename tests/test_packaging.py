"""Packaging and first-use plumbing: the wheel's contents, a non-editable install running the demo, the CLI's
start-up, the demo's environment file, docker-compose.yml."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import labeler
from labeler.envfile import load_env_file, read_env_file, write_env_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, cwd=out)
    return next(out.glob("labeler-*.whl"))


def test_wheel_holds_every_module_the_templates_and_the_declared_dependencies(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for d in ("labeler", "ml_backend") for p in (ROOT / d).rglob("*.py")}
    assert sources <= names, f"missing from the wheel (add the package to pyproject.toml): {sorted(sources - names)}"
    templates = {f"labeler/templates/{p.name}" for p in (ROOT / "templates").glob("*.xml")}
    assert templates and templates <= names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Version: {labeler.__version__}" in meta
    requires = re.findall(r"^Requires-Dist: ([^;\n]+)$", meta, re.MULTILINE)
    for needed in ("transformers>=5.4", "scipy>=1.11", "torch>=2.2", "label-studio-sdk>=2.0"):
        assert needed in requires, requires


def test_cli_answers_without_importing_torch():
    code = ("import sys; import labeler.cli; "
            "assert not {'torch', 'transformers', 'label_studio_sdk'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([str(BIN / "labeler"), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"labeler, version {labeler.__version__}"
    out = subprocess.run([str(BIN / "labeler"), "train"], capture_output=True, text=True, check=False,
                         env={**os.environ, "LABELER_PROJECT": "", "LABELER_ENV_FILE": "/nonexistent"})
    assert out.returncode == 2 and "Missing option '--project'" in out.stderr


def test_env_file_round_trip_and_what_is_set_wins(tmp_path, monkeypatch):
    values = {"LABEL_STUDIO_URL": "http://127.0.0.1:8080", "LABELER_ZEROSHOT_MODEL": "/a dir/with 'quotes'",
              "LABELER_PROJECT": 3}
    path = write_env_file(tmp_path / "labeler.env", values)
    assert path.stat().st_mode & 0o777 == 0o600, "it holds the API token"
    assert read_env_file(path) == {k: str(v) for k, v in values.items()}
    # A shell sources it to the same values.
    out = subprocess.run(["bash", "-c", f". {path} && printf %s \"$LABELER_ZEROSHOT_MODEL\""],
                         capture_output=True, text=True, check=True)
    assert out.stdout == values["LABELER_ZEROSHOT_MODEL"]
    for name in values:  # set then delete, so that monkeypatch restores each one after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://elsewhere:8080")
    assert load_env_file(path) == path
    assert os.environ["LABEL_STUDIO_URL"] == "http://elsewhere:8080" and os.environ["LABELER_PROJECT"] == "3"
    assert load_env_file(tmp_path / "absent.env") is None


def test_cli_reads_the_demo_env_file_from_the_working_folder(tmp_path):
    """`labeler versions` run beside labeler-demo/ sees the demo's registry with nothing typed."""
    from labeler.models.registry import Registry

    model_dir = tmp_path / "labeler-demo" / "model_dir"
    version = Registry(model_dir).add("4", lambda folder: {"kind": "head", "n_train": 10})
    write_env_file(tmp_path / "labeler-demo" / "labeler.env", {"MODEL_DIR": model_dir, "LABELER_PROJECT": 4})
    env = {k: v for k, v in os.environ.items() if k not in {"MODEL_DIR", "LABELER_PROJECT", "LABELER_ENV_FILE"}}
    out = subprocess.run([str(BIN / "labeler"), "versions", "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    assert [(r["project"], r["version"]) for r in rows] == [("4", version)]


@pytest.mark.slow
@pytest.mark.integration
def test_non_editable_install_runs_the_demo(wheel, tmp_path):
    """`pip install .` (what a user or a Docker image does), then `labeler demo --no-wait` from elsewhere.

    The new venv installs only labeler itself and borrows this venv's dependencies through a .pth
    file (installing torch and Label Studio again would take minutes and gigabytes); labeler and its
    templates come from the wheel, never from the source tree.
    """
    if shutil.which("label-studio", path=str(BIN)) is None:
        pytest.skip("the label-studio server is not installed (pip install -e '.[test]')")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_borrowed_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "LABELER_", "MODEL_DIR"))},
           "PATH": f"{venv / 'bin'}:{BIN}:{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    code = "import labeler.dev.demo as d; print(d.__file__); print(d.template('binary')[:6])"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=work, env=env, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    assert where[0].startswith(str(site)) and where[1] == "<View>", where
    out = subprocess.run([str(venv / "bin" / "labeler"), "demo", "--no-wait", "--zeroshot-model", str(tmp_path / "none")],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "labeler demo is ready: 24 tasks pre-annotated" in out.stdout
    assert read_env_file(work / "labeler-demo" / "labeler.env")["LABELER_PROJECT"] == "1"


# -- docker-compose.yml --------------------------------------------------------------------------------------

SECRETS = {"LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_PASS", "LABELER_WEBHOOK_SECRET",
           "LABELER_ADMIN_TOKEN"}


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_ports_volumes_and_auth_on(compose):
    services = compose["services"]
    assert set(services) == {"label-studio", "backend"}
    ls, be = services["label-studio"], services["backend"]
    assert ls["ports"] == ["8080:8080"] and be["ports"] == ["127.0.0.1:9090:9090"]
    assert ls["volumes"] == ["ls-data:/label-studio/data"] and be["volumes"] == ["model-data:/data"]
    assert set(compose["volumes"]) == {"ls-data", "model-data"}
    env = {**ls["environment"], **be["environment"]}
    # Auth is on: every secret is required (compose stops with the message when it is unset), none has a default.
    for name in SECRETS:
        refs = [v for v in env.values() if f"${{{name}" in str(v)]
        assert refs and all(re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", v) for v in refs), (name, refs)
    assert env["BASIC_AUTH_PASS"].startswith("${BASIC_AUTH_PASS:?") and env["BASIC_AUTH_USER"]
    assert be["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert "pip install --no-cache-dir ." in be["build"]["dockerfile_inline"], "non-editable install in the image"
    # Every backend variable is documented in the README's configuration table.
    readme = (ROOT / "README.md").read_text()
    undocumented = [k for k in be["environment"] if f"`{k}`" not in readme and k != "HF_HOME"]
    assert not undocumented, undocumented
    example = read_env_file_plain(ROOT / ".env.example")
    assert SECRETS <= set(example)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".env", ".git"} <= set(ignored), "COPY . . must not send the venv or the secrets"


def read_env_file_plain(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_docker_compose_config_validates(tmp_path):
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False) if docker else None
    if probe is None or probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here; test_compose_services_ports_volumes_and_auth_on "
                    "checks the file instead")
    env = {**os.environ, **{k: "x" * 12 for k in SECRETS}}
    out = subprocess.run([docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    missing = {k: v for k, v in env.items() if k not in SECRETS}
    out = subprocess.run([docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, env=missing, cwd=tmp_path, check=False)
    assert out.returncode != 0 and "set " in out.stderr, "compose must refuse to start without the secrets"


def test_cluster_compose_sends_jobs_to_ray_and_joins_its_cluster():
    from labeler.config import Settings

    yaml = pytest.importorskip("yaml")
    cluster = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    env = {k: str(v) for k, v in cluster["services"]["backend"]["environment"].items()}
    s = Settings.from_env({k: v for k, v in env.items() if "RAY" in k})
    assert (s.ray_jobs_address, s.ray_driver_address, s.ray_train_gpus) == ("http://ray-head:8265", "ray-head:6379", 1)
    assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env
    assert {"ray-head", "ray-gpu-worker", "postgres", "label-studio"} <= set(cluster["services"])
