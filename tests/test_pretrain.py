"""Self-supervised pretraining (SimCLR) and the TypiClust cold start (issue 23)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from labeler.dev.demo import synthetic_eyes
from labeler.media.images import decode
from labeler.models.classifiers import CNNClassifier, Sample
from labeler.models.classifiers.pixels import strong_augment
from labeler.models.pretrain import load_encoder, nt_xent, pretrain_encoder, save_encoder
from labeler.models.strategies import k_center_greedy, typiclust


def test_nt_xent_is_small_for_matching_views_and_log_2n_minus_1_for_identical_rows():
    z = torch.eye(4) * 10
    assert float(nt_xent(z, z, temperature=0.1)) < 1e-3  # each row's only near twin is its pair
    same = torch.ones(3, 8)  # every row alike: the pair is one of 2N - 1 equally likely others
    assert math.isclose(float(nt_xent(same, same)), math.log(5), rel_tol=1e-5)


def test_strong_augment_keeps_shape_and_range_and_differs_per_draw():
    x = torch.rand(6, 3, 24, 24)
    g = torch.Generator().manual_seed(0)
    a, b = strong_augment(x, g), strong_augment(x, g)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.allclose(a, b)


def test_pretraining_changes_the_encoder_and_the_cnn_starts_from_it(tmp_path):
    folder = synthetic_eyes(tmp_path / "images", n=24, size=24, seed=0)
    paths = sorted(folder.iterdir())
    samples = [Sample(decode(p.read_bytes())) for p in paths]
    y = np.array([0 if p.name.startswith("open") else 1 for p in paths])
    state, info = pretrain_encoder(samples, input_size=32, steps=3, batch=8, progress=False)
    assert info["steps"] == 3 and info["images"] == 24 and np.isfinite(info["final_loss"])
    path = save_encoder(state, tmp_path / "enc")
    loaded = load_encoder(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    from labeler.models.classifiers.mobilenet import mobilenet_v2

    imagenet = mobilenet_v2(2)[0].features.state_dict()
    assert any(not torch.equal(imagenet[k], state[k]) for k in state if state[k].is_floating_point())
    cnn = CNNClassifier(["open", "closed"], encoder=str(path), max_steps=2, min_steps=2, input_size=32,
                        progress=False)
    cnn.fit(samples, y)
    assert cnn.fit_info_["encoder"] is True and cnn.fit_info_["probe_only"] is False
    assert cnn.predict_proba(samples[:3]).shape == (3, 2)

    # One label of a class: only the head is fitted (a linear probe), the encoder's weights stay as they were.
    one = [int(np.flatnonzero(y == 0)[0]), *np.flatnonzero(y == 1)[:3].tolist()]
    probe = CNNClassifier(["open", "closed"], encoder=str(path), input_size=32, progress=False)
    probe.fit([samples[i] for i in one], y[one])
    assert probe.fit_info_["probe_only"] is True and probe.fit_info_["steps"] == 0 and probe.fit_info_["probed_head"]
    assert all(torch.equal(v, state[k]) for k, v in probe.net_.features.state_dict().items())
    p = probe.predict_proba([samples[i] for i in one])
    assert p.shape == (4, 2) and (p.argmax(1) == y[one]).all(), "a probe fits its own labels"
    warm = CNNClassifier(["open", "closed"], encoder=str(path), input_size=32, progress=False)
    assert not warm.init_from(probe), "nothing fine-tuned to start from: the next fit is cold"
    assert warm.init_from(cnn)


def test_typiclust_takes_the_dense_middle_of_each_uncovered_cluster():
    rng = np.random.default_rng(0)
    blobs = [rng.normal(c, 0.3, size=(40, 2)) for c in (0, 6, 12)]
    outliers = np.array([[3.0, 3.0], [9.0, -3.0]])
    f = np.concatenate([*blobs, outliers])
    picks = typiclust(f, np.arange(len(f)), np.zeros(0, dtype=int), 3, rng)
    assert sorted(int(p) // 40 for p in picks) == [0, 1, 2]  # one per blob, never an outlier
    for p in picks:
        centre = blobs[int(p) // 40].mean(0)
        assert np.linalg.norm(f[p] - centre) < 0.5  # typical: near the blob's centre


def test_typiclust_skips_covered_clusters_and_never_returns_a_chosen_item():
    rng = np.random.default_rng(1)
    f = np.concatenate([rng.normal(c, 0.2, size=(30, 2)) for c in (0, 5, 10)])
    chosen = np.array([0])  # blob 0 is covered
    candidates = np.arange(1, 90)
    picks = typiclust(f, candidates, chosen, 2, rng)
    assert sorted(int(p) // 30 for p in picks) == [1, 2]
    more = typiclust(f, candidates, chosen, 10, rng)  # more picks than clusters: k-center fills in
    assert len(set(more.tolist())) == 10 and 0 not in more


def test_without_a_model_after_labels_half_the_batch_hunts_for_a_missing_class():
    from labeler.models.strategies import searching_batch, select

    rng = np.random.default_rng(2)
    common = [rng.normal([c, 0.0], 0.5, size=(60, 2)) for c in range(0, 50, 5)]
    rare = rng.normal([25.0, 12.0], 0.5, size=(4, 2))  # a rare class off to one side
    f = np.concatenate([*common, rare])
    rare_ids = set(range(600, 604))
    first = select("margin_diverse", None, np.arange(604), np.zeros(0, dtype=int), 4, rng, f, cold_start="typiclust")
    assert not rare_ids & set(first.tolist()), "TypiClust's first batch: typical images of the big clusters"
    pool = np.setdiff1d(np.arange(604), first)
    for _ in range(3):
        assert not rare_ids & set(typiclust(f, pool, first, 4, rng).tolist()), "TypiClust alone keeps to them"
    hunt = select("margin_diverse", None, pool, first, 4, rng, f, cold_start="typiclust")
    assert len(set(hunt.tolist())) == 4 and not set(hunt.tolist()) & set(first.tolist())
    assert rare_ids & set(hunt[1::2].tolist()), "k-center's picks, every second one, reach the outlying class"
    assert not rare_ids & set(hunt[0::2].tolist())
    proba = np.full((len(pool), 2), 0.5)
    with_model = select("margin_diverse", proba, pool, first, 4, rng, f, cold_start="typiclust")
    assert not rare_ids & set(with_model.tolist()), "a model: margin + diversity, no hunting"
    few = searching_batch(typiclust, f, pool[:3], first, 6, rng)  # fewer candidates than asked: all of them
    assert sorted(few.tolist()) == sorted(pool[:3].tolist())
    one = select("margin_diverse", None, pool, first, 1, rng, f, cold_start="typiclust")  # LABELER_TRAIN_EVERY=1
    assert len(one) == 1 and one[0] in pool, "a batch of one is TypiClust's pick (k-center's half is empty)"
    assert k_center_greedy(f, pool, first, 0, rng).size == 0 and k_center_greedy(f, pool, [], 0, rng).size == 0


def test_pretraining_runs_once_per_project_until_it_doubles(tmp_path):
    from dataclasses import replace

    from labeler.config import Settings
    from labeler.learning.pretraining import needs_pretraining
    from labeler.models.encoders import current_encoder, encoder_registry, serving_encoder
    from labeler.models.registry import Registry

    s = Settings(model_dir=tmp_path, pretrain="auto", pretrain_min_images=50)
    assert needs_pretraining(s, "7", 49) is None, "too few images: ImageNet weights"
    assert "no encoder yet" in (needs_pretraining(s, "7", 50) or "")
    reg = encoder_registry(s)
    version = reg.add("7", lambda folder: (save_encoder({"w": torch.zeros(1)}, folder), {"kind": "simclr", "images": 80})[1])
    reg.promote("7", version)
    assert current_encoder(s, "7") == (version, reg.path("7", version) / "encoder.pt")
    assert needs_pretraining(s, "7", 159) is None, "retraining reuses the encoder"
    assert "grew from 80 to 160" in (needs_pretraining(s, "7", 160) or "")
    assert needs_pretraining(Settings(model_dir=tmp_path, pretrain="off"), "7", 10_000) is None
    short = reg.add("7", lambda folder: (save_encoder({"w": torch.zeros(1)}, folder), {"images": 80, "steps": 300})[1])
    reg.promote("7", short)
    assert "had 300 SimCLR steps" in (needs_pretraining(replace(s, pretrain_steps=900), "7", 100) or "")
    assert needs_pretraining(replace(s, pretrain_steps=300), "7", 100) is None, "as many steps as asked"
    reg.promote("7", version)
    assert current_encoder(Settings(model_dir=tmp_path, pretrain="off"), "7") is None

    models = Registry(tmp_path)
    assert serving_encoder(s, models, "7") is None, "nothing serves yet"
    v = models.add("7", lambda folder: {"kind": "cnn", "encoder": version})
    models.promote("7", v)
    assert serving_encoder(s, models, "7") == (version, reg.path("7", version) / "encoder.pt")
    v2 = models.add("7", lambda folder: {"kind": "cnn", "encoder": "v9-simclr"})  # pruned long ago
    models.promote("7", v2)
    assert serving_encoder(s, models, "7") is None


def test_the_queue_keeps_features_of_one_encoder_only(tmp_path):
    from pathlib import Path

    from labeler.studio.queue import QueueState, Recorder, state_path

    path = state_path(tmp_path, 7)
    st = QueueState.empty()
    st.update([1, 2], np.full((2, 2), 0.5), np.ones((2, 4)), "v1-cnn")
    st.features_from = "v1-simclr"
    st.save(path)
    assert QueueState.load(path).features_from == "v1-simclr"
    assert len(Recorder(tmp_path, 7, 2, encoder=("v1-simclr", Path("unused"))).state.ids) == 2
    fresh = Recorder(tmp_path, 7, 2).state  # ImageNet features now: the old rows are not comparable
    assert len(fresh.ids) == 0 and fresh.features_from == "imagenet"


def test_the_queue_starts_with_typical_images_only_on_encoder_features():
    from labeler.models.strategies import queue_order
    from labeler.studio.queue import QueueState, cold_start

    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(c, 0.3, size=(30, 4)) for c in (0, 6, 12)]).astype(np.float32)
    st = QueueState.empty()
    st.update(list(range(90)), np.full((90, 2), np.nan), feats, "zero-shot")
    assert cold_start(st) == {}, "ImageNet features: k-center greedy as before"
    st.features_from = "v1-simclr"
    assert cold_start(st) == {"cold_start": "typiclust", "typical_until": 0}, "TypiClust while no model scored"
    order = queue_order("margin_diverse", None, np.arange(90), np.zeros(0, dtype=int), 3, feats, **cold_start(st))
    assert sorted(order.tolist()) == list(range(90))
    assert sorted(int(i) // 30 for i in order[:3]) == [0, 1, 2], "the first batch: one typical image per cluster"


def test_stable_sample_is_one_hash_order_for_urls_and_task_ids():
    import hashlib

    from labeler.learning.labelled import stable_sample
    from labeler.learning.pretraining import stable_sample as pretraining_sample

    assert pretraining_sample is stable_sample, "one helper for both"
    urls = [f"s3://b/{i}.png" for i in range(50)]
    chosen = stable_sample(urls, 10)
    assert chosen == sorted(urls, key=lambda u: hashlib.sha1(u.encode()).hexdigest())[:10]
    assert stable_sample(urls[::-1], 10) == chosen, "the same whatever the order"
    assert set(stable_sample(urls + ["s3://b/new.png"], 10)) - set(chosen) <= {"s3://b/new.png"}
    tasks = [(i, f"u{i}") for i in range(30)]  # the self-training pool: by task id, as before
    by_id = stable_sample(tasks, 7, key=lambda t: str(t[0]))
    assert by_id == sorted(tasks, key=lambda t: hashlib.sha1(str(t[0]).encode()).hexdigest())[:7]
    assert stable_sample(urls, 0) == [] and len(stable_sample(urls, 100)) == 50


class _Item:
    def __init__(self, sample):
        self.sample = sample


class _Predictor:
    """What pretraining uses of a Predictor: its settings and ``samples`` (every ``readable``-th image reads)."""

    def __init__(self, settings, readable: int = 1, fails: Exception | None = None):
        self.settings, self.readable, self.fails, self.fetched = settings, readable, fails, 0

    def samples(self, urls, conn):
        if self.fails:
            raise self.fails
        self.fetched += len(urls)
        return [_Item(Sample(Image.new("RGB", (8, 8))) if i % self.readable == 0 else None)
                for i in range(len(urls))]


@pytest.mark.parametrize("store", ["local", "memory"])
def test_a_failed_pretraining_is_not_retried_until_the_project_grows(tmp_path, monkeypatch, store):
    from types import SimpleNamespace

    from labeler.config import Settings
    from labeler.learning import pretraining
    from labeler.models.encoders import encoder_registry

    url = f"memory://enc-{tmp_path.name}" if store == "memory" else ""
    s = Settings(model_dir=tmp_path, registry_url=url, pretrain="auto", pretrain_min_images=50)
    data = SimpleNamespace(keep=[], unlabelled=[(i, f"u{i}") for i in range(100)])
    half_unreadable = _Predictor(s, readable=2)  # 50 of 100 read, but 60 tasks read only 30
    small = SimpleNamespace(keep=[], unlabelled=data.unlabelled[:60])
    assert pretraining.ensure_encoder(half_unreadable, "7", small, None, "cnn") is None
    assert half_unreadable.fetched == 60
    assert encoder_registry(s).pretrain_failed("7") == {"tasks": 60, "readable": 30, "error": None,
                                                        "at": pytest.approx(time.time(), abs=60)}
    assert pretraining.needs_pretraining(s, "7", 60) is None, "the same project: not fetched again"
    assert pretraining.needs_pretraining(s, "7", 119) is None
    assert "no encoder yet" in (pretraining.needs_pretraining(s, "7", 120) or "")

    raising = _Predictor(s, fails=OSError("store down"))  # an attempt that raised is recorded too
    grown = SimpleNamespace(keep=[], unlabelled=[(i, f"u{i}") for i in range(120)])
    assert pretraining.ensure_encoder(raising, "7", grown, None, "cnn") is None
    failed = encoder_registry(s).pretrain_failed("7")
    assert failed["tasks"] == 120 and failed["readable"] is None and "OSError: store down" in failed["error"]
    assert pretraining.needs_pretraining(s, "7", 239) is None

    monkeypatch.setattr(pretraining, "pretrain_encoder", lambda samples, **kw: (
        {"w": torch.zeros(1)}, {"images": len(samples), "pretrain_seconds": 0.0}))
    big = SimpleNamespace(keep=[], unlabelled=[(i, f"u{i}") for i in range(240)])
    version, _ = pretraining.ensure_encoder(_Predictor(s), "7", big, None, "cnn")
    assert encoder_registry(s).pretrain_failed("7") == {}, "a success clears the record"
    assert encoder_registry(s).meta("7", version)["images"] == 240
    assert pretraining.needs_pretraining(s, "7", 479) is None and pretraining.needs_pretraining(s, "7", 480)


def test_a_multi_label_cnn_project_trains_from_its_encoder(tmp_path, monkeypatch):
    from dataclasses import replace
    from types import SimpleNamespace

    from labeler.config import Settings
    from labeler.dev.shapes import synthetic_shapes
    from labeler.errors import TrainingError
    from labeler.learning import multilabel
    from labeler.learning.labelled import LabelledSet
    from labeler.models.classifiers.multilabel import MultiLabelCNN
    from labeler.models.encoders import encoder_registry
    from labeler.models.predictor import Predictor
    from labeler.studio.tasks import Labelled

    truth = synthetic_shapes(tmp_path / "images", 30, seed=1)
    samples = [Sample(Image.open(tmp_path / "images" / name).convert("RGB")) for name in truth]
    state, _ = pretrain_encoder(samples, input_size=32, steps=2, batch=8, progress=False)
    s = Settings(model_dir=tmp_path / "models", zeroshot_model=None, classifier="cnn", min_per_class=1,
                 pretrain_min_images=2)
    reg = encoder_registry(s)  # the project's current encoder, already pretrained on its 30 images
    version = reg.add("5", lambda folder: (save_encoder(state, folder), {"kind": "simclr", "images": 30})[1])
    reg.promote("5", version)
    classes = ["person", "animal", "vehicle", "building", "text"]
    keep = [(Labelled(i, f"u{i}", ""), SimpleNamespace(decoded=x)) for i, x in enumerate(samples, 1)]
    data = LabelledSet(keep, [], np.array(list(truth.values()), dtype=int), 0, [])
    # the project's estimator, only with fewer steps: the wiring is under test, not the fit
    monkeypatch.setattr(multilabel, "estimator_for", lambda kind, cl, seed: MultiLabelCNN(
        cl, seed=seed, max_steps=2, min_steps=2, input_size=32, progress=False))
    clf, meta = multilabel.train(Predictor(s), "5", data, classes, "cnn", lambda m: None)
    assert meta["encoder"] == version and meta["train_info"]["encoder"] is True
    assert clf.encoder == str(reg.path("5", version) / "encoder.pt") and clf.predict_proba(samples[:2]).shape == (2, 5)
    _, plain = multilabel.train(Predictor(replace(s, pretrain="off")), "5", data, classes, "cnn",
                                lambda m: None)
    assert plain["encoder"] is None and plain["train_info"]["encoder"] is False
    _, fixmatch = multilabel.train(Predictor(s), "5", data, classes, "cnn", lambda m: None,
                                    fetch_pool=lambda: samples[:10])
    assert fixmatch["self_training"] == {"pool": 10, "method": "fixmatch", "threshold": 0.95}
    assert fixmatch["train_info"]["unlabelled"] == 10, "the served fit learnt from the pool"
    _, one = multilabel.train(Predictor(s), "5", data, classes, "cnn", lambda m: None, fetch_pool=lambda: samples[:1])
    assert one["self_training"]["method"] is None, "one image is no pool for FixMatch: the meta must not claim it"
    fetched = []
    too_few = LabelledSet(keep[:3], [], data.y[:3], 0, [])
    with pytest.raises(TrainingError):
        multilabel.train(Predictor(s), "5", too_few, classes, "cnn", lambda m: None,
                         fetch_pool=lambda: fetched.append(1) or samples)
    assert not fetched, "the pool is fetched only once the labels suffice"
