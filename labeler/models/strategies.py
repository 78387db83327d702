"""Query strategies: which unlabelled images a person should label next.

The one implementation used by ``labeler simulate`` (one batch per round) and
by the service's queue (:mod:`labeler.studio.queue`, a full order of the pool), so
the queue annotators see in Label Studio is the strategy the simulation
measured.

- ``random``: a uniformly random batch;
- ``least_confidence``, ``margin``, ``entropy``: the most uncertain batch
  (identical orderings for two classes);
- ``margin_diverse`` (default): the ``4 * batch`` smallest-margin images, then
  k-center greedy on frozen ImageNet features among them, so that one batch is
  not twenty near-identical crops.

Cold start, with no model: k-center greedy on the features, a first batch that
covers the pool rather than one that is random by accident; with a self-supervised
encoder, TypiClust's typical images, and once labels exist but still no model (a
class has no label yet), half of each batch from k-center to find it
(:func:`searching_batch`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from labeler.models.uncertainty import MEASURES, multilabel_uncertainty, uncertainty

STRATEGIES = ("random", *MEASURES, "margin_diverse")
DEFAULT_STRATEGY = "margin_diverse"
SHORTLIST = 4          # margin_diverse: k-center among the SHORTLIST * k most uncertain
FEATURE_DIM = 256      # diversity features are randomly projected to this many dimensions
COLD_START = "kcenter"  # the first batches, before a model is worth trusting (COLD_STARTS), on ImageNet features
# With a self-supervised encoder, TypiClust chooses while there is no model and then until this many labels
# per class: 0 measured best (10 per class lost to margin + diversity on ten-class digits, README).
TYPICAL_PER_CLASS = 0


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    return strategy


@functools.lru_cache(maxsize=1)
def _frozen_mobilenet():
    """The ImageNet MobileNetV2, loaded once per process (the service calls this per batch)."""
    from labeler.models.classifiers.mobilenet import mobilenet_v2

    net, _ = mobilenet_v2(2)
    return net.eval()


@functools.lru_cache(maxsize=2)
def _frozen_encoder(path: str, mtime: float):
    """A self-supervised encoder (:mod:`labeler.models.pretrain`) on the MobileNetV2, loaded once per file version."""
    from labeler.models.classifiers.mobilenet import mobilenet_v2

    net, _ = mobilenet_v2(2, pretrained=False)
    net.features.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def imagenet_features(samples: Sequence, size: int = 48, dim: int = FEATURE_DIM) -> np.ndarray:
    """L2-normalised pooled features of a frozen ImageNet MobileNetV2 (for diversity), (N, ``dim``).

    The 1280 pooled features are multiplied by a fixed Gaussian matrix ``R``
    (1280 x ``dim``, seed 0, entries N(0, 1/dim)): by Johnson-Lindenstrauss,
    distances are kept within a few percent while the service stores 5x less
    per task. ``samples`` are :class:`~labeler.models.classifiers.Sample` objects.
    """
    return _pooled_features(_frozen_mobilenet(), samples, size, dim)


def encoder_features(samples: Sequence, encoder: str | Path | None, size: int = 48,
                     dim: int = FEATURE_DIM) -> np.ndarray:
    """:func:`imagenet_features` from the project's self-supervised encoder file (ImageNet's without one)."""
    if encoder is None:
        return imagenet_features(samples, size, dim)
    path = Path(encoder)
    return _pooled_features(_frozen_encoder(str(path), path.stat().st_mtime), samples, size, dim)


@torch.inference_mode()
def _pooled_features(net, samples: Sequence, size: int, dim: int) -> np.ndarray:
    from labeler.models.classifiers.pixels import logits_input, to_tensor

    if not len(samples):
        return np.zeros((0, dim), dtype=np.float32)
    feats = []
    for start in range(0, len(samples), 256):
        x = logits_input(to_tensor(samples[start:start + 256], size))
        feats.append(torch.nn.functional.adaptive_avg_pool2d(net.features(x), 1).flatten(1))
    f = torch.cat(feats).numpy().astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)
    if dim and dim < f.shape[1]:
        f = f @ np.random.default_rng(0).normal(0, 1 / np.sqrt(dim), size=(f.shape[1], dim))
    return f.astype(np.float32)


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||a_i - b_j||^2 = ||a_i||^2 + ||b_j||^2 - 2 a_i.b_j`` (one matrix product), clipped at 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def k_center_greedy(features: np.ndarray, candidates: np.ndarray, chosen: np.ndarray, k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Pick ``k`` of ``candidates``, each the farthest from everything chosen so far.

    ``d(x) = min_{c in chosen} ||f_x - f_c||``; repeatedly take ``argmax d``.
    With nothing chosen yet, the first pick is random.
    """
    candidates = np.asarray(candidates)
    if k >= len(candidates) or k <= 0:
        return candidates if k > 0 else candidates[:0]
    fc = features[candidates]
    chosen = np.asarray(chosen, dtype=int)
    if len(chosen):
        d: np.ndarray = np.full(len(candidates), np.inf)
        step = max(1, int(2e7 // len(fc)))  # bounds the distance block at 160 MB
        for start in range(0, len(chosen), step):
            d = np.minimum(d, _sq_dist(fc, features[chosen[start:start + step]]).min(1))
        picks = []
    else:
        first = int(rng.integers(len(candidates)))
        picks = [first]
        d = _sq_dist(fc, fc[first:first + 1])[:, 0]
    d[picks] = -1.0  # never picked twice, even where duplicate images make every distance 0
    while len(picks) < k:
        nxt = int(np.argmax(d))
        picks.append(nxt)
        d = np.minimum(d, _sq_dist(fc, fc[nxt:nxt + 1])[:, 0])
        d[nxt] = -1.0
    return candidates[np.array(picks, dtype=int)]


def typiclust(features: np.ndarray, candidates: np.ndarray, chosen: np.ndarray, k: int,
              rng: np.random.Generator, neighbours: int = 20, max_clusters: int = 500) -> np.ndarray:
    """TypiClust (Hacohen et al., 2022): the most typical image of each of the largest uncovered clusters.

    The candidates and the chosen images are clustered (k-means) into
    ``min(len(chosen) + k, max_clusters)`` clusters; clusters holding a chosen
    image are covered. From the largest uncovered clusters, one image each, the
    most typical: ``typicality(x) = 1 / mean_{z in kNN(x)} ||f_x - f_z||`` over
    its ``neighbours`` nearest neighbours in its cluster. With few labels, typical
    images teach more than the outliers k-center greedy favours; where clusters
    run out the rest comes from :func:`k_center_greedy`.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    candidates, chosen = np.asarray(candidates), np.asarray(chosen, dtype=int)
    if k >= len(candidates):
        return candidates
    everything = np.concatenate([candidates, chosen])
    n_clusters = min(len(chosen) + k, max_clusters, len(everything))
    seed = int(rng.integers(2**31))
    km = (KMeans(n_clusters, n_init=1, random_state=seed) if len(everything) <= 20_000
          else MiniBatchKMeans(n_clusters, n_init=1, random_state=seed, batch_size=4096))
    cluster = km.fit_predict(features[everything])
    cand_cluster, covered = cluster[: len(candidates)], set(cluster[len(candidates):].tolist())
    sizes = np.bincount(cluster, minlength=n_clusters)
    picks: list[int] = []
    for c in np.argsort(-sizes, kind="stable"):
        if len(picks) == k:
            break
        members = np.flatnonzero(cand_cluster == c)
        if int(c) in covered or not len(members):
            continue
        if len(members) > 2000:  # bounds the distance block at 32 MB; typicality is a density estimate
            members = rng.choice(members, 2000, replace=False)
        d = np.sqrt(_sq_dist(features[candidates[members]], features[candidates[members]]))
        nn = np.sort(d, axis=1)[:, 1: neighbours + 1]
        picks.append(int(members[np.argmax(1 / (nn.mean(1) + 1e-12))]) if nn.size else int(members[0]))
    out = candidates[np.array(picks, dtype=int)]
    if len(out) < k:
        rest = candidates[~np.isin(candidates, out)]
        out = np.concatenate([out, k_center_greedy(features, rest, np.concatenate([chosen, out]), k - len(out), rng)])
    return out


COLD_STARTS = {"kcenter": k_center_greedy, "typiclust": typiclust}


def searching_batch(pick, features: np.ndarray, candidates: np.ndarray, chosen: np.ndarray, k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """A cold-start batch while labels exist but no model: ``pick``'s choices alternating with k-center's.

    Training needs a label of every class, so no model after a batch means a class is still missing
    (or no retraining has run yet). TypiClust's typical images of the largest clusters miss a rare
    class for a long time, k-center's outliers find it: on the 2,730 digits with a 1 % class,
    TypiClust needed a median of 188 labels to reach every class and k-center 25; half of each batch
    from k-center after TypiClust's first batch needed 50 (README "Learning from few labels", finding every class).
    """
    typical = pick(features, candidates, chosen, k - k // 2, rng)
    rest = candidates[~np.isin(candidates, typical)]
    outliers = k_center_greedy(features, rest, np.concatenate([chosen, typical]), k // 2, rng)
    rank = np.concatenate([2 * np.arange(len(typical)), 2 * np.arange(len(outliers)) + 1])
    return np.concatenate([typical, outliers])[np.argsort(rank)]  # alternating: one who stops half-way had both


def _uncertainty(proba: np.ndarray, measure: str, multilabel: bool) -> np.ndarray:
    """``measure`` of single-choice probabilities; for multi-label rows (threshold-centred, see
    :func:`labeler.studio.queue.queue_scores`) every measure is the least decided class's margin."""
    return multilabel_uncertainty(proba, 0.5) if multilabel else uncertainty(proba, measure)


def select(strategy: str, proba: np.ndarray | None, pool: np.ndarray, labelled: np.ndarray, k: int,
           rng: np.random.Generator, features: np.ndarray | None, multilabel: bool = False,
           cold_start: str = COLD_START, typical_until: int = 0) -> np.ndarray:
    """The next ``k`` pool indices to label; ``proba`` is aligned with ``pool`` (None at cold start).

    ``pool`` and ``labelled`` index rows of ``features``. Without a model, and while fewer than
    ``typical_until`` images are labelled, the batch comes from ``cold_start`` (:data:`COLD_STARTS`);
    once labels exist and still no model, half of it from k-center (:func:`searching_batch`).
    """
    if strategy == "random":
        return rng.permutation(pool)[:k]  # the head of a permutation: the queue's random order starts alike
    if proba is None or len(labelled) < typical_until:  # cold start: no model, or one not worth trusting yet
        if features is None:
            return rng.permutation(pool)[:k]
        if proba is None and len(labelled) and cold_start != "kcenter":
            return searching_batch(COLD_STARTS[cold_start], features, pool, labelled, k, rng)
        return COLD_STARTS[cold_start](features, pool, labelled, k, rng)
    if strategy == "margin_diverse":
        order = np.argsort(-_uncertainty(proba, "margin", multilabel), kind="stable")
        shortlist = pool[order[: SHORTLIST * k]]
        if features is None:
            return shortlist[:k]
        return k_center_greedy(features, shortlist, labelled, k, rng)
    order = np.argsort(-_uncertainty(proba, strategy, multilabel), kind="stable")
    return pool[order[:k]]


def queue_order(strategy: str, proba: np.ndarray | None, pool: np.ndarray, labelled: np.ndarray, batch: int,
                features: np.ndarray | None, seed: int = 0, diverse_top: int = 1000,
                multilabel: bool = False, **cold) -> np.ndarray:
    """All of ``pool`` in the order to label it: batch after batch of :func:`select`.

    Batch ``b`` is chosen as if batches ``0..b-1`` were labelled already
    (they join ``labelled`` for k-center), which is what happens while
    annotators work through the queue before the next retraining. Past the
    first ``diverse_top`` tasks the rest is ordered by the strategy's
    uncertainty alone (margin for ``margin_diverse``; random stays random):
    the queue is recomputed at every retraining long before annotators get
    there, and k-center over tens of thousands of tasks would cost minutes.
    ``cold`` (``cold_start``, ``typical_until``) goes to :func:`select`.
    """
    check_strategy(strategy)
    pool = np.asarray(pool, dtype=int)
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return rng.permutation(pool)
    index = {int(t): i for i, t in enumerate(pool)}
    left = np.ones(len(pool), dtype=bool)
    chosen = np.asarray(labelled, dtype=int)
    out: list[np.ndarray] = []
    n = 0
    while n < min(diverse_top, len(pool)):
        ix = np.flatnonzero(left)
        picked = select(strategy, None if proba is None else proba[ix], pool[ix], chosen,
                        min(batch, len(ix)), rng, features, multilabel, **cold)
        out.append(picked)
        chosen = np.concatenate([chosen, picked])
        left[[index[int(t)] for t in picked]] = False
        n += len(picked)
    ix = np.flatnonzero(left)
    if len(ix):
        if proba is None:
            rest = ix[rng.permutation(len(ix))]
        else:
            measure = "margin" if strategy == "margin_diverse" else strategy
            rest = ix[np.argsort(-_uncertainty(proba[ix], measure, multilabel), kind="stable")]
        out.append(pool[rest])
    return np.concatenate(out) if out else np.zeros(0, dtype=int)
