"""Bulk pre-annotation (issue 4): cache, calibration, resumable runs against a real Label Studio."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from labeler.config import Settings
from labeler.dev.demo import template, upload_images
from labeler.labelconfig import parse_label_config
from labeler.models.calibration import fit_temperature
from labeler.models.predictor import Predictor
from labeler.models.uncertainty import confidence
from labeler.models.zeroshot import softmax
from labeler.studio.client import Connection, Studio
from labeler.studio.preannotate import preannotate


def test_fit_temperature_recovers_the_true_one():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 3, size=(4000, 3))
    for t_true in (0.5, 4.0):
        p = softmax(s, t_true)
        y = np.array([rng.choice(3, p=row) for row in p])
        assert fit_temperature(s, y) == pytest.approx(t_true, rel=0.15)


@pytest.fixture()
def predictor(tmp_path, tiny_model, image_dir):
    p = Predictor(Settings(model_dir=tmp_path / "md", zeroshot_model=str(tiny_model), local_files_only=True,
                           local_root=image_dir))
    p.load_scorer()
    return p


def test_cache_hit_gives_the_same_scores(predictor, image_dir):
    config = parse_label_config(template("binary"))
    urls = [str(p) for p in sorted(image_dir.iterdir())]
    _, first = predictor.score("1", urls, config, Connection())
    predictor.cache.flush()
    assert len(predictor.cache) == len(urls)
    calls = []
    embed = predictor.scorer.embed
    predictor.scorer.embed = lambda images: calls.append(len(images)) or embed(images)
    _, second = predictor.score("1", urls, config, Connection())
    assert calls == [], "a cache hit must not run the vision tower"
    np.testing.assert_array_equal(np.stack([i.proba for i in first]), np.stack([i.proba for i in second]))


def test_changed_prompt_reruns_only_that_prompt(predictor, image_dir):
    xml = template("binary")
    urls = [str(p) for p in sorted(image_dir.iterdir())]
    predictor.score("1", urls, parse_label_config(xml), Connection())
    changed = parse_label_config(xml.replace("an eyelid covering the eye", "shut eyelids"))
    runs = []
    match = predictor.scorer.match_logits
    predictor.scorer.match_logits = lambda hidden, prompts: runs.append((len(hidden), list(prompts))) or \
        match(hidden, prompts)
    _, memo = predictor.score("1", urls, changed, Connection())
    assert runs == [(len(urls), ["shut eyelids"])], "only the new prompt goes through the Q-Former"
    runs.clear()
    items = predictor.samples(urls, Connection())
    for it in items:
        it.hidden = None  # a full memo hit must not read the hidden states
    predictor.score_items("1", items, changed)
    assert runs == []
    predictor.scorer.match_logits = match
    scorer = predictor.scorer
    hidden = scorer.embed([it.sample.image for it in items]).hidden.half()  # as the cache stores them
    fresh = softmax(scorer.class_scores(hidden, changed.prompts))
    np.testing.assert_allclose(np.stack([i.proba for i in memo]), fresh, atol=1e-5)


def test_known_images_rescore_without_opening_an_embedding_file(predictor, image_dir):
    """Pooled features come from the memo and logits from theirs: no .npy is read; a new prompt reads
    the hidden states, and where the cache lost them the image is embedded again."""
    config = parse_label_config(template("binary"))
    urls = [str(p) for p in sorted(image_dir.iterdir())]
    _, first = predictor.score("1", urls, config, Connection())
    predictor.cache.flush()
    for f in predictor.cache.dir.glob("*/*.npy"):
        f.unlink()  # had re-scoring needed an embedding file, it would have to embed again
    calls = []
    embed = predictor.scorer.embed
    predictor.scorer.embed = lambda images: calls.append(len(images)) or embed(images)
    _, again = predictor.score("1", urls, config, Connection())
    assert calls == [] and all(it.hidden is None for it in again)
    np.testing.assert_array_equal(np.stack([i.proba for i in first]), np.stack([i.proba for i in again]))
    np.testing.assert_array_equal(np.stack([i.sample.features for i in first]),
                                  np.stack([i.sample.features for i in again]))
    changed = parse_label_config(template("binary").replace("an eyelid covering the eye", "shut eyelids"))
    _, new = predictor.score("1", urls, changed, Connection())
    assert calls == [len(urls)] and all(it.proba is not None for it in new)  # embedded again, once


def test_temperature_changes_probabilities_not_choices(predictor, image_dir):
    config = parse_label_config(template("binary"))
    urls = [str(p) for p in sorted(image_dir.iterdir())]
    v1, a = predictor.score("1", urls, config, Connection())
    predictor.registry.set_temperature("1", 5.0, 10)
    v2, b = predictor.score("1", urls, config, Connection())
    assert v1 != v2, "a new temperature is a new model version, so Label Studio re-predicts"
    pa, pb = np.stack([i.proba for i in a]), np.stack([i.proba for i in b])
    assert (pa.argmax(1) == pb.argmax(1)).all()
    assert np.abs(pb - 0.5).max() < np.abs(pa - 0.5).max()


@pytest.mark.integration
def test_interrupted_preannotate_resumes_and_view_matches_uncertainty(label_studio, predictor, image_dir):
    url, token = label_studio
    ls = Studio(url, token)
    proj = ls.projects.create(title="bulk", label_config=template("binary"))
    files = sorted(image_dir.iterdir())
    upload_images(url, token, proj.id, files)
    ls.projects.import_tasks(id=proj.id, request=[{"image": "/data/upload/does-not-exist.png"}])

    first = preannotate(ls, proj.id, predictor, batch_size=4, max_tasks=5, progress=False)
    assert first.predicted == 5  # ... and the run stops here, as if interrupted
    second = preannotate(ls, proj.id, predictor, batch_size=4, progress=False)
    assert second.skipped_existing == 5 and second.predicted == len(files) - 5
    assert len(second.failed) == 1 and "cannot download" in second.failed[0][1]
    third = preannotate(ls, proj.id, predictor, batch_size=4, progress=False)
    assert third.predicted == 0 and third.skipped_existing == len(files)

    tasks = ls.request(
        "GET", "api/tasks/", params={"project": proj.id, "fields": "all", "page_size": 100}).json()["tasks"]
    for t in tasks:
        assert len([p for p in t["predictions"] if p["model_version"] == first.version]) <= 1

    # The "Least confident first" tab orders tasks as our own uncertainty does.
    config = parse_label_config(template("binary"))
    _, items = predictor.score(str(proj.id), [str(f) for f in files], config, ls.conn)
    conf = confidence(np.stack([i.proba for i in items]))
    expected = [files[i].name for i in np.argsort(conf, kind="stable")]
    view = next(v for v in ls.views.list(project=proj.id) if v.data["title"] == "Least confident first")
    in_view = ls.request(
        "GET", "api/tasks/", params={"project": proj.id, "view": view.id, "fields": "all",
                                             "page_size": 100}).json()["tasks"]
    got = [t["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[-1] for t in in_view if t.get("predictions_score") is not None]
    assert got == expected
    assert ls.projects.get(id=proj.id).model_version == first.version


def test_unreachable_label_studio_fails_fast_and_clearly(tmp_path):
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "labeler.cli", "preannotate", "--project", "1",
                        "--url", "http://127.0.0.1:9", "--api-key", "x", "--model-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "unreachable" in r.stderr
    assert time.monotonic() - t < 30


@pytest.mark.integration
def test_concurrent_preannotate_runs_write_one_prediction_per_task(label_studio, predictor, image_dir):
    from concurrent.futures import ThreadPoolExecutor

    url, token = label_studio
    ls = Studio(url, token)
    proj = ls.projects.create(title="concurrent", label_config=template("binary"))
    files = sorted(image_dir.iterdir())
    upload_images(url, token, proj.id, files)
    with ThreadPoolExecutor(3) as pool:
        reports = list(pool.map(lambda _: preannotate(ls, proj.id, predictor, batch_size=4, progress=False),
                                range(3)))
    assert sum(r.predicted for r in reports) == len(files)
    tasks = ls.request(
        "GET", "api/tasks/", params={"project": proj.id, "fields": "all", "page_size": 100}).json()["tasks"]
    assert all(len(t["predictions"]) == 1 for t in tasks)
