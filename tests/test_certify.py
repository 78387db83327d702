"""Certified auto-accept (labeler.learning.certify): the bounds, the search and the guarantee itself."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from labeler.learning import certify as C


def _pool(n: int, error_rate_of_score, seed: int = 0, classes=("open", "closed")):
    """A synthetic pool: confidences, predicted labels, and which predictions are wrong."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.5, 1.0, n)
    wrong = rng.random(n) < error_rate_of_score(scores)
    predicted = np.asarray(classes, dtype=object)[rng.integers(0, len(classes), n)]
    return scores, predicted, wrong


def _certify(scores, predicted, wrong_truth, rates, rng, labelled=None, starts=None, **kw):
    strata = list(predicted) if kw.get("per_class") else ["all"] * len(scores)
    audited = C.draw_audit(strata, rates, rng)
    wrong = np.where(audited, wrong_truth.astype(float), np.nan)
    if labelled is not None:  # only part of the audit labelled so far
        wrong[audited & ~labelled] = np.nan
    return C.certify(scores, predicted, audited, wrong, np.zeros(len(scores), bool), rates, starts=starts, **kw)


# -- the bounds on known binomial cases -----------------------------------------------------------
def test_error_count_pvalue_is_the_binomial_cdf():
    assert C.error_count_pvalue(0, 10, 0.2) == pytest.approx(0.8 ** 10)
    assert C.error_count_pvalue(1, 10, 0.2) == pytest.approx(0.8 ** 10 + 10 * 0.2 * 0.8 ** 9)
    assert C.error_count_pvalue(10, 10, 0.2) == pytest.approx(1.0)
    # the worst case of "E >= E0" is E0: the cdf falls as the error count grows
    assert np.all(np.diff(C.error_count_pvalue(2, np.arange(3, 40), 0.1)) < 0)


def test_clopper_pearson_lower_known_cases():
    # all n wrong: delta^(1/n); none wrong: 0
    assert float(C.clopper_pearson_lower(100, 100, 0.05)) == pytest.approx(0.05 ** (1 / 100))
    assert float(C.clopper_pearson_lower(0, 100, 0.05)) == 0.0
    # by definition P(Bin(n, L) >= k) = delta
    for k, n in [(1, 50), (3, 200), (10, 300)]:
        low = float(C.clopper_pearson_lower(k, n, 0.05))
        assert binom.sf(k - 1, n, low) == pytest.approx(0.05, abs=1e-9)


def test_round_levels_sum_to_delta():
    levels = [C.round_delta(0.05, r) for r in range(1, 60)]
    assert levels[0] == pytest.approx(0.04)
    assert sum(levels) <= 0.05 + 1e-12
    assert all(a > b for a, b in zip(levels, levels[1:]))
    with pytest.raises(ValueError):
        C.round_delta(0.05, 0)


def test_null_errors_leaves_room_for_the_audit():
    # E0_j - 1 errors over the j - q_j tasks the model keeps is at most eps
    for j in (100, 1000, 5000):
        e0 = int(C.null_errors(0.02, j, 0.1))
        q = binom.ppf(0.95, j, 0.1)
        assert (e0 - 1) <= 0.02 * (j - q) < e0


def test_first_prefix_is_the_smallest_that_can_pass():
    eps, level, f, n = 0.02, 0.04, 0.15, 3000
    j = C.first_prefix(eps, level, f, n, tolerance=1)
    assert C.error_count_pvalue(1, int(C.null_errors(eps, j, f)), f) <= level
    assert C.error_count_pvalue(1, int(C.null_errors(eps, j - 1, f)), f) > level
    # no prefix can pass: an audit that is too small for the pool
    assert C.first_prefix(eps, level, 0.001, 500) == 501


# -- the search ------------------------------------------------------------------------------------
def test_search_is_monotone_in_the_errors_found():
    """More audit errors never certify a larger prefix; a larger eps or delta never a smaller one."""
    scores, predicted, truth = _pool(4000, lambda s: 0.02 * (1 - s), seed=1)
    rates = {"all": 0.15}
    audited = C.draw_audit(["all"] * len(scores), rates, np.random.default_rng(3))
    base = np.where(audited, truth.astype(float), np.nan)
    prefixes = []
    for extra in range(0, 12):  # turn more and more audited agreements into errors, least confident first
        wrong = base.copy()
        agree = np.flatnonzero(audited & ~truth)
        wrong[agree[np.argsort(scores[agree])][:extra]] = 1
        cert, _ = C.certify(scores, predicted, audited, wrong, np.zeros(len(scores), bool), rates)
        prefixes.append(cert.strata[0].prefix)
    assert prefixes == sorted(prefixes, reverse=True)
    assert prefixes[0] > prefixes[-1]
    by_eps = [C.certify(scores, predicted, audited, base, np.zeros(len(scores), bool), rates, eps=e)[0].accepted
              for e in (0.01, 0.02, 0.05)]
    assert by_eps == sorted(by_eps)
    by_delta = [C.certify(scores, predicted, audited, base, np.zeros(len(scores), bool), rates, delta=d)[0].accepted
                for d in (0.01, 0.05, 0.2)]
    assert by_delta == sorted(by_delta)


