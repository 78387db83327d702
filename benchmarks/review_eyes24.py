"""Label-error review on eyes24 with deliberately flipped labels (issue 5).

Flips a fraction of the labels at random, computes out-of-fold CNN
probabilities (5-fold, the same code as `labeler review`), flags suspects with
confident learning, and prints the precision and recall of the flagged set.

    python benchmarks/review_eyes24.py [--flip 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from labeler.learning.datasets import read_labels
from labeler.learning.label_errors import find_label_issues
from labeler.learning.training import cross_val_proba
from labeler.models.classifiers import CNNClassifier, Sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/eyes24"))
    ap.add_argument("--flip", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = read_labels(Path(args.data) / "labels.csv")
    classes = ["open", "closed"]
    y_true = data.targets(classes)
    rng = np.random.default_rng(args.seed)
    flipped = rng.choice(len(y_true), int(round(args.flip * len(y_true))), replace=False)
    y = y_true.copy()
    y[flipped] = 1 - y[flipped]
    samples = [Sample(im) for im in data.images()]
    t = time.perf_counter()
    proba = cross_val_proba(CNNClassifier(classes, seed=args.seed, progress=False), samples, y, 5, args.seed)
    issues = find_label_issues(proba, y)
    hit = np.isin(issues, flipped)
    print(f"eyes24: {len(y)} labels, {len(flipped)} flipped ({args.flip:.0%}), seed {args.seed}; "
          f"out-of-fold CNN in {time.perf_counter() - t:.0f} s")
    print(f"flagged {len(issues)}: precision {hit.mean():.3f}, recall {hit.sum() / len(flipped):.3f}")
    k = len(flipped)
    print(f"top-{k} of the ranking (as many as were flipped): precision {np.isin(issues[:k], flipped).mean():.3f}")


if __name__ == "__main__":
    main()
