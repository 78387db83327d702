"""Honeypots and second opinions in "Next to label" (issue 22, labeler.studio.teamqueue): the queue places
them, Label Studio's own next-task logic serves each person only the ones they have not labelled."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from labeler.models.consensus import MISSING
from labeler.studio.team import Team
from labeler.studio.teamqueue import EVERYONE, OPEN_FIELD, TeamQueue, honeypot_order, interleave, relabel_picks


def test_interleave_gives_extras_their_share_of_every_prefix():
    out = interleave(list(range(100)), [-1, -2, -3], 0.2)
    assert [p for p, t in enumerate(out) if t < 0] == [4, 9, 14]
    assert [t for t in out if t >= 0] == list(range(100)), "new tasks keep their order"
    assert interleave([1, 2], [-1, -2, -3], 0.1) == [1, 2, -1, -2, -3], "extras left over follow"
    assert interleave([1, 2, 3], [], 0.5) == [1, 2, 3] and interleave([], [-1], 0.0) == [-1]


def _team(labels: list[list[int]], gold: list[int]) -> Team:
    lab = np.array(labels)
    n, m = lab.shape
    return Team(list(range(10, 10 + n)), [f"a{j}" for j in range(m)], ["open", "closed"], lab,
                np.full((n, m), np.nan), np.array(gold), np.full(n, MISSING), np.zeros(n, bool))


def test_honeypots_least_labelled_first_and_only_known_ones():
    team = _team([[0, 0], [1, MISSING], [MISSING, MISSING], [0, 1]], [0, 1, 1, MISSING])
    assert honeypot_order(team, {10, 11, 12, 13}, seed=0) == [12, 11, 10]
    assert honeypot_order(team, {10, 11}, seed=0) == [11, 10], "a task gone from the project is not served"


def test_relabel_picks_a_disputed_task_over_confident_new_ones_and_never_a_full_or_known_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    labels = np.full((60, 3), MISSING)
    labels[:, 0], labels[:, 1], labels[:10, 2] = y, y, y[:10]
    labels[45, 1] = 1 - y[45]  # two people split on task 55, and the model cannot tell
    proba = {10 + i: np.eye(2)[y[i]] * 0.9 + 0.05 for i in range(60)}
    proba[55] = np.array([0.5, 0.5])
    team = _team(labels.tolist(), [MISSING] * 60)
    confident_new = np.array([[0.99, 0.01], [0.01, 0.99]])
    assert relabel_picks(team, proba, confident_new, k=5) == [55]
    assert relabel_picks(team, proba, np.array([[0.5, 0.5]]), k=5) == [], "a new task as uncertain is worth as much"
    assert relabel_picks(_team(labels.tolist(), [MISSING] * 45 + [y[45]] + [MISSING] * 14), proba, confident_new,
                         k=5) == [], "a known label needs no second one"
    labels[45, 2] = y[45]
    assert 55 not in relabel_picks(_team(labels.tolist(), [MISSING] * 60), proba, confident_new, k=5), \
        "everybody has labelled it: nobody left to ask"


def _choice(label: str) -> list[dict]:
    return [{"type": "choices", "from_name": "choice", "to_name": "image", "value": {"choices": [label]}}]


def _next(url: str, project: int, view: int, token: str) -> int | None:
    r = requests.get(f"{url}/api/projects/{project}/next", params={"view": view}, timeout=30,
                     headers={"Authorization": f"Token {token}"})
    return r.json()["id"] if r.status_code == 200 and r.json().get("id") else None


def _label(url: str, task: int, token: str, label: str, ground_truth: bool = False) -> None:
    r = requests.post(f"{url}/api/tasks/{task}/annotations/", headers={"Authorization": f"Token {token}"}, timeout=30,
                      json={"result": _choice(label), "ground_truth": ground_truth})
    assert r.status_code == 201, r.text[:300]


def _state(ls, project: int, rng: np.random.Generator):
    """A queue state as pre-annotation leaves it: every task scored (confident answers), none annotated yet."""
    from labeler.studio.queue import QueueState, annotated_tasks

    ids = np.array(sorted(annotated_tasks(ls, project)), dtype=np.int64)
    p = rng.uniform(0.9, 0.99, len(ids))
    return QueueState(ids, np.zeros(len(ids), bool), np.c_[p, 1 - p].astype(np.float32),
                      rng.random((len(ids), 8)).astype(np.float16), "v1")


@pytest.mark.integration
def test_honeypots_reach_each_annotator_once_in_their_queue_share_and_second_opinions_go_first(label_studio, tmp_path):
    from labeler.studio.queue import annotated_tasks, publish

    from .conftest import eyes_project
    from .test_team_studio import sign_up

    url, admin = label_studio
    ls, pid = eyes_project(label_studio, tmp_path / "imgs", 30, "honeypots")
    state = _state(ls, pid, np.random.default_rng(0))
    honey = state.ids[[3, 11, 20]].tolist()
    for t in honey:  # the team lead's known labels: Label Studio ground-truth annotations
        _label(url, t, admin, "open", ground_truth=True)
    from labeler.studio.tasks import import_predictions

    # the model preselects the wrong answer on the honeypots: who takes it?
    import_predictions(ls, pid, [{"task": t, "model_version": "v1", "score": 0.9, "result": _choice("closed")}
                                 for t in honey])
    state.mark(annotated_tasks(ls, pid))
    rep = publish(ls, pid, state, batch=5, team=TeamQueue(honeypot_rate=0.2))
    assert rep.honeypots == 3 and rep.ranked == 30, rep.summary()
    task = ls.request("GET", f"api/tasks/{honey[0]}/").json()
    assert task["overlap"] == EVERYONE and task["is_labeled"] is False and task["data"][OPEN_FIELD] == 1

    tokens = {e: sign_up(url, admin, e, "pass-word-123") for e in ("hp-a@example.com", "hp-b@example.com")}
    a, b = tokens.values()
    served_a = []
    for _ in range(15):  # annotator A works down the tab through Label Studio's next-task logic
        tid = _next(url, pid, rep.view, a)
        assert tid is not None and tid not in served_a, "a task served twice to one person"
        served_a.append(tid)
        _label(url, tid, a, "closed")
    assert [p for p, t in enumerate(served_a) if t in honey] == [4, 9, 14], served_a  # every fifth: rate 0.2
    served_b = [_next(url, pid, rep.view, b)]
    _label(url, served_b[0], b, "open")
    served_b.append(_next(url, pid, rep.view, b))
    assert served_b == [served_a[4], served_a[9]], "B gets the honeypots A labelled: they stay open for everyone else"

    # A second opinion: A and B split on a task the model cannot decide; the new tasks are confident. C, the
    # third member, is the one person left to ask.
    c = sign_up(url, admin, "hp-c@example.com", "pass-word-123")
    _label(url, served_b[1] if served_b[1] not in honey else honey[2], c, "open")
    disputed = next(t for t in served_a if t not in honey)
    _label(url, disputed, b, "open")  # A said "closed"
    state.mark(annotated_tasks(ls, pid))
    state.proba[state.ids.tolist().index(disputed)] = [0.5, 0.5]
    rep = publish(ls, pid, state, batch=5, team=TeamQueue(relabel=True))
    assert rep.relabel >= 1 and rep.top[0] == disputed, rep.summary()
    assert ls.request("GET", f"api/tasks/{disputed}/").json()["overlap"] == 3, "one more person, then it closes"
    assert _next(url, pid, rep.view, a) != disputed and _next(url, pid, rep.view, b) != disputed, \
        "never back to a person who labelled it"
    assert _next(url, pid, rep.view, c) == disputed
    _label(url, disputed, c, "open")
    assert ls.request("GET", f"api/tasks/{disputed}/").json()["is_labeled"] is True

    publish(ls, pid, state, batch=5, team=TeamQueue())  # everything off: the open tasks are closed again
    for t in [*honey, disputed]:
        task = ls.request("GET", f"api/tasks/{t}/").json()
        assert task["overlap"] == 1 and task["data"][OPEN_FIELD] == 0 and task["is_labeled"] is True
    _admin_page_shows_the_team(url, admin, pid, tmp_path, honey)


def _admin_page_shows_the_team(url: str, token: str, pid: int, tmp_path, honey: list[int]) -> None:
    """The admin JSON and the admin page's table and plot, from one report: A's accuracy from the honeypots."""
    from labeler.config import Settings
    from ml_backend import create_app

    from .test_dashboard import BEARER, HTML, _login

    app = create_app(Settings(model_dir=tmp_path / "md", zeroshot_model=None, admin_token="t0k", label_studio_url=url,
                              label_studio_api_key=token), load_in_background=False)
    client = app.test_client()
    report = client.get(f"/admin/projects/{pid}/annotators", headers=BEARER).get_json()
    rows = {r["annotator"]: r for r in report["annotators"]}
    assert set(rows) == {"hp-a@example.com", "hp-b@example.com", "hp-c@example.com"}, rows.keys()
    assert rows["hp-a@example.com"]["honeypots"] == len(honey) and rows["hp-a@example.com"]["accuracy_source"] == "honeypots"
    took = {n: rows[n]["automation_bias"]["accepted_wrong"] for n in ("hp-a@example.com", "hp-b@example.com")}
    assert (took["hp-a@example.com"]["rate"], took["hp-a@example.com"]["n"]) == (1.0, len(honey)), took  # A: "closed"
    assert took["hp-b@example.com"]["rate"] == 0.0, took  # B said "open" on the honeypot it labelled
    assert client.get(f"/dashboard/projects/{pid}/annotators", headers=BEARER).get_json() == report
    assert client.get(f"/dashboard/projects/{pid}/annotators", headers=HTML).status_code == 401, "the page needs a login"
    _login(client)
    page = client.get(f"/dashboard/projects/{pid}/annotators", headers=HTML)
    assert page.status_code == 200 and "<svg" in page.text and page.text.count("@example.com</td>") == 3
    assert "honeypots</td>" in page.text and "Krippendorff" in page.text


@pytest.mark.integration
def test_training_on_a_team_lets_the_classifier_vote_and_the_report_reads_its_votes(label_studio, tiny_model, tmp_path):
    """Two people label every task (one careless); training fits the consensus again with the head classifier's
    out-of-fold probabilities (tiny BLIP-2 features), keeps them, and the annotator report votes with them."""
    import re
    from pathlib import Path

    from labeler.config import Settings
    from labeler.learning.team_report import project_report
    from labeler.learning.training import train_project
    from labeler.models.predictor import Predictor
    from labeler.studio.tasks import iter_tasks
    from labeler.studio.team import load_votes

    from .conftest import eyes_project
    from .test_team_studio import sign_up

    url, admin = label_studio
    ls, pid = eyes_project(label_studio, tmp_path / "imgs", 40, "team training")
    careless = sign_up(url, admin, "careless@example.com", "pass-word-123")
    rng = np.random.default_rng(2)
    for t in iter_tasks(ls, pid):
        right = re.sub(r"^[0-9a-f]{8}-", "", Path(t["data"]["image"]).name).split("_")[0]
        _label(url, t["id"], admin, right)
        _label(url, t["id"], careless, right if rng.random() < 0.75 else ("closed" if right == "open" else "open"))
    predictor = Predictor(Settings(model_dir=tmp_path / "md", zeroshot_model=str(tiny_model), local_files_only=True,
                                   classifier="head", min_per_class=2, consensus_min_confidence=0.0))
    predictor.load_scorer()
    outcome = train_project(predictor, str(pid), ls)
    votes = load_votes(tmp_path / "md", pid)
    assert outcome.version and votes is not None and len(votes) == 40
    assert all(v.shape == (2,) and abs(v.sum() - 1) < 1e-3 for v in votes.values())
    report = project_report(ls, pid, votes=votes)
    assert report["method"] == "dawid-skene + model" and report["model_accuracy"] is not None
    rows = {r["annotator"]: r for r in report["annotators"]}
    assert rows["admin@example.com"]["accuracy"] > rows["careless@example.com"]["accuracy"], rows
    # the export's labels are training's: the consensus with the same votes
    import json

    from labeler.studio.export import export
    from labeler.studio.tasks import project_config
    from labeler.studio.team import consensus_of, team_of

    export(ls, pid, "jsonl", tmp_path / "out", progress=False, votes=votes)
    exported = {r["task_id"]: r["label"] for r in map(json.loads, (tmp_path / "out" / "labels.jsonl").open())}
    team = team_of(list(iter_tasks(ls, pid)), project_config(ls, pid))
    agreed = consensus_of(team, votes)[0]
    assert len(exported) == 40 and all(exported[t] == agreed[t].label for t in exported)
