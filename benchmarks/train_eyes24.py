"""Retraining benchmark on eyes24 with the CNN classifier (issues 3 and 15).

(a) Speed: retraining on every label with self-training on, as the backend
    retrains (:class:`labeler.models.selftrain.SelfTrained`, threshold 0.9) with a
    2,000-image unlabelled pool. eyes24 has no unlabelled images, so the pool
    is 2,000 of the same images with their labels hidden: the cost is that of
    a real pool, the pseudo-labels are not evaluated. A plain fit (no
    self-training) is timed beside it.
(b) Quality: EER on a fixed held-out part of 600 images, per seed, for 250 and
    1,000 labels with self-training on the rest of the pool (never the
    held-out part), so speed is not bought with label efficiency.

With ``--baseline-src DIR`` (a checkout of an older commit, e.g. from
``git worktree add /tmp/base HEAD~3``) the same measurements run first on that
code in a subprocess, so old and new compare in the same conditions:

    python benchmarks/train_eyes24.py --baseline-src /tmp/base [--seeds 3] [--data ../shared/datasets/eyes24]

``--encoder PATH`` (a self-supervised encoder, e.g. the ``encoder.pt`` that ``labeler simulate --levers
pretrain`` leaves in its --out folder) starts the CNN from it, as the backend does once a project has
one: retraining costs the same with or without, the encoder being trained once per project.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from labeler.learning.datasets import read_labels
from labeler.learning.metrics import evaluate
from labeler.models.classifiers import CNNClassifier, Sample
from labeler.models.selftrain import SelfTrained

try:  # older checkouts (--baseline-src) have no given teacher
    from labeler.models.selftrain import Frozen
    HAS_TEACHER = True
except ImportError:
    HAS_TEACHER = False

THRESHOLD = 0.9
POOL = 2000
RETRAIN_EVERY = 25  # the backend's default LABELER_TRAIN_EVERY


def measure(data_dir: str, seeds: int, holdout: int, sizes: list[int], encoder: str | None = None) -> dict:
    data = read_labels(Path(data_dir) / "labels.csv")
    classes = ["open", "closed"]
    y = data.targets(classes)
    samples = [Sample(im) for im in data.images()]
    def cnn(seed: int) -> CNNClassifier:
        return CNNClassifier(classes, seed=seed, progress=False, encoder=encoder)

    print(f"eyes24: {len(y)} images; torch threads {torch.get_num_threads()}; CNN from "
          f"{encoder or 'ImageNet weights'}", flush=True)
    out: dict = {"quality": []}
    t = time.perf_counter()
    first = SelfTrained(cnn(0), samples[:POOL], THRESHOLD).fit(samples, y)
    out["all_selftrain_s"] = time.perf_counter() - t
    print(f"all {len(y)} labels, self-training on a {POOL}-image pool: {out['all_selftrain_s']:.1f} s "
          f"({first.fit_info_.get('pseudo_labels')} pseudo-labels)", flush=True)
    if HAS_TEACHER:  # the backend's retraining: the serving version is the teacher (no teacher fit)
        t = time.perf_counter()
        SelfTrained(cnn(0), samples[:POOL], THRESHOLD, teacher=Frozen(first.student_)).fit(samples, y)
        out["all_selftrain_serving_teacher_s"] = time.perf_counter() - t
        print(f"all {len(y)} labels, self-training, the serving version as teacher: "
              f"{out['all_selftrain_serving_teacher_s']:.1f} s", flush=True)
    t = time.perf_counter()
    cnn(0).fit(samples, y)
    out["all_plain_s"] = time.perf_counter() - t
    print(f"all {len(y)} labels, no self-training: {out['all_plain_s']:.1f} s", flush=True)
    print(f"{'labels':>7} {'seed':>4} {'teacher':>8} {'train s':>8} {'pseudo':>6} {'EER':>7} {'acc':>7}", flush=True)
    for seed in range(seeds):
        perm = np.random.default_rng(seed).permutation(len(y))
        test, pool = perm[:holdout], perm[holdout:]
        for n in sizes:
            out["quality"] += _quality(samples, y, classes, cnn, seed, test, pool, n)
    return out


def _quality(samples, y, classes, cnn, seed, test, pool, n) -> list[dict]:
    """EER on the hold-out after training on ``n`` labels with self-training, the teacher fitted
    in the run ("fitted") and, as the backend retrains, the previous version (trained on
    ``n - RETRAIN_EVERY`` labels) as the teacher ("serving")."""
    def run(name, idx, teacher=None):
        unlabelled = [samples[i] for i in pool[len(idx):][:POOL]]
        clf = SelfTrained(cnn(seed), unlabelled, THRESHOLD, teacher=teacher)
        t = time.perf_counter()
        info = clf.fit([samples[i] for i in idx], y[idx]).fit_info_
        train_s = time.perf_counter() - t
        m = evaluate(y[test], clf.predict_proba([samples[i] for i in test]), classes)
        print(f"{len(idx):>7} {seed:>4} {name:>8} {train_s:>8.1f} {info.get('pseudo_labels', 0):>6} "
              f"{m['eer']:>7.4f} {m['accuracy']:>7.4f}", flush=True)
        return clf, {"labels": len(idx), "seed": seed, "teacher": name, "train_s": train_s, "eer": m["eer"],
                     "accuracy": m["accuracy"]}

    rows = [run("fitted", pool[:n])[1]]
    if HAS_TEACHER:
        previous, _ = run("previous", pool[:n - RETRAIN_EVERY])
        rows.append(run("serving", pool[:n], Frozen(previous.student_))[1])
    return rows


def summary(name: str, res: dict) -> None:
    teacher = res.get("all_selftrain_serving_teacher_s")
    print(f"\n[{name}] all labels + self-training {res['all_selftrain_s']:.1f} s"
          + (f", with the serving version as teacher {teacher:.1f} s" if teacher else "")
          + f", plain {res['all_plain_s']:.1f} s")
    for n, how in sorted({(r["labels"], r.get("teacher", "fitted")) for r in res["quality"]}):
        sel = [r for r in res["quality"] if r["labels"] == n and r.get("teacher", "fitted") == how]
        e, s = np.array([r["eer"] for r in sel]), np.array([r["train_s"] for r in sel])
        print(f"[{name}] {n:>5} labels + self-training, teacher {how:>8}: EER {e.mean():.4f} +- {e.std():.4f}  "
              f"train {s.mean():.1f} s  (seeds {len(sel)})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/eyes24"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--holdout", type=int, default=600)
    ap.add_argument("--sizes", default="250,1000", help="label counts for the quality part")
    ap.add_argument("--baseline-src", help="a checkout of older code, measured first in a subprocess")
    ap.add_argument("--encoder", help="start the CNN from this self-supervised encoder (encoder.pt)")
    ap.add_argument("--json", help=argparse.SUPPRESS)  # the subprocess's result file
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    base = None
    if args.baseline_src:
        src = str(Path(args.baseline_src).resolve())
        result = Path(f"/tmp/train_eyes24_baseline_{os.getpid()}.json")
        print(f"== baseline: {src}", flush=True)
        subprocess.run([sys.executable, __file__, "--data", args.data, "--seeds", str(args.seeds),
                        "--holdout", str(args.holdout), "--sizes", args.sizes, "--json", str(result)],
                       env={**os.environ, "PYTHONPATH": src}, check=True, cwd=src)
        base = json.loads(result.read_text())
        result.unlink()
        print("== this checkout", flush=True)
    import labeler

    print(f"labeler from {Path(labeler.__file__).parent}", flush=True)
    res = measure(args.data, args.seeds, args.holdout, sizes, args.encoder)
    if args.json:
        Path(args.json).write_text(json.dumps(res))
        return
    if base is not None:
        summary("baseline", base)
    summary("this checkout", res)
    if base is not None:
        print(f"\nretraining on all labels with self-training: {base['all_selftrain_s']:.1f} s -> "
              f"{res['all_selftrain_s']:.1f} s ({base['all_selftrain_s'] / res['all_selftrain_s']:.2f}x)")


if __name__ == "__main__":
    main()
