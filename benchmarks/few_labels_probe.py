"""How far do a set's features go with a few labels per class, and does linear probing help the CNN?

Two measurements on the same draws (per seed: a random hold-out, then ``--per-class`` random labels of
each class from the rest):

1. frozen features, no fine-tuning: a logistic regression on the labels, label spreading over every
   image (transductive), and a logistic regression on the labels plus seeded k-means pseudo-labels of
   the pool (every image outside the labels and the hold-out), on the self-supervised encoder's features
   and on ImageNet's;
2. cold CNN fits from the encoder: fine-tuned (a probe alone with one label per class), with LP-FT
   (``CNNClassifier(probe=True)``), and probe-only given the pool (``fit(..., unlabelled=pool)``: the
   head learns the labels and the pool's seeded k-means classes; forced at any ``--per-class`` here).

    python benchmarks/few_labels_probe.py --labels /tmp/digits/labels.csv --encoder sim/encoder.pt \\
        --per-class 1,3,10 --seeds 2

The encoder is one ``labeler simulate --levers pretrain`` wrote (``--out``/encoder.pt), or is pretrained
here (``--pretrain-steps``) when ``--encoder`` does not exist yet.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize
from sklearn.semi_supervised import LabelSpreading

from labeler.config import Settings
from labeler.learning.datasets import read_labels
from labeler.learning.levers import simulation_encoder
from labeler.models.classifiers import CNNClassifier, Sample
from labeler.models.classifiers.seeded import seeded_kmeans
from labeler.models.strategies import encoder_features, imagenet_features


def draw(y: np.ndarray, per_class: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled indices, held-out indices) for one seed."""
    rng = np.random.default_rng(seed)
    test = rng.permutation(len(y))[:holdout]
    pool = np.setdiff1d(np.arange(len(y)), test)
    lab = np.concatenate([rng.choice(pool[y[pool] == c], per_class, replace=False) for c in np.unique(y)])
    return lab, test


def frozen(features: np.ndarray, y: np.ndarray, lab: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Held-out accuracy of a logistic regression, of label spreading, and of a logistic regression on the
    labels plus the pool's seeded k-means pseudo-labels (the CNN's probe-only fit) on ``features``."""
    f = normalize(features)
    lr = LogisticRegression(C=10, max_iter=2000).fit(f[lab], y[lab])
    partial = np.full(len(y), -1)
    partial[lab] = y[lab]
    spread = LabelSpreading(kernel="knn", n_neighbors=10, alpha=0.2, max_iter=100).fit(f, partial)
    pool = np.setdiff1d(np.arange(len(y)), np.concatenate([lab, test]))
    found = seeded_kmeans(f[pool], f[lab], y[lab], int(y.max()) + 1)
    seeded = lr if found is None else LogisticRegression(C=10, max_iter=2000).fit(
        np.vstack([f[lab], f[pool]]), np.concatenate([y[lab], found]))
    return {"logreg": float((lr.predict(f[test]) == y[test]).mean()),
            "spreading": float((spread.transduction_[test] == y[test]).mean()),
            "seeded k-means": float((seeded.predict(f[test]) == y[test]).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", required=True, type=Path)
    ap.add_argument("--encoder", required=True, type=Path, help="encoder.pt (pretrained here if absent)")
    ap.add_argument("--per-class", default="1,3,10")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--holdout", type=int, default=300)
    ap.add_argument("--pretrain-steps", type=int, default=Settings.pretrain_steps)
    ap.add_argument("--no-cnn", action="store_true", help="frozen features only")
    args = ap.parse_args()
    data = read_labels(args.labels, progress=False)
    y = data.targets(data.classes)
    samples = [Sample(im) for im in data.images()]
    encoder = args.encoder
    if not encoder.exists():
        encoder, _ = simulation_encoder(samples, encoder.parent, args.pretrain_steps)
    feats = {"encoder": encoder_features(samples, encoder), "ImageNet": imagenet_features(samples)}
    print(f"{len(y)} images, {len(data.classes)} classes, hold-out {args.holdout}, {args.seeds} seed(s)")
    for per in (int(p) for p in args.per_class.split(",")):
        draws = [draw(y, per, args.holdout, seed) for seed in range(args.seeds)]
        for name, f in feats.items():
            got = [frozen(f, y, lab, test) for lab, test in draws]
            print(f"{per}/class, frozen {name} features: " + ", ".join(
                f"{k} {np.mean([g[k] for g in got]):.3f}" for k in got[0]), flush=True)
        if args.no_cnn:
            continue
        for probe, use_pool in ((False, False), (True, False), (False, True)):
            accs, secs = [], []
            for seed, (lab, test) in enumerate(draws):
                pool = [samples[i] for i in np.setdiff1d(np.arange(len(y)), np.concatenate([lab, test]))]
                t = time.perf_counter()
                # pool: probe-only with the pool's clusters at any count (the backend's rule stops at 10 per class)
                m = CNNClassifier(data.classes, seed=seed, encoder=str(encoder), probe=probe, progress=False,
                                  probe_only_below=per + 1 if use_pool else 2)
                m.fit([samples[i] for i in lab], y[lab], unlabelled=pool if use_pool else None)
                secs.append(time.perf_counter() - t)
                accs.append(float((m.predict_proba([samples[i] for i in test]).argmax(1) == y[test]).mean()))
            print(f"{per}/class, cold CNN fit from the encoder, probe={probe}, pool={use_pool}: accuracy "
                  f"{' '.join(f'{a:.3f}' for a in accs)} (mean {np.mean(accs):.3f}; {np.mean(secs):.0f} s a fit)",
                  flush=True)


if __name__ == "__main__":
    main()
