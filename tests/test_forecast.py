"""The stop signal and the forecast (labeler.learning.forecast, labeler.learning.finishing) on synthetic
learning curves whose parameters, and so whose label counts, are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from labeler.learning import finishing
from labeler.learning.certify import CertificateError
from labeler.learning.forecast import Point, fit_curve, forecast, gain_interval, plateau
from labeler.models.registry import Registry
from labeler.studio.queue import QueueState

A, B, C = 1.0, 0.5, 0.03          # err(n) = A n^-B + C
LABELS = np.arange(50, 401, 50)   # eight versions, 50 to 400 training labels


def err(n):
    return A * np.asarray(n, float) ** -B + C


def points(errors, size, labels=LABELS) -> list[Point]:
    return [Point(int(n), float(e), size, f"v{i + 1}-head") for i, (n, e) in enumerate(zip(labels, errors))]


def noisy(rng, size, labels=LABELS, curve=err):
    return rng.binomial(size, curve(labels)) / size


def test_fit_recovers_the_parameters():
    exact = fit_curve(LABELS, err(LABELS), np.full(len(LABELS), 1000))
    assert exact.params == 3 and exact.a == pytest.approx(A, rel=1e-3) and exact.b == pytest.approx(B, rel=1e-3)
    assert exact.c == pytest.approx(C, abs=1e-4)
    # with a hold-out of a million items the binomial noise is small enough to pin all three down
    labels = np.geomspace(25, 3200, 10).round()
    fits = [fit_curve(labels, noisy(np.random.default_rng(s), 10**6, labels), np.full(10, 10**6)) for s in range(5)]
    assert np.median([f.b for f in fits]) == pytest.approx(B, rel=0.1)
    assert np.median([f.c for f in fits]) == pytest.approx(C, abs=0.005)
    target = float(err(1000))
    assert exact.labels_for(target) == pytest.approx(1000, rel=1e-3)
    assert math.isinf(exact.labels_for(C * 0.9))  # below the floor: never


@pytest.mark.slow
def test_interval_covers_the_true_label_count_in_most_noisy_replicates():
    """200 noisy sets of eight versions (hold-out 2,000); the target is met at 600 training labels,
    1.5 times the newest version's. The 90 % interval must cover 600 in at least 80 % of them
    (measured: 191 of 200), and its lower end must be informative (above the labels we have: 172 of 200)."""
    true_n, target = 600, float(err(600))
    rng = np.random.default_rng(7)
    covered, above_now = 0, 0
    for r in range(200):
        f = forecast(points(noisy(rng, 2000), 2000), target, replicates=100, seed=r)
        lo, hi = f.interval
        covered += lo <= true_n <= hi
        above_now += lo > LABELS[-1]
    assert covered >= 160, covered
    assert above_now >= 100, above_now


def test_precise_versions_give_a_finite_interval_around_the_truth():
    true_n, target = 800, float(err(800))
    labels = np.geomspace(50, 600, 8).round()
    f = forecast(points(noisy(np.random.default_rng(3), 10**5, labels), 10**5, labels), target, train_share=0.8)
    assert f.status == "forecast" and f.curve.params == 3
    lo, hi = f.interval
    assert lo <= true_n <= hi and hi < 2 * true_n
    assert f.more == pytest.approx((f.needed - 600) / 0.8)  # labels to annotate: a fifth goes to the hold-out
    assert f.more_interval[0] <= f.more <= f.more_interval[1]
    assert "more labels to reach" in f.message


def test_three_versions_fit_without_a_floor_and_fewer_give_no_number():
    pure = lambda n: 2.0 * np.asarray(n, float) ** -0.6  # noqa: E731
    labels = np.array([100, 200, 400])
    f = forecast(points(pure(labels), 10**6, labels), float(pure(1000)))
    assert f.curve.params == 2 and f.needed == pytest.approx(1000, rel=0.02)
    assert "without a floor" in f.message
    for few in ([100, 200], [100, 100, 200], [150]):
        g = forecast(points(pure(np.array(few)), 500, few), 0.01)
        assert g.status == "not enough versions" and g.needed is None and g.interval is None and g.more is None
        assert "not enough versions" in g.message
    assert forecast([], 0.01).status == "not enough versions"


def test_a_target_below_the_floor_is_unreachable_and_json_has_no_infinity():
    f = forecast(points(err(LABELS), 10**6), C / 2)
    assert f.status == "unreachable" and math.isinf(f.needed) and math.isinf(f.interval[1])
    assert "may not be reached" in f.message
    d = f.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["needed"] is None and d["band"]["n"][0] == LABELS[0]


def test_plateau_on_flat_and_improving_curves():
    """Flat: the true error stays 0.10 from 100 to 600 labels; improving: it falls from 0.30 to 0.10.
    Hold-out 500, window 300 labels. The 95 % interval of the gain must call most flat replicates a
    plateau and most improving ones improving."""
    labels = np.arange(100, 601, 100)
    rng = np.random.default_rng(11)
    flat = [plateau(points(noisy(rng, 500, labels, lambda n: np.full(len(n), 0.1)), 500, labels), 300).status
            for _ in range(200)]
    falling = [plateau(points(noisy(rng, 500, labels, lambda n: 0.3 - 0.2 * (n - 100) / 500), 500, labels), 300).status
               for _ in range(200)]
    assert flat.count("plateau") >= 180, flat.count("plateau")
    assert falling.count("improving") >= 180, falling.count("improving")


def test_plateau_needs_a_version_far_enough_back():
    p = plateau(points([0.2, 0.1], 500, [100, 150]), window=100)
    assert p.status == "not enough versions" and p.gain is None and "none trained on 100" in p.message
    assert plateau([]).status == "not enough versions"
    ok = plateau(points([0.2, 0.1], 500, [100, 200]), window=100)
    assert ok.reference.labels == 100 and ok.gain == pytest.approx(0.1)
    json.dumps(ok.to_dict(), allow_nan=False)


def test_gain_interval_is_agresti_caffo():
    lo, hi = gain_interval(0.0, 50, 0.0, 50)  # two perfect scores: still an interval around 0, not a point
    assert lo < 0 < hi and hi - lo > 0.05


def _meta(n_train, acc, kind="head", classes=("a", "b"), eer=None, n_eval=100):
    metrics = {"n": n_eval, "accuracy": acc, "macro_f1": acc,
               "per_class": {c: {"support": n_eval // 2} for c in classes}}
    if eer is not None:
        metrics["eer"] = eer
    return {"kind": kind, "classes": list(classes), "n_train": n_train, "n_eval": n_eval, "evaluation": "holdout",
            "metrics": metrics}


def test_metric_choice_points_and_train_share():
    assert finishing.choose_metric(_meta(100, 0.9, eer=0.1)) == "eer"
    assert finishing.choose_metric(_meta(100, 0.9)) == "accuracy"
    assert finishing.choose_metric({**_meta(100, 0.9), "multilabel": True}) == "macro_f1"
    assert finishing.choose_metric(_meta(100, 0.9, classes=("a", "b", "c"))) == "accuracy"
    assert finishing.to_error("accuracy", 0.95) == pytest.approx(0.05) and finishing.to_error("eer", 0.03) == 0.03
    versions = [_meta(50, 0.7, kind="cnn"), _meta(100, 0.8), _meta(200, 0.85, classes=("a", "c")), _meta(300, 0.9)]
    pts = finishing.curve_points(versions, "accuracy")
    assert [p.labels for p in pts] == [100, 300] and pts[-1].error == pytest.approx(0.1)  # same kind and classes
    assert finishing.effective_size(_meta(1, 0.9, eer=0.1, n_eval=100), "eer") == pytest.approx(100)
    assert finishing.train_share(_meta(400, 0.9, n_eval=100)) == pytest.approx(0.8)


def test_report_from_a_registry_and_queue_without_label_studio(tmp_path):
    reg = Registry(tmp_path)
    for n in (50, 100, 150, 200, 250):
        meta = _meta(n, 1 - float(err(n)), eer=float(err(n)), n_eval=400)
        reg.add("3", lambda folder, meta=meta: meta)
    assert finishing.cost_to_finish(tmp_path, "3")["source"] == "none"  # no scores, no certificate
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([0.3, 0.3], 3000).astype(np.float32)
    state = QueueState(np.arange(3000), np.arange(3000) < 400, proba, np.zeros((3000, 1), np.float16), "v5-head")
    state.save(reg.project_dir("3") / "queue.npz")
    r = finishing.finishing_report(reg, tmp_path, "3", target=0.05)
    json.dumps(r, allow_nan=False)
    assert r["metric"] == "eer" and r["target_error"] == 0.05 and len(r["points"]) == 5
    assert r["forecast"]["status"] in {"forecast", "unreachable", "reached"} and r["forecast"]["line"]
    assert r["plateau"]["status"] in {"plateau", "improving", "worse"}
    cost = r["cost"]
    assert cost["source"] == "plan" and cost["pool"] == 2600 and cost["version"] == "v5-head"
    assert abs(cost["audit"] + cost["accepted"] + cost["to_person"] - 2600) <= 1  # each rounded
    assert ("audit " in cost["line"] and "need a person" in cost["line"]) or "no audit lets" in cost["line"]
    # a task the model could not score (a NaN row) stays out of the plan, as the audit leaves it out
    proba[-1] = np.nan
    QueueState(np.arange(3000), np.arange(3000) < 400, proba, np.zeros((3000, 1), np.float16), "v5-head").save(
        reg.project_dir("3") / "queue.npz")
    unscored = finishing.finishing_report(reg, tmp_path, "3", target=0.05)["cost"]
    assert unscored["pool"] == 2599 and abs(unscored["accepted"] - cost["accepted"]) <= 5
    with pytest.raises(CertificateError, match="strictly between 0 and 1"):
        finishing.cost_to_finish(tmp_path, "3", eps=0.0)


def test_cost_to_finish_reads_the_latest_certificate(tmp_path):
    """Where an audit was certified, its figures are the answer, not the plan."""
    audit = pytest.importorskip("labeler.learning.audit")
    from labeler.learning.certify import certify

    rng = np.random.default_rng(1)
    n = 4000
    scores = rng.uniform(0.9, 1.0, n)
    drawn = rng.random(n) < 0.2
    wrong = np.where(drawn, (rng.random(n) < 0.002).astype(float), np.nan)
    cert, accepted = certify(scores, ["a"] * n, drawn, wrong, drawn, {"all": 0.2}, eps=0.02, delta=0.05)
    needs = [i for i in range(n) if not drawn[i] and not accepted[i]]
    folder = audit.audit_dir(tmp_path, "5")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "certificate.json").write_text(json.dumps({**cert.to_dict(), "version": "v4-head", "round": 1,
                                                         "needs_person_ids": needs}))
    cost = finishing.cost_to_finish(tmp_path, "5")
    assert cost["source"] == "certificate" and cost["certified"] and cost["accepted"] == cert.accepted > 0
    with pytest.raises(CertificateError, match="strictly between 0 and 1"):  # even where the certificate answers
        finishing.cost_to_finish(tmp_path, "5", delta=1.5)
    assert cost["to_person"] == len(needs)
    assert f"{cert.accepted:,} tasks" in cost["line"] and "v4-head" in cost["line"] and f"{len(needs):,} need" in cost["line"]


def test_status_command_reads_model_dir_only(tmp_path):
    from click.testing import CliRunner

    from labeler.cli import main

    reg = Registry(tmp_path)
    names = [reg.add("3", lambda folder, n=n: _meta(n, 1 - float(err(n)), eer=float(err(n)), n_eval=400))
             for n in (50, 100, 150, 200)]
    reg.promote("3", names[-1])
    out = CliRunner().invoke(main, ["status", "--project", "3", "--model-dir", str(tmp_path), "--target", "0.05"])
    assert out.exit_code == 0, out.output
    assert f"* {names[-1]}" in out.output and "forecast:" in out.output and "more labels to reach EER 0.05" in out.output
    assert "plateau:" in out.output and "cost to finish: no scores" in out.output
    js = CliRunner().invoke(main, ["status", "--project", "3", "--model-dir", str(tmp_path), "--metric", "accuracy",
                                   "--json"])
    r = json.loads(js.output)
    assert r["metric"] == "accuracy" and r["target"] == 0.95 and r["forecast"]["needed"] == pytest.approx(
        forecast(finishing.curve_points(reg.list("3"), "accuracy"), 0.05).needed)
    bad = CliRunner().invoke(main, ["status", "--project", "3", "--model-dir", str(tmp_path), "--target", "5"])
    assert bad.exit_code != 0 and "--target must lie strictly between 0 and 1" in bad.output
