"""Training-recipe variants of the encoder CNN against the default, on the same draws (issue 23).

The eyes24 targets (EER <= 0.015 with 300 labels) sit below what the default recipe reaches even with
every label, so this asks whether another recipe would do better: cold fits from the project's SimCLR
encoder on ``--labels`` balanced random labels (all labels outside the hold-out for ``all``), EER on a
random hold-out, per seed, each variant on the same draws. Variants:

- ``default``: ``CNNClassifier`` as the backend trains it (one-cycle AdamW, at most 400 steps, 48 px);
- ``steps3x``, ``input64``, ``lr3e-3``: one setting changed;
- ``ensemble3``: three seeds averaged (:class:`~labeler.models.classifiers.Ensemble`, three fits);
- ``swa``: stochastic weight averaging (Izmailov et al., 2018; ``torch.optim.swa_utils``) over the last
  40 % of the same steps at a constant small rate, BatchNorm statistics recomputed;
- ``snapshot3``: a snapshot ensemble (Huang et al., 2017): three cosine cycles in the same steps, the three
  cycle-end weights averaged at prediction (one fit's cost).

    python benchmarks/cnn_recipes.py --labels 300,all --seeds 2 --encoder E/encoder.pt
    python benchmarks/cnn_recipes.py --oof --encoder E/encoder.pt   # the default's out-of-fold errors

``--encoder`` is pretrained there (``LABELER_PRETRAIN_STEPS`` steps) when absent; ``labeler simulate
--levers pretrain --out E`` leaves one too.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from labeler.config import Settings
from labeler.learning.datasets import read_labels
from labeler.learning.label_errors import find_label_issues
from labeler.learning.levers import simulation_encoder
from labeler.learning.metrics import eer
from labeler.learning.training import cross_val_proba
from labeler.models.classifiers import CNNClassifier, Ensemble, Sample
from labeler.models.classifiers.pixels import logits_input

EYES = Path(__file__).resolve().parents[2] / "shared/datasets/eyes24/labels.csv"


class _OneCycleThenConstant:
    """SWA's schedule: one cycle over the first ``s0`` steps, then the constant ``swa_lr``."""

    def __init__(self, opt: torch.optim.Optimizer, lr: float, s0: int, swa_lr: float) -> None:
        self.opt, self.s0, self.swa_lr, self.n = opt, s0, swa_lr, 0
        self.cycle = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=s0, pct_start=0.25)

    def step(self) -> None:
        self.n += 1
        if self.n < self.s0:
            self.cycle.step()
        else:
            for group in self.opt.param_groups:
                group["lr"] = self.swa_lr


class Averaged(CNNClassifier):
    """The CNN trained with the same steps, but SWA (``cycles=0``) or a snapshot ensemble (``cycles>0``)."""

    swa_start, swa_lr, cycles = 0.6, 3e-4, 0

    def _schedule(self, opt, steps):  # type: ignore[override]  # also sets what _after_step reads
        self._per, self._s0 = steps // max(1, self.cycles), int(self.swa_start * steps)
        if self.cycles:  # cosine restarts, one snapshot at the end of each
            return torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + np.cos(np.pi * (s % self._per) / self._per)))
        return _OneCycleThenConstant(opt, self.lr, self._s0, self.swa_lr)

    def _after_step(self, step: int, steps: int) -> None:
        if self.cycles and step % self._per == 0:
            self.snapshots_.append(copy.deepcopy(self.net_.state_dict()))
        elif not self.cycles and step >= self._s0 and (step - self._s0) % 10 == 0:
            self._average.update_parameters(self.net_)

    def _optimise(self, x, yt, pool, loss_fn, steps, g):  # type: ignore[override]
        self._average, self.snapshots_ = AveragedModel(self.net_), []
        share = super()._optimise(x, yt, pool, loss_fn, steps, g)
        if not self.cycles:
            update_bn([logits_input(b) for b in x.split(64)], self._average)
            self.net_.load_state_dict(self._average.module.state_dict())
        return share

    def _predict(self, samples):  # type: ignore[override]
        if not self.cycles:
            return super()._predict(samples)
        out = []
        for state in self.snapshots_[-self.cycles:]:
            self.net_.load_state_dict(state)
            self.net_.eval()
            out.append(super()._predict(samples))
        return np.mean(out, axis=0)


