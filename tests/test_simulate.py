"""The offline simulation and `labeler evaluate` on generated images (issue 6)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from labeler.cli import main
from labeler.dev.demo import synthetic_eyes
from labeler.learning.simulate import Annotator, k_center_greedy, make_classifier, run, select
from labeler.models.classifiers import Sample


def make_dataset(tmp_path, n=60):
    folder = synthetic_eyes(tmp_path / "images", n=n, size=24, seed=1)
    rows = [(f"images/{p.name}", p.name.split("_")[0]) for p in sorted(folder.iterdir())]
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows(rows)
    return tmp_path / "labels.csv"


@pytest.fixture
def generated(tmp_path):
    """(samples, y, classes, test indices, a quick CNN factory) on 60 generated images."""
    from labeler.learning.datasets import read_labels

    data = read_labels(make_dataset(tmp_path))
    classes = data.classes
    make = make_classifier("cnn", classes, max_steps=10, min_steps=10, input_size=32)
    return [Sample(im) for im in data.images()], data.targets(classes), classes, np.arange(0, 60, 3), make


def test_annotator_reveals_only_what_is_queried():
    a = Annotator(np.array([0, 1, 0, 1]))
    assert list(a.label([3, 1])) == [1, 1] and a.queried == {1, 3}


def test_k_center_greedy_covers_clusters():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(c, 0.01, size=(20, 2)) for c in (0, 5, 10)])
    picks = k_center_greedy(f, np.arange(60), np.zeros(0, dtype=int), 3, rng)
    assert sorted(set(p // 20 for p in picks)) == [0, 1, 2]


def test_uncertainty_selection_takes_the_least_certain():
    proba = np.array([[0.99, 0.01], [0.5, 0.5], [0.7, 0.3], [0.55, 0.45]])
    pool = np.array([10, 11, 12, 13])
    got = select("margin", proba, pool, np.zeros(0, dtype=int), 2, np.random.default_rng(0), None)
    assert list(got) == [11, 13]


def test_run_never_queries_the_holdout(generated):
    samples, y, classes, test, estimator = generated
    res, annotator = run(samples, y, classes, "margin_diverse", budget=20, batch=10, test_idx=test, seed=0,
                         estimator=estimator, features=np.random.default_rng(0).normal(size=(60, 8)), progress=False)
    assert len(annotator.queried) == 20 and not annotator.queried & set(test.tolist())
    assert [r["labels"] for r in res.rows] == [10, 20]
    assert all(0 <= r["eer"] <= 1 for r in res.rows)


def test_self_training_pseudo_labels_only_the_pool(generated, monkeypatch):
    samples, y, classes, test, estimator = generated
    # a fixed thread count (the CNN otherwise takes as many as are idle: other sums under load) and
    # enough steps that a teacher does not call the whole pool one class (which would pseudo-label none)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    estimator = estimator.set_params(max_steps=40, min_steps=40)
    fits = []

    class Recording(type(estimator)):
        def fit(self, X, y, unlabelled=None):
            fits.append([id(x) for x in X])
            return super().fit(X, y, unlabelled=unlabelled)

    res, annotator = run(samples, y, classes, "margin", budget=30, batch=10, test_idx=test, seed=0,
                         estimator=Recording(**estimator.get_params()), progress=False, self_train=0.0)
    held_out = {id(samples[i]) for i in test}
    assert [r["pseudo_labels"] for r in res.rows][0] == 0, "no teacher before the first model"
    assert sum(r["pseudo_labels"] for r in res.rows) > 0
    assert [len(f) for f in fits] == [r["labels"] + r["pseudo_labels"] for r in res.rows]
    assert not any(held_out & set(f) for f in fits), "held-out images are never pseudo-labelled"


def test_simulate_and_evaluate_commands(tmp_path):
    labels = make_dataset(tmp_path)
    out = tmp_path / "sim"
    r = CliRunner().invoke(main, ["simulate", "--labels", str(labels), "--strategy", "random",
                                  "--strategy", "margin", "--budget", "20", "--batch", "10", "--holdout", "20",
                                  "--cnn-steps", "10", "--out", str(out), "--save-model", str(tmp_path / "model")])
    assert r.exit_code == 0, r.output
    assert (out / "learning_curves.png").stat().st_size > 1000
    rows = list(csv.DictReader((out / "learning_curves.csv").open()))
    assert {row["strategy"] for row in rows} == {"random", "margin"} and len(rows) == 4
    assert "labels needed to reach" in r.output
    r = CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path / "model"), "--labels", str(labels)])
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "EER" in r.output and "confusion matrix" in r.output


def test_simulate_certify_writes_the_accepted_labels(tmp_path):
    """`simulate --certify` on a labelled folder of three classes (one rare): the accepted images come
    back as the input CSV names them, with a class label, and the printed realized error is theirs."""
    from labeler.learning.datasets import synthetic_digits

    labels = synthetic_digits(tmp_path / "digits", [150, 150, 30], size=24, seed=3)
    truth = {row["image"]: row["label"] for row in csv.DictReader(labels.open())}
    out, accepted = tmp_path / "finish", tmp_path / "accepted.csv"
    r = CliRunner().invoke(main, ["simulate", "--labels", str(labels), "--budget", "60", "--batch", "30",
                                  "--cnn-steps", "20", "--certify", "0.1", "--delta", "0.1", "--redraws", "5",
                                  "--accepted-out", str(accepted), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "claimed error" in r.output and "queue 60 + audit" in r.output and "coverage" in r.output
    rows = list(csv.DictReader(accepted.open()))
    assert f"wrote {len(rows)} accepted labels" in r.output
    assert all(row["image"] in truth and row["label"] in {"class0", "class1", "class2"} for row in rows)
    result = next(csv.DictReader((out / "finish.csv").open()))
    assert int(result["accepted"]) == len(rows)
    assert int(result["queue"]) + int(result["audit"]) + int(result["to_person"]) + len(rows) == len(truth)
    if rows:
        realized = np.mean([truth[row["image"]] != row["label"] for row in rows])
        assert float(result["realized_error"]) == pytest.approx(realized, abs=1e-4)


@pytest.mark.parametrize("args,message", [(["--certify", "1.5"], "strictly between 0 and 1"),
                                          (["--certify", "0.02", "--delta", "0"], "strictly between 0 and 1")])
def test_simulate_certify_refuses_levels_outside_0_1(tmp_path, args, message):
    r = CliRunner().invoke(main, ["simulate", "--labels", str(make_dataset(tmp_path)), *args])
    assert r.exit_code == 2 and message in r.output


def test_simulate_with_a_team_of_annotators(tmp_path):
    """`simulate --annotators`: the consensus comparison and relabel-or-new against new only, at equal clicks."""
    labels = make_dataset(tmp_path, n=120)
    r = CliRunner().invoke(main, ["simulate", "--labels", str(labels), "--annotators", "0.95,0.8,0.7", "--budget", "50",
                                  "--start", "30", "--batch", "10", "--holdout", "30"])
    assert r.exit_code == 0, r.output
    assert "annotators [0.95, 0.8, 0.7]" in r.output and "dawid_skene" in r.output and "majority" in r.output
    assert "relabel_or_new, 50 clicks" in r.output and "new_only, 50 clicks" in r.output
    bad = CliRunner().invoke(main, ["simulate", "--labels", str(labels), "--annotators", "0.9,x", "--budget", "50",
                                    "--holdout", "30"])
    assert bad.exit_code == 1 and "accuracies separated by commas" in bad.output
