"""The Ray path (issue 14): a local Ray cluster with a declared GPU, the tiny BLIP-2, a real Label Studio."""

from __future__ import annotations

import pytest
from label_studio_sdk import LabelStudio

from labeler.config import Settings
from labeler.connection import Connection
from labeler.demo import template, upload_images
from labeler.predictor import Predictor
from labeler.preannotate import preannotate

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'labeler[ray]')")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_cluster():
    """Two CPUs and one declared GPU: GPU actors are placed (and run on the CPU) on a machine without one."""
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def _settings(tmp_path, tiny_model, image_dir) -> Settings:
    return Settings(model_dir=tmp_path / "md", zeroshot_model=str(tiny_model), local_files_only=True,
                    local_root=image_dir)


def _project(url, token, files, title):
    ls = LabelStudio(base_url=url, api_key=token)
    proj = ls.projects.create(title=title, label_config=template("binary"))
    upload_images(url, token, proj.id, files)
    ls.projects.import_tasks(id=proj.id, request=[{"image": "/data/upload/does-not-exist.png"}])
    return ls, proj.id


def _predictions(ls, project) -> dict[str, list[tuple]]:
    """Per image file name: every prediction (version, choice, score) Label Studio holds."""
    tasks = ls._client_wrapper.httpx_client.request(
        "api/tasks/", method="GET", params={"project": project, "fields": "all", "page_size": 100}).json()["tasks"]
    out = {}
    for t in tasks:
        name = t["data"]["image"].rsplit("-", 1)[-1]  # uploads are named <random>-<file name>
        out[name] = sorted((p["model_version"], tuple(r["value"]["choices"][0] for r in p["result"]),
                            p.get("score")) for p in t["predictions"])
    return out


def test_ray_predictions_equal_in_process_ones(ray_cluster, label_studio, tmp_path, tiny_model, image_dir):
    from labeler.distributed.bulk import preannotate_ray

    url, token = label_studio
    files = sorted(image_dir.iterdir())
    conn = Connection(url, token)
    ls_a, local_project = _project(url, token, files, "in-process")
    ls_b, ray_project = _project(url, token, files, "on Ray")

    predictor = Predictor(_settings(tmp_path / "a", tiny_model, image_dir))
    predictor.load_scorer()
    local = preannotate(ls_a, local_project, predictor, conn, batch_size=4, progress=False)
    remote = preannotate_ray(ls_b, ray_project, _settings(tmp_path / "b", tiny_model, image_dir), conn,
                             batch_size=4, import_batch=5, progress=False)

    assert remote.version == local.version
    assert (remote.total, remote.predicted, remote.skipped_existing) == (local.total, local.predicted, 0)
    assert len(remote.failed) == 1 and "cannot download" in remote.failed[0][1]
    a, b = _predictions(ls_a, local_project), _predictions(ls_b, ray_project)
    assert a == b, "same tasks, same predictions, task for task"
    assert sum(len(p) for p in b.values()) == len(files)
