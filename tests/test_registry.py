import json

import pytest

from labeler.learning.registry import Registry, RegistryError


def write(meta):
    def w(folder):
        (folder / "model.bin").write_bytes(b"weights")
        return meta
    return w


def test_add_list_promote_rollback(tmp_path):
    reg = Registry(tmp_path)
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


def test_crash_while_writing_leaves_nothing(tmp_path):
    reg = Registry(tmp_path)
    reg.promote("1", reg.add("1", write({"kind": "cnn"})))

    def crash(folder):
        (folder / "model.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        reg.add("1", crash)
    assert [m["version"] for m in reg.list("1")] == ["v1-cnn"]
    assert not [p for p in reg.versions_dir("1").iterdir() if p.name.startswith(".tmp")]
    assert reg.current("1") == "v1-cnn"


def test_crash_between_writing_and_promoting_keeps_old_serving(tmp_path):
    reg = Registry(tmp_path)
    reg.promote("1", reg.add("1", write({"kind": "cnn"})))
    v2 = reg.add("1", write({"kind": "cnn"}))  # ... and the process dies before promote()
    assert Registry(tmp_path).current("1") == "v1-cnn"
    assert json.loads((reg.path("1", v2) / "meta.json").read_text())["version"] == v2
    # a stray temp pointer from a crash inside promote() is ignored
    (tmp_path / "projects" / "1" / ".CURRENT-abc").write_text("v2-cnn")
    assert Registry(tmp_path).current("1") == "v1-cnn"
