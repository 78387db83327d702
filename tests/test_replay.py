"""The queue through a real Label Studio replays `labeler simulate` (issue 12): same first batch, same curve shape."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.dev.demo import synthetic_eyes
from labeler.models.classifiers import Sample


@pytest.mark.integration
@pytest.mark.slow  # trains a CNN with cross-validation at every round, as the service does
def test_replay_through_label_studio_matches_the_simulation(label_studio, tmp_path):
    from labeler.config import Settings
    from labeler.learning.replay import project_from_folder, replay
    from labeler.learning.simulate import imagenet_features, make_classifier, run
    from labeler.models.predictor import Predictor
    from labeler.studio.client import Studio

    url, token = label_studio
    ls = Studio.connect(url, token)
    files = sorted(synthetic_eyes(tmp_path / "images", n=48, size=32, seed=2).iterdir())
    labels = [p.name.split("_")[0] for p in files]
    classes = ["open", "closed"]
    y = np.array([classes.index(lab) for lab in labels])
    from PIL import Image

    samples = [Sample(Image.open(p).convert("RGB")) for p in files]
    test = np.random.default_rng(1000).permutation(len(y))[:16]
    pool = np.setdiff1d(np.arange(len(y)), test)
    budget, batch = 20, 10
    sim, annotator = run(samples, y, classes, "margin_diverse", budget, batch, test, 0,
                         make_classifier("cnn", classes), features=imagenet_features(samples), progress=False)
    project, truth = project_from_folder(ls, url, token, [files[i] for i in pool], [labels[i] for i in pool],
                                         classes)
    settings = Settings(model_dir=tmp_path / "md", zeroshot_model=None, classifier="cnn", min_per_class=2,
                        seed=0, train_every=batch, self_train_pool=0, ensemble="off")  # as simulate's default
    rows, order = replay(ls, project, Predictor(settings), truth, budget, batch,
                         [samples[i] for i in test], y[test], classes)
    assert len(order) == budget == len(set(order))
    # The cold-start batch is the simulation's: k-center on the same features from the same seed.
    task_of = {files[i].name: i for i in pool}
    names = _names(ls, project)
    first = sorted(task_of[names[t]] for t in order[:batch])
    sim_first = sorted(annotator.order[:batch])
    assert first == sim_first
    assert [r["labels"] for r in rows] == [r["labels"] for r in sim.rows]
    assert all(0 <= r["eer"] <= 1 for r in rows)


def _names(ls, project):
    resp = ls.request("GET", "api/tasks/", params={
        "project": project, "page_size": 1000, "fields": "all"})
    return {t["id"]: t["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[-1] for t in resp.json()["tasks"]}
