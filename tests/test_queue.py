"""The labelling queue (issue 12): the simulation's strategy, published to a real Label Studio."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.models.strategies import STRATEGIES, queue_order, select
from labeler.studio.client import Studio
from labeler.studio.queue import FIELD, VIEW, QueueState, bucket_values, state_path


def test_bucket_values_are_exact_at_the_top_and_few_overall():
    v = bucket_values(50000, exact=200, growth=0.1)
    assert (np.diff(v) >= 0).all() and (v[:200] == np.arange(200)).all()
    assert (v <= np.arange(50000)).all(), "a bucket is written as its first rank"
    assert len(np.unique(v)) < 300


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_queue_starts_with_the_batch_the_simulation_would_pick(strategy):
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(300, 16))
    proba = rng.dirichlet(np.ones(3), 300)
    labelled = np.arange(20)
    pool = np.arange(20, 300)
    order = queue_order(strategy, proba[pool], pool, labelled, 25, feats, seed=7, diverse_top=100)
    assert sorted(order.tolist()) == pool.tolist(), "every unlabelled task exactly once"
    first = select(strategy, proba[pool], pool, labelled, 25, np.random.default_rng(7), feats)
    assert order[:25].tolist() == first.tolist()


def test_queue_state_merges_and_survives_a_round_trip(tmp_path):
    s = QueueState.empty()
    s.update([1, 2, 3], np.eye(3)[:, :2] + 0.1, np.ones((3, 4)), "v1")
    s.mark({2: True})
    s.update([3, 4], np.full((2, 2), 0.5), np.zeros((2, 4)), "v2")
    s.drop_missing([2, 3, 4])
    path = tmp_path / "q.npz"
    s.save(path)
    t = QueueState.load(path)
    assert t.ids.tolist() == [2, 3, 4] and t.annotated.tolist() == [True, False, False] and t.version == "v2"
    np.testing.assert_allclose(t.proba[1], [0.5, 0.5])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert len(QueueState.load(tmp_path / "bad.npz").ids) == 0, "a torn file is ignored, not fatal"


def _view_tasks(ls, project, view):
    return ls.request(
        "GET", "api/tasks/", params={"project": project, "view": view, "fields": "all",
                                             "page_size": 100}).json()["tasks"]


@pytest.mark.integration
def test_preannotate_publishes_the_queue_and_annotated_tasks_leave_it(label_studio, tiny_model, image_dir, tmp_path):
    from labeler.config import Settings
    from labeler.dev.demo import template, upload_images
    from labeler.models.predictor import Predictor
    from labeler.models.uncertainty import confidence
    from labeler.studio.preannotate import preannotate

    url, token = label_studio
    ls = Studio(url, token)
    proj = ls.projects.create(title="queue", label_config=template("binary")).id
    files = sorted(image_dir.iterdir())
    upload_images(url, token, proj, files)
    predictor = Predictor(Settings(model_dir=tmp_path / "md", zeroshot_model=str(tiny_model),
                                   local_files_only=True, local_root=image_dir))
    predictor.load_scorer()
    rep = preannotate(ls, proj, predictor, batch_size=5, progress=False)
    assert rep.queue is not None and rep.queue.ranked == len(files), rep.summary()

    views = list(ls.views.list(project=proj))
    assert views[0].data["title"] == VIEW, "the queue is the first (default) tab"
    state = QueueState.load(state_path(tmp_path / "md", proj))
    pool = np.flatnonzero(~state.annotated)
    expected = state.ids[queue_order("margin_diverse", state.proba[pool], pool, np.flatnonzero(state.annotated),
                                     25, state.features.astype(np.float32))].tolist()
    tasks = _view_tasks(ls, proj, views[0].id)
    assert [t["id"] for t in tasks] == expected
    assert [t["data"][FIELD] for t in tasks] == list(range(len(files)))
    # The stored score stays an honest confidence of the prediction, not the queue position.
    by_id = dict(zip(state.ids.tolist(), state.proba))
    for t in tasks:
        score = next(p["score"] for p in t["predictions"] if p["model_version"] == rep.version)
        assert score == pytest.approx(float(confidence(by_id[t["id"]][None])[0]), abs=1e-4)

    ls.annotations.create(id=expected[0], result=[{"from_name": "choice", "to_name": "image", "type": "choices",
                                                   "value": {"choices": ["open"]}}])
    left = [t["id"] for t in _view_tasks(ls, proj, views[0].id)]
    assert left == expected[1:], "an annotated task leaves the queue at once"

    # Another strategy from the stored scores, no re-scoring: plain margin order of the unannotated tasks.
    from labeler.models.uncertainty import uncertainty
    from labeler.studio.queue import republish

    rep = republish(ls, proj, tmp_path / "md", "margin", 25)
    state = QueueState.load(state_path(tmp_path / "md", proj))
    assert state.annotated[state.ids.tolist().index(expected[0])], "the annotation is read back"
    rest = np.flatnonzero(~state.annotated)
    by_margin = state.ids[rest[np.argsort(-uncertainty(state.proba[rest], "margin"), kind="stable")]].tolist()
    assert rep.ranked == len(files) - 1 and [t["id"] for t in _view_tasks(ls, proj, views[0].id)] == by_margin
