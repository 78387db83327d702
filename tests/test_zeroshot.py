import numpy as np
import pytest
import torch
from PIL import Image

from labeler.models.zeroshot import ZeroShotScorer, pick_dtype, softmax

from .conftest import png_bytes


@pytest.fixture(scope="module")
def scorer(tiny_model):
    return ZeroShotScorer.load(str(tiny_model), batch_size=4, local_files_only=True)


@pytest.fixture(scope="module")
def images():
    import io
    return [Image.open(io.BytesIO(png_bytes(i, size=24 + i))) for i in range(7)]


def test_one_vision_pass_matches_pairwise_forward(scorer, images):
    prompts = ["open eye", "closed eye", "a photo of an eye with a visible pupil"]
    emb = scorer.embed(images)
    assert emb.hidden.shape[0] == len(images)
    ours = scorer.match_logits(emb.hidden, prompts)
    assert ours.shape == (len(images), len(prompts))
    # The model's own forward: every image paired with every prompt, vision tower per pair.
    pixels = scorer.processor(images=images, return_tensors="pt")["pixel_values"]
    for j, prompt in enumerate(prompts):
        tok = scorer.processor.tokenizer([prompt] * len(images), return_tensors="pt", padding=True)
        with torch.no_grad():
            out = scorer.model(pixel_values=pixels, input_ids=tok["input_ids"],
                               attention_mask=tok["attention_mask"], use_image_text_matching_head=True)
        ref = (out.logits_per_image[:, 1] - out.logits_per_image[:, 0]).numpy()
        np.testing.assert_allclose(ours[:, j], ref, rtol=1e-4, atol=1e-4)


def test_our_preprocessing_equals_the_processor(scorer, images):
    ref = scorer.processor(images=images, return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(scorer.preprocess(images).numpy(), ref.numpy(), atol=1e-4)


def test_class_scores_average_prompts_and_spread(scorer, images):
    emb = scorer.embed(images)
    prompts = {"open": ["open eye", "eye with pupil"], "closed": ["closed eye"]}
    s = scorer.class_scores(emb.hidden, prompts)
    m = scorer.match_logits(emb.hidden, ["open eye", "eye with pupil", "closed eye"])
    np.testing.assert_allclose(s[:, 0], m[:, :2].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(s[:, 1], m[:, 2], rtol=1e-6)
    p = softmax(s)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[:, 0].std() > 1e-3, "the tiny model must spread scores for ranking tests to mean anything"


def test_batching_does_not_change_scores(tiny_model, images):
    a = ZeroShotScorer.load(str(tiny_model), batch_size=1, local_files_only=True)
    b = ZeroShotScorer.load(str(tiny_model), batch_size=64, local_files_only=True)
    pa = a.class_scores(a.embed(images).hidden, {"x": ["open eye"], "y": ["closed eye"]})
    pb = b.class_scores(b.embed(images).hidden, {"x": ["open eye"], "y": ["closed eye"]})
    np.testing.assert_allclose(pa, pb, rtol=1e-4, atol=1e-5)


def test_many_prompts_are_scored_a_few_at_a_time_with_the_same_logits(scorer, images, monkeypatch, tmp_path):
    import labeler.models.zeroshot as zs
    from labeler.models.cache import LogitCache

    prompts = [f"an eye, take {i}" for i in range(11)]
    hidden = scorer.embed(images).hidden
    whole = scorer.match_logits(hidden, prompts)
    monkeypatch.setattr(zs, "MAX_PAIRS_PER_PASS", 6)  # 4 images a batch: one prompt per pass
    np.testing.assert_allclose(scorer.match_logits(hidden, prompts), whole, rtol=1e-5, atol=1e-5)
    memo = LogitCache(tmp_path / "logits.sqlite")  # more prompts than SQLite binds in one statement
    many = [f"prompt {i}" for i in range(1500)]
    memo.put(["k1"], many, np.arange(1500, dtype=np.float32)[None])
    np.testing.assert_array_equal(memo.get(["k1", "k2"], many)[0], np.arange(1500))


def test_softmax_temperature():
    s = np.array([[2.0, 0.0]])
    assert softmax(s, 1.0)[0, 0] == pytest.approx(1 / (1 + np.exp(-2)))
    assert softmax(s, 2.0)[0, 0] == pytest.approx(1 / (1 + np.exp(-1)))


def test_dtype_choice():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    # On a CPU the model loads in fp32; bf16 and int8 then apply to the vision tower's linear layers (test_cpufast).
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.float32
    assert pick_dtype(torch.device("cpu"), "float16") == torch.float16
