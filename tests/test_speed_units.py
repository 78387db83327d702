"""Issue 15: warm start, bounded pseudo-labels, pickle-free CNN files, cache reads, the device tier."""

from __future__ import annotations

import json
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from labeler.models.cache import EmbeddingCache, LogitCache, read_entry
from labeler.models.classifiers import CNNClassifier, Sample, load_classifier
from labeler.models.devicetier import DeviceTier, stage
from labeler.models.selftrain import SelfTrained, pseudo_labels

CLASSES = ["dark", "light"]


@pytest.fixture(scope="module")
def blobs():
    """40 small images: dark (0) or light (1) with noise; real pixels for a real CNN."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    ims = [Image.fromarray((np.clip(rng.normal(60 + 130 * c, 30, (16, 16)), 0, 255)).astype(np.uint8))
           for c in y]
    return [Sample(im) for im in ims], y


def quick_cnn(**kw) -> CNNClassifier:
    opts = dict(input_size=32, max_steps=8, min_steps=8, warm_min_steps=2, progress=False)
    return CNNClassifier(CLASSES, **{**opts, **kw})


# -- bounded pseudo-labels ----------------------------------------------------------
def test_pseudo_labels_are_bounded_per_class_most_confident_first():
    p1 = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.05, 0.04, 0.03, 0.02, 0.5])
    proba = np.stack([p1, 1 - p1], axis=1)
    take, labels = pseudo_labels(proba, 0.9, limit=4)
    assert sorted(take[labels == 0]) == [0, 1] and sorted(take[labels == 1]) == [7, 8]
    take, _ = pseudo_labels(proba, 0.9, limit=None)
    assert len(take) == 8  # four per class: the rarer class has four confident rows
    assert 9 not in pseudo_labels(proba, 0.9, limit=100)[0]


# -- warm start -----------------------------------------------------------------------
def test_warm_start_begins_from_the_previous_weights_with_fewer_steps(blobs):
    samples, y = blobs
    first = quick_cnn(max_steps=20, min_steps=20)
    assert first.fit(samples, y).fit_info_["warm_start"] is False
    second = quick_cnn(max_steps=20, min_steps=20, lr=0.0, warm_fraction=0.25)
    assert second.init_from(first)
    info = second.fit(samples, y).fit_info_
    assert info["warm_start"] and info["steps"] == 5  # ceil(0.25 * 20)
    # lr 0: the weights are the previous model's, not ImageNet's or a fresh head
    a, b = first.net_.state_dict(), second.net_.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)
    # one warm start per call: the next fit is cold again
    assert second.fit(samples, y).fit_info_["warm_start"] is False


def test_warm_start_refuses_another_model(blobs):
    samples, y = blobs
    fitted = quick_cnn()
    fitted.fit(samples, y)
    assert not quick_cnn().init_from(quick_cnn())                   # not fitted
    assert not quick_cnn(input_size=40).init_from(fitted)           # other input size
    assert not CNNClassifier(["a", "b"], progress=False).init_from(fitted)  # other classes


def test_self_training_teacher_is_cheaper_and_the_student_starts_from_it(blobs):
    samples, y = blobs
    fits = []

    class Counting(CNNClassifier):
        def fit(self, X, y, unlabelled=None):
            super().fit(X, y, unlabelled=unlabelled)
            fits.append(self.fit_info_)
            return self

    model = SelfTrained(Counting(CLASSES, input_size=32, max_steps=20, min_steps=20,
                                 warm_fraction=0.5, warm_min_steps=2, progress=False),
                        samples[20:], threshold=0.5, teacher_fraction=0.5)
    info = model.fit(samples[:20], y[:20]).fit_info_
    teacher, student = fits
    assert teacher["steps"] == 10 and not teacher["warm_start"]
    assert student["warm_start"] and student["steps"] == 10 and info["teacher_warm_start"]
    assert model.predict_proba(samples[:3]).shape == (3, 2)


# -- CNN files without pickle ----------------------------------------------------------
def test_cnn_saves_weights_and_json_and_loads_weights_only(blobs, tmp_path):
    samples, y = blobs
    clf = quick_cnn()
    clf.fit(samples, y)
    clf.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "cnn.json").read_text()) == {"input_size": 32, "probe_only": False}
    state = torch.load(tmp_path / "m" / "cnn.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    np.testing.assert_allclose(load_classifier(tmp_path / "m").predict_proba(samples[:4]),
                               clf.predict_proba(samples[:4]), atol=1e-6)
    # folders written before cnn.json still load
    (tmp_path / "m" / "cnn.json").unlink()
    torch.save({"state_dict": state, "input_size": 32}, tmp_path / "m" / "cnn.pt")
    assert load_classifier(tmp_path / "m").input_size == 32


def test_cnn_file_with_code_in_it_is_refused(blobs, tmp_path):
    samples, y = blobs
    clf = quick_cnn()
    clf.fit(samples, y)
    clf.save(tmp_path / "m")

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Boom()}, tmp_path / "m" / "cnn.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_classifier(tmp_path / "m")


# -- cache reads ------------------------------------------------------------------------
def test_cache_entries_are_read_without_unpickling(tmp_path):
    cache = EmbeddingCache(tmp_path, "m")
    hidden, pooled = np.arange(12, dtype=np.float16).reshape(3, 4), np.ones(4, np.float16)
    cache.put("a" * 64, hidden, pooled)
    h, p = cache.get("a" * 64)
    np.testing.assert_array_equal(h, hidden)
    np.testing.assert_array_equal(p, pooled)
    bad = cache._path("b" * 64)
    bad.parent.mkdir(exist_ok=True)
    np.save(bad, np.array([{"x": 1}], dtype=object), allow_pickle=True)  # a pickle inside a .npy
    assert cache.get("b" * 64) is None
    with pytest.raises(ValueError, match="fp16"):
        read_entry(bad)
    np.save(bad, np.zeros((3, 4), np.float32))  # wrong dtype
    assert cache.get("b" * 64) is None
    good = cache._path("a" * 64).read_bytes()
    bad.write_bytes(good[:-10])  # torn
    assert cache.get("b" * 64) is None


def test_cache_reads_under_many_concurrent_readers(tmp_path):
    cache = EmbeddingCache(tmp_path, "m")
    rows = np.random.default_rng(0).normal(size=(64, 5, 8)).astype(np.float16)
    keys = [f"{i:064x}" for i in range(64)]
    cache.put_rows(keys, rows)
    cache.flush()

    def read_all(_):
        return all(np.array_equal(np.asarray(cache.get(k)[0]), rows[i, :-1]) for i, k in enumerate(keys))

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(read_all, range(64)))


def test_logit_memo_under_concurrent_writers_and_readers(tmp_path):
    memo = LogitCache(tmp_path / "l.sqlite")
    errors = []

    def work(t):
        try:
            keys = [f"k{t}-{i}" for i in range(50)]
            memo.put(keys, ["p", "q"], np.full((50, 2), float(t)))
            got = memo.get(keys, ["p", "q"])
            assert (got == t).all()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


# -- device tier and staging ------------------------------------------------------------
def test_device_tier_is_a_byte_bounded_lru():
    row = 4 * 8 * 2 + 8 * 2  # fp16 hidden (4, 8) + pooled (8,)
    tier = DeviceTier("cpu", max_bytes=3 * row)
    h = torch.zeros(4, 4, 8, dtype=torch.float16)
    tier.put(["a", "b", "c"], h[:3], torch.zeros(3, 8, dtype=torch.float16))
    assert tier.nbytes == 3 * row
    tier.get("a")  # now the most recent
    tier.put(["d"], h[:1], torch.zeros(1, 8, dtype=torch.float16))
    assert "b" not in tier and {"a", "c", "d"} <= set(tier._rows) and tier.nbytes == 3 * row
    tier.put(["d"], h[:1] + 1, torch.zeros(1, 8, dtype=torch.float16))  # replace, not add
    assert tier.nbytes == 3 * row and float(tier.get("d")[0][0, 0]) == 1.0
    DeviceTier("cpu", 0).put(["x"], h[:1], torch.zeros(1, 8))  # a zero budget keeps nothing


def test_stage_mixes_device_rows_and_host_memory_maps(tmp_path):
    arr = np.random.default_rng(1).normal(size=(3, 4, 8)).astype(np.float16)
    np.save(tmp_path / "x.npy", arr)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = [torch.from_numpy(arr[0].copy()), mm[1], arr[2]]
    out = stage(rows, torch.device("cpu"), torch.float32)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), arr.astype(np.float32))
    with pytest.raises(ValueError):
        stage([], torch.device("cpu"))


def test_rescoring_from_the_tier_equals_rescoring_from_disk(tiny_model, tmp_path):
    from labeler.models.cache import content_key
    from labeler.models.zeroshot import ImageEmbeddings, ZeroShotScorer

    from .conftest import png_bytes

    scorer = ZeroShotScorer.load(str(tiny_model), batch_size=3, local_files_only=True)
    pngs = [png_bytes(i) for i in range(7)]
    keys = [content_key(b) for b in pngs]
    import io

    emb = scorer.embed([Image.open(io.BytesIO(b)) for b in pngs])
    cache = EmbeddingCache(tmp_path, scorer.key)
    cache.attach_tier(DeviceTier(scorer.device, 2**20))
    cache.put_embeddings(keys, ImageEmbeddings(emb.hidden, emb.pooled))
    cache.flush()
    prompts = {"open": ["open eye"], "closed": ["closed eye"]}
    from_tier = cache.get_many(keys)
    assert all(isinstance(h, torch.Tensor) for h, _ in from_tier)
    s_tier = scorer.class_scores([h for h, _ in from_tier], prompts)
    cache.attach_tier(None)
    from_disk = cache.get_many(keys)
    assert all(isinstance(h, np.memmap) for h, _ in from_disk)
    s_disk = scorer.class_scores([h for h, _ in from_disk], prompts)
    np.testing.assert_allclose(s_tier, s_disk, atol=2e-2)  # disk holds fp16
    np.testing.assert_allclose(from_tier[0][1], from_disk[0][1], atol=1e-2)
    # disk hits are promoted: a new tier is filled by one read
    cache.attach_tier(DeviceTier(scorer.device, 2**20))
    cache.get_many(keys)
    assert len(cache.tier) == len(keys)
