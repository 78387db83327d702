"""Retraining benchmark on eyes24 with the CNN classifier (issue 3).

Prints the training time for 250 labels and for every label, and the EER on a
fixed held-out part of 600 images, over several seeds. Run:

    python benchmarks/train_eyes24.py [--data ../shared/datasets/eyes24] [--seeds 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from labeler.classifiers import CNNClassifier, Sample
from labeler.datasets import read_labels
from labeler.metrics import evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/eyes24"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--holdout", type=int, default=600)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = read_labels(Path(args.data) / "labels.csv")
    classes = ["open", "closed"]
    y = data.targets(classes)
    samples = [Sample(im) for im in data.images()]
    print(f"eyes24: {len(y)} images; torch threads {torch.get_num_threads()}")
    print(f"{'labels':>7} {'seed':>4} {'train s':>8} {'steps':>5} {'EER':>7} {'acc':>7}")
    rows = []
    for seed in range(args.seeds):
        perm = np.random.default_rng(seed).permutation(len(y))
        test, pool = perm[:args.holdout], perm[args.holdout:]
        for n in (250, len(pool)):
            idx = pool[:n]
            clf = CNNClassifier(classes, seed=seed, progress=False)
            info = clf.fit([samples[i] for i in idx], y[idx])
            m = evaluate(y[test], clf.predict_proba([samples[i] for i in test]), classes)
            rows.append((n, seed, info["train_seconds"], m["eer"]))
            print(f"{n:>7} {seed:>4} {info['train_seconds']:>8.1f} {info['steps']:>5} {m['eer']:>7.4f} "
                  f"{m['accuracy']:>7.4f}", flush=True)
    t = time.perf_counter()
    CNNClassifier(classes, seed=0, progress=False).fit(samples, y)
    all_s = time.perf_counter() - t
    print(f"\ntraining on all {len(y)} labels (no hold-out): {all_s:.1f} s")
    for n in sorted({r[0] for r in rows}):
        sel = [r for r in rows if r[0] == n]
        e = np.array([r[3] for r in sel])
        s = np.array([r[2] for r in sel])
        print(f"{n:>5} labels: EER {e.mean():.4f} +- {e.std():.4f}  train {s.mean():.1f} s  (seeds {len(sel)})")


if __name__ == "__main__":
    main()
