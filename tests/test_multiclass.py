"""More than two classes everywhere: metrics, the classifiers' paths, and `labeler simulate` end to end."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from labeler.cli import main
from labeler.learning.datasets import read_labels, synthetic_digits
from labeler.learning.label_errors import find_label_issues
from labeler.learning.metrics import eer, evaluate, one_vs_rest
from labeler.learning.simulate import labels_to_reach
from labeler.learning.training import cross_val_proba
from labeler.models.calibration import fit_temperature
from labeler.models.classifiers import EmbeddingHead, Sample
from labeler.models.selftrain import SelfTrained


def test_metrics_for_three_classes():
    y = np.array([0, 0, 1, 1, 2, 2])
    P = np.array([[.8, .1, .1], [.4, .5, .1], [.1, .8, .1], [.2, .7, .1], [.1, .1, .8], [.3, .3, .4]])
    m = evaluate(y, P, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(5 / 6)
    # F1: a = 2*1*.5/1.5, b = 2*(2/3)*1/(5/3), c = 1
    assert m["macro_f1"] == pytest.approx(np.mean([2 / 3, 0.8, 1.0]))
    assert "eer" not in m and m["per_class"]["a"]["precision"] == 1.0 and m["per_class"]["b"]["recall"] == 1.0
    ovr = one_vs_rest(y, P)
    for c in range(3):
        assert ovr[c]["eer"] == pytest.approx(eer((y == c).astype(int), P[:, c]))
        assert m["per_class"]["abc"[c]]["roc_auc"] == ovr[c]["roc_auc"]
    assert m["eer_macro"] == pytest.approx(np.mean([o["eer"] for o in ovr]))
    # a class absent from the labels has no one-vs-rest figures, and does not break the rest
    m = evaluate(np.array([0, 1, 1]), np.array([[.9, .05, .05], [.1, .8, .1], [.2, .2, .6]]), ["a", "b", "c"])
    assert m["per_class"]["c"]["eer"] is None and m["eer_macro"] is not None


def test_binary_metrics_unchanged():
    m = evaluate(np.array([0, 1, 0, 1]), np.array([[.9, .1], [.2, .8], [.6, .4], [.7, .3]]), ["x", "y"])
    assert m["eer"] == pytest.approx(eer(np.array([1, 0, 1, 0]), np.array([.9, .2, .6, .7])))
    assert "eer_macro" not in m and m["macro_f1"] == pytest.approx(np.mean([0.8, 2 / 3]))


def test_labels_to_reach_knows_which_way_is_better():
    rows = [{"labels": 10, "eer": .2, "macro_f1": .5}, {"labels": 20, "eer": .1, "macro_f1": .7},
            {"labels": 30, "eer": .05, "macro_f1": .9}]
    assert labels_to_reach(rows, .1, "eer") == 20
    assert labels_to_reach(rows, .7, "macro_f1") == 20
    assert labels_to_reach(rows, .95, "macro_f1") is None


def _clusters(n_per: list[int], dim: int = 8, seed: int = 0):
    centres = np.random.default_rng(0).normal(0, 3, size=(len(n_per), dim))  # the same classes for every seed
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per)])
    X = centres[y] + rng.normal(0, 1, size=(len(y), dim))
    from PIL import Image

    blank = Image.new("RGB", (4, 4))
    evidence = -((X[:, None, :] - centres[None]) ** 2).sum(-1) / 10  # a weak zero-shot stand-in
    return [Sample(blank, features=x, zeroshot=z) for x, z in zip(X, evidence)], y


def test_head_self_training_review_and_calibration_with_four_classes_one_rare():
    samples, y = _clusters([40, 40, 40, 8])
    classes = ["a", "b", "c", "rare"]
    proba = cross_val_proba(EmbeddingHead(classes), samples, y, folds=4)
    m = evaluate(y, proba, classes)
    assert m["accuracy"] > 0.8 and m["per_class"]["rare"]["recall"] > 0.5, m["per_class"]["rare"]
    pool, _ = _clusters([30, 30, 30, 6], seed=1)
    st = SelfTrained(EmbeddingHead(classes), pool, 0.5)
    info = st.fit(samples, y).fit_info_
    assert info["pseudo_labels"] > 0 and st.predict_proba(samples[:3]).shape == (3, 4)
    flipped = y.copy()
    flipped[:3] = 1  # three "a" labelled "b"
    proba = cross_val_proba(EmbeddingHead(classes), samples, flipped, folds=4)
    issues = find_label_issues(proba, flipped)
    assert len(issues) and issues[0] in {0, 1, 2}, issues  # the most suspicious is a flipped one
    t = fit_temperature(np.stack([s.zeroshot for s in samples]), y)
    assert 0.01 < t < 100


def test_ten_class_simulate_and_evaluate_end_to_end(tmp_path):
    labels = synthetic_digits(tmp_path / "digits", [12] * 8 + [6, 6], size=32, seed=0)  # two rare classes
    assert len(read_labels(labels).classes) == 10
    out = tmp_path / "sim"
    r = CliRunner().invoke(main, ["simulate", "--labels", str(labels), "--strategy", "margin_diverse",
                                  "--budget", "60", "--batch", "20", "--start", "40", "--holdout", "40",
                                  "--cnn-steps", "10", "--self-train", "0.5", "--out", str(out),
                                  "--save-model", str(tmp_path / "model")])
    assert r.exit_code == 0, r.output
    assert "labels needed to reach a mean macro_f1" in r.output
    rows = list(csv.DictReader((out / "learning_curves.csv").open()))
    assert rows and all(0 <= float(row["macro_f1"]) <= 1 and row["eer"] == "" for row in rows)
    r = CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path / "model"), "--labels", str(labels)])
    assert r.exit_code == 0, r.output
    assert "macro-F1" in r.output and "class9" in r.output and "EER(ovr)" in r.output


def test_multilabel_metrics_uncertainty_and_thresholds():
    from labeler.learning.metrics import evaluate_multilabel
    from labeler.models.calibration import fit_thresholds
    from labeler.models.uncertainty import multilabel_uncertainty

    Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    P = np.array([[.9, .2, .7], [.1, .8, .4], [.6, .3, .2], [.2, .1, .9]])
    m = evaluate_multilabel(Y, P, ["a", "b", "c"])
    assert m["subset_accuracy"] == pytest.approx(3 / 4) and m["hamming_loss"] == pytest.approx(1 / 12)
    assert m["per_class"]["b"]["recall"] == 0.5 and m["per_class"]["a"]["f1"] == 1.0
    u = multilabel_uncertainty(P)
    # row 2: class b at 0.3 is 0.2 below 0.5 -> margin 0.4; class a 0.6 -> 0.2: the least decided wins
    np.testing.assert_allclose(u, [0.6, 0.8, 0.8, 0.4])
    t = fit_thresholds(P, Y)
    # b's positives are 0.8 and 0.3, its negatives 0.2 and 0.1: any threshold in (0.2, 0.3] catches both; the middle
    assert t[1] == pytest.approx(0.25)
    assert t[0] == 0.5, "a's classes split anywhere in (0.2, 0.6]: 0.5 is in there, so it stays"
    assert evaluate_multilabel(Y, P, ["a", "b", "c"], t)["subset_accuracy"] == 1.0


def test_classifiers_follow_the_scikit_learn_estimator_protocol():
    from sklearn.base import clone, is_classifier

    samples, y = _clusters([20, 20, 20, 6])
    classes = ["a", "b", "c", "rare"]
    pool, _ = _clusters([10, 10, 10, 3], seed=2)
    for est in (EmbeddingHead(classes, C=0.3), SelfTrained(EmbeddingHead(classes), pool, 0.5)):
        twin = clone(est)
        assert is_classifier(est) and twin is not est and twin.get_params().keys() == est.get_params().keys()
        assert twin.fit(samples, y) is twin  # fit returns self
        assert list(twin.classes_) == [0, 1, 2, 3] and twin.predict_proba(samples).shape == (len(y), 4)
        assert (twin.predict(samples) == twin.predict_proba(samples).argmax(1)).all()
        assert twin.score(samples, y) > 0.8  # ClassifierMixin.score: accuracy
    st = SelfTrained(EmbeddingHead(classes), pool, 0.5)
    assert clone(st).pool is st.pool  # the read-only pool is shared by clones, not deep-copied
    assert clone(EmbeddingHead(classes)).set_params(C=2.0).C == 2.0
