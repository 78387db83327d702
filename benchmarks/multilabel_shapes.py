"""Multi-label training on synthetic shapes (issue 12): what per-class thresholds buy, and what it costs.

The multi-label CNN (MobileNetV2, binary cross-entropy per class) trains through
:func:`labeler.learning.multilabel.fit_and_evaluate` exactly as a project does:
the stable hash hold-out when it is large enough, else stratified k-fold
cross-validation. On the evaluation items it reports macro-/micro-F1, subset
accuracy, Hamming loss and the rare class's F1, with every threshold at 0.5 and
with cross-fitted thresholds (each item decided by thresholds tuned on the
other folds), plus the training time.

    python benchmarks/multilabel_shapes.py [--n 300] [--seed 0] [--out test-artefacts/multilabel_shapes.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from labeler.dev.shapes import synthetic_shapes
from labeler.learning.metrics import evaluate_multilabel
from labeler.learning.multilabel import choose_split, cross_fitted_thresholds, fit_and_evaluate
from labeler.learning.training import is_holdout
from labeler.models.calibration import fit_thresholds
from labeler.models.classifiers import Sample
from labeler.models.classifiers.multilabel import MultiLabelCNN

CLASSES = ["person", "animal", "vehicle", "building", "text"]  # templates/multilabel.xml: shape k = class k


def summary(m: dict) -> dict:
    return {k: round(m[k], 4) for k in ("macro_f1", "micro_f1", "subset_accuracy", "hamming_loss")} | {
        "rare_f1": round(m["per_class"][CLASSES[-1]]["f1"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("test-artefacts/multilabel_shapes.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        truth = synthetic_shapes(Path(tmp), args.n, seed=args.seed)
        samples = [Sample(Image.open(Path(tmp) / name).convert("RGB")) for name in truth]
    Y = np.array(list(truth.values()), dtype=int)
    task_ids = list(range(1, args.n + 1))
    split = choose_split(task_ids, Y, is_holdout)
    t = time.perf_counter()
    clf, P, groups = fit_and_evaluate(MultiLabelCNN(CLASSES, seed=args.seed, progress=False), samples, Y, split,
                                      task_ids, args.seed, print)
    seconds = time.perf_counter() - t
    Ye = Y[split.evaluate]
    result = {"n": args.n, "evaluation": split.method, "n_eval": int(len(Ye)), "positives": Y.sum(0).tolist(),
              "train_seconds": round(seconds, 1), "served_thresholds": np.round(fit_thresholds(P, Ye), 3).tolist(),
              "at_0.5": summary(evaluate_multilabel(Ye, P, CLASSES)),
              "cross_fitted": summary(evaluate_multilabel(Ye, P, CLASSES, cross_fitted_thresholds(P, Ye, groups)))}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
