"""``LABELER_TRAIN_EVERY`` against a real Label Studio: N new annotations start one training, counted by
Label Studio and marked in the shared registry, so replicas and restarts agree on when."""

from __future__ import annotations

import time

import pytest
import requests

from labeler.errors import ClusterError
from labeler.models.registry import Registry
from labeler.studio.client import Studio
from ml_backend.trainevery import TrainEvery

from .conftest import eyes_project, start_tiny_backend

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": "Bearer admin-secret"}


def annotate(ls: Studio, task_id: int, label: str = "open") -> None:
    ls.annotations.create(id=task_id, result=[{"from_name": "choice", "to_name": "image", "type": "choices",
                                               "value": {"choices": [label]}}])


@pytest.fixture(scope="module")
def twelve_eyes(label_studio, tmp_path_factory):
    ls, pid = eyes_project(label_studio, tmp_path_factory.mktemp("eyes"), 12, "train every")
    tasks = [t.id for t in ls.tasks.list(project=pid)]
    return ls, pid, sorted(tasks)


def test_replicas_and_restarts_share_the_count(twelve_eyes, tmp_path):
    ls, pid, tasks = twelve_eyes
    registry = Registry(tmp_path)  # one MODEL_DIR volume (or object store) shared by the replicas
    started: list[tuple[str, str]] = []

    def replica() -> TrainEvery:
        return TrainEvery(3, registry, lambda p: ls, lambda p, trigger: started.append((p, trigger)) or {})

    a, b = replica(), replica()
    base = ls.projects.get(id=pid).total_annotations_number or 0
    assert base == 0
    annotate(ls, tasks[0])
    annotate(ls, tasks[1])
    assert a.check(str(pid)) is None and b.check(str(pid)) is None and started == []
    annotate(ls, tasks[2])  # its event reached replica b only
    b.check(str(pid))
    assert started == [(str(pid), "3 new annotations (LABELER_TRAIN_EVERY=3)")]
    a.check(str(pid))  # replica a sees b's mark: no second training for the same annotations
    replica().check(str(pid))  # nor a restarted replica
    assert len(started) == 1
    ls.annotations.update(id=ls.annotations.list(id=tasks[0])[0].id,
                          result=[{"from_name": "choice", "to_name": "image", "type": "choices",
                                   "value": {"choices": ["closed"]}}])
    a.check(str(pid))
    assert len(started) == 1, "an edit is used by the next training, it does not count as new"
    for t in tasks[3:6]:
        annotate(ls, t)
    a.check(str(pid))
    assert len(started) == 2 and registry.trained_at(str(pid)) == 6

    # A training that could not start, or was refused because one runs, leaves the annotations counted.
    for t in tasks[6:9]:
        annotate(ls, t)

    def down(project: str, trigger: str) -> dict:
        raise ClusterError("the Ray job server at http://ray:8265 cannot be reached")
    with pytest.raises(ClusterError):
        TrainEvery(3, registry, lambda p: ls, down).check(str(pid))
    assert registry.trained_at(str(pid)) == 6
    assert TrainEvery(3, registry, lambda p: ls, lambda p, t: {"refused": True}).check(str(pid))["refused"]
    assert registry.trained_at(str(pid)) == 6
    a.check(str(pid))
    assert started[-1] == (str(pid), "3 new annotations (LABELER_TRAIN_EVERY=3)") and len(started) == 3


def test_annotations_in_label_studio_start_a_training_through_the_webhook(label_studio, tiny_model, tmp_path):
    """The whole path: Label Studio's annotation webhooks reach a backend with LABELER_TRAIN_EVERY=2."""
    ls, pid = eyes_project(label_studio, tmp_path / "eyes", 6, "train every, webhook")
    server = start_tiny_backend(tmp_path / "md", tiny_model, LABELER_TRAIN_EVERY="2")
    try:
        ls.ml.create(project=pid, url=server.url, title="labeler")
        job = lambda: requests.get(f"{server.url}/admin/projects/{pid}/job", headers=ADMIN, timeout=10).json()  # noqa: E731
        tasks = sorted(t.id for t in ls.tasks.list(project=pid))
        annotate(ls, tasks[0])
        time.sleep(2)
        assert job()["status"] == "none", "one annotation is not two"
        annotate(ls, tasks[1])
        end = time.monotonic() + 60
        while job()["status"] == "none":
            assert time.monotonic() < end, "two annotations started no training"
            time.sleep(0.3)
        assert job()["trigger"] == "2 new annotations (LABELER_TRAIN_EVERY=2)"
    finally:
        server.stop()
