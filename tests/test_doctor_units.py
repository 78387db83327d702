"""`labeler doctor`'s checks of this machine: the zero-shot model folder, free disk, Ray, the line format."""

from __future__ import annotations

import socket

from labeler.config import Settings
from labeler.doctor import Check
from labeler.doctor.local import disk_space, ray_cluster, zeroshot_model


def test_missing_model_folder_names_the_setting(tmp_path):
    check = zeroshot_model(Settings(zeroshot_model=str(tmp_path / "no-such-blip2"), device="cpu"))
    assert not check.ok and "no such folder" in check.detail and str(tmp_path / "no-such-blip2") in check.detail
    assert "LABELER_ZEROSHOT_MODEL" in check.fix


def test_model_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    check = zeroshot_model(Settings(zeroshot_model=str(tmp_path), device="cpu"))
    assert not check.ok and "no weights" in check.detail and "LABELER_ZEROSHOT_MODEL" in check.fix


def test_model_folder_reports_what_would_load_without_loading(tiny_model):
    check = zeroshot_model(Settings(zeroshot_model=str(tiny_model), device="cpu", dtype="bfloat16"))
    assert check.ok and "would load on cpu as float32 (vision tower's linear layers in bf16" in check.detail
    loaded = zeroshot_model(Settings(zeroshot_model=str(tiny_model), device="cpu"), load=True)
    assert loaded.ok and "loaded on cpu" in loaded.detail
    assert "vision tower fp32 (automatic): a small vision tower" in loaded.detail  # what ran, and why


def test_hub_model_not_cached_while_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty hub cache
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    check = zeroshot_model(Settings(zeroshot_model="Salesforce/blip2-itm-vit-g", device="cpu",
                                    local_files_only=True))
    assert not check.ok and "not in the local hub cache" in check.detail
    assert "huggingface-cli download Salesforce/blip2-itm-vit-g" in check.fix


def test_bad_device_and_dtype_settings():
    assert "LABELER_DTYPE" in zeroshot_model(Settings(zeroshot_model="x/y", device="cpu", dtype="int3")).detail
    assert zeroshot_model(Settings(zeroshot_model=None)).ok


def test_disk_space_warns_under_the_threshold_and_fails_far_under(tmp_path):
    places = {"MODEL_DIR": tmp_path / "not-yet" / "model_dir", "embedding cache": tmp_path / "cache"}
    [ok] = disk_space(places, min_free_gb=0.001)  # one file system: one line for both
    assert ok.ok and not ok.warning and ok.name == "disk MODEL_DIR, embedding cache"
    [low] = disk_space(places, min_free_gb=1e9)
    assert not low.ok and "GB free at" in low.detail and "free space at" in low.fix


def test_ray_not_configured_is_ok_and_a_dead_cluster_fails():
    assert ray_cluster(Settings()).ok
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = ray_cluster(Settings(ray_address=f"127.0.0.1:{port}"))
    assert not check.ok and check.fix


def test_line_says_status_detail_and_fix():
    assert Check("token", False, "refused", "set X").line() == "FAIL token: refused -> fix: set X"
    assert Check("ray", True, "fine", "never shown").line() == "ok   ray: fine"
    assert Check("disk", True, "low", "free some", warning=True).as_dict()["status"] == "warn"
