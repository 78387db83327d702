"""Finishing a dataset with certified auto-accept (issue 21): validity and savings.

Phase 1 (expensive, cached): for each data set, pool size, queue strategy and seed, the queue phase
of ``labeler simulate --certify`` (``budget`` labels picked by the strategy, the CNN retrained after
each batch) and the final model's probabilities on the rest, saved to ``--cache`` as .npz.
Phase 2 (cheap): on every cached run and every eps, the audit plan, draw and certificate
(:func:`labeler.learning.simulate_finish.certify_phase`), checked against the known labels; each
run's audit is also re-drawn ``--redraws`` times on the same model, which measures the guarantee
(over the audit draw) directly.

Data sets: ``eyes24`` (``../shared/datasets/eyes24``) and ``digits``, the project's synthetic
ten-class set (:func:`labeler.learning.datasets.synthetic_digits`, 2,730 images) with a rare class
(class 9 at a tenth of the others); ``digits-large`` is the same with 9,100 images.
``--pool-fractions`` subsamples each set (stratified) to show how the human share changes with the
pool size.

    python benchmarks/finish_bench.py --sets eyes24,digits --seeds 20 --jobs 2 [--cache finish-cache]
    python benchmarks/finish_bench.py --sets eyes24 --seeds 3 --pool-fractions 0.25,0.5,1 --strategies margin_diverse
    python benchmarks/finish_bench.py --sets eyes24 --seeds 10 --report-only --hindsight --redraws 40 ...  # the plan vs the best

A strategy ``S+pretrain`` (e.g. ``margin_diverse+pretrain``) runs the queue as the backend does once a
project has a self-supervised encoder (issue 23): the CNN starts from SimCLR on the set's images
(pretrained once per set, no labels, cached in ``--cache``), the diversity features come from it and
TypiClust chooses while there is no model. ``+ensemble`` (e.g. ``margin_diverse+pretrain+ensemble``, the
backend's default below 300 labels) trains three CNNs from three seeds and averages them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EYES = HERE.parent.parent / "shared" / "datasets" / "eyes24" / "labels.csv"


def _dataset(name: str, workdir: Path) -> Path:
    if name == "eyes24":
        if not EYES.exists():
            sys.exit(f"{EYES} is absent (--eyes PATH/labels.csv)")
        return EYES
    from labeler.learning.datasets import synthetic_digits

    per_class = {"digits": 300, "digits-large": 1000}[name]  # the tenth class is rare: a tenth of the others
    csv = workdir / name / "labels.csv"
    if not csv.exists():
        synthetic_digits(workdir / name, [per_class] * 9 + [per_class // 10], seed=0)
    return csv


def _subsample(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    if fraction >= 1:
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(y)), train_size=fraction, stratify=y, random_state=seed)
    return np.sort(keep)


def _queue_job(set_name: str, csv: str, fraction: float, strategy: str, seed: int, budget: int, batch: int,
               out: str, threads: int) -> str:
    import torch

    torch.set_num_threads(threads)
    from labeler.learning.certify import CertificateError
    from labeler.learning.datasets import read_labels
    from labeler.learning.levers import Variant
    from labeler.learning.simulate import make_classifier
    from labeler.learning.simulate_finish import queue_phase
    from labeler.models.classifiers import Sample
    from labeler.models.strategies import imagenet_features

    data = read_labels(csv, progress=False)
    classes = data.classes
    y_all = data.targets(classes)
    keep = _subsample(y_all, fraction, seed)
    samples = [Sample(data.images()[i]) for i in keep]
    y = y_all[keep]
    base, *levers = strategy.split("+")
    if set(levers) - {"pretrain", "ensemble"}:
        raise SystemExit(f"strategy {strategy!r}: the levers here are +pretrain and +ensemble")
    options: dict = {}
    encoder = None
    if "pretrain" in levers:
        from labeler.models.pretrain import ENCODER_FILE
        from labeler.models.strategies import encoder_features

        encoder = str(_encoder_dir(Path(out).parent, set_name) / ENCODER_FILE)
        features = encoder_features(samples, encoder)
        options = {"cold_start": "typiclust", "typical_until": 0}
    else:
        features = imagenet_features(samples)
    # +ensemble as the backend below LABELER_ENSEMBLE's 300 labels (and labeler simulate's lever): three seeds
    estimator = Variant(strategy, base, frozenset(levers)).estimator(make_classifier("cnn", classes, encoder=encoder))
    t = time.perf_counter()
    try:
        q = queue_phase(samples, y, classes, base, budget, batch, seed, estimator,
                        features=features, self_train=0.9, progress=False, **options)
    except CertificateError as exc:  # e.g. the queue never reached a rare class: no model, people label all
        return f"{set_name} x{fraction} {strategy} seed {seed}: FAILED: {exc}"
    q.save(Path(out))
    np.save(Path(out).with_suffix(".y.npy"), y)
    return f"{set_name} x{fraction} {strategy} seed {seed}: {time.perf_counter() - t:.0f} s"


def _encoder_dir(cache: Path, set_name: str) -> Path:
    """Where a set's encoder is kept: pretrained on the whole set (no labels; so +pretrain needs
    --pool-fractions 1)."""
    return cache / f"{set_name}-encoder"


def _pretrain_sets(sets: dict[str, str], cache: Path) -> None:
    """The SimCLR encoder of each set's images, once, before the queue phases that start from it."""
    from labeler.config import Settings
    from labeler.learning.datasets import read_labels
    from labeler.learning.levers import simulation_encoder
    from labeler.models.classifiers import Sample

    for name, csv in sets.items():
        samples = [Sample(im) for im in read_labels(csv, progress=False).images()]
        path, info = simulation_encoder(samples, _encoder_dir(cache, name), steps=Settings.pretrain_steps)
        print(f"{name}: encoder {path} ({'reused' if info.get('reused') else 'pretrained'}, "
              f"{info['pretrain_seconds']} s)", flush=True)