def test_a_good_model_is_certified_with_high_coverage():
    scores, predicted, truth = _pool(5000, lambda s: 0.01 * (1 - s) / 0.5, seed=2)  # 0.5 % wrong on average
    plan = C.plan_audit(scores, predicted, p_error=np.full(len(scores), 0.005))
    cert, acc = _certify(scores, predicted, truth, plan.rates, np.random.default_rng(0), starts=plan.starts)
    assert cert.certified and cert.bound <= 0.02
    assert cert.coverage > 0.8
    assert truth[acc].mean() <= 0.02
    assert "certified error rate" in cert.summary()


def test_unlabelled_audit_tasks_count_against_the_certificate():
    scores, predicted, truth = _pool(4000, lambda s: 0.004 + 0 * s, seed=4)
    rates = {"all": 0.12}
    full, _ = _certify(scores, predicted, truth, rates, np.random.default_rng(5))
    half = np.random.default_rng(6).random(len(scores)) < 0.8
    partial, _ = _certify(scores, predicted, truth, rates, np.random.default_rng(5), labelled=half)
    assert partial.audit_labelled < full.audit_labelled
    assert partial.accepted <= full.accepted


def test_people_labels_after_the_draw_leave_the_accepted_set():
    """Tasks people label after the draw keep their person's label. The queue labels the least
    confident ones (outside the accepted prefix): the certificate stands. Labels inside the prefix
    shrink what the model keeps, so the bound is recomputed on fewer tasks: never a claim above eps."""
    scores, predicted, truth = _pool(3000, lambda s: 0.003 + 0 * s, seed=7)
    rates = {"all": 0.15}
    audited = C.draw_audit(["all"] * len(scores), rates, np.random.default_rng(8))
    base = np.where(audited, truth.astype(float), np.nan)
    queue = ~audited & (scores < np.quantile(scores, 0.1))
    wrong = base.copy()
    wrong[queue] = truth[queue]
    cert, acc = C.certify(scores, predicted, audited, wrong, queue, rates)
    assert cert.certified and not (acc & (queue | audited)).any()
    inside = ~audited & (np.random.default_rng(9).random(len(scores)) < 0.1)
    wrong = base.copy()
    wrong[inside] = truth[inside]
    later, acc = C.certify(scores, predicted, audited, wrong, inside, rates)
    assert not (acc & inside).any()
    assert later.accepted <= cert.accepted and (later.bound is None or later.bound <= 0.02)


# -- the guarantee: violated in at most delta of the audit draws ----------------------------------------
@pytest.mark.parametrize("case", ["calibrated", "confidently_wrong", "near_the_target"])
def test_claim_holds_in_at_least_1_minus_delta_of_audits(case):
    """Many audit draws on fixed pools: the share of draws whose accepted set has more than eps wrong
    labels stays under delta (with Monte Carlo slack). The pools are built to tempt the search:
    errors among the most confident tasks, and a pool whose overall error sits just above eps."""
    eps, delta, draws = 0.02, 0.05, 400
    rates_of = {
        "calibrated": (lambda s: 0.03 * (1 - s) / 0.5, {"all": 0.15}),
        "confidently_wrong": (lambda s: np.where(s > 0.9, 0.03, 0.005), {"all": 0.15}),
        "near_the_target": (lambda s: np.full_like(s, 0.021), {"all": 0.3}),
    }
    err_of, rates = rates_of[case]
    scores, predicted, truth = _pool(3000, err_of, seed=11)
    rng = np.random.default_rng(12)
    violated = certified = 0
    for _ in range(draws):
        cert, acc = _certify(scores, predicted, truth, rates, rng, delta=delta, eps=eps)
        certified += cert.certified
        violated += bool(acc.any() and truth[acc].mean() > eps)
    # binomial slack: P(Bin(400, 0.05) > 32) < 0.01
    assert violated <= 32, (violated, certified)


