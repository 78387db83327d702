"""The promotion rule and the split, without Label Studio."""

from __future__ import annotations

import numpy as np

from labeler.config import Settings
from labeler.learning.training import HOLDOUT_MIN, Split, baseline_for, choose_split, decide_promotion, unseen_by
from labeler.models.predictor import Predictor


def test_not_worse_is_promoted_and_the_reason_names_the_baseline():
    assert decide_promotion(0.8, {"name": "v1-head", "metric": "accuracy", "value": 0.8, "n": 10})[0]
    ok, why = decide_promotion(0.9, {"name": "v1-head", "metric": "accuracy", "value": 0.85, "n": 7, "new_value": 0.7})
    assert not ok and "accuracy on 7 labels" in why and "0.7000 < 0.8500 of v1-head" in why
    ok, why = decide_promotion(0.6, {"name": "the zero-shot model", "metric": "macro_f1", "value": 0.55, "n": 9})
    assert ok and why.startswith("macro-F1 on 9 labels") and "0.6000 >= 0.5500" in why


def test_split_is_holdout_with_enough_items_else_cross_validation():
    y = np.array([0, 1] * 20)
    small = choose_split(list(range(40)), y, 2)
    assert small.method == "5-fold cross-validation" and len(small.evaluate) == 40
    y = np.array([0, 1] * 300)
    big = choose_split(list(range(600)), y, 2)
    assert big.method == "holdout" and len(big.evaluate) >= HOLDOUT_MIN
    assert not set(big.train) & set(big.evaluate)


def test_serving_version_is_compared_on_items_it_never_trained_on():
    split = Split(np.arange(6), np.arange(6), "3-fold cross-validation", 3)
    tasks = [10, 11, 12, 13, 14, 15]
    assert list(unseen_by({"trained_tasks": [10, 11, 12]}, tasks, split)) == [3, 4, 5]
    assert list(unseen_by({"trained_tasks": tasks}, tasks, split)) == list(range(6))  # nothing new: all
    assert list(unseen_by({}, tasks, split)) == list(range(6))                         # an old version: all
    holdout = Split(np.arange(4), np.array([4, 5]), "holdout")
    assert list(unseen_by({"trained_tasks": tasks}, tasks, holdout)) == [4, 5]


def test_without_any_model_the_baseline_is_a_constant_guess(tmp_path):
    predictor = Predictor(Settings(model_dir=tmp_path, zeroshot_model=None))
    y = np.array([0, 0, 0, 1, 0, 1])
    split = Split(np.arange(6), np.arange(6), "3-fold cross-validation", 3)
    base = baseline_for(predictor, "1", [None] * 6, y, list(range(6)), split, np.zeros((6, 2)), ["a", "b"], {})
    assert base["name"] == "always guessing 'a'" and base["metric"] == "accuracy" and base["value"] == 4 / 6


def test_the_serving_version_teaches_only_where_it_cannot_leak_held_out_labels(tmp_path):
    from PIL import Image

    from labeler.learning.training import serving_teacher
    from labeler.models.classifiers import EmbeddingHead, Sample

    predictor = Predictor(Settings(model_dir=tmp_path, zeroshot_model=None))
    rng = np.random.default_rng(0)
    samples = [Sample(Image.new("RGB", (2, 2)), features=rng.normal(size=4) + 2 * (i % 2)) for i in range(40)]
    y = np.arange(40) % 2
    served = EmbeddingHead(["a", "b"]).fit(samples, y)
    holdout = Split(np.arange(30), np.arange(30, 40), "holdout")
    cv = Split(np.arange(40), np.arange(40), "5-fold cross-validation", 5)

    def serve(evaluation: str) -> None:
        v = predictor.registry.add("1", lambda folder: served.save(folder) and {"evaluation": evaluation})
        predictor.registry.promote("1", v)

    assert serving_teacher(predictor, "1", EmbeddingHead(["a", "b"]), holdout) is None  # nothing serves
    serve("holdout")
    assert serving_teacher(predictor, "1", EmbeddingHead(["a", "b"]), holdout) is not None
    assert serving_teacher(predictor, "1", EmbeddingHead(["a", "b"]), cv) is None         # out-of-fold items seen
    assert serving_teacher(predictor, "1", EmbeddingHead(["a", "c"]), holdout) is None    # other classes
    serve("5-fold cross-validation")  # trained on every label, held-out ones included
    assert serving_teacher(predictor, "1", EmbeddingHead(["a", "b"]), holdout) is None
    # a model that is served but not evaluated (the final fit under cross-validation) may start from it
    assert serving_teacher(predictor, "1", EmbeddingHead(["a", "b"]), None) is not None
    assert serving_teacher(predictor, "1", EmbeddingHead(["a", "c"]), None) is None
