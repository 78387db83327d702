"""Multi-label training on synthetic shapes (issue 12): what per-class thresholds buy, and what it costs.

The multi-label CNN (MobileNetV2, binary cross-entropy per class) trains through
:func:`labeler.learning.multilabel.fit_and_evaluate` exactly as a project does:
the stable hash hold-out when it is large enough, else stratified k-fold
cross-validation. On the evaluation items it reports macro-/micro-F1, subset
accuracy, Hamming loss and the rare class's F1, with every threshold at 0.5 and
with cross-fitted thresholds (each item decided by thresholds tuned on the
other folds), plus the training time.

    python benchmarks/multilabel_shapes.py [--n 300] [--seed 0] [--out test-artefacts/multilabel_shapes.json]

``--encoder-steps N --seeds S --labels 30,60`` (issue 23) adds, on each of ``S`` data sets, the same fits from a
SimCLR encoder pretrained ``N`` steps on all the set's images (no labels), as a multi-label CNN project does;
``--labels`` fits on the first k images only (the rest unlabelled, seen by the encoder; the served model is
also scored on them). ``--fixmatch`` adds the encoder's fits with FixMatch on those unlabelled images;
``--ensemble`` the encoder's fits as a three-member ensemble (:class:`~labeler.models.classifiers.Ensemble`,
three seeds, probabilities averaged), as single-label projects are served below 300 labels.
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
from labeler.models.classifiers import Ensemble, Sample
from labeler.models.classifiers.multilabel import MultiLabelCNN
from labeler.models.pretrain import pretrain_encoder, save_encoder

CLASSES = ["person", "animal", "vehicle", "building", "text"]  # templates/multilabel.xml: shape k = class k


def summary(m: dict) -> dict:
    return {k: round(m[k], 4) for k in ("macro_f1", "micro_f1", "subset_accuracy", "hamming_loss")} | {
        "rare_f1": round(m["per_class"][CLASSES[-1]]["f1"], 4)}


def run(samples: list[Sample], Y: np.ndarray, seed: int, encoder: str | None, k: int, fixmatch: bool = False,
        ensemble: bool = False) -> dict:
    """One fit and evaluation as a project trains on the first ``k`` items (hold-out or cross-validation), from
    ImageNet weights or from ``encoder``; with ``fixmatch`` every fit also learns from the other items, unlabelled.
    With ``k`` short of all, the served model is also scored on those other items (``rest``)."""
    task_ids = list(range(1, k + 1))
    split = choose_split(task_ids, Y[:k], is_holdout)
    model = MultiLabelCNN(CLASSES, seed=seed, progress=False, encoder=encoder, consistency=1.0 if fixmatch else 0.0)
    if ensemble:
        model = Ensemble(model, seed=seed)
    t = time.perf_counter()
    clf, P, groups = fit_and_evaluate(model, samples[:k], Y[:k], split, task_ids, seed, lambda step: None,
                                      pool=samples[k:] if fixmatch else ())
    Ye = Y[:k][split.evaluate]
    served = fit_thresholds(P, Ye)
    out = {"evaluation": split.method, "n_eval": int(len(Ye)), "train_seconds": round(time.perf_counter() - t, 1),
           "served_thresholds": np.round(served, 3).tolist(),
           "at_0.5": summary(evaluate_multilabel(Ye, P, CLASSES)),
           "cross_fitted": summary(evaluate_multilabel(Ye, P, CLASSES, cross_fitted_thresholds(P, Ye, groups)))}
    if k < len(Y):
        out["rest"] = summary(evaluate_multilabel(Y[k:], clf.predict_proba(samples[k:]), CLASSES, served))
    return out


def one_seed(n: int, seed: int, encoder_steps: int, labels: list[int], tmp: Path, fixmatch: bool = False,
             imagenet: bool = True, ensemble: bool = False) -> list[dict]:
    """For each labelled size (the first ``k`` images; all ``n`` when 0), the fits from ImageNet and, with
    ``encoder_steps``, from SimCLR pretrained on all ``n`` images, as a project's encoder sees its unlabelled
    tasks too (``fixmatch``: and from SimCLR with FixMatch on the other images; ``ensemble``: and three such
    fits averaged)."""
    truth = synthetic_shapes(tmp / f"s{seed}", n, seed=seed)
    samples = [Sample(Image.open(tmp / f"s{seed}" / name).convert("RGB")) for name in truth]
    Y = np.array(list(truth.values()), dtype=int)
    path = None
    if encoder_steps:
        state, info = pretrain_encoder(samples, steps=encoder_steps, seed=seed, progress=True)
        path = str(save_encoder(state, tmp / f"enc{seed}"))
        print(f"seed {seed}: SimCLR {encoder_steps} steps on {n} images, {info['pretrain_seconds']:.0f} s", flush=True)
    results = []
    for k in labels:
        k = k or n
        result: dict = {"seed": seed, "labels": k, "positives": Y[:k].sum(0).tolist()}
        if imagenet:
            result["imagenet"] = run(samples, Y, seed, None, k)
        if path:
            result["simclr"] = run(samples, Y, seed, path, k)
            if fixmatch and k < n:
                result["simclr+fixmatch"] = run(samples, Y, seed, path, k, fixmatch=True)
            if ensemble:
                result["simclr+ensemble"] = run(samples, Y, seed, path, k, ensemble=True)
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1, help="data sets (seed, seed + 1, ...)")
    ap.add_argument("--encoder-steps", type=int, default=0,
                    help="also start the CNN from a SimCLR encoder pretrained this many steps on the images")
    ap.add_argument("--labels", default="0", help="labelled sizes to fit, e.g. 30,60 (the first k images; 0: all)")
    ap.add_argument("--fixmatch", action="store_true",
                    help="with --encoder-steps: also the encoder's fits with FixMatch on the unlabelled images")
    ap.add_argument("--ensemble", action="store_true",
                    help="with --encoder-steps: also the encoder's fits as a three-member ensemble")
    ap.add_argument("--no-imagenet", action="store_true", help="leave out the fits from ImageNet weights")
    ap.add_argument("--out", type=Path, default=Path("test-artefacts/multilabel_shapes.json"))
    args = ap.parse_args()
    sizes = [int(k) for k in args.labels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [r for i in range(args.seeds) for r in one_seed(args.n, args.seed + i, args.encoder_steps, sizes, Path(tmp),
                                                                  args.fixmatch, not args.no_imagenet, args.ensemble)]
    print(f"\n{args.n} images, {args.seeds} data sets; mean (min..max) over data sets. Labelled items: "
          f"cross-fitted thresholds; the rest (unlabelled): the served model and thresholds")
    print(f"{'labels':>6} {'start':<16} " + " ".join(f"{k:>22}" for k in (
        "macro_f1", "subset_accuracy", "rare_f1", "rest macro_f1", "rest subset_acc", "train_seconds")))
    for k in sorted({r["labels"] for r in runs}):
        for arm in ("imagenet", "simclr", "simclr+fixmatch", "simclr+ensemble"):
            rows = [r[arm] for r in runs if r["labels"] == k and arm in r]
            if not rows:
                continue
            cols = [[r["cross_fitted"][m] for r in rows] for m in ("macro_f1", "subset_accuracy", "rare_f1")]
            cols += [[r.get("rest", {}).get(m, np.nan) for r in rows] for m in ("macro_f1", "subset_accuracy")]
            cols.append([r["train_seconds"] for r in rows])
            print(f"{k:>6} {arm:<16} " + " ".join(f"{np.mean(c):>8.3f} ({min(c):.3f}..{max(c):.3f})" for c in cols))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
