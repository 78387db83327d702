"""The annotator model on known cases (issue 22): labeler.models.consensus and labeler.learning.annotators."""

import numpy as np
import pytest

from labeler.learning.annotators import automation_bias, krippendorff_alpha, pairwise_kappa, quality_report, speed
from labeler.models.consensus import MISSING, crowdlab, dawid_skene, majority_vote, relabel_scores


def simulate(y: np.ndarray, accuracies: list[float], n_classes: int, seed: int, share: float = 1.0) -> np.ndarray:
    """Each annotator labels a ``share`` of the tasks, right with its accuracy, else a uniformly wrong class."""
    rng = np.random.default_rng(seed)
    out = np.full((len(y), len(accuracies)), MISSING)
    for j, acc in enumerate(accuracies):
        wrong = (y + rng.integers(1, n_classes, len(y))) % n_classes
        given = np.where(rng.random(len(y)) < acc, y, wrong)
        pick = rng.random(len(y)) < share
        out[pick, j] = given[pick]
    return out


def test_a_perfect_and_a_random_annotator_are_told_apart():
    y = np.random.default_rng(0).integers(0, 3, 600)
    # a random annotator says nothing of the truth: two informative ones besides the perfect one are needed
    # to tell, where the perfect one and another disagree, which is right
    labels = simulate(y, [1.0, 1 / 3, 0.85, 0.8], 3, seed=1)
    c = dawid_skene(labels, 3)
    assert c.accuracy[0] > 0.98 and abs(c.accuracy[1] - 1 / 3) < 0.06 and abs(c.accuracy[2] - 0.85) < 0.04
    assert (c.accuracy_low <= c.accuracy).all() and (c.accuracy <= c.accuracy_high).all()
    assert c.accuracy_source == ["consensus model"] * 4
    assert (c.label == y).mean() >= 0.985  # the perfect annotator is found and followed
    assert (c.label == y).mean() > (majority_vote(labels, 3) == y).mean()


def test_accuracies_are_ranked_and_close_with_partial_overlap():
    y = np.random.default_rng(2).integers(0, 2, 2000)
    truth = [0.97, 0.90, 0.70]
    labels = simulate(y, truth, 2, seed=3, share=0.6)
    c = dawid_skene(labels, 2)
    assert list(np.argsort(-c.accuracy)) == [0, 1, 2]
    assert np.abs(c.accuracy - truth).max() < 0.05
    has = c.label != MISSING
    assert (c.label[has] == y[has]).mean() > (majority_vote(labels, 2)[has] == y[has]).mean()
    assert ((c.confidence[has] > 0.5) & (c.confidence[has] <= 1)).all()


def test_a_class_no_annotator_confuses_has_a_diagonal_confusion_row():
    y = np.repeat([0, 1, 2], 200)
    labels = simulate(y, [0.9, 0.8, 0.85], 3, seed=4)
    labels[y == 2] = 2  # everybody always recognises class 2, and nobody says 2 for another class
    labels[(y != 2)[:, None] & (labels == 2)] = 0
    c = dawid_skene(labels, 3)
    assert np.allclose(c.confusion[:, 2, 2], 1.0, atol=1e-6)
    assert np.allclose(c.confusion[:, :2, 2], 0.0, atol=1e-6)
    assert (c.label[y == 2] == 2).all() and (c.confidence[y == 2] > 0.999).all()


def test_ground_truth_wins_and_gives_honeypot_accuracy():
    y = np.random.default_rng(5).integers(0, 2, 300)
    labels = simulate(y, [0.95, 0.8], 2, seed=6)
    gold = np.full(300, MISSING)
    gold[:40] = y[:40]
    gold[0] = 1 - labels[0, 0] if labels[0, 0] == labels[0, 1] else gold[0]  # both annotators outvoted by truth
    c = dawid_skene(labels, 2, gold=gold)
    assert c.label[0] == gold[0] and c.confidence[0] == 1.0
    assert c.accuracy_source == ["honeypots", "honeypots"] and list(c.honeypots) == [40, 40]
    expected = [(labels[:40, j] == gold[:40]).mean() for j in range(2)]
    assert np.allclose(c.accuracy, expected)
    assert "accuracy from honeypots: no task has a known label" not in c.unavailable


