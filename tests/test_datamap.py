"""`labeler map` (issue 12): the 2-D map of image embeddings, PNG and self-contained HTML."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from labeler.cli import main
from labeler.dev.demo import synthetic_eyes
from labeler.learning import datamap


def _clusters(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    feats = np.where(y[:, None] == 0, 5.0, -5.0) + rng.normal(size=(n, 8))
    images = [Image.new("RGB", (20, 20), (int(200 * c), 50, 50)) for c in y]
    return feats, images, y


def test_map_keeps_clusters_apart_and_flags_the_flipped_label(tmp_path):
    feats, images, y = _clusters()
    classes = ["a", "b"]
    labels = [classes[c] for c in y]
    labels[0] = "b"  # a mislabelled "a"
    proba = np.where(y[:, None] == np.arange(2)[None], 0.95, 0.05)
    m = datamap.build(feats, images, labels, classes, proba, names=[f"img{i}</script>" for i in range(40)])
    assert m.xy.shape == (40, 2)
    ca, cb = m.xy[y == 0].mean(0), m.xy[y == 1].mean(0)
    spread = max(m.xy[y == 0].std(0).max(), m.xy[y == 1].std(0).max())
    assert np.linalg.norm(ca - cb) > 2 * spread, "t-SNE keeps the two clusters apart"
    assert m.suspect.tolist() == [True] + [False] * 39
    png, page = datamap.write(m, tmp_path / "out")
    assert png.stat().st_size > 5000
    text = page.read_text()
    assert "<script src" not in text and "http://" not in text and "https://" not in text, "self-contained"
    assert text.count("data:image/png;base64,") == 40
    assert "img0</script>" not in text, "untrusted names cannot close the script element"
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)[1])
    assert data["names"][0] == "img0</script>" and data["suspect"][0] is True


def test_subsample_keeps_suspects_and_strata():
    labels = ["a"] * 900 + ["b"] * 100
    suspect = np.zeros(1000, bool)
    suspect[[5, 950]] = True
    keep = datamap.subsample(labels, suspect, 200)
    assert {5, 950} <= set(keep.tolist()) and 190 <= len(keep) <= 202
    assert 15 <= sum(1 for i in keep if labels[i] == "b") <= 25


def test_map_command_on_a_labelled_folder(tmp_path):
    import csv

    folder = synthetic_eyes(tmp_path / "images", n=24, size=24, seed=1)
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows((f"images/{p.name}", p.name.split("_")[0]) for p in sorted(folder.iterdir()))
    r = CliRunner().invoke(main, ["map", "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "map.png").exists() and (tmp_path / "m" / "map.html").exists()
    r = CliRunner().invoke(main, ["map", "--out", str(tmp_path / "m")])
    assert r.exit_code != 0 and "either --project or --labels" in r.output


@pytest.mark.integration
def test_project_map_with_the_serving_model(label_studio, tiny_model, image_dir, tmp_path):
    from labeler.config import Settings
    from labeler.dev.demo import template, upload_images
    from labeler.models.predictor import Predictor
    from labeler.studio.client import Studio

    url, token = label_studio
    ls = Studio(url, token)
    proj = ls.projects.create(title="map", label_config=template("binary")).id
    upload_images(url, token, proj, sorted(image_dir.iterdir()))
    first = ls.tasks.list(project=proj).items[0]
    ls.annotations.create(id=first.id, result=[{"from_name": "choice", "to_name": "image", "type": "choices",
                                                "value": {"choices": ["closed"]}}])
    predictor = Predictor(Settings(model_dir=tmp_path / "md", zeroshot_model=str(tiny_model),
                                   local_files_only=True, local_root=image_dir))
    predictor.load_scorer()
    m = datamap.project_map(ls, proj, predictor)
    assert len(m.xy) == 12 and m.label.count("closed") == 1 and all(m.pred)
    assert "BLIP-2" in m.title and np.isfinite(m.uncertainty).all()


def test_backend_serves_the_project_map_to_admins_only(tmp_path):
    from labeler.config import Settings
    from labeler.models.registry import Registry
    from ml_backend import create_app

    client = create_app(Settings(model_dir=tmp_path, zeroshot_model=None, admin_token="t0k"),
                        load_in_background=False).test_client()
    auth = {"Authorization": "Bearer t0k"}
    assert client.get("/admin/projects/3/map", headers=auth).status_code == 404
    feats, images, y = _clusters(12)
    m = datamap.build(feats, images, ["a" if c == 0 else "b" for c in y], ["a", "b"])
    datamap.write_html(m, Registry(tmp_path).project_dir("3", create=True) / "map.html")
    assert client.get("/admin/projects/3/map").status_code == 401
    r = client.get("/admin/projects/3/map", headers=auth)
    assert r.status_code == 200 and b"data:image/png;base64," in r.data
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert client.get("/admin/projects/..%2Fx/map", headers=auth).status_code in (400, 404)
