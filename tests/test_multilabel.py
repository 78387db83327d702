"""Multi-label projects (<Choices choice="multiple">, issue 12): the maths, then a real round trip.

Unit tests: per-class probabilities and thresholds, the prediction's shape, which annotation is a
task's label set, metrics, the queue's order, export rows. The integration test drives a real Label
Studio with the tiny BLIP-2: pre-annotate, correct through the API, retrain, export.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from labeler.dev.demo import template
from labeler.dev.shapes import labels_of, synthetic_shapes
from labeler.labelconfig import parse_label_config
from labeler.learning.metrics import evaluate_multilabel
from labeler.models.calibration import fit_thresholds
from labeler.models.predictor import to_prediction
from labeler.models.strategies import queue_order
from labeler.models.uncertainty import centred, multilabel_uncertainty
from labeler.models.zeroshot import sigmoid
from labeler.studio.export import Row
from labeler.studio.tasks import annotation_labels, pick_label, winning_annotation

CONFIG = parse_label_config(template("multilabel"))
CLASSES = list(CONFIG.classes)


def ticked(*labels, cancelled=False, ann_id=1, at="2026-01-01", gt=False):
    result = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": list(labels)}}]
    return {"id": ann_id, "result": result if labels else [], "was_cancelled": cancelled, "updated_at": at,
            "ground_truth": gt}


# -- the label config and the zero-shot probabilities ------------------------------------------------
def test_the_template_is_multi_label_with_prompts_per_class():
    assert CONFIG.multiple and len(CLASSES) == 5 and CONFIG.prompts["person"][1] == "a photo with people in it"
    assert not parse_label_config(template("multiclass")).multiple


def test_sigmoid_is_stable_and_exact():
    s = np.array([[-800.0, 0.0, 800.0], [np.log(3), -np.log(3), 2.0]])
    p = sigmoid(s)
    assert np.isfinite(p).all() and p[0].tolist() == [0.0, 0.5, 1.0]
    np.testing.assert_allclose(p[1], [0.75, 0.25, 1 / (1 + np.exp(-2))])


# -- predictions ------------------------------------------------------------------------------------
def test_prediction_holds_every_class_over_its_threshold():
    p = np.array([0.9, 0.2, 0.55, 0.45, 0.1])
    pred = to_prediction(p, CONFIG, "v1-head", "least_confidence")
    assert pred["result"][0]["value"]["choices"] == ["person", "vehicle"]  # default threshold 0.5
    # the least decided class is "vehicle" (0.05 over 0.5 of room 0.5) and "building" (0.05 under): margin 0.1
    assert pred["score"] == pytest.approx(0.1)
    t = np.array([0.95, 0.1, 0.5, 0.4, 0.5])
    pred = to_prediction(p, CONFIG, "v1-head", "least_confidence", t)
    assert pred["result"][0]["value"]["choices"] == ["animal", "vehicle", "building"]
    assert pred["score"] == pytest.approx(1 - multilabel_uncertainty(p[None], t)[0], abs=1e-6)


def test_prediction_with_no_class_over_threshold_says_none():
    pred = to_prediction(np.array([0.1, 0.2, 0.3, 0.05, 0.4]), CONFIG, "v", "margin")
    assert pred["result"][0]["value"]["choices"] == [] and pred["score"] == pytest.approx(0.2)


def test_single_choice_predictions_unchanged():
    config = parse_label_config(template("binary"))
    pred = to_prediction(np.array([0.3, 0.7]), config, "v", "least_confidence")
    assert pred["result"][0]["value"]["choices"] == ["closed"] and pred["score"] == pytest.approx(0.7)


def test_centred_probabilities_keep_decisions_and_uncertainty():
    rng = np.random.default_rng(0)
    P, t = rng.random((200, 5)), rng.uniform(0.05, 0.95, 5)
    q = centred(P, t)
    assert ((q >= 0.5) == (P >= t)).all() and (0 <= q).all() and (q <= 1).all()
    np.testing.assert_allclose(multilabel_uncertainty(q, 0.5), multilabel_uncertainty(P, t))
    np.testing.assert_allclose(centred(P[3], t), q[3])  # one task's row, as the queue records it


def test_queue_ranks_multi_label_tasks_by_their_least_decided_class():
    q = np.array([[0.99, 0.01, 0.02], [0.9, 0.55, 0.1], [0.5, 0.0, 1.0], [0.8, 0.2, 0.3]])
    order = queue_order("least_confidence", q, np.arange(4), np.array([], int), 2, None, multilabel=True)
    assert order.tolist() == [2, 1, 3, 0]
    # margin_diverse without features: the same shortlist order
    order = queue_order("margin_diverse", q, np.arange(4), np.array([], int), 4, None, multilabel=True)
    assert order.tolist() == [2, 1, 3, 0]


def test_queue_never_repeats_a_task_when_images_are_duplicates():
    """k-center on identical features (the same picture uploaded twice, blank crops) once picked one task again
    and again: the queue listed 79 ranks for 48 tasks."""
    feats = np.repeat(np.eye(3, dtype=np.float32), 16, axis=0)  # 48 tasks, 3 distinct pictures
    q = np.random.default_rng(0).random((48, 5))
    for proba in (q, None):
        order = queue_order("margin_diverse", proba, np.arange(48), np.array([], int), 25, feats,
                            diverse_top=200, multilabel=True)
        assert sorted(order.tolist()) == list(range(48))


# -- annotations ------------------------------------------------------------------------------------
def test_annotation_label_sets():
    assert annotation_labels(ticked("vehicle", "person"), CONFIG) == ("person", "vehicle")  # config order
    assert annotation_labels(ticked(), CONFIG) == (), "a submitted annotation ticking nothing: none of these"
    assert annotation_labels(ticked("person", cancelled=True), CONFIG) is None
    assert annotation_labels(ticked("person", "unicorn"), CONFIG) is None, "off-config: not a usable label"
    assert pick_label([ticked("text", "animal")], CONFIG) == "animal;text"


def test_winning_label_set_is_the_majority_set():
    anns = [ticked("person", "animal", ann_id=1, at="1"), ticked("animal", "person", ann_id=2, at="2"),
            ticked("person", ann_id=3, at="3")]
    assert winning_annotation(anns, CONFIG)["id"] == 2
    assert pick_label(anns + [ticked("text", ann_id=4, at="4", gt=True)], CONFIG) == "text"
    assert pick_label([ticked("person", ann_id=1, at="1"), ticked(ann_id=2, at="2")], CONFIG) == "", \
        "a tie goes to the latest, and the empty set is a label"


# -- metrics and thresholds -------------------------------------------------------------------------
def test_multilabel_metrics_by_hand():
    Y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
    P = np.array([[.8, .6, .1], [.4, .9, .2], [.1, .2, .3], [.3, .7, .4]])
    m = evaluate_multilabel(Y, P, ["a", "b", "c"])
    # a: TP 1, FN 1 -> F1 2/3; b: TP 2, FP 1 -> F1 0.8; c: nobody has it, nothing predicted -> left out
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 / 3) and m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["subset_accuracy"] == pytest.approx(2 / 4) and m["hamming_loss"] == pytest.approx(2 / 12)
    assert m["per_class"]["c"]["roc_auc"] is None and m["per_class"]["a"]["roc_auc"] == 1.0


def test_thresholds_sit_in_the_middle_of_the_gap_not_on_an_item():
    P = np.array([[0.999], [0.995], [0.01], [0.002]])
    assert fit_thresholds(P, np.array([[1], [1], [0], [0]]))[0] == 0.5, "0.5 separates them: kept"
    P = np.array([[0.9], [0.7], [0.6], [0.1]])
    t = fit_thresholds(P, np.array([[1], [1], [0], [0]]))[0]
    assert t == pytest.approx(0.65), "between the last negative (0.6) and the first positive (0.7)"
    assert fit_thresholds(P, np.ones((4, 1)))[0] == 0.5, "no negatives: the default"


def test_thresholds_rescue_a_rare_class_with_low_probabilities():
    rng = np.random.default_rng(1)
    n = 400
    Y = (rng.random((n, 3)) < [0.5, 0.3, 0.04]).astype(int)
    # the rare class's probabilities are low even where it is present (a miscalibrated model)
    P = np.clip(np.where(Y == 1, [0.8, 0.7, 0.3], [0.2, 0.3, 0.05]) + rng.normal(0, 0.06, Y.shape), 0, 1)
    at_half = evaluate_multilabel(Y, P, ["a", "b", "rare"])
    t = fit_thresholds(P, Y)
    tuned = evaluate_multilabel(Y, P, ["a", "b", "rare"], t)
    assert at_half["per_class"]["rare"]["recall"] < 0.2 and tuned["per_class"]["rare"]["f1"] > 0.8
    assert 0.05 < t[2] < 0.3 and tuned["macro_f1"] > at_half["macro_f1"]


# -- export rows ------------------------------------------------------------------------------------
def test_export_rows_carry_label_sets():
    row = Row(7, "/data/upload/x.png", "person;text", "a@b.c", "2026", "person", 0.4,
              labels=("person", "text"), predicted=("person",))
    rec = row.record(multilabel=True)
    assert rec["labels"] == ["person", "text"] and rec["prediction"] == ["person"] and rec["agree"] is False
    none = Row(8, "y.png", "", "a@b.c", "2026", "", 0.9, labels=(), predicted=())
    assert none.record(True)["agree"] is True and none.count_as() == ["(none of these)"]
    assert row.count_as() == ["person", "text"]


# -- classifiers and training steps ----------------------------------------------------------------
def ml_clusters(n: int, seed: int = 0, rates=(0.5, 0.4, 0.3, 0.1), dim: int = 12):
    """Samples whose embedding is the sum of the centres of the classes they have, plus noise."""
    from labeler.models.classifiers import Sample

    centres = np.random.default_rng(0).normal(0, 2, size=(len(rates), dim))
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, len(rates))) < rates).astype(int)
    X = Y @ centres + rng.normal(0, 1, size=(n, dim))
    blank = Image.new("RGB", (4, 4))
    return [Sample(blank, features=x, zeroshot=rng.normal(0, 1, len(rates))) for x in X], Y


def test_multilabel_head_learns_sets_and_round_trips(tmp_path):
    from labeler.models.classifiers import load_classifier
    from labeler.models.classifiers.multilabel import MultiLabelHead

    samples, Y = ml_clusters(300)
    test, Yt = ml_clusters(200, seed=1)
    classes = ["a", "b", "c", "rare"]
    head = MultiLabelHead(classes).fit(samples, Y)
    P = head.predict_proba(test)
    assert P.shape == (200, 4) and head.multilabel and head.thresholds_.tolist() == [0.5] * 4
    m = evaluate_multilabel(Yt, P, classes, head.thresholds_)
    assert m["macro_f1"] > 0.85 and m["per_class"]["rare"]["recall"] > 0.7, m
    head.thresholds_ = np.array([0.4, 0.5, 0.6, 0.3])
    head.save(tmp_path / "v")
    back = load_classifier(tmp_path / "v")
    assert type(back) is MultiLabelHead and back.thresholds_.tolist() == [0.4, 0.5, 0.6, 0.3]
    np.testing.assert_allclose(back.predict_proba(test), P)
    assert (back.predict(test) == (P >= [0.4, 0.5, 0.6, 0.3])).all()
    # a class absent from the training labels gets a constant, low probability instead of failing
    Y0 = Y.copy()
    Y0[:, 3] = 0
    lone = MultiLabelHead(classes).fit(samples, Y0)
    assert lone.fit_info_["constant_classes"] == ["rare"] and (lone.predict_proba(test)[:, 3] < 0.01).all()


def test_multilabel_training_steps():
    from sklearn.base import clone

    from labeler.errors import TrainingError
    from labeler.learning.multilabel import check_counts, choose_split, cross_fitted_thresholds, fit_and_evaluate, fold_of
    from labeler.models.classifiers.multilabel import MultiLabelHead

    samples, Y = ml_clusters(120, rates=(0.5, 0.4, 0.3, 0.06))
    classes = ["a", "b", "c", "rare"]
    assert check_counts(Y, classes, 3, 0)["rare"] == Y[:, 3].sum()
    with pytest.raises(TrainingError, match="too few images with"):
        check_counts(Y, classes, int(Y[:, 3].sum()) + 1, 0)
    with pytest.raises(TrainingError, match="too few images without"):
        check_counts(np.ones_like(Y), classes, 3, 0)
    split = choose_split(list(range(120)), Y, lambda t: False)
    assert split.method.endswith("cross-validation") and split.folds == min(5, Y[:, 3].sum())
    folds = fold_of(Y, split.folds, 0)
    rare_per_fold = np.bincount(folds[Y[:, 3] == 1], minlength=split.folds)
    assert rare_per_fold.max() - rare_per_fold.min() <= 1, "the rare class's positives are spread over the folds"
    clf, P, groups = fit_and_evaluate(MultiLabelHead(classes), samples, Y, split, list(range(120)), 0, print)
    assert P.shape == Y.shape and (groups == folds).all() and clf.fit_info_["train_seconds"] >= 0
    T = cross_fitted_thresholds(P, Y, groups)
    for k in range(split.folds):  # fold k's thresholds come from the other folds only
        np.testing.assert_allclose(T[groups == k][0], fit_thresholds(P[groups != k], Y[groups != k]))
    assert clone(clf).get_params()["C"] == 0.5
    hold = choose_split(list(range(300)), ml_clusters(300)[1], lambda t: t % 5 == 0)
    assert hold.method == "holdout" and len(hold.evaluate) == 60


# -- a real round trip --------------------------------------------------------------------------------
def choices_of(prediction: dict) -> list[str]:
    return prediction["result"][0]["value"]["choices"]


@pytest.fixture(scope="module")
def ml_project(label_studio, tiny_model, tmp_path_factory):
    """A multi-label project in a real Label Studio with 48 uploaded images, and a Predictor on the tiny BLIP-2."""
    from labeler.config import Settings
    from labeler.dev.demo import upload_images
    from labeler.models.predictor import Predictor
    from labeler.studio.client import Studio

    url, token = label_studio
    studio = Studio(url, token)
    proj = studio.projects.create(title="multi-label", label_config=template("multilabel"))
    folder = tmp_path_factory.mktemp("ml-images")
    synthetic_shapes(folder, 48)
    upload_images(url, token, proj.id, sorted(folder.iterdir()))
    predictor = Predictor(Settings(model_dir=tmp_path_factory.mktemp("ml-model"), zeroshot_model=str(tiny_model),
                                   local_files_only=True, min_per_class=3, seed=0))
    predictor.load_scorer()
    return studio, proj.id, predictor


def tasks_of(studio, pid) -> list[dict]:
    return studio.request("GET", "api/tasks/", params={"project": pid, "fields": "all", "page_size": 500}
                          ).json()["tasks"]


@pytest.mark.integration
def test_multilabel_round_trip(ml_project, tmp_path):
    from labeler.learning.training import train_project
    from labeler.studio.export import export
    from labeler.studio.preannotate import preannotate

    studio, pid, predictor = ml_project
    # 1. zero-shot pre-annotation: per-class sigmoid probabilities against 0.5, stored by Label Studio
    rep = preannotate(studio, pid, predictor, progress=False)
    assert rep.predicted == 48 and not rep.failed, rep.summary()
    tasks = tasks_of(studio, pid)
    preds = [t["predictions"][0] for t in tasks]
    assert all(p["model_version"] == rep.version and 0 <= p["score"] <= 1 for p in preds)
    assert all(set(choices_of(p)) <= set(CLASSES) for p in preds)
    assert rep.queue is not None and rep.queue.ranked == 48, "the queue ranks a multi-label project too"
    # "none of these": Label Studio stores a prediction whose choices list is empty, as it is
    none = to_prediction(np.full(5, 0.1), CONFIG, "none-check", "margin")
    studio.predictions.create(task=tasks[0]["id"], result=none["result"], score=none["score"],
                              model_version="none-check")
    back = [p for p in tasks_of(studio, pid)[0]["predictions"] if p["model_version"] == "none-check"]
    assert len(back) == 1 and choices_of(back[0]) == [] and back[0]["score"] == pytest.approx(0.8)
    studio.predictions.delete(id=back[0]["id"])

    # 2. corrections through the API: every task gets its true set, "none of these" included
    truth = {}
    for t in tasks:
        truth[t["id"]] = labels_of(t["data"]["image"], CLASSES)
        result = [{"from_name": "choice", "to_name": "image", "type": "choices",
                   "value": {"choices": list(truth[t["id"]])}}] if truth[t["id"]] else []
        studio.annotations.create(id=t["id"], result=result)
    assert any(not labels for labels in truth.values()), "the data set has images with none of the classes"

    # 3. retraining: a multi-label version with per-class thresholds and multi-label metrics
    out = train_project(predictor, str(pid), studio)
    meta = out.meta
    assert meta["multilabel"] and len(meta["thresholds"]) == 5 and all(0 < t < 1 for t in meta["thresholds"])
    m = meta["metrics"]
    assert {"subset_accuracy", "hamming_loss", "macro_f1", "micro_f1", "per_class"} <= set(m)
    assert m["n"] == 48 and set(m["per_class"]) == set(CLASSES)
    assert "macro_f1" in meta["zeroshot_metrics"] and "macro-F1" in meta["promotion_reason"]

    # 4. the new version's predictions are multi-choice, with the version's thresholds
    if out.promoted:
        rep = preannotate(studio, pid, predictor, progress=False)
        assert rep.version == out.version and rep.predicted == 48
    version, items = predictor.score(str(pid), [t["data"]["image"] for t in tasks], predictor_config(studio, pid),
                                      studio.conn)
    assert all(it.proba is not None and it.proba.shape == (5,) for it in items)
    if out.promoted:
        assert version == out.version
        np.testing.assert_allclose(items[0].thresholds, meta["thresholds"])
    stored = [t["predictions"][0] for t in tasks_of(studio, pid)]
    assert all(p["model_version"] == version for p in stored)
    assert max(len(choices_of(p)) for p in stored) >= 2, "some prediction holds several classes"

    # 5. export gives the label sets back
    export(studio, pid, "csv", tmp_path / "csv", progress=False)
    rows = {int(r["task_id"]): r for r in csv.DictReader((tmp_path / "csv" / "labels.csv").open())}
    assert len(rows) == 48 and all(tuple(filter(None, r["labels"].split(";"))) == truth[tid]
                                   for tid, r in rows.items())
    export(studio, pid, "jsonl", tmp_path / "jsonl", progress=False)
    recs = [json.loads(x) for x in (tmp_path / "jsonl" / "labels.jsonl").read_text().splitlines()]
    assert all(tuple(r["labels"]) == truth[r["task_id"]] and isinstance(r["prediction"], list) for r in recs)
    from labeler.errors import LabelConfigError
    with pytest.raises(LabelConfigError, match="multi-label"):
        export(studio, pid, "imagefolder", tmp_path / "folder", progress=False)


def predictor_config(studio, pid):
    from labeler.studio.tasks import project_config

    return project_config(studio, pid)
