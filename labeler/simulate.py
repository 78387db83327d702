"""Replaying the annotation loop offline: does active learning save labels?

No Label Studio: a simulated annotator reveals the hidden label of each image
the strategy queries, and nothing else. Each round retrains with the same
classifier code the backend uses, and evaluates on a held-out part that is
never queried. Strategies:

- ``random``: a uniformly random batch;
- ``least_confidence``, ``margin``, ``entropy``: the most uncertain batch
  (identical orderings for two classes);
- ``margin_diverse`` (default): the ``4 * batch`` smallest-margin images,
  then k-center greedy on frozen ImageNet features among them, so that one
  batch is not twenty near-identical crops.

Cold start, with no labels: the zero-shot model's uncertainty where one is
configured; otherwise k-center greedy on frozen ImageNet features, a first
batch that covers the pool rather than one that is random by accident.

With ``self_train``, each round's model also trains on the pool images the
previous round's model (or the zero-shot model) is sure of (see
:mod:`labeler.selftrain`): the teacher's predictions are the ones ranking the
pool anyway, so self-training costs no extra fit per round.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import selftrain
from .classifiers import KINDS, Classifier, Sample
from .metrics import evaluate
from .uncertainty import MEASURES, uncertainty

log = logging.getLogger(__name__)
STRATEGIES = ("random", *MEASURES, "margin_diverse")
DEFAULT_STRATEGY = "margin_diverse"


class Annotator:
    """The simulated person: knows every label, tells only those asked for."""

    def __init__(self, labels: np.ndarray) -> None:
        self._labels = np.asarray(labels)
        self.queried: set[int] = set()

    def label(self, indices: Sequence[int]) -> np.ndarray:
        self.queried.update(int(i) for i in indices)
        return self._labels[np.asarray(indices, dtype=int)]


@torch.inference_mode()
def imagenet_features(samples: Sequence[Sample], size: int = 48) -> np.ndarray:
    """L2-normalised pooled features of a frozen ImageNet MobileNetV2 (for diversity)."""
    from .classifiers.cnn import _MEAN, _STD, _to_tensor
    from .classifiers.mobilenet import mobilenet_v2

    net, _ = mobilenet_v2(2)
    net.eval()
    feats = []
    for start in range(0, len(samples), 256):
        x = (_to_tensor(samples[start:start + 256], size) - _MEAN) / _STD
        feats.append(torch.nn.functional.adaptive_avg_pool2d(net.features(x), 1).flatten(1))
    f = torch.cat(feats).numpy()
    return f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)


def k_center_greedy(features: np.ndarray, candidates: np.ndarray, chosen: np.ndarray, k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Pick ``k`` of ``candidates``, each the farthest from everything chosen so far.

    ``d(x) = min_{c in chosen} ||f_x - f_c||``; repeatedly take ``argmax d``.
    With nothing chosen yet, the first pick is random.
    """
    candidates = np.asarray(candidates)
    if k >= len(candidates):
        return candidates
    fc = features[candidates]
    if len(chosen):
        d = np.full(len(candidates), np.inf)
        for start in range(0, len(chosen), 512):
            block = features[np.asarray(chosen)[start:start + 512]]
            d = np.minimum(d, ((fc[:, None, :] - block[None]) ** 2).sum(-1).min(1))
        picks = []
    else:
        first = int(rng.integers(len(candidates)))
        picks = [first]
        d = ((fc - fc[first]) ** 2).sum(-1)
    while len(picks) < k:
        nxt = int(np.argmax(d))
        picks.append(nxt)
        d = np.minimum(d, ((fc - fc[nxt]) ** 2).sum(-1))
    return candidates[np.array(picks)]


def select(strategy: str, proba: np.ndarray | None, pool: np.ndarray, labelled: np.ndarray, k: int,
           rng: np.random.Generator, features: np.ndarray | None) -> np.ndarray:
    """The next ``k`` pool indices to label; ``proba`` is aligned with ``pool`` (None at cold start)."""
    if strategy == "random":
        return rng.choice(pool, size=min(k, len(pool)), replace=False)
    if proba is None:  # cold start without a zero-shot model
        return k_center_greedy(features, pool, labelled, k, rng) if features is not None else \
            rng.choice(pool, size=min(k, len(pool)), replace=False)
    if strategy == "margin_diverse":
        order = np.argsort(-uncertainty(proba, "margin"), kind="stable")
        shortlist = pool[order[: 4 * k]]
        return k_center_greedy(features, shortlist, labelled, k, rng)
    order = np.argsort(-uncertainty(proba, strategy), kind="stable")
    return pool[order[:k]]


