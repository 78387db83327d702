"""Cold start: how many labels until every class has one (no model can train before that).

For each set and seed, batches of ``--batch`` are picked with no model, as the queue does before the
first retraining, until every class has a label or ``--budget`` labels are spent. Strategies:

- ``random``: uniformly random batches;
- ``kcenter``: k-center greedy on the features (the cold start on ImageNet features);
- ``typiclust``: TypiClust alone, every batch;
- ``typiclust+kcenter``: :func:`labeler.models.strategies.select` as the queue calls it with an encoder
  (TypiClust's first batch, then half of each batch from k-center while there is no model). On ImageNet
  features (no encoder yet) the queue's cold start is ``kcenter``.

Sets: ``digits`` (the project's synthetic ten-class digits, 2,730 images, class 9 at 1 %),
``digits-2rare`` (the same with class 8 cut to 15 images too) and ``eyes24-rareN`` (eyes24 with the
closed class cut to N images). Features come from the SimCLR encoder of the full set (pretrained
once into ``--cache``, no labels); ``--features imagenet`` uses the frozen ImageNet CNN instead.

    python benchmarks/cold_start_coverage.py --sets digits,digits-2rare,eyes24-rare12 --seeds 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EYES = HERE.parent.parent / "shared" / "datasets" / "eyes24" / "labels.csv"
STRATEGIES = ("random", "kcenter", "typiclust", "typiclust+kcenter")


def _base(name: str, cache: Path) -> Path:
    from labeler.learning.datasets import synthetic_digits

    if name == "eyes24":
        if not EYES.exists():
            sys.exit(f"{EYES} is absent")
        return EYES
    csv = cache / "digits" / "labels.csv"
    if not csv.exists():
        synthetic_digits(csv.parent, [300] * 9 + [30], seed=0)  # as benchmarks/finish_bench.py
    return csv


def load(name: str, cache: Path, features: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a set; the imbalanced variants keep a seeded subset of a class."""
    from labeler.config import Settings
    from labeler.learning.datasets import read_labels
    from labeler.learning.levers import simulation_encoder
    from labeler.models.classifiers import Sample
    from labeler.models.strategies import encoder_features, imagenet_features

    base = "eyes24" if name.startswith("eyes24") else "digits"
    data = read_labels(_base(base, cache), progress=False)
    y = data.targets(data.classes)
    samples = [Sample(im) for im in data.images()]
    if features == "imagenet":
        f = imagenet_features(samples)
    else:
        path, _ = simulation_encoder(samples, cache / f"{base}-encoder", steps=Settings.pretrain_steps)
        f = encoder_features(samples, path)
    rng = np.random.default_rng(0)
    cut = {"digits-2rare": (8, 15)}.get(name)
    if name.startswith("eyes24-rare"):
        cut = (data.classes.index("closed"), int(name.removeprefix("eyes24-rare")))
    keep = np.arange(len(y))
    if cut:
        c, n = cut
        keep = np.concatenate([np.flatnonzero(y != c), rng.choice(np.flatnonzero(y == c), n, replace=False)])
    return f[keep].astype(np.float32), y[keep]


def labels_to_every_class(strategy: str, f: np.ndarray, y: np.ndarray, seed: int, budget: int,
                          batch: int) -> int | None:
    """Labels spent when the last class got its first one (None: not within ``budget``)."""
    from labeler.models.strategies import k_center_greedy, select, typiclust

    rng, pool, labelled = np.random.default_rng(seed), np.arange(len(y)), np.zeros(0, dtype=int)
    n_classes = len(np.unique(y))
    while len(labelled) < budget:
        k = min(batch, budget - len(labelled))
        if strategy == "random":
            picked = rng.permutation(pool)[:k]
        elif strategy == "kcenter":
            picked = k_center_greedy(f, pool, labelled, k, rng)
        elif strategy == "typiclust":
            picked = typiclust(f, pool, labelled, k, rng)
        else:
            picked = select("margin_diverse", None, pool, labelled, k, rng, f, cold_start="typiclust")
        labelled, pool = np.concatenate([labelled, picked]), pool[~np.isin(pool, picked)]
        if len(np.unique(y[labelled])) == n_classes:
            return len(labelled)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="digits,digits-2rare,eyes24-rare12")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--features", choices=("encoder", "imagenet"), default="encoder")
    ap.add_argument("--cache", type=Path, default=Path("cold-start-cache"))
    a = ap.parse_args()
    from tqdm import tqdm

    print(f"| set | features | strategy | not every class within {a.budget} | labels to every class: "
          f"median | 90th percentile | worst |\n|---|---|---|---|---|---|---|")
    for name in a.sets.split(","):
        f, y = load(name, a.cache, a.features)
        for strategy in a.strategies.split(","):
            n = [labels_to_every_class(strategy, f, y, s, a.budget, a.batch)
                 for s in tqdm(range(a.seeds), desc=f"{name} {strategy}", leave=False)]
            hit = np.array([v for v in n if v is not None])
            missed = len(n) - len(hit)
            stats = (f"{np.median(hit):.0f} | {np.percentile(hit, 90):.0f} | {hit.max()}" if len(hit)
                     else "- | - | -")
            print(f"| {name} ({len(y)} images, rarest {np.bincount(y).min()}) | {a.features} | {strategy} | "
                  f"{missed} of {len(n)} | {stats} |", flush=True)


if __name__ == "__main__":
    main()
