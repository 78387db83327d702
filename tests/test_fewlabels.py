"""Consistency training (FixMatch), small ensembles and the lever variants of ``labeler simulate`` (issue 23)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labeler.dev.demo import synthetic_eyes
from labeler.errors import LabelerError
from labeler.learning.levers import pick_variants, variants
from labeler.learning.metrics import evaluate
from labeler.media.images import decode
from labeler.models.classifiers import CNNClassifier, Ensemble, Sample, load_classifier
from labeler.models.classifiers.cnn import fixmatch_loss
from labeler.models.classifiers.multilabel import MultiLabelCNN
from labeler.models.classifiers.seeded import seeded_kmeans
from labeler.models.pretrain import pretrain_encoder, save_encoder
from labeler.models.selftrain import SelfTrained


@pytest.fixture(scope="module")
def eyes(tmp_path_factory):
    folder = synthetic_eyes(tmp_path_factory.mktemp("eyes"), n=24, size=24, seed=0)
    paths = sorted(folder.iterdir())
    paths = [p for pair in zip(paths[:12], paths[12:]) for p in pair]  # closed, open, closed, ...: both in any slice
    return [Sample(decode(p.read_bytes())) for p in paths], np.array([0 if p.name.startswith("open") else 1 for p in paths])


def test_fixmatch_loss_counts_only_confident_weak_answers():
    weak = torch.tensor([[10.0, 0.0], [0.0, 0.1]])  # row 0 sure of class 0, row 1 unsure
    strong = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    expected = math.log(2) / 2  # row 0: CE of a uniform answer against class 0; row 1 masked; mean over 2 rows
    loss, share = fixmatch_loss(weak, strong, 0.95)
    assert math.isclose(float(loss), expected, rel_tol=1e-5) and float(share) == 0.5
    assert float(fixmatch_loss(weak, strong, 1.0 + 1e-6)[0]) == 0.0  # nobody above the threshold: no signal
    strong.requires_grad_(True)
    weak.requires_grad_(True)
    fixmatch_loss(weak, strong, 0.5)[0].backward()
    assert weak.grad is None or not weak.grad.any()  # the weak view is the target: no gradient through it


def test_consistency_fit_uses_the_pool_only_when_on(eyes):
    samples, y = eyes
    options = {"max_steps": 2, "min_steps": 2, "input_size": 32, "progress": False, "batch_size": 8}
    on = CNNClassifier(["open", "closed"], consistency=1.0, consistency_threshold=0.0, **options)
    on.fit(samples[:8], y[:8], unlabelled=samples[8:])
    assert on.fit_info_["unlabelled"] == 16 and on.fit_info_["confident_share"] == 1.0  # threshold 0: all
    assert on._pool is None  # the pool is not kept with the model
    off = CNNClassifier(["open", "closed"], **options).fit(samples[:8], y[:8], unlabelled=samples[8:])
    assert "unlabelled" not in off.fit_info_
    multi = MultiLabelCNN(["open", "closed"], consistency=1.0, consistency_threshold=0.0, **options)
    multi.fit(samples[:8], np.eye(2)[y[:8]], unlabelled=samples[8:])
    assert multi.fit_info_["unlabelled"] == 16 and multi.fit_info_["confident_share"] == 1.0  # per class
    tiny = CNNClassifier(["open", "closed"], consistency=1.0, **options).fit(samples[:8], y[:8], unlabelled=samples[8:9])
    assert tiny.fit_info_["consistency_skipped"] == "pool < 2"


def test_multilabel_fixmatch_masks_each_class_on_its_own():
    from labeler.models.classifiers.multilabel import multilabel_fixmatch_loss

    weak = torch.tensor([[10.0, -10.0, 0.0]])  # sure present, sure absent, unsure
    strong = torch.zeros(1, 3, requires_grad=True)
    loss, share = multilabel_fixmatch_loss(weak, strong, 0.95)
    assert math.isclose(loss.item(), 2 * math.log(2) / 3, rel_tol=1e-5)  # BCE of 0.5 on the two sure classes
    assert math.isclose(share.item(), 2 / 3, rel_tol=1e-6)
    loss.backward()
    assert strong.grad[0, 2] == 0 and strong.grad[0, 0] < 0 < strong.grad[0, 1], "towards present / absent"


def test_a_cold_fit_starts_its_head_from_a_linear_probe():
    rng = np.random.default_rng(0)
    feats = np.vstack([rng.normal(-1, 0.3, (20, 8)), rng.normal(1, 0.3, (20, 8))])
    y = np.repeat([0, 1], 20)
    w, b = CNNClassifier(["a", "b"])._probe_weights(feats, y)
    assert w.shape == (2, 8) and ((feats @ w.T + b).argmax(1) == y).all()
    y3 = np.repeat([0, 1, 2], [10, 10, 20])
    w3, b3 = CNNClassifier(["a", "b", "c"])._probe_weights(feats, y3)
    assert w3.shape == (3, 8) and (feats @ w3.T + b3).argmax(1)[20:].tolist() == [2] * 20
    assert CNNClassifier(["a", "b", "c"])._probe_weights(feats, y) is None  # class c has no label
    Y = np.stack([y, 1 - y], 1)
    wm, bm = MultiLabelCNN(["a", "b"])._probe_weights(feats, Y)
    assert (((feats @ wm.T + bm) > 0) == Y).all()
    assert MultiLabelCNN(["a", "b"])._probe_weights(feats, np.stack([y, np.ones_like(y)], 1)) is None


def test_seeded_kmeans_labels_the_pool_from_one_seed_per_class_and_refuses_clusters_the_seeds_do_not_back():
    rng = np.random.default_rng(0)
    centres = np.eye(6)[:3] * 5 + 1  # three directions (the clustering is on unit-normalised rows)
    sizes = [200, 200, 20]  # the third class rare
    pool = np.vstack([rng.normal(c, 0.4, (n, 6)) for c, n in zip(centres, sizes)])
    truth = np.repeat([0, 1, 2], sizes)
    seeds = np.vstack([pool[0], pool[200], pool[400]]) + 0.1  # one label per class, off-centre
    found = seeded_kmeans(pool, seeds, np.array([0, 1, 2]), 3)
    assert found is not None and (found == truth).mean() > 0.99
    # Both classes' seeds in one blob: the clusters cannot say which blob is which class.
    assert seeded_kmeans(pool[:400], pool[[0, 1]], np.array([0, 1]), 2) is None
    # Labels that cut across the blobs (each class seeded once in every blob): the clusters are another
    # structure than the classes, a third of the seeds agree with them, and nothing is labelled.
    across = np.array([b * 200 + c + 1 for c in range(3) for b in range(3)])
    assert seeded_kmeans(pool, pool[across], np.repeat([0, 1, 2], 3), 3) is None
    # One atypical seed among many that agree (class 1's in class 0's blob) does not refuse the clusters.
    ten = np.vstack([rng.normal(c, 0.4, (50, 10)) for c in np.eye(10) * 5 + 1])
    odd = np.vstack([ten[::50][:1], ten[0] + 0.05, ten[::50][2:]])  # class 1 seeded from a class 0 image
    found = seeded_kmeans(ten, odd, np.arange(10), 10)
    assert found is not None and (found == np.repeat(np.arange(10), 50)).mean() > 0.8
    assert seeded_kmeans(pool, seeds[:2], np.array([0, 1]), 3) is None  # class 2 has no seed
    assert seeded_kmeans(pool[:0], seeds, np.array([0, 1, 2]), 3) is None  # nothing to label


def test_a_probe_only_fit_learns_the_pool_it_is_given(eyes, tmp_path):
    samples, y = eyes
    state, _ = pretrain_encoder(samples, steps=2, input_size=32, batch=8, progress=False)
    path = str(save_encoder(state, tmp_path / "enc"))
    one = [int(np.flatnonzero(y == 0)[0]), int(np.flatnonzero(y == 1)[0])]
    rest = [samples[i] for i in range(len(y)) if i not in one]
    options = {"encoder": path, "input_size": 32, "progress": False}
    alone = CNNClassifier(["open", "closed"], **options).fit([samples[i] for i in one], y[one])
    pooled = CNNClassifier(["open", "closed"], **options).fit([samples[i] for i in one], y[one], unlabelled=rest)
    assert alone.fit_info_["probe_only"] and alone.fit_info_["pseudo_labels"] == 0
    assert pooled.fit_info_["probe_only"] and pooled.fit_info_["pseudo_labels"] in (0, len(rest))
    assert pooled._unlabelled == []  # the pool is not kept with the model
    assert all(torch.equal(v, state[k]) for k, v in pooled.net_.features.state_dict().items())
    pooled.save(tmp_path / "probe")
    back = load_classifier(tmp_path / "probe")
    assert back.probe_only_ and not CNNClassifier(["open", "closed"], **options).init_from(back), \
        "saved and loaded, a probe-only model still lends no weights"
    # Self-training leaves such a fit the pool (no teacher is fitted, no teacher's pseudo-labels).
    st = SelfTrained(CNNClassifier(["open", "closed"], **options), rest, 0.9).fit([samples[i] for i in one], y[one])
    assert st.fit_info_["teacher"] is None and st.fit_info_["probe_only"]
    assert st.fit_info_["pseudo_labels"] == pooled.fit_info_["pseudo_labels"]
    # Four labels of each class: probe-only only with the pool's clusters; without a pool, fine-tuned.
    short = {"max_steps": 2, "min_steps": 2, **options}
    four = CNNClassifier(["open", "closed"], **short).fit(samples[:8], y[:8], unlabelled=samples[8:])
    assert four.fit_info_["probe_only"] == (four.fit_info_["pseudo_labels"] == 16)
    alone4 = CNNClassifier(["open", "closed"], **short).fit(samples[:8], y[:8])
    assert not alone4.fit_info_["probe_only"] and alone4.fit_info_["steps"] == 2
    # From probe_only_below labels of every class on, fine-tuned: the pool serves FixMatch only.
    full = CNNClassifier(["open", "closed"], probe_only_below=4, **short).fit(samples[:8], y[:8], unlabelled=rest)
    assert not full.fit_info_["probe_only"] and full.fit_info_["pseudo_labels"] == 0
    # A pool smaller than the labels is not clustered (k-means would mostly cluster the labels themselves) ...
    tiny = CNNClassifier(["open", "closed"], **short).fit(samples[:8], y[:8], unlabelled=samples[8:13])
    assert not tiny.fit_info_["probe_only"] and tiny.fit_info_["pseudo_labels"] == 0
    # ... so self-training, which left the pool to that fit, pseudo-labels it from the fine-tuned one instead.
    st4 = SelfTrained(CNNClassifier(["open", "closed"], **short), samples[8:13], 0.0).fit(samples[:8], y[:8])
    assert st4.fit_info_["teacher"] == "fitted" and st4.fit_info_["self_train_threshold"] == 0.0
    assert st4.fit_info_["teacher_warm_start"] and not st4.fit_info_["probe_only"]
    # A rare class among many labels of the others: fine-tuned (probe_only_below=4: 2 of one class, 10 of the other).
    lopsided = [int(i) for i in np.flatnonzero(y == 0)[:10]] + [int(i) for i in np.flatnonzero(y == 1)[:2]]
    assert not CNNClassifier(["open", "closed"], probe_only_below=4, **short).learns_pool_itself(y[lopsided])
    assert CNNClassifier(["open", "closed"], probe_only_below=4, **short).learns_pool_itself(y[lopsided[8:]])
    # Decided for the fit (as cross-validation's folds follow the fit on all labels): one label each, fine-tuned.
    forced = CNNClassifier(["open", "closed"], probe_only=False, **short).fit([samples[i] for i in one], y[one])
    assert not forced.fit_info_["probe_only"] and forced.fit_info_["steps"] == 2


def test_the_probe_keeps_a_rare_class_however_many_labels_it_samples(eyes, monkeypatch):
    from labeler.models.classifiers import cnn

    samples, y = eyes
    monkeypatch.setattr(cnn, "PROBE_IMAGES", 3)
    rare = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:1]])  # one image of class 1
    options = {"max_steps": 2, "min_steps": 2, "input_size": 32, "progress": False}
    for seed in range(4):  # a plain sample of 3 of 13 would often miss it, and leave the head unprobed
        fit = CNNClassifier(["open", "closed"], probe=True, seed=seed, **options).fit(
            [samples[i] for i in rare], y[rare])
        assert fit.fit_info_["probed_head"] is True


def test_the_probe_runs_on_cold_fits_only(eyes):
    samples, y = eyes
    options = {"max_steps": 2, "min_steps": 2, "input_size": 32, "progress": False}
    cold = CNNClassifier(["open", "closed"], probe=True, **options).fit(samples, y)
    assert cold.fit_info_["probed_head"] is True
    warm = CNNClassifier(["open", "closed"], probe=True, **options)
    assert warm.init_from(cold) and warm.fit(samples, y).fit_info_["probed_head"] is False
    off = CNNClassifier(["open", "closed"], **options).fit(samples, y)  # off by default
    assert off.fit_info_["probed_head"] is False


def test_ensemble_averages_its_members_and_round_trips(eyes, tmp_path):
    samples, y = eyes
    base = CNNClassifier(["open", "closed"], max_steps=2, min_steps=2, input_size=32, progress=False)
    ens = Ensemble(base, members=2, seed=1).fit(samples, y)
    assert [m.seed for m in ens.members_] == [2, 3] and ens.fit_info_["members"] == 2
    p = ens.predict_proba(samples[:5])
    assert np.allclose(p, np.mean([m.predict_proba(samples[:5]) for m in ens.members_], axis=0))
    ens.save(tmp_path / "v1")
    loaded = load_classifier(tmp_path / "v1")
    assert isinstance(loaded, Ensemble) and np.allclose(loaded.predict_proba(samples[:5]), p, atol=1e-6)
    assert loaded.seed == 1 and list(loaded.classes) == ["open", "closed"]
    nxt = Ensemble(base, members=2)
    assert nxt.init_from(ens) and not Ensemble(base, members=3).init_from(ens)
    nxt.fit(samples, y)
    assert all(m.fit_info_["warm_start"] for m in nxt.members_)
    teacher = Ensemble(base, members=2)
    teacher.step_fraction = 0.5  # as self-training sets its teacher's
    teacher.fit(samples, y)
    assert all(m.fit_info_["steps"] == 1 for m in teacher.members_)  # half of 2 steps, each member


def test_a_cnn_and_an_ensemble_start_from_each_other_and_the_map_uses_their_features(eyes):
    from labeler.learning.datamap import embeddings

    samples, y = eyes
    base = CNNClassifier(["open", "closed"], max_steps=2, min_steps=2, input_size=32, progress=False)
    ens = Ensemble(base, members=2).fit(samples, y)
    cnn = CNNClassifier(["open", "closed"], max_steps=2, min_steps=2, input_size=32, progress=False)
    assert cnn.init_from(ens)  # the CNN a project serves once it has outgrown its ensemble
    assert cnn.fit(samples, y).fit_info_["warm_start"]
    again = Ensemble(base, members=2)
    assert again.init_from(cnn) and all(m.fit_info_["warm_start"] for m in again.fit(samples, y).members_)
    assert not Ensemble(base, members=2).init_from(CNNClassifier(["open", "closed"]))  # an unfitted CNN: nothing
    for model in (cnn, ens):
        feats, what = embeddings(samples[:5], model)
        assert what == "the trained CNN's features" and feats.shape == (5, 1280)


def test_the_backend_serves_an_ensemble_only_below_its_label_count():
    from labeler.learning.training import ENSEMBLE_BELOW, uses_ensemble

    assert uses_ensemble("auto", ENSEMBLE_BELOW - 1) and not uses_ensemble("auto", ENSEMBLE_BELOW)
    assert uses_ensemble("on", 10_000) and not uses_ensemble("off", 10)


def test_lever_variants_and_their_estimators():
    chosen = variants(["pretrain", "typiclust", "fixmatch", "ensemble"])
    names = [v.name for v in chosen]
    assert names[:3] == ["random+ensemble+fixmatch+pretrain", "default", "all"] and "all-fixmatch" in names
    picked = pick_variants(chosen, ["all-fixmatch", "default"])
    assert [v.name for v in picked] == ["default", "all-fixmatch"]
    with pytest.raises(LabelerError, match="unknown variant"):
        pick_variants(chosen, ["nope"])
    base = CNNClassifier(["a", "b"], progress=False)
    full = next(v for v in chosen if v.name == "all").estimator(base)
    assert isinstance(full, Ensemble) and full.estimator.consistency == 1.0 and base.consistency == 0.0
    assert picked[0].estimator(base) is base


def test_evaluate_reports_calibration():
    y = np.array([0, 1, 1])
    sure, hedged = np.array([[0.99, 0.01], [0.01, 0.99], [0.01, 0.99]]), np.full((3, 2), 0.5)
    assert evaluate(y, sure, ["a", "b"])["log_loss"] < evaluate(y, hedged, ["a", "b"])["log_loss"]
    assert math.isclose(evaluate(y, hedged, ["a", "b"])["log_loss"], math.log(2))


def test_share_of_the_full_data_metric():
    from labeler.learning.simulate import share_of

    assert math.isclose(share_of(0.9, 0.95, "accuracy"), 0.855)
    assert math.isclose(share_of(0.02, 0.99, "eer"), 1 - 0.99 * 0.98)  # the same share of 1 - EER


def test_per_class_start_takes_that_many_of_each_class_from_the_pool_only():
    from labeler.learning.simulate import per_class_start

    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    pool = np.array([0, 1, 3, 5, 6, 7, 9])  # 2, 4 and 8 are held out
    picked = per_class_start(y[pool], pool, 2, np.random.default_rng(0))
    assert set(picked) <= set(pool) and len(set(picked)) == len(picked)
    assert sorted(np.bincount(y[picked]).tolist()) == [1, 2, 2]  # class 1 has one image in the pool
    other = per_class_start(y[pool], pool, 1, np.random.default_rng(1))
    assert sorted(y[other].tolist()) == [0, 1, 2]


@pytest.mark.slow
def test_simulate_levers_fixmatch_and_ensemble_with_the_full_data_reference(tmp_path):
    import csv

    from click.testing import CliRunner

    from labeler.cli import main
    from tests.test_simulate import make_dataset

    labels, out = make_dataset(tmp_path, n=40), tmp_path / "sim"
    r = CliRunner().invoke(main, ["simulate", "--labels", str(labels), "--levers", "fixmatch,ensemble",
                                  "--variants", "default,all", "--full-data", "--budget", "20", "--start-per-class", "1",
                                  "--batch", "10", "--holdout", "12", "--cnn-steps", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "full data (" in r.output and "95 % and 99 % of the best" in r.output
    rows = list(csv.DictReader((out / "learning_curves.csv").open()))
    assert {row["strategy"] for row in rows} == {"default", "all"}
    assert min(int(row["labels"]) for row in rows) == 2  # one label of each of the two classes, then batches of 10
    fm = [row for row in rows if row["strategy"] == "all"]
    assert all(row["pseudo_labels"] == "0" for row in fm)  # FixMatch replaces self-training
    assert all(row["log_loss"] for row in rows)
    r = CliRunner().invoke(main, ["simulate", "--labels", str(labels), "--levers", "fixmatch", "--variants", "nope",
                                  "--budget", "20", "--holdout", "12", "--out", str(out)])
    assert r.exit_code != 0 and "unknown variant" in r.output


def test_consistency_trained_fits_one_cnn_on_labels_and_pool_from_the_serving_weights(eyes):
    from labeler.learning.training import uses_consistency
    from labeler.models.selftrain import ConsistencyTrained, Frozen

    assert uses_consistency("auto", 10) and not uses_consistency("auto", 2)
    assert uses_consistency("on", 2) and not uses_consistency("off", 10)
    samples, y = eyes
    base = CNNClassifier(["open", "closed"], consistency=1.0, max_steps=2, min_steps=2, input_size=32,
                         progress=False, batch_size=8)
    serving = ConsistencyTrained(base, samples[8:]).fit(samples[:8], y[:8])
    assert set(serving.get_params(deep=False)) == {"estimator", "pool", "teacher"}  # no self-training settings
    assert serving.fit_info_["unlabelled"] == 16 and serving.fit_info_["teacher_warm_start"] is False
    again = ConsistencyTrained(base, samples[8:], teacher=Frozen(serving.student_)).fit(samples[:10], y[:10])
    assert again.fit_info_["teacher_warm_start"] is True and again.fit_info_["warm_start"] is True
    assert again.kind == "cnn" and again.predict_proba(samples[:2]).shape == (2, 2)