def test_one_annotator_one_label_no_honeypot_says_what_it_cannot_give():
    labels = np.array([[0], [1], [1], [MISSING]])
    c = dawid_skene(labels, 2)
    assert list(c.label) == [0, 1, 1, MISSING] and np.isnan(c.confidence).all() and np.isnan(c.accuracy).all()
    assert c.method == "majority vote" and any("annotator accuracy" in u for u in c.unavailable)
    report = quality_report(["ann"], ["a", "b"], labels, c, np.full((4, 1), np.nan), np.full(4, MISSING),
                            np.zeros(4, bool), np.full(4, MISSING))
    assert report["annotators"][0]["accuracy"] is None and report["krippendorff_alpha"] is None
    assert any("Krippendorff" in u for u in report["unavailable"])
    assert any("control" in u for u in report["unavailable"])
    label, score = crowdlab(labels[:3], np.array([[0.8, 0.2], [0.3, 0.7], [0.9, 0.1]]))
    assert list(label) == [0, 1, 1] and score[2] < score[1]  # one annotator: cleanlab's single-label score


def calibrated_model(y: np.ndarray, right: float, seed: int) -> np.ndarray:
    """Probabilities of a model that is right ``right`` of the time and says so (binary)."""
    says = np.where(np.random.default_rng(seed).random(len(y)) < right, y, 1 - y)
    return np.where(np.eye(2)[says] == 1, right, 1 - right)


def test_the_model_as_a_voter_settles_disagreements():
    y = np.random.default_rng(7).integers(0, 2, 600)
    labels = simulate(y, [0.8, 0.8], 2, seed=8)
    probs = calibrated_model(y, 0.9, seed=9)
    c = dawid_skene(labels, 2, pred_probs=probs)
    empirical = (labels == y[:, None]).mean(axis=0)
    assert c.method == "dawid-skene + model" and np.abs(c.accuracy - empirical).max() < 0.05, (c.accuracy, empirical)
    vote = majority_vote(labels, 2)
    split = labels[:, 0] != labels[:, 1]
    assert (c.label[split] == y[split]).mean() > 0.8  # a tie between the people: the model decides
    assert (c.label == y).mean() > (vote == y).mean() + 0.05
    cl_label, cl_score = crowdlab(labels, probs)
    assert (cl_label == y).mean() > 0.85 and np.isfinite(cl_score).all()


def test_a_model_alone_does_not_overrule_a_single_annotator():
    y = np.random.default_rng(7).integers(0, 2, 200)
    labels = simulate(y, [0.8], 2, seed=8)
    c = dawid_skene(labels, 2, pred_probs=calibrated_model(y, 0.9, seed=9))
    # one label per task fits any accuracy: the person's label stands, and nothing is estimated
    assert (c.label == labels[:, 0]).all() and np.isnan(c.accuracy).all() and c.method == "majority vote"


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        dawid_skene(np.array([[0, 3]]), 2)
    with pytest.raises(ValueError):
        dawid_skene(np.array([[0, 1]]), 2, pred_probs=np.ones((2, 2)) / 2)


def test_kappa_and_alpha_on_known_tables():
    labels = np.array([[0, 0, 1], [1, 1, 0], [0, 0, 0], [1, 1, 1], [0, MISSING, 1]])
    k = pairwise_kappa(labels)
    assert k[0, 1] == pytest.approx(1.0) and k[1, 0] == k[0, 1]
    assert k[0, 2] == pytest.approx((0.4 - 0.48) / (1 - 0.48))  # 0,1,0,1,0 vs 1,0,0,1,1: p_o = 0.4, p_e = 0.48
    assert krippendorff_alpha(np.array([[0, 0], [1, 1], [0, 0]])) == pytest.approx(1.0)
    assert krippendorff_alpha(np.array([[0, MISSING], [1, MISSING]])) is None
    assert np.isnan(pairwise_kappa(np.array([[0, 0], [0, 0]]))[0, 1])  # one class only: undefined