def variant(name: str, classes: list[str], seed: int, encoder: str):
    base = {"classes": classes, "seed": seed, "encoder": encoder, "progress": False}
    settings = {"default": {}, "steps3x": {"max_steps": 1200, "epochs": 45}, "input64": {"input_size": 64},
                "lr3e-3": {"lr": 3e-3}}
    if name in settings:
        return CNNClassifier(**base, **settings[name])
    if name == "ensemble3":
        return Ensemble(CNNClassifier(**base), members=3, seed=seed)
    model = Averaged(**base)
    model.cycles = {"swa": 0, "snapshot3": 3}[name]
    return model


def out_of_fold(samples: list[Sample], y: np.ndarray, classes: list[str], encoder: str) -> None:
    """Are the default's remaining errors label noise? Out-of-fold probabilities of every image, the errors,
    and how many of them confident learning flags as label errors (as ``labeler review`` does)."""
    proba = cross_val_proba(CNNClassifier(classes, encoder=encoder, progress=False), samples, y, 5, 0)
    print(f"out of fold: {int((proba.argmax(1) != y).sum())} of {len(y)} wrong, EER {eer(y == 1, proba[:, 1]):.4f}; "
          f"{len(find_label_issues(proba, y))} flagged as label errors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=EYES, help="labels.csv of a two-class set")
    ap.add_argument("--encoder", type=Path, required=True)
    ap.add_argument("--labels", default="300,all", help="balanced label counts, or all")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--holdout", type=int, default=600)
    ap.add_argument("--variants", default="default,steps3x,input64,lr3e-3,ensemble3,swa,snapshot3")
    ap.add_argument("--oof", action="store_true", help="instead: the default's 5-fold out-of-fold errors on every "
                    "image, and how many of them confident learning takes for label errors")
    args = ap.parse_args()
    data = read_labels(args.data, progress=False)
    y, samples = data.targets(data.classes), [Sample(im) for im in data.images()]
    if len(data.classes) != 2:
        raise SystemExit("EER needs two classes")
    encoder = str(simulation_encoder(samples, args.encoder.parent, Settings.pretrain_steps)[0]
                  if not args.encoder.exists() else args.encoder)
    if args.oof:
        return out_of_fold(samples, y, data.classes, encoder)
    for size in args.labels.split(","):
        for name in args.variants.split(","):
            errors, members, seconds = [], [], []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                perm = rng.permutation(len(y))
                test, rest = perm[:args.holdout], perm[args.holdout:]
                lab = rest if size == "all" else np.concatenate(
                    [rng.choice(rest[y[rest] == c], int(size) // 2, replace=False) for c in (0, 1)])
                t = time.perf_counter()
                model = variant(name, data.classes, seed, encoder).fit([samples[i] for i in lab], y[lab])
                seconds.append(time.perf_counter() - t)
                held_out = [samples[i] for i in test]
                errors.append(eer(y[test] == 1, model.predict_proba(held_out)[:, 1]))
                members += [eer(y[test] == 1, m.predict_proba(held_out)[:, 1]) for m in getattr(model, "members_", [])]
            alone = f"  (members alone {np.mean(members):.4f})" if members else ""
            print(f"{size:>4} labels  {name:<10} EER {np.mean(errors):.4f}{alone}  seeds {np.round(errors, 4).tolist()}  "
                  f"fit {np.mean(seconds):.0f} s", flush=True)


if __name__ == "__main__":
    main()