def main() -> None:
    global EYES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="eyes24,digits")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--strategies", default="margin_diverse,random")
    ap.add_argument("--budget", default="eyes24=200,digits=300,digits-large=300", help="queue labels per set")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--eps", default="0.02,0.01")
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--per-class", action="store_true")
    ap.add_argument("--pool-fractions", default="1")
    ap.add_argument("--redraws", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=1, help="queue phases run in parallel (processes)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per job (default: cores / jobs)")
    ap.add_argument("--cache", default="finish-cache")
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--report-only", action="store_true", help="only phase 2, on the runs already cached")
    ap.add_argument("--hindsight", action="store_true",
                    help="also compare the audit plan with an oracle plan and the best rate in hindsight")
    ap.add_argument("--pool-subsample", default="",
                    help="also certify random parts of each cached pool (e.g. 0.25,0.5; above 1 the pool resampled "
                         "with replacement to that multiple), same model: the audit size against the pool size")
    ap.add_argument("--eyes", type=Path, help=f"eyes24's labels.csv [default: {EYES}]")  # noqa: F821
    args = ap.parse_args()
    if args.eyes:
        EYES = args.eyes.resolve()

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    budgets = dict(kv.split("=") for kv in args.budget.split(","))
    fractions = [float(f) for f in args.pool_fractions.split(",")]
    strategies = args.strategies.split(",")
    if any("pretrain" in s.split("+") for s in strategies) and any(f < 1 for f in fractions):
        # the encoder is the whole set's: a subsampled project would not have the other images to pretrain on
        raise SystemExit("+pretrain strategies run on whole sets only (--pool-fractions 1)")
    threads = args.threads or max(1, (os.cpu_count() or 2) // args.jobs)
    jobs = []
    for set_name in args.sets.split(","):
        csv = _dataset(set_name, cache)
        for fraction in fractions:
            for strategy in strategies:
                for seed in range(args.seeds):
                    out = cache / f"{set_name}-x{fraction:g}-{strategy}-s{seed}.npz"
                    if not out.exists():
                        jobs.append((set_name, str(csv), fraction, strategy, seed, int(budgets[set_name]),
                                     args.batch, str(out), threads))
    t0 = time.perf_counter()
    if jobs and not args.report_only:
        _pretrain_sets({j[0]: j[1] for j in jobs if "pretrain" in j[3].split("+")}, cache)
        print(f"{len(jobs)} queue phases to run, {args.jobs} at a time, {threads} torch threads each", flush=True)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as ex:  # CUDA-safe
            for fut in as_completed([ex.submit(_queue_job, *j) for j in jobs]):
                print(fut.result(), flush=True)
        print(f"queue phases: {time.perf_counter() - t0:.0f} s", flush=True)
    report(args, cache, strategies, fractions)
    if args.hindsight:
        hindsight(args, cache, strategies)
    if args.pool_subsample:
        scaling(args, cache, [float(f) for f in args.pool_subsample.split(",")] + [1.0])


def _cached(cache: Path, set_name: str, fraction: float, strategy: str, seeds: int):
    """(seed, queue outcome, labels) of each cached queue phase of that set, pool fraction and strategy."""
    from labeler.learning.simulate_finish import QueueOutcome

    for seed in range(seeds):
        path = cache / f"{set_name}-x{fraction:g}-{strategy}-s{seed}.npz"
        if path.exists():
            yield seed, QueueOutcome.load(path), np.load(path.with_suffix(".y.npy"))


def scaling(args, cache: Path, parts: list[float]) -> None:
    """The same models on random parts of their pools: how the audit and the human share scale."""
    from labeler.learning.datasets import read_labels
    from labeler.learning.simulate_finish import QueueOutcome, certify_phase

    strategy = args.strategies.split(",")[0]
    for set_name in args.sets.split(","):
        classes = read_labels(_dataset(set_name, cache), progress=False).classes
        for eps in [float(e) for e in args.eps.split(",")]:
            print(f"\n{set_name}, {strategy}, eps {eps:g}: the same models on part of their pools")
            for part in parts:
                rows = []
                for seed, q, y in _cached(cache, set_name, 1.0, strategy, args.seeds):
                    rng = np.random.default_rng(seed)  # above 1: the pool resampled to that size (same error profile)
                    keep = np.sort(rng.choice(len(q.pool), int(part * len(q.pool)), replace=part > 1))
                    idx = np.r_[q.queried, q.pool[keep]]
                    sub = QueueOutcome(q.strategy, q.seed, np.arange(len(q.queried)),
                                       np.arange(len(q.queried), len(idx)), q.proba[keep])
                    rows.append(certify_phase(sub, y[idx], classes, eps, args.delta, args.per_class, args.redraws).row())
                if rows:
                    print(f"  pool {np.mean([r['images'] - r['queue'] for r in rows]):6.0f}: audit "
                          f"{np.mean([r['audit'] for r in rows]):4.0f}, left to a person "
                          f"{np.mean([r['to_person'] for r in rows]):4.0f}, coverage "
                          f"{np.mean([r['redraw_coverage'] or r['coverage'] for r in rows]):.1%}, people "
                          f"{np.mean([r['redraw_people'] or r['people_share'] for r in rows]):.1%} of the images; "
                          f"violated {sum(r['violated'] for r in rows)} of {len(rows)}, redraws "
                          f"{sum(r['redraw_violations'] for r in rows)} of {sum(r['redraws'] for r in rows)}")


#: The single audit rates ``--hindsight`` tries on every run.
HINDSIGHT_RATES = (0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.22, 0.25, 0.3)


def hindsight(args, cache: Path, strategies: list[str]) -> None:
    """How far the audit plan is from the best any plan could do, per cached run (overall mode): the human
    share over the audit redraws with the plan, with the plan given the true errors as its error model (an
    oracle no project has), and with the best of :data:`HINDSIGHT_RATES` for that run in hindsight."""
    from labeler.learning import certify as cert
    from labeler.learning.datasets import read_labels
    from labeler.learning.simulate_finish import certify_phase

    for set_name in args.sets.split(","):
        classes = read_labels(_dataset(set_name, cache), progress=False).classes
        for eps in [float(e) for e in args.eps.split(",")]:
            for strategy in strategies:
                rows = []
                for _, q, y in _cached(cache, set_name, 1.0, strategy, args.seeds):
                    pred, score = q.proba.argmax(1), q.proba.max(1)
                    names = np.asarray(classes, dtype=object)[pred]
                    oracle = cert.plan_audit(score, names, eps, args.delta, p_error=pred != y[q.pool])
                    fixed = [cert.AuditPlan({"all": f}, {}, 0, 0, 0, len(score)) for f in HINDSIGHT_RATES]
                    people = [certify_phase(q, y, classes, eps, args.delta, redraws=args.redraws, plan=p).redraw_people
                              for p in [None, oracle, *fixed]]
                    rows.append([people[0], people[1], min(people[2:]), HINDSIGHT_RATES[int(np.argmin(people[2:]))]])
                if rows:
                    r = np.array(rows)
                    print(f"\n{set_name}, {strategy}, eps {eps:g}, {len(r)} runs, {args.redraws} audit draws each: people "
                          f"{r[:, 0].mean():.1%} with the plan, {r[:, 1].mean():.1%} with the true errors as its error "
                          f"model, {r[:, 2].mean():.1%} with each run's best single rate in hindsight (rates "
                          f"{', '.join(f'{x:g}' for x in r[:, 3])})")


def _model_errors(q, y: np.ndarray, top: float = 0.85) -> tuple[int, int]:
    """(the queue model's wrong answers in the pool, those among its ``top`` most confident): what the
    audit must see past to accept that share."""
    wrong = q.proba.argmax(1) != y[q.pool]
    confident = np.argsort(-q.proba.max(1), kind="stable")[:int(top * len(q.pool))]
    return int(wrong.sum()), int(wrong[confident].sum())


def report(args, cache: Path, strategies: list[str], fractions: list[float]) -> None:
    from labeler.learning.datasets import read_labels
    from labeler.learning.simulate_finish import certify_phase

    rows = []
    for set_name in args.sets.split(","):
        classes = read_labels(_dataset(set_name, cache), progress=False).classes
        for fraction in fractions:
            for eps in [float(e) for e in args.eps.split(",")]:
                print(f"\n{set_name} (pool fraction {fraction:g}), eps {eps:g}, delta {args.delta:g}"
                      f"{', per class' if args.per_class else ''}:")
                for strategy in strategies:
                    sel = []
                    for _, q, y in _cached(cache, set_name, fraction, strategy, args.seeds):
                        r = certify_phase(q, y, classes, eps, args.delta, args.per_class, args.redraws)
                        errors, confident_errors = _model_errors(q, y)
                        sel.append({**r.row(), "set": set_name, "fraction": fraction, "pool_errors": errors,
                                    "top85_errors": confident_errors})
                    if not sel:
                        continue
                    rows += sel
                    people = np.array([r["people_share"] for r in sel])
                    cov = np.array([r["coverage"] for r in sel])
                    redrawn = (f"; over the audit redraws: people {np.mean([r['redraw_people'] for r in sel]):.1%}, "
                               f"coverage {np.mean([r['redraw_coverage'] for r in sel]):.1%}") if args.redraws else ""
                    real = [r["realized_error"] for r in sel if r["realized_error"] is not None]
                    print(f"  {strategy:>15}: {len(sel)} runs, {sel[0]['images']} images; claim violated in "
                          f"{sum(r['violated'] for r in sel)} of {len(sel)} runs"
                          f" (audit redraws: {sum(r['redraw_violations'] for r in sel)} of "
                          f"{sum(r['redraws'] for r in sel)}; above the claimed bound: "
                          f"{sum(r['exceeded_bound'] for r in sel)} runs, "
                          f"{sum(r['redraw_exceeded'] for r in sel)} redraws); people {people.mean():.1%} +- {people.std():.1%} "
                          f"(queue {np.mean([r['queue'] for r in sel]):.0f}, audit "
                          f"{np.mean([r['audit'] for r in sel]):.0f}, left to a person "
                          f"{np.mean([r['to_person'] for r in sel]):.0f}); coverage {cov.mean():.1%} +- "
                          f"{cov.std():.1%} (min {cov.min():.1%}); realized error of the accepted "
                          f"{np.mean(real) if real else float('nan'):.4f} (max {max(real) if real else float('nan'):.4f})"
                          f"; the model's errors in the pool {np.mean([r['pool_errors'] for r in sel]):.1f} "
                          f"(in its 85 % most confident {np.mean([r['top85_errors'] for r in sel]):.1f})" + redrawn)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