def test_per_class_claims_hold_for_every_class():
    eps, delta, draws = 0.03, 0.05, 200
    rng = np.random.default_rng(13)
    n = 6000
    scores = rng.uniform(0.5, 1, n)
    predicted = np.where(rng.random(n) < 0.85, "common", "rare").astype(object)
    # the rare class is much worse: its certificate must not ride on the common class's
    truth = rng.random(n) < np.where(predicted == "rare", 0.05, 0.003)
    plan = C.plan_audit(scores, predicted, eps, delta, per_class=True,
                        p_error=np.where(predicted == "rare", 0.05, 0.003))
    violations = 0
    for _ in range(draws):
        cert, acc = _certify(scores, predicted, truth, plan.rates, rng, eps=eps, delta=delta, per_class=True,
                             starts=plan.starts)
        for c in ("common", "rare"):
            sel = acc & (predicted == c)
            violations += bool(sel.any() and truth[sel].mean() > eps)
    assert violations <= 0.05 * draws + 10
    assert cert.classes["rare"]["certified"] is True


# -- bad input: a clear message, never a certificate the data do not back ------------------------------
@pytest.mark.parametrize("eps,delta", [(0, 0.05), (1, 0.05), (0.02, 0), (0.02, 1.5), (float("nan"), 0.05), (-0.1, 0.1)])
def test_levels_outside_0_1_are_refused(eps, delta):
    with pytest.raises(C.CertificateError, match="strictly between 0 and 1"):
        C.certify(np.ones(3), ["a"] * 3, np.ones(3, bool), np.zeros(3), np.zeros(3, bool), {"all": 1.0},
                  eps=eps, delta=delta)
    with pytest.raises(C.CertificateError):
        C.plan_audit(np.ones(3), ["a"] * 3, eps=eps, delta=delta)


def test_no_audit_label_is_refused():
    audited = np.array([True, False, True])
    with pytest.raises(C.CertificateError, match="label the audit tab"):
        C.certify(np.ones(3), ["a"] * 3, audited, np.full(3, np.nan), np.zeros(3, bool), {"all": 0.5})
    with pytest.raises(C.CertificateError, match="no audit task was drawn \\(the plan found"):
        C.certify(np.ones(3), ["a"] * 3, np.zeros(3, bool), np.full(3, np.nan), np.zeros(3, bool), {"a": 0.0},
                  per_class=True)
    with pytest.raises(C.CertificateError, match="none came out of the draw"):
        C.certify(np.ones(2), ["a", "b"], np.zeros(2, bool), np.full(2, np.nan), np.zeros(2, bool),
                  {"a": 0.0, "b": 0.01}, per_class=True)


def test_a_class_without_audit_task_is_blocked_by_name_and_the_others_certified():
    predicted = np.array(["a", "a", "b", "b"], dtype=object)
    audited = np.array([True, False, False, False])
    wrong = np.array([0.0, np.nan, np.nan, np.nan])
    cert, acc = C.certify(np.ones(4), predicted, audited, wrong, np.zeros(4, bool), {"a": 0.5, "b": 0.5},
                          per_class=True)
    assert not acc[2:].any() and cert.classes["b"]["accepted"] == 0
    assert any(b.startswith("b: no audit task among its 2 tasks") for b in cert.blocked), cert.blocked


def test_per_class_plan_leaves_a_class_too_small_to_certify_to_people():
    """5 tasks of a class cannot be certified at 2 %: the plan audits none of them (rate 0) instead of
    a token rate that usually draws nothing, and the common class is certified as usual."""
    rng = np.random.default_rng(40)
    n = 3000
    scores = rng.uniform(0.9, 1, n)
    predicted = np.array(["a"] * (n - 5) + ["b"] * 5, dtype=object)
    truth = rng.random(n) < 0.002
    plan = C.plan_audit(scores, predicted, 0.02, 0.05, per_class=True)
    assert plan.rates["b"] == 0 and plan.unaudited == ["b"] and "left to a person: b" in plan.summary()
    assert 0 < plan.rates["a"] < 1
    cert, acc = _certify(scores, predicted, truth, plan.rates, rng, eps=0.02, per_class=True, starts=plan.starts)
    assert cert.certified and acc.sum() > 1500 and not (acc & (predicted == "b")).any()
    assert "b: no audit task among its 5 tasks (the plan found" in " ".join(cert.blocked)
    assert cert.classes["a"]["bound"] <= 0.02 and cert.classes["b"]["bound"] is None
    # b, audited at rate 0 by a plan fixed before the draw, can accept nothing: a takes all of delta
    assert {r.name: r.level for r in cert.strata} == {"a": pytest.approx(C.round_delta(0.05, 1))} | {
        "b": pytest.approx(C.round_delta(0.05, 1))}


