"""The queue after Label Studio's own "Retrieve predictions" (issue 25, items 1 and 2): ``/predict`` notes what it
predicted, a background thread publishes the "Next to label" tab once a burst of calls is over, and both tabs show
the model's answer as a plain column."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from labeler.labelconfig import parse_label_config
from labeler.studio.autoqueue import QueuePublisher
from labeler.studio.queue import FIELD, VIEW, QueueState, answers, state_path
from labeler.studio.tasks import ANSWER_FIELD, NO_ANSWER, UNCERTAINTY_VIEW

CONFIG = parse_label_config("""<View><Image name="image" value="$image"/>
<Choices name="choice" toName="image"><Choice value="open"/><Choice value="closed"/></Choices></View>""")


def test_answers_are_the_predicted_classes():
    s = QueueState.empty()
    s.update([1, 2, 3], np.array([[0.8, 0.2], [0.3, 0.7], [np.nan, np.nan]]), np.zeros((3, 4)), "v1")
    assert answers(s, ["open", "closed"]) == {"open": [1], "closed": [2]}, "an unscored task gets no answer"
    assert answers(s, ["a", "b", "c"]) == {}, "scores of another class count say nothing"
    m = QueueState.empty()
    m.multilabel = True  # centred probabilities: ticked at 0.5 and over, as the prediction ticks them
    m.update([4, 5, 6], np.array([[0.5, 0.9], [0.1, 0.2], [0.7, 0.1]]), np.zeros((3, 4)), "v1")
    assert answers(m, ["cat", "dog"]) == {"cat;dog": [4], NO_ANSWER: [5], "cat": [6]}


def _wait(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_a_burst_of_predict_calls_publishes_once_with_every_task():
    calls = []

    def publish(studio, predictor, project, refs, config, lock_wait_s):
        calls.append((project, dict(refs)))

    pub = QueuePublisher(None, lambda project: "studio", quiet_s=0.3, min_interval_s=0.0, publish=publish)  # type: ignore[arg-type]
    ok = {"result": [{"value": {"choices": ["open"]}}], "score": 0.6}
    for i in range(5):  # Label Studio's fallback: one /predict per task
        assert pub.observe("7", [{"id": i, "data": {"image": f"/data/{i}.png"}}], CONFIG, [ok]) == 1
        time.sleep(0.05)
    assert pub.observe("7", [{"id": 9, "data": {"image": "x"}}], CONFIG, [{"result": []}]) == 0, \
        "a task that got no prediction is not noted"
    assert pub.observe("7", [{"id": 10, "data": {"image": "x"}}], CONFIG, [[]]) == 0
    assert not calls, "nothing is published while the burst goes on"
    assert pub.idle(10)
    assert calls == [(7, {i: f"/data/{i}.png" for i in range(5)})]


def test_publishes_are_spaced_and_a_failure_stops_nothing():
    calls = []
    fail = threading.Event()
    fail.set()

    def publish(studio, predictor, project, refs, config, lock_wait_s):
        calls.append((time.monotonic(), sorted(refs)))
        if fail.is_set():
            fail.clear()
            raise RuntimeError("Label Studio is down")

    pub = QueuePublisher(None, lambda project: "studio", quiet_s=0.05, min_interval_s=1.0, publish=publish)  # type: ignore[arg-type]
    ok = [{"result": [{"x": 1}]}]
    pub.observe("1", [{"id": 1, "data": {"image": "a"}}], CONFIG, ok)
    _wait(lambda: len(calls) == 1)
    pub.observe("1", [{"id": 2, "data": {"image": "b"}}], CONFIG, ok)
    assert pub.idle(10) and len(calls) == 2 and calls[1][1] == [2]
    assert calls[1][0] - calls[0][0] >= 0.95, "at most one publish per min_interval_s"


def test_no_studio_no_publish_and_after_predict_never_raises():
    from ml_backend.queuehook import after_predict

    pub = QueuePublisher(None, lambda project: None, quiet_s=0.0, min_interval_s=0.0,  # type: ignore[arg-type]
                         publish=lambda *a, **k: pytest.fail("published without a Label Studio"))
    pub.observe("1", [{"id": 1, "data": {"image": "a"}}], CONFIG, [{"result": [1]}])
    assert pub.idle(10)

    class Broken:
        def studio(self, project):
            raise RuntimeError("boom")

    after_predict(Broken(), "1", [], CONFIG, [])  # type: ignore[arg-type]  # logged, not raised


@pytest.mark.integration
def test_retrieve_predictions_through_the_backend_publishes_the_queue(label_studio, backend, tmp_path):
    """The user's path: connect the backend, "Retrieve predictions" for all tasks (Label Studio's one /predict);
    the backend publishes "Next to label" (first tab, "Least confident first" second) with the answers."""
    from labeler.dev.demo import wait_for_queue

    from .conftest import eyes_project

    ls, pid = eyes_project(label_studio, tmp_path / "eyes", 10, "retrieve predictions -> queue")
    ls.ml.create(project=pid, url=backend[0], title="labeler")
    t = time.perf_counter()
    ls.actions.create(id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []})
    predict_s = time.perf_counter() - t
    view = wait_for_queue(ls, pid, timeout=120)
    assert view is not None, "the backend published no queue after /predict"
    titles = [(v.data or {}).get("title") for v in ls.views.list(project=pid)]
    assert titles[:2] == [VIEW, UNCERTAINTY_VIEW], titles

    tasks = requests.get(f"{label_studio[0]}/api/tasks/", headers={"Authorization": f"Token {label_studio[1]}"},
                         params={"project": pid, "view": view, "fields": "all", "page_size": 100}, timeout=30).json()
    tasks = tasks["tasks"]
    assert len(tasks) == 10
    assert [t["data"][FIELD] for t in tasks] == list(range(10)), "the tab lists the tasks by their queue rank"
    for t in tasks:
        (pred,) = t["predictions"]
        assert t["data"][ANSWER_FIELD] == pred["result"][0]["value"]["choices"][0], "the answer is the prediction's"
    state = QueueState.load(state_path(backend[1], pid))
    assert sorted(state.ids.tolist()) == sorted(t["id"] for t in tasks) and np.isfinite(state.proba).all()
    assert predict_s < 60, predict_s
