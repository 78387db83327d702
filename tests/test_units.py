"""Pure functions: label configs, uncertainty, metrics, the label-picking rule."""

import numpy as np
import pytest

from labeler.errors import LabelConfigError
from labeler.labelconfig import parse_label_config
from labeler.learning.metrics import eer, evaluate
from labeler.models.selftrain import pseudo_labels
from labeler.models.uncertainty import confidence, entropy, least_confidence, margin, rank
from labeler.studio.tasks import pick_label

CONFIG = """<View><Image name="img" value="$image"/>
<Choices name="label" toName="img"><Choice value="open" hint="open eye; eye with pupil"/>
<Choice value="closed"/></Choices></View>"""


def test_parse_config_prompts_from_hints():
    c = parse_label_config(CONFIG)
    assert (c.from_name, c.to_name, c.value_key) == ("label", "img", "image")
    assert c.classes == ("open", "closed")
    assert c.prompts == {"open": ("open eye", "eye with pupil"), "closed": ("a photo of a closed",)}


def test_a_choice_alias_is_the_class_name_annotations_carry():
    c = parse_label_config("<View><Image name='i' value='$image'/><Choices name='c' toName='i'>"
                           "<Choice value='Open eye' alias='open' hint='open eye'/><Choice value='closed'/></Choices></View>")
    assert c.classes == ("open", "closed") and c.prompts["open"] == ("open eye",)


@pytest.mark.parametrize("xml, message", [
    ("", "empty"),
    ("<View><Text name='t' value='$text'/></View>", "no <Image>"),
    ("<View><Image name='i' value='$image'/></View>", "no <Choices>"),
    ("<View><Image name='i' value='$image'/><Choices name='c' toName='i'><Choice value='a'/></Choices></View>",
     "at least two"),
    ("<View><Image", "not valid XML"),
])
def test_bad_configs_are_refused_clearly(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


P = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.99, 0.01]])


@pytest.mark.parametrize("measure", [least_confidence, margin, entropy])
def test_measures_rank_hand_made_probabilities(measure):
    u = measure(P)
    assert list(np.argsort(-u)) == [1, 2, 0, 3]
    assert u.min() >= 0 and u.max() <= 1


def test_measures_disagree_on_three_classes():
    P3 = np.array([[0.5, 0.49, 0.01], [0.4, 0.3, 0.3]])
    assert list(rank(P3, "margin")) == [0, 1]          # 0.01 gap vs 0.1 gap
    assert list(rank(P3, "least_confidence")) == [1, 0]  # top 0.4 vs 0.5
    assert list(rank(P3, "entropy")) == [1, 0]
    np.testing.assert_allclose(least_confidence(P3), [0.5, 0.6])
    np.testing.assert_allclose(margin(P3), [0.99, 0.9])
    assert entropy(np.full((1, 3), 1 / 3))[0] == pytest.approx(1.0)


def test_confidence_is_top_probability_for_least_confidence():
    np.testing.assert_allclose(confidence(P), [0.9, 0.5, 0.6, 0.99])
    with pytest.raises(ValueError, match="unknown"):
        confidence(P, "nope")


def test_eer_hand_computed():
    # Threshold 0.6: positives {.9,.8} above, {.4} below -> FNR 1/3; negatives {.6} at/above -> FPR 1/3.
    assert eer([1, 1, 1, 0, 0, 0], [.9, .8, .4, .6, .2, .1]) == pytest.approx(1 / 3)
    assert eer([1, 1, 0, 0], [.9, .8, .3, .1]) == 0.0
    assert eer([1, 0, 1, 0], [.9, .8, .3, .1]) == pytest.approx(0.5)


def test_evaluate_two_classes():
    y = np.array([0, 0, 1, 1, 1])
    proba = np.array([[.9, .1], [.4, .6], [.2, .8], [.3, .7], [.6, .4]])
    m = evaluate(y, proba, ["open", "closed"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["per_class"]["closed"]["recall"] == pytest.approx(2 / 3)
    assert 0 <= m["eer"] <= 1 and 0 <= m["roc_auc"] <= 1


def ann(label, id, updated, cancelled=False, gt=False, from_name="label"):
    result = [] if label is None else [{"type": "choices", "from_name": from_name, "to_name": "img",
                                         "value": {"choices": [label]}}]
    return {"id": id, "result": result, "was_cancelled": cancelled, "updated_at": updated, "ground_truth": gt}


def test_pick_label_rule():
    c = parse_label_config(CONFIG)
    assert pick_label([ann("open", 1, "2024-01-01")], c) == "open"
    assert pick_label([ann("open", 1, "2024-01-01", cancelled=True)], c) is None
    assert pick_label([ann(None, 1, "2024-01-01")], c) is None
    # majority wins
    assert pick_label([ann("open", 1, "1"), ann("closed", 2, "2"), ann("open", 3, "0")], c) == "open"
    # tie -> most recently updated
    assert pick_label([ann("open", 1, "2024-01-02"), ann("closed", 2, "2024-01-03")], c) == "closed"
    # ground truth overrides the majority
    assert pick_label([ann("open", 1, "1"), ann("open", 2, "2"), ann("closed", 3, "0", gt=True)], c) == "closed"
    # cancelled ones do not vote
    assert pick_label([ann("open", 1, "1", cancelled=True), ann("closed", 2, "0")], c) == "closed"
    # unknown class / other control
    assert pick_label([ann("maybe", 1, "1"), ann("open", 2, "0", from_name="other")], c) is None


def test_pseudo_labels_are_confident_and_class_balanced():
    proba = np.array([[0.99, 0.01], [0.97, 0.03], [0.6, 0.4], [0.02, 0.98], [0.995, 0.005], [0.3, 0.7]])
    idx, lab = pseudo_labels(proba, 0.95)
    # three confident class-0 rows, one confident class-1 row: one of each, the most confident
    assert sorted(zip(idx.tolist(), lab.tolist())) == [(3, 1), (4, 0)]
    idx, lab = pseudo_labels(proba[:3], 0.95)
    assert len(idx) == 0 and len(lab) == 0, "no confident row of class 1: nothing to add"


def test_project_ids_are_ascii_digits_and_setup_hosts_are_never_link_local():
    from labeler.models.predictor import project_key
    from ml_backend.state import _resolvable_studio_host

    assert project_key("12.1700000000") == "12"
    for bad in ("\u0661", "\uff11", "1/..", "", True, "1" * 13):  # Arabic-Indic and full-width digits
        with pytest.raises(ValueError):
            project_key(bad)
    for url in ("http://169.254.169.254", "http://[::ffff:169.254.169.254]", "http://[::ffff:a9fe:a9fe]:80",
                "http://ls:99999", "http://[::1", "http://u:p@localhost:8080", "file:///etc"):
        assert not _resolvable_studio_host(url), url
    assert _resolvable_studio_host("http://127.0.0.1:8080")