def test_plan_refuses_scores_it_cannot_use():
    with pytest.raises(C.CertificateError, match="1 score\\(s\\) are not finite"):
        C.plan_audit(np.array([0.9, np.nan, 0.8]), ["a"] * 3)
    with pytest.raises(C.CertificateError, match="same tasks"):
        C.plan_audit(np.array([0.9, 0.8, 0.7]), ["a"] * 2)
    C.check_levels(np.float32(0.02), np.float64(0.05))  # numpy numbers are numbers
    with pytest.raises(C.CertificateError):
        C.check_levels(True, 0.05)


def test_too_few_audit_labels_certify_nothing_and_say_why():
    scores, predicted, truth = _pool(400, lambda s: 0.0 * s, seed=14)
    cert, acc = _certify(scores, predicted, truth, {"all": 0.05}, np.random.default_rng(15))
    assert not cert.certified and not acc.any() and cert.bound is None
    assert cert.blocked and "larger audit" in cert.blocked[0]
    assert "nothing can be accepted" in cert.summary()


def test_multilabel_sets_are_one_stratum():
    scores, _, truth = _pool(3000, lambda s: 0.002 + 0 * s, seed=16)
    predicted = np.array(["a|b", "a", "b", ""] * 750, dtype=object)
    cert, acc = _certify(scores, predicted, truth, {"all": 0.15}, np.random.default_rng(17))
    assert cert.certified and set(cert.classes) == {"a|b", "a", "b", ""}


def test_held_back_classes_the_audit_does_not_vouch_for():
    # no audit label, or errors that put the lower bound above eps (3 of 3; 12 of 200), not 2 of 200
    held = C.held_back(np.array([0, 0, 3, 2, 12]), np.array([0, 5, 3, 200, 200]), eps=0.02, delta=0.05)
    assert held.tolist() == [True, False, True, False, True]


def test_a_rare_class_the_model_gets_wrong_is_left_to_people():
    """Overall mode: the common class's good record must not carry a rare class whose labels are
    mostly wrong (it would pass under the overall bound, being under eps of the accepted tasks)."""
    rng = np.random.default_rng(21)
    n = 6000
    predicted = np.where(np.arange(n) < 40, "rare", "common").astype(object)
    scores = np.where(predicted == "rare", rng.uniform(0.9, 0.95, n), rng.uniform(0.9, 1.0, n))
    truth = np.where(predicted == "rare", rng.random(n) < 0.8, rng.random(n) < 0.001)
    rates = {"all": 0.2}
    cert, acc = _certify(scores, predicted, truth, rates, np.random.default_rng(22))
    assert cert.certified and not (acc & (predicted == "rare")).any()
    assert cert.classes["rare"]["held_back"] and any(b.startswith("rare: held back") for b in cert.blocked)
    assert cert.classes["common"]["accepted"] > 3500 and truth[acc].mean() <= 0.02
    unguarded, acc = _certify(scores, predicted, truth, rates, np.random.default_rng(22), hold_back=False)
    assert (acc & (predicted == "rare")).sum() > 20  # what the screen prevents


def test_errors_people_found_can_disprove_a_prefix():
    """People labelled, after the draw, more errors inside the prefix than its null allows: the data
    prove the hypothesis, so the prefix is not certified however clean the audit looked."""
    rng = np.random.default_rng(30)
    n = 3000
    scores = rng.uniform(0.5, 1, n)
    audited = C.draw_audit(["all"] * n, {"all": 0.15}, rng)
    wrong = np.where(audited, 0.0, np.nan)  # a clean audit
    top = np.argsort(-scores)[:2000]
    human = np.zeros(n, bool)
    human[top[~audited[top]][:300]] = True  # later labels: 300 errors among the most confident
    wrong[human] = 1.0
    cert, acc = C.certify(scores, ["a"] * n, audited, wrong, human, {"all": 0.15})
    assert not acc.any() and not cert.certified
    assert "people's labels already show" in cert.blocked[0] and "p =" not in cert.blocked[0], cert.blocked
    clean, acc = C.certify(scores, ["a"] * n, audited, np.where(audited, 0.0, np.nan), np.zeros(n, bool),
                           {"all": 0.15})
    assert clean.certified  # the same audit alone would have certified
