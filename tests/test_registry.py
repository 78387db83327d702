"""The model registry, on a local folder and on S3 (a moto server on loopback standing in for AWS)."""

import json
import socket
import threading
import time
import uuid

import boto3
import numpy as np
import pytest
import s3fs
from moto.server import ThreadedMotoServer
from PIL import Image

from labeler.errors import RegistryError, RegistryStoreError
from labeler.models.classifiers import EmbeddingHead, Sample, load_classifier
from labeler.models.objectregistry import ObjectRegistry
from labeler.models.openregistry import open_registry
from labeler.models.registry import Registry


def write(meta):
    def w(folder):
        (folder / "model.bin").write_bytes(b"weights")
        (folder / "sub").mkdir()
        (folder / "sub" / "part.bin").write_bytes(b"nested")
        return meta
    return w


@pytest.fixture(scope="module")
def s3_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_options(endpoint):
    return {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
            "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True}


@pytest.fixture
def s3_url(s3_endpoint):
    bucket = f"reg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/labeler"


@pytest.fixture(params=["local", "s3"])
def make_registry(request, tmp_path):
    """Registry(model_dir) on either store; each call is a fresh instance (a restart or another replica)."""
    if request.param == "local":
        return lambda model_dir=tmp_path, **kw: Registry(model_dir, **kw)
    url, opts = request.getfixturevalue("s3_url"), s3_options(request.getfixturevalue("s3_endpoint"))
    return lambda model_dir=tmp_path, **kw: open_registry(model_dir, url, storage_options=opts, **kw)


def test_add_list_promote_rollback(make_registry):
    reg = make_registry()
    assert reg.current("1") is None
    v1 = reg.add("1", write({"kind": "cnn", "n_train": 10}))
    v2 = reg.add("1", write({"kind": "head", "n_train": 20}))
    assert (v1, v2) == ("v1-cnn", "v2-head")
    assert [m["version"] for m in reg.list("1")] == [v1, v2]
    reg.promote("1", v2)
    assert reg.current("1") == v2
    reg.promote("1", v1)  # rollback
    assert reg.current("1") == v1
    reg.promote("1", None)  # back to zero-shot
    assert reg.current("1") is None
    with pytest.raises(RegistryError):
        reg.promote("1", "v9-cnn")
    assert reg.find(v2)[0] == "1"
    assert reg.projects() == ["1"]
    assert (reg.path("1", v2) / "sub" / "part.bin").read_bytes() == b"nested"


def test_crash_while_writing_leaves_nothing(make_registry):
    reg = make_registry()
    reg.promote("1", reg.add("1", write({"kind": "cnn"})))

    def crash(folder):
        (folder / "model.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        reg.add("1", crash)
    assert [m["version"] for m in reg.list("1")] == ["v1-cnn"]
    assert not [p for p in reg.versions_dir("1").iterdir() if p.name.startswith(".tmp")]
    assert reg.current("1") == "v1-cnn"


def test_crash_between_writing_and_promoting_keeps_old_serving(make_registry, tmp_path):
    reg = make_registry()
    reg.promote("1", reg.add("1", write({"kind": "cnn"})))
    v2 = reg.add("1", write({"kind": "cnn"}))  # ... and the process dies before promote()
    assert make_registry().current("1") == "v1-cnn"
    assert json.loads((reg.path("1", v2) / "meta.json").read_text())["version"] == v2
    # a stray temp pointer from a crash inside promote() is ignored
    (tmp_path / "projects" / "1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "projects" / "1" / ".CURRENT-abc").write_text("v2-cnn")
    assert make_registry().current("1") == "v1-cnn"


def test_prune_keeps_serving_and_newest(make_registry):
    reg = make_registry(keep=2)
    first = reg.add("1", write({"kind": "head"}))
    reg.promote("1", first)
    names = [reg.add("1", write({"kind": "head"})) for _ in range(4)]
    assert [m["version"] for m in reg.list("1")] == [first, *names[-2:]]
    with pytest.raises(RegistryError):
        reg.path("1", names[0])
    assert reg.add("1", write({"kind": "head"})) == "v6-head"  # numbers are never reused


# -- object storage only ------------------------------------------------------------------------

def test_s3_conditional_put_is_enforced(s3_endpoint, s3_url):
    """The primitive the claims rest on: moto (like S3) refuses a second If-None-Match: * put."""
    fs = s3fs.S3FileSystem(**s3_options(s3_endpoint))
    key = s3_url[len("s3://"):] + "/x"
    fs.pipe_file(key, b"a", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(key, b"b", mode="create")
    assert fs.cat_file(key) == b"a"


def test_concurrent_claims_get_different_names(s3_endpoint, s3_url, tmp_path):
    """Eight replicas (own model_dir, own S3 client) finish a training at the same moment."""
    n = 8
    regs = [ObjectRegistry(tmp_path / f"r{i}", s3_url, storage_options=s3_options(s3_endpoint)) for i in range(n)]
    assert all(r._numbers("5") == [] for r in regs)
    barrier, names, errors = threading.Barrier(n), [None] * n, []

    def train(i):
        def w(folder):
            barrier.wait()  # everyone has written its model; all claim together, all seeing no versions yet
            (folder / "model.bin").write_bytes(str(i).encode())
            return {"kind": "head", "replica": i}
        try:
            names[i] = regs[i].add("5", w)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(names, key=lambda s: int(s[1:].split("-")[0])) == [f"v{i}-head" for i in range(1, n + 1)]
    other = ObjectRegistry(tmp_path / "other", s3_url, storage_options=s3_options(s3_endpoint))
    for m in other.list("5"):  # each name holds its own writer's files
        assert (other.path("5", m["version"]) / "model.bin").read_bytes() == str(m["replica"]).encode()


def test_two_claims_of_one_number(s3_endpoint, s3_url, tmp_path):
    """A replica that computed the same next number as another still gets a different name."""
    a, b = (ObjectRegistry(tmp_path / d, s3_url, storage_options=s3_options(s3_endpoint)) for d in "ab")
    assert a._claim("3", "v", "head") == "v1-head"
    b._numbers = lambda project: []  # b's listing ran before a's claim landed
    assert b._claim("3", "v", "head") == "v2-head"


def test_replica_downloads_serving_model(s3_endpoint, s3_url, tmp_path):
    """A real classifier trained on one replica serves from another one's download cache."""
    rng = np.random.default_rng(0)
    samples = [Sample(Image.new("RGB", (4, 4)), rng.normal(size=8), rng.normal(size=2)) for _ in range(20)]
    y = np.array([0, 1] * 10)
    head = EmbeddingHead(["cat", "dog"])
    head.fit(samples, y)
    a = ObjectRegistry(tmp_path / "a", s3_url, storage_options=s3_options(s3_endpoint))
    version = a.add("2", head.save)
    a.promote("2", version)
    a.set_temperature("2", 1.7, 20)
    a.set_thresholds("2", ["cat", "dog"], [0.3, 0.6], 20)
    b = ObjectRegistry(tmp_path / "b", s3_url, storage_options=s3_options(s3_endpoint))
    assert (b.current("2"), b.temperature("2"), b.meta("2", version)["kind"]) == (version, 1.7, "head")
    assert b.thresholds("2", ["cat", "dog"]) == [0.3, 0.6]
    folder = b.path("2", version)
    assert folder.is_relative_to(tmp_path / "b" / "registry-cache")
    np.testing.assert_allclose(load_classifier(folder).predict_proba(samples), head.predict_proba(samples))
    assert b.path("2", version) == folder  # the second time from the cache


def test_current_is_seen_by_other_replicas_within_ttl(s3_endpoint, s3_url, tmp_path):
    a, b = (ObjectRegistry(tmp_path / d, s3_url, storage_options=s3_options(s3_endpoint)) for d in "ab")
    v = a.add("1", write({"kind": "cnn"}))
    assert b.current("1") is None
    a.promote("1", v)
    time.sleep(b.current_ttl_s)
    assert b.current("1") == v


def test_cleanup_removes_cut_short_uploads(s3_endpoint, s3_url, tmp_path):
    reg = ObjectRegistry(tmp_path, s3_url, storage_options=s3_options(s3_endpoint))
    v = reg.add("1", write({"kind": "cnn"}))
    assert reg._claim("1", "v", "cnn") == "v2-cnn"
    reg.fs.pipe_file(reg._key("1", "versions", "v2-cnn", "model.bin"), b"half")  # ... and a crash before meta.json
    assert [m["version"] for m in reg.list("1")] == [v]
    with pytest.raises(RegistryError):
        reg.path("1", "v2-cnn")
    assert reg.cleanup() == 0  # too recent: it may still be uploading
    assert reg._remove_orphans("1", time.time() + 5) == 1
    assert not reg.fs.exists(reg._key("1", "versions", "v2-cnn"))
    assert reg.add("1", write({"kind": "cnn"})) == "v3-cnn"  # the claim of v2 stays taken


def test_unknown_store_is_a_clear_error(tmp_path):
    with pytest.raises(RegistryStoreError, match="labeler\\[cloud\\]"):
        open_registry(tmp_path, "nosuchstore://bucket/x")


def test_settings_select_the_store(s3_endpoint, s3_url, tmp_path, monkeypatch):
    """LABELER_REGISTRY_URL + the standard AWS_* variables are all a replica needs (no code-side options)."""
    from labeler.config import Settings
    from labeler.models.openregistry import registry_for

    for name, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path), "LABELER_REGISTRY_URL": s3_url})
    reg = registry_for(settings)
    assert isinstance(reg, ObjectRegistry) and reg.keep == settings.keep_versions
    v = reg.add("4", write({"kind": "head"}))
    assert [m["version"] for m in registry_for(Settings.from_env({"MODEL_DIR": str(tmp_path)})).list("4")] == []
    other = Settings.from_env({"MODEL_DIR": str(tmp_path / "b"), "LABELER_REGISTRY_URL": s3_url})
    assert registry_for(other).find(v)[0] == "4"