def test_speed_and_automation_bias():
    sp = speed(np.array([[3.0, np.nan], [5.0, np.nan], [10.0, 2.0]]))
    assert list(sp["median_s"][:1]) == [5.0] and sp["median_s"][1] == 2.0 and list(sp["timed"]) == [3, 1]
    ref = np.array([0, 1, 0, 1, 0, 1])
    shown = np.array([MISSING, MISSING, 1, 1, 1, 0])  # tasks 0, 1 blind; 2, 4, 5 show a wrong answer
    control = shown == MISSING
    gold = np.array([MISSING, MISSING, 0, 1, 0, 1])
    labels = np.array([[0], [1], [1], [1], [1], [1]])  # right when blind, takes the wrong answer on 2 and 4
    b = automation_bias(labels, ref, shown, control, gold)[0]
    assert b["blind"]["rate"] == 1.0 and b["preannotated"]["rate"] == 0.5 and b["gap"] == -0.5
    assert b["accepted_wrong"]["rate"] == pytest.approx(2 / 3) and b["accepted_wrong"]["n"] == 3


def test_activelab_scores_a_disputed_task_before_a_settled_one():
    labels = np.array([[0, 0], [0, 1], [1, 1]])
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    labelled, unlabelled = relabel_scores(labels, probs, np.array([[0.95, 0.05]]))
    assert labelled[1] < labelled[0] and labelled[1] < labelled[2] and len(unlabelled) == 1


def test_team_of_label_studio_tasks_ground_truth_wins_and_is_no_vote():
    from labeler.labelconfig import parse_label_config
    from labeler.studio.team import consensus_of, is_control, team_of

    config = parse_label_config("<View><Image name='img' value='$image'/><Choices name='label' toName='img'>"
                                "<Choice value='open'/><Choice value='closed'/></Choices></View>")

    def ann(label, who, at, gt=False, lead=None):
        return {"result": [{"type": "choices", "from_name": "label", "value": {"choices": [label]}}],
                "completed_by": {"id": who, "email": f"{who}@x"}, "updated_at": at, "ground_truth": gt,
                "lead_time": lead}

    pred = {"result": [{"type": "choices", "from_name": "label", "value": {"choices": ["open"]}}]}
    tasks = [{"id": 1, "annotations": [ann("open", "a", "1", lead=2.0), ann("closed", "a", "2", lead=4.0),
                                       ann("open", "b", "1")], "predictions": [pred]},
             {"id": 2, "annotations": [ann("open", "a", "1"), ann("open", "b", "1"), ann("closed", "lead", "3", gt=True)]},
             {"id": 3, "annotations": []}]
    team = team_of(tasks, config, known={3: "closed"})
    assert team.names == ["a@x", "b@x"]  # the ground-truth annotation is the key, not a vote
    assert team.labels.tolist() == [[1, 0], [0, 0], [MISSING, MISSING]]  # a's newest label of task 1 counts
    assert team.lead_times[0, 0] == 4.0 and team.gold.tolist() == [MISSING, 1, 1] and team.shown.tolist() == [0, -1, -1]
    by_task, c = consensus_of(team)
    assert by_task[2].label == "closed" and by_task[2].known and by_task[2].annotators == ("a@x", "b@x")
    assert by_task[3].label == "closed"  # a honeypot from the CSV, nobody labelled it yet
    assert c.method == "dawid-skene"
    share = np.mean([is_control(i, 0.1) for i in range(5000)])
    assert 0.08 < share < 0.12 and is_control(17, 0.1) == is_control(17, 0.1) and not is_control(17, 0.0)