@dataclass
class RunResult:
    strategy: str
    seed: int
    rows: list[dict] = field(default_factory=list)
    model: Classifier | None = None


def run(samples: Sequence[Sample], y: np.ndarray, classes: list[str], strategy: str, budget: int,
        batch: int, test_idx: np.ndarray, seed: int, make: Callable[[int], Classifier],
        zeroshot: np.ndarray | None = None, features: np.ndarray | None = None,
        start: int | None = None, progress: bool = True,
        self_train: float | None = None) -> tuple[RunResult, Annotator]:
    """One simulated annotation run; returns metrics after each round and the annotator."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    rng = np.random.default_rng(seed)
    annotator = Annotator(y)
    test = np.asarray(test_idx)
    pool = np.setdiff1d(np.arange(len(y)), test)
    labelled = np.zeros(0, dtype=int)
    got = np.zeros(0, dtype=int)
    result = RunResult(strategy, seed)
    proba = zeroshot[pool] if zeroshot is not None else None
    first = start or batch
    bar = tqdm(total=budget, desc=f"{strategy} seed {seed}", unit="label", disable=not progress)
    while len(labelled) < budget and len(pool):
        k = min(first if not len(labelled) else batch, budget - len(labelled))
        picked = select(strategy, proba, pool, labelled, k, rng, features)
        labelled = np.concatenate([labelled, picked])
        got = np.concatenate([got, annotator.label(picked)])
        left = ~np.isin(pool, picked)
        pool = pool[left]
        bar.update(len(picked))
        if len(set(got.tolist())) < len(classes):
            proba = None if zeroshot is None else zeroshot[pool]
            continue  # cannot train before every class has a label
        model = make(seed)
        t = time.perf_counter()
        if self_train is not None and proba is not None and len(pool):
            # The last round's model (or the zero-shot one) is the teacher: no extra fit per round.
            info = selftrain.self_train(model, [samples[i] for i in labelled], got, [samples[i] for i in pool],
                                        proba[left], self_train)
        else:
            info = model.fit([samples[i] for i in labelled], got) or {}
        train_s = time.perf_counter() - t
        m = evaluate(y[test], model.predict_proba([samples[i] for i in test]), classes)
        result.rows.append({"strategy": strategy, "seed": seed, "labels": len(labelled),
                            "eer": m.get("eer"), "accuracy": m["accuracy"], "roc_auc": m.get("roc_auc"),
                            "pseudo_labels": info.get("pseudo_labels", 0),
                            "train_seconds": round(train_s, 2)})
        result.model = model
        bar.set_postfix(eer=f"{m.get('eer', float('nan')):.4f}", pseudo=info.get("pseudo_labels", 0))
        proba = model.predict_proba([samples[i] for i in pool]) if len(pool) else None
    bar.close()
    return result, annotator


def labels_to_reach(rows: list[dict], target: float) -> float | None:
    """Fewest labels at which the mean EER over seeds is at or below ``target`` (None: never)."""
    by_n: dict[int, list[float]] = {}
    for r in rows:
        by_n.setdefault(r["labels"], []).append(r["eer"])
    for n in sorted(by_n):
        if np.mean(by_n[n]) <= target:
            return n
    return None


def write_outputs(rows: list[dict], out: Path, title: str) -> tuple[Path, Path]:
    """``learning_curves.csv`` and ``learning_curves.png`` (mean EER with a +-1 std band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "learning_curves.csv", out / "learning_curves.png"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        ns = sorted({r["labels"] for r in rows if r["strategy"] == strategy})
        e = [[r["eer"] for r in rows if r["strategy"] == strategy and r["labels"] == n] for n in ns]
        mean, std = np.array([np.mean(v) for v in e]), np.array([np.std(v) for v in e])
        ax.plot(ns, mean, marker="o", label=strategy)
        ax.fill_between(ns, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("human labels")
    ax.set_ylabel("EER on the held-out part (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path


def classifier_factory(kind: str, classes: list[str], **cnn_options) -> Callable[[int], Classifier]:
    if kind == "cnn":
        return lambda seed: KINDS["cnn"](classes, seed=seed, progress=False, **cnn_options)
    return lambda seed: KINDS[kind](classes, seed=seed)
