"""Teams of simulated annotators (issue 22): consensus against majority vote and the best annotator alone,
and the relabel-or-new queue against new tasks only at equal clicks (labeler.learning.simulate_team).

    python benchmarks/team_bench.py [--data eyes24|digits|PATH] [--annotators 0.97,0.9,0.7] [--per-task 2]
                                    [--seeds 5] [--clicks 600] [--start 200] [--batch 50] [--test 400]
    python benchmarks/team_bench.py --honeypot-rates 0,0.02,0.05,0.1 [--tasks 2000] [--seeds 20]

The second: one person per task, honeypots mixed into each person's queue at each rate (two classes,
no images): how close the estimated accuracies come, and whether their intervals hold the true ones.

Features: frozen ImageNet MobileNetV2 (labeler.models.strategies.imagenet_features); classifier: logistic
regression. eyes24 is read from ../shared/datasets/eyes24 (skipped where absent); digits are generated
(labeler.learning.datasets.synthetic_digits, 10 classes x 80).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from labeler.learning.datasets import read_labels, synthetic_digits
from labeler.learning.simulate_team import honeypot_study, team_study
from labeler.models.classifiers import Sample
from labeler.models.strategies import imagenet_features

EYES24 = Path(__file__).resolve().parents[2] / "shared/datasets/eyes24/labels.csv"


def load(name: str, tmp: Path) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(features, class indices, classes) of ``eyes24``, ``digits`` or a labels.csv path."""
    csv = EYES24 if name == "eyes24" else synthetic_digits(tmp / "digits", [80] * 10, seed=0) if name == "digits" \
        else Path(name)
    if not csv.exists():
        print(f"{name}: {csv} not found, skipped")
        return None
    data = read_labels(csv, progress=False)
    return imagenet_features([Sample(im) for im in data.images()]), data.targets(data.classes), len(data.classes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="eyes24")
    ap.add_argument("--annotators", default="0.97,0.9,0.7")
    ap.add_argument("--per-task", type=int, default=2, help="labels per task in the consensus comparison")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--clicks", type=int, default=600)
    ap.add_argument("--start", type=int, default=200)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--test", type=int, default=400, help="held-out tasks nobody labels (relabel comparison)")
    ap.add_argument("--honeypot-rates", help="only the honeypot study: queue shares, e.g. 0,0.02,0.05,0.1 (no images)")
    ap.add_argument("--tasks", type=int, default=2000, help="tasks of the honeypot study")
    args = ap.parse_args()
    acc = [float(a) for a in args.annotators.split(",")]
    if args.honeypot_rates:
        for line in honeypot_study(acc, args.tasks, [float(r) for r in args.honeypot_rates.split(",")], 2, args.seeds):
            print(line)
        return
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        loaded = load(args.data, Path(tmp))
        if loaded is None:
            sys.exit(0)
        x, y, k = loaded
        print(f"{args.data}: {len(y)} tasks, {k} classes, annotators {acc}, features in {time.perf_counter() - t0:.0f} s")
        for line in team_study(x, y, k, acc, args.per_task, args.seeds, args.clicks, args.start, args.batch, args.test):
            print(line)
        print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