def test_report_text_names_what_is_missing():
    from labeler.learning.team_report import report_text

    y = np.random.default_rng(11).integers(0, 2, 200)
    labels = simulate(y, [0.95, 0.85, 0.75], 2, seed=12)
    c = dawid_skene(labels, 2)
    report = quality_report(["a", "b", "c"], ["open", "closed"], labels, c, np.full(labels.shape, 3.0),
                            np.full(200, MISSING), np.zeros(200, bool), np.full(200, MISSING))
    text = "\n".join(report_text(report))
    assert "consensus model" in text and "kappa a: b" in text and "Krippendorff's alpha: 0." in text
    assert "not available: accuracy on blind control tasks" in text
    assert report["annotators"][0]["median_lead_time_s"] == 3.0 and report["tasks_with_overlap"] == 200


def test_predict_leaves_blind_control_tasks_without_a_prediction(tmp_path):
    import base64

    from labeler.config import Settings
    from labeler.dev.demo import template
    from labeler.studio.team import is_control
    from ml_backend import create_app

    app = create_app(Settings(model_dir=tmp_path, zeroshot_model=None, control_rate=0.3, basic_auth_user="ls",
                              basic_auth_pass="pw"), load_in_background=False)
    auth = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}
    tasks = [{"id": i, "data": {"image": "data:image/png;base64,AAAA"}} for i in range(40)]
    r = app.test_client().post("/predict", headers=auth, json={"tasks": tasks, "label_config": template("binary"),
                                                               "project": "1.1"})
    controls = [is_control(i, 0.3) for i in range(40)]
    assert 0 < sum(controls) < 40
    assert [res == [] for res in r.json["results"]] == controls  # nothing for Label Studio to store on a control
    assert all(res["result"] == [] for res, c in zip(r.json["results"], controls) if not c)  # (no model here)


def test_no_task_or_no_annotator_still_answers():
    for labels in (np.zeros((0, 0), int), np.zeros((0, 2), int), np.full((3, 0), MISSING)):
        c = dawid_skene(labels, 2)
        assert len(c.label) == labels.shape[0] and (c.label == MISSING).all() and len(c.accuracy) == labels.shape[1]


def test_simulated_team_spends_the_clicks_and_beats_the_vote():
    from labeler.learning.simulate_team import compare_consensus, relabel_run, team_labels

    rng = np.random.default_rng(13)
    y = rng.integers(0, 2, 400)
    x = rng.normal(0, 1, (400, 5)) + y[:, None] * 1.5  # a separable toy feature space
    labels = team_labels(y, [0.97, 0.9, 0.7], 2, 2, seed=0)
    assert ((labels != MISSING).sum(axis=1) == 2).all()
    r = compare_consensus(x, y, [0.97, 0.9, 0.7], 2, 2, seed=0)
    # two of three labels per task on 400 tasks: each pair shares ~130, so the accuracies are sized to ~0.1
    assert r["dawid_skene"] > r["majority"] + 0.03 and r["accuracy_error"] < 0.1
    test = np.arange(300, 400)
    for relabel in (True, False):
        run = relabel_run(x, y, [0.97, 0.9, 0.7], 2, clicks=150, start=60, batch=30, test=test, relabel=relabel, seed=0)
        assert run["clicks"] == 150 and run["tasks"] + run["second_opinions"] == 150
        if not relabel:
            assert run["second_opinions"] == 0


