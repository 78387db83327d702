"""The queue in a real Label Studio against `labeler simulate` (issue 12's bar), on eyes24.

For each seed: the same held-out images (as `labeler simulate` picks them), the
same pool, strategy (margin_diverse), batch, budget, CNN and self-training;
(a) `labeler.learning.simulate.run`, (b) `labeler.learning.replay.replay` through a real Label
Studio: the simulated annotator takes the first task of "Next to label",
submits its true label, and the service retrains every batch (its own
training: cross-validation or the stable hold-out, self-training, promotion)
and refreshes predictions and the queue. Prints both learning curves (EER on
the held-out images) and their differences; the spread between seeds of the
simulation is the noise to compare them with.

    python benchmarks/replay_eyes24.py --budget 150 --seeds 2

Note: the service's refresh deletes stale predictions one request each
(studio.delete_stale_predictions); with --skip-stale-delete that step is
replaced by a no-op, which changes no ordering (sorting uses the project's
model version only) and saves minutes per round.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short", "true")
EYES24 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "eyes24"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", type=Path, default=EYES24 / "labels.csv")
    ap.add_argument("--budget", type=int, default=150)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--holdout", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=1, help="replays (and simulations) with seeds 0..N-1")
    ap.add_argument("--sim-seeds", type=int, default=3, help="simulations for the spread (at least --seeds)")
    ap.add_argument("--self-train", type=float, default=0.9)
    ap.add_argument("--skip-stale-delete", action="store_true")
    ap.add_argument("--sim-cache", type=Path, help="JSON of simulation rows per seed: reused if there, else written")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from labeler.config import Settings
    from labeler.dev.localserver import start_label_studio
    from labeler.learning.datasets import read_labels
    from labeler.learning.replay import project_from_folder, replay
    from labeler.learning.simulate import imagenet_features, make_classifier, run
    from labeler.models.classifiers import Sample
    from labeler.models.predictor import Predictor
    from labeler.studio.client import Studio

    if args.skip_stale_delete:
        import labeler.studio.preannotate as pre

        pre.delete_stale_predictions = lambda *a, **k: 0
    data = read_labels(args.labels)
    classes = data.classes
    y = data.targets(classes)
    samples = [Sample(im) for im in data.images()]
    features = imagenet_features(samples)
    token = "labeler-bench-token-0123456789"
    server = start_label_studio(Path(tempfile.mkdtemp(prefix="ls-replay-")), "admin@example.com", "bench-pass-123",
                                token)
    results = []
    try:
        ls = Studio.connect(server.url, token)
        import json
        from types import SimpleNamespace

        cached = json.loads(args.sim_cache.read_text()) if args.sim_cache and args.sim_cache.exists() else {}
        sims = {}
        for seed in range(max(args.seeds, args.sim_seeds)):
            if str(seed) in cached:
                sims[seed] = (SimpleNamespace(rows=cached[str(seed)]), 0.0)
                continue
            test = np.random.default_rng(1000 + seed).permutation(len(y))[: args.holdout]
            t = time.perf_counter()
            sim, _ = run(samples, y, classes, "margin_diverse", args.budget, args.batch, test, seed,
                         make_classifier("cnn", classes), features=features, progress=False,
                         self_train=args.self_train or None)
            sims[seed] = (sim, time.perf_counter() - t)
            print(f"simulate seed {seed}: " + "  ".join(f"{r['labels']}:{r['eer']:.4f}" for r in sim.rows)
                  + f" ({sims[seed][1]:.0f} s)", flush=True)
        if args.sim_cache:
            args.sim_cache.write_text(json.dumps({str(k): [{"labels": r["labels"], "eer": r["eer"]} for r in v.rows]
                                                  for k, (v, _) in sims.items()}))
        by_n_sim: dict[int, list[float]] = {}
        for sim, _ in sims.values():
            for r in sim.rows:
                by_n_sim.setdefault(r["labels"], []).append(r["eer"])
        print("simulate over seeds (mean +- std, the noise): " + "  ".join(
            f"{n}:{np.mean(v):.4f}+-{np.std(v):.4f}" for n, v in sorted(by_n_sim.items())), flush=True)
        for seed in range(args.seeds):
            test = np.random.default_rng(1000 + seed).permutation(len(y))[: args.holdout]
            pool = np.setdiff1d(np.arange(len(y)), test)
            sim, sim_s = sims[seed]
            project, truth = project_from_folder(ls, server.url, token, [data.paths[i] for i in pool],
                                                 [data.labels[i] for i in pool], classes, f"replay seed {seed}")
            settings = Settings(model_dir=Path(tempfile.mkdtemp(prefix="replay-md-")), zeroshot_model=None,
                                classifier="cnn", min_per_class=2, seed=seed, train_every=args.batch,
                                self_train=args.self_train or 0.9,
                                self_train_pool=2000 if args.self_train else 0)
            predictor = Predictor(settings)
            t = time.perf_counter()
            rows, order = replay(ls, project, predictor, truth, args.budget,
                                 args.batch, [samples[i] for i in test], y[test], classes, progress=print)
            rep_s = time.perf_counter() - t
            sim_eer = {r["labels"]: r["eer"] for r in sim.rows}
            print(f"\nseed {seed}: simulate {sim_s:.0f} s, replay through Label Studio {rep_s:.0f} s", flush=True)
            print(f"{'labels':>6} {'simulate EER':>12} {'replay EER':>10} {'diff':>8}")
            for r in rows:
                s = sim_eer.get(r["labels"])
                diff = "" if s is None else f"{r['eer'] - s:+8.4f}"
                print(f"{r['labels']:>6} {'-' if s is None else f'{s:.4f}':>12} {r['eer']:10.4f} {diff:>8}")
                results.append((seed, r["labels"], s, r["eer"]))
        by_n: dict[int, list[float]] = {}
        for seed, n, s, r in results:
            by_n.setdefault(n, []).append(r)
        print("\nreplay (mean over its seeds) against the simulation's mean +- std over its seeds:")
        for n, v in sorted(by_n.items()):
            sv = by_n_sim.get(n, [np.nan])
            z = (np.mean(v) - np.mean(sv)) / (np.std(sv) or np.nan)
            print(f"{n:>6} replay {np.mean(v):.4f}   simulate {np.mean(sv):.4f} +- {np.std(sv):.4f}   "
                  f"difference {np.mean(v) - np.mean(sv):+.4f} ({z:+.1f} std)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
