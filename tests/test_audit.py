"""The audit round's parts that need no server (issue 21); the loop through Label Studio is
tests/test_finish_studio.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labeler.labelconfig import parse_label_config
from labeler.learning.audit import (
    _from_queue,
    _same_design,
    audit_dir,
    datasheet,
    finished,
    load_certificate,
    load_round,
    outcomes,
)
from labeler.learning.certify import CertificateError, certify, frozen_predictions
from labeler.models.uncertainty import centred
from labeler.studio.export import Row
from labeler.studio.queue import QueueState, state_path

CONFIG = parse_label_config("""<View><Image name="image" value="$image"/>
  <Choices name="choice" toName="image"><Choice value="open"/><Choice value="closed"/></Choices></View>""")


def test_frozen_predictions_single_choice_and_multi_label():
    scores, sets = frozen_predictions(np.array([[0.3, 0.7], [0.9, 0.1]]), ["a", "b"], multilabel=False)
    np.testing.assert_allclose(scores, [0.7, 0.9])
    assert sets == [("b",), ("a",)]
    # multi-label rows are centred (threshold 0.5): the classes at or above it, the least certain one's margin
    P, t = np.array([[0.9, 0.35, 0.1]]), np.array([0.5, 0.3, 0.5])
    scores, sets = frozen_predictions(centred(P, t), ["a", "b", "c"], multilabel=True)
    assert sets == [("a", "b")]
    assert scores[0] == pytest.approx(0.05 / 0.7)  # class b: 0.05 above its threshold, room 0.7


def test_outcomes_wrong_and_human():
    pool = [{"id": 1, "predicted": "a"}, {"id": 2, "predicted": "a"}, {"id": 3, "predicted": "b"},
            {"id": 4, "predicted": "a;b"}, {"id": 5, "predicted": "a"}]
    wrong, human = outcomes(pool, {1: "a", 2: "b", 3: None, 4: "a;b"})  # task 5 was deleted
    np.testing.assert_array_equal(wrong, [0, 1, np.nan, 0, np.nan])
    assert human.tolist() == [True, True, False, True, True]


def _pool_task(tid: int, label: str, version: str = "v1-head") -> dict:
    return {"id": tid, "predictions": [{"model_version": version, "score": 0.9, "result": [
        {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}]}


def test_queue_scores_are_used_only_when_all_are_the_serving_versions(tmp_path):
    state = QueueState.empty()
    state.update([1, 2, 3], np.array([[0.8, 0.2], [0.1, 0.9], [0.6, 0.4]]), np.zeros((3, 2)), "v1-head")
    state.save(state_path(tmp_path, 7))
    pool = [_pool_task(1, "open"), _pool_task(2, "closed")]
    P = _from_queue(tmp_path, "7", "v1-head", pool, CONFIG)
    assert P is not None and P.shape == (2, 2)
    assert _from_queue(tmp_path, "7", "v2-head", pool, CONFIG) is None, "another version serves"
    assert _from_queue(tmp_path, "7", "v1-head", pool + [_pool_task(4, "open")], CONFIG) is None, "a task not scored"
    # a row left from an older version: Label Studio holds another label for the task under this version
    assert _from_queue(tmp_path, "7", "v1-head", [_pool_task(1, "closed")], CONFIG) is None
    assert _from_queue(tmp_path, "7", "v1-head", [_pool_task(1, "open", "v0-head")], CONFIG) is None


def test_a_drawn_round_is_not_changed():
    rnd = {"project": "3", "round": 1, "eps": 0.02, "delta": 0.05, "per_class": False, "seed": 7}
    _same_design(rnd, None, None, None, None)
    _same_design(rnd, 0.02, 0.05, False, 7)
    with pytest.raises(CertificateError, match="--new-round"):
        _same_design(rnd, 0.05, None, None, None)
    with pytest.raises(CertificateError, match="per_class"):
        _same_design(rnd, None, None, True, None)
    with pytest.raises(CertificateError, match="seed 7 \\(asked 8\\)"):  # a seed given is never ignored
        _same_design(rnd, None, None, None, 8)


def _round_and_certificate(tmp_path) -> tuple[dict, dict]:
    """A saved round and certificate, as certify_project writes them (a pool of 2,000, about 300 audited)."""
    rng = np.random.default_rng(0)
    n = 2000
    scores = np.sort(rng.uniform(0.6, 1.0, n))[::-1]
    drawn = rng.random(n) < 0.15
    wrong = np.where(drawn, (rng.random(n) < 0.01).astype(float), np.nan)
    predicted = ["open" if i % 3 else "closed" for i in range(n)]
    rnd = {"project": "5", "round": 1, "version": "v2-head", "eps": 0.05, "delta": 0.05, "per_class": False,
           "multilabel": False, "created": "2026-01-01T00:00:00Z", "rates": {"all": 0.15}, "starts": {},
           "tasks": [{"id": 100 + i, "score": float(s), "predicted": p, "stratum": "all", "drawn": bool(d)}
                     for i, (s, p, d) in enumerate(zip(scores, predicted, drawn))], "order": []}
    cert, mask = certify(scores, predicted, drawn, wrong, drawn, rnd["rates"], 0.05, 0.05)
    accepted = [100 + int(i) for i in np.flatnonzero(mask)]
    record = {**cert.to_dict(), "project": "5", "version": "v2-head", "created": "2026-01-02T00:00:00Z",
              "round_created": rnd["created"], "multilabel": False, "accepted_ids": accepted,
              "needs_person_ids": [100 + i for i in range(n) if not drawn[i] and 100 + i not in set(accepted)]}
    folder = audit_dir(tmp_path, 5)
    folder.mkdir(parents=True)
    (folder / "round-1.json").write_text(json.dumps(rnd))
    (folder / "certificate.json").write_text(json.dumps(record))
    (folder / "DATASHEET.md").write_text(datasheet(record, rnd))
    return rnd, record


def test_finished_export_inputs_and_the_datasheet(tmp_path):
    with pytest.raises(CertificateError, match="labeler audit --project 5.*labeler certify --project 5"):
        finished(tmp_path, 5)
    assert load_round(tmp_path, 5) is None and load_certificate(tmp_path, 5) is None
    assert not (tmp_path / "projects").exists(), "reading creates no folder"
    rnd, record = _round_and_certificate(tmp_path)
    assert load_round(tmp_path, 5) == rnd == load_round(tmp_path, "5", 1) and load_round(tmp_path, 5, 2) is None
    assert record["certified"], "a confident, nearly error-free pool certifies at eps 0.05"
    f = finished(tmp_path, 5)
    assert sorted(f.accepted) == record["accepted_ids"] and f.version == "v2-head"
    first = f.accepted[record["accepted_ids"][0]]
    task = next(t for t in rnd["tasks"] if t["id"] == record["accepted_ids"][0])
    assert (first.label, first.labels, first.score) == (task["predicted"], (task["predicted"],), task["score"])
    assert [p.name for p in f.files] == ["certificate.json", "DATASHEET.md"] and all(p.exists() for p in f.files)
    sheet = (audit_dir(tmp_path, 5) / "DATASHEET.md").read_text()
    for needle in ("v2-head", "at most 5.00%", "95%", "Learn-then-Test", f"{record['audited']} drawn",
                   "What the guarantee means", "What it does not cover", "estimate (not certified)"):
        assert needle in sheet, needle


def test_finished_rows_carry_their_provenance():
    model = Row(1, "/data/upload/a.png", "open", None, None, "open", 0.93, source="model", model_version="v2-head")
    rec = model.record()
    assert (rec["source"], rec["model_version"], rec["score"], rec["agree"]) == ("model", "v2-head", 0.93, None)
    needs = Row(2, "/data/upload/b.png", None, None, None, "closed", 0.51, source="needs_person")
    assert needs.record()["label"] is None and needs.count_as() == ["(needs a person)"]
    assert "source" not in Row(3, None, "open", "a@b.c", None, None, None).record(), "plain exports unchanged"


def test_audit_labels_are_the_consensus_and_a_disputed_one_is_no_clean_label():
    from labeler.learning.audit import people_labels

    def ann(label: str, who: str) -> dict:
        return {"result": [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}],
                "completed_by": {"id": who, "email": who}}

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 200)
    classes = list(CONFIG.classes)
    tasks = []
    for i, y in enumerate(truth):  # a good and a careless annotator label everything, a third settles nothing
        good, careless = (y if rng.random() < 0.97 else 1 - y), (y if rng.random() < 0.7 else 1 - y)
        tasks.append({"id": i, "annotations": [ann(classes[good], "good"), ann(classes[careless], "careless")]})
    tasks.append({"id": 500, "annotations": []})
    labels, unclean = people_labels(tasks, CONFIG, min_confidence=0.9)
    split = [i for i, t in enumerate(tasks[:200]) if len({a["result"][0]["value"]["choices"][0] for a in t["annotations"]}) == 2]
    assert split and unclean and all(labels[i] == tasks[i]["annotations"][0]["result"][0]["value"]["choices"][0] or i in unclean
                         for i in split), "where they split, the better annotator's label or none"
    assert labels[500] is None and 500 not in unclean
    pool = [*({"id": i, "predicted": classes[truth[i]]} for i in split), {"id": 500, "predicted": classes[0]}]
    wrong, human = outcomes(pool, labels, unclean)
    for row, t in enumerate(pool):
        if t["id"] in unclean:  # a disputed audit task: unlabelled for the test (an error), and never accepted
            assert np.isnan(wrong[row]) and human[row]
    assert not human[-1] and np.isnan(wrong[-1])


def test_the_bound_restated_once_people_label_accepted_tasks():
    """Certified: at most bound * m = 15 errors among m = 1,000 accepted. People label 100 of them and
    correct 10: at most 5 errors remain among the 900 left to the model; with 500 more deleted, among 400.
    More corrections than 15 disprove the certificate: no bound, and it no longer holds."""
    from labeler.studio.export import Finished

    f = Finished({}, "v3", [], {"accepted": 1000, "bound": 0.015})
    assert f.errors_allowed() == 15 and f.bound_after(1000, 0) == pytest.approx(0.015)
    assert f.bound_after(900, 10) == pytest.approx(5 / 900) and f.bound_after(400, 10) == pytest.approx(5 / 400)
    assert f.bound_after(900, 15) == 0.0 and f.holds(15)
    assert f.bound_after(900, 16) is None and not f.holds(16)
    assert f.bound_after(0, 3) is None
    assert Finished({}, "v3", [], {"accepted": 0, "bound": None}).bound_after(0, 0) is None