def test_the_classifiers_out_of_fold_vote_enters_the_training_consensus():
    """labeler.learning.labelled._model_votes: the people's consensus trains a cross-fitted classifier whose
    probabilities then vote; a task whose image could not be read gets no model vote."""
    from PIL import Image

    from labeler.learning.labelled import _model_votes
    from labeler.learning.simulate_team import out_of_fold
    from labeler.models.classifiers import Sample
    from labeler.models.predictor import Scored
    from labeler.studio.team import clean_labels, team_of

    config = _config()
    rng = np.random.default_rng(13)
    y = rng.integers(0, 2, 300)
    labels = simulate(y, [0.75, 0.7, 0.65], 2, seed=14)
    for i in range(300):  # two of the three label each task
        labels[i, rng.integers(0, 3)] = MISSING
    tasks = [{"id": i, "data": {"image": f"/data/{i}.png"}, "total_annotations": int((labels[i] != MISSING).sum()),
              "annotations": [{"result": [{"type": "choices", "from_name": "label",
                                           "value": {"choices": [config.classes[labels[i, j]]]}}],
                               "completed_by": {"id": j, "email": f"{j}@x"}} for j in range(3) if labels[i, j] != MISSING]}
             for i in range(300)]
    team = team_of(tasks, config)
    people, _, _ = clean_labels(tasks, team, config)
    image = Image.new("L", (4, 4))
    feats = y[:, None] * 1.5 + rng.normal(0, 0.5, (300, 4))  # a classifier about 93 % right on these
    keep = [(lab, Scored(sample=Sample(image, features=feats[lab.task_id]))) for lab in people]

    def voter(samples, labels_given):
        return out_of_fold(np.stack([s.features for s in samples]), labels_given, 2, seed=0)

    voted, skipped, votes = _model_votes(keep, tasks, team, config, 0.0, voter)
    assert votes is not None and set(votes) == {lab.task_id for lab in people}
    right = {lab.task_id: lab.label == config.classes[y[lab.task_id]] for lab, _ in voted}
    before = np.mean([lab.label == config.classes[y[lab.task_id]] for lab in people])
    assert len(voted) == 300 and skipped == 0 and np.mean(list(right.values())) > before + 0.03, before
    cut, skipped, _ = _model_votes(keep, tasks, team, config, 0.99, voter)
    assert skipped == 300 - len(cut) and 0 < len(cut) < 300, "a consensus below the cut is not a clean label"
    assert np.mean([lab.label == config.classes[y[lab.task_id]] for lab, _ in cut]) > np.mean(list(right.values()))
    alone, _, none = _model_votes(keep, tasks, team, config, 0.0, lambda s, lab: None)  # no vote possible: the people's
    assert none is None and [lab.label for lab, _ in alone] == [lab.label for lab in people]


def _config():
    from labeler.labelconfig import parse_label_config

    return parse_label_config("<View><Image name='img' value='$image'/><Choices name='label' toName='img'>"
                              "<Choice value='open'/><Choice value='closed'/></Choices></View>")


def test_votes_kept_by_training_are_read_back(tmp_path):
    from labeler.studio.team import load_votes, save_votes

    assert load_votes(tmp_path, 7) is None
    save_votes(tmp_path, 7, {3: np.array([0.25, 0.75]), 9: np.array([1.0, 0.0])}, "v2-head")
    back = load_votes(tmp_path, 7)
    assert set(back) == {3, 9} and np.allclose(back[3], [0.25, 0.75])


def test_the_report_says_when_the_classifier_voted():
    from labeler.learning.team_report import report_text

    y = np.random.default_rng(15).integers(0, 2, 300)
    labels = simulate(y, [0.9, 0.8], 2, seed=16)
    args = (np.full(labels.shape, np.nan), np.full(300, MISSING), np.zeros(300, bool), np.full(300, MISSING))
    voted = quality_report(["a", "b"], ["open", "closed"], labels,
                           dawid_skene(labels, 2, pred_probs=calibrated_model(y, 0.85, seed=17)), *args)
    assert voted["method"] == "dawid-skene + model" and abs(voted["model_accuracy"] - 0.85) < 0.06
    assert any("the classifier voted too" in line for line in report_text(voted))
    alone = quality_report(["a", "b"], ["open", "closed"], labels, dawid_skene(labels, 2), *args)
    assert alone["model_accuracy"] is None and not any("classifier voted" in line for line in report_text(alone))


def test_honeypots_are_what_sizes_annotators_who_never_overlap():
    from labeler.learning.simulate_team import honeypot_run

    assert not honeypot_run([0.97, 0.9, 0.7], 600, 0.0, 2, seed=0)["fitted"], "one person per task: nothing to go on"
    run = honeypot_run([0.97, 0.9, 0.7], 2000, 0.2, 2, seed=0)
    assert run["fitted"] and run["honeypots"] > 100 and run["max_error"] < 0.08 and run["width"] < 0.15
