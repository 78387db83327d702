"""When to stop labelling: a learning-curve forecast and a plateau signal, numpy in, plain numbers out.

Each model version is a point ``(n_i, e_i, m_i)``: it trained on ``n_i`` labels and its held-out
error (``1 - accuracy``, the EER, or ``1 - macro-F1``; :mod:`labeler.learning.finishing` chooses)
was measured on ``m_i`` items it never trained on. The measurement noise is binomial,
``Var(e_i) ~ e_i (1 - e_i) / m_i``; with ``e_i`` near 0 the Agresti-Coull-style shrunk rate
``e~_i = (e_i m_i + 1) / (m_i + 2)`` keeps the variance positive.

**Forecast** (:func:`fit_curve`, :func:`forecast`). The inverse power law
``err(n) = a n^(-b) + c`` (``a > 0``, ``0 < b <= 2``, ``0 <= c < 1``; ``c`` is the error no
amount of labels removes) is fitted by weighted least squares (``scipy.optimize.curve_fit``,
weights ``1 / sigma_i``, ``sigma_i^2 = e~_i (1 - e~_i) / m_i``) from 4 distinct label counts on.
With 3, the two-parameter law ``a n^(-b)`` (no floor: optimistic, and said so) is all the points
can carry. The floor is kept from 4 on even where a criterion such as AICc would drop it: without
it the forecast is finite for any target and its interval too narrow (measured: a 90 % interval
from the two-parameter law covered the true count in 63 % of replicates of a curve with a floor).
Labels needed for a target error ``t``: ``n*(t) = (a / (t - c))^(1/b)``, infinite when ``t <= c``.

The interval is a **parametric bootstrap**: ``B`` new sets of errors are drawn from the fitted
curve with each version's binomial noise, ``e*_i ~ Binomial(m_i / phi, err(n_i)) / (m_i / phi)``,
``phi = max(1, WSS / (N - k))`` the over-dispersion beyond binomial that the residuals show
(training randomness); each set is refitted (model choice included) and the interval is the
``(1 -+ level) / 2`` percentiles of ``n*``. Replicates whose floor lies above ``t`` give
``n* = inf``, so an upper end of ``inf`` says "possibly never". It does not cover a curve that
is not a power law (e.g. a new class appearing late).

**Plateau** (:func:`plateau`). The newest version against the best one trained on at least
``K`` fewer labels: the gain ``g = e_ref - e_new`` with the Agresti-Caffo interval for a
difference of two proportions, ``g~ +- z sqrt(sum p~(1 - p~) / (m + 2))``, ``p~ = (e m + 1) /
(m + 2)``. The two versions are scored on mostly the same held-out items; treating them as
independent overstates the noise, so "no measurable gain" is a conservative call. Picking the
best reference (the minimum of several noisy errors) favours it too: read "plateau" as "the last
``K`` labels did not buy a gain this hold-out can see", and the interval's upper end as the gain
that may still hide in the noise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.stats import norm

#: Fewer distinct label counts than this and no curve is fitted.
MIN_POINTS = 3
#: From this many distinct label counts the floor ``c`` may be fitted.
MIN_POINTS_FLOOR = 4


@dataclass(frozen=True)
class Point:
    """One model version on the learning curve."""

    labels: int        # training labels
    error: float       # held-out error
    size: float        # held-out items (effective: see :func:`eer_effective_size`)
    version: str = ""


def eer_effective_size(n_pos: int, n_neg: int) -> float:
    """The held-out size ``m`` with ``Var(EER) ~ EER (1 - EER) / m``: ``m = 4 / (1/n_pos + 1/n_neg)``.

    ``EER ~ (FPR + FNR) / 2`` at the crossing, ``Var(FPR) = p(1-p)/n_neg`` and ``Var(FNR) = p(1-p)/n_pos``
    (the threshold's own noise ignored); with balanced classes ``m`` is the hold-out's size.
    """
    return 4.0 / (1.0 / max(n_pos, 1) + 1.0 / max(n_neg, 1))


def _shrunk(e: np.ndarray, m: np.ndarray) -> np.ndarray:
    return (e * m + 1.0) / (m + 2.0)


def binomial_sigma(error: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``sqrt(e~ (1 - e~) / m)`` with ``e~ = (e m + 1) / (m + 2)``: never 0, even for a perfect score."""
    e, m = np.asarray(error, float), np.asarray(size, float)
    p = _shrunk(e, m)
    return np.sqrt(p * (1 - p) / m)


@dataclass
class Curve:
    """A fitted learning curve ``err(n) = a n^(-b) + c`` (``c = 0`` for the two-parameter law)."""

    a: float
    b: float
    c: float
    params: int        # 2 or 3
    points: int
    dispersion: float  # phi: residual variance over the binomial one (>= 1)

    @property
    def formula(self) -> str:
        return "a*n^-b + c" if self.params == 3 else "a*n^-b"

    def error_at(self, n: np.ndarray | float) -> np.ndarray:
        return self.a * np.asarray(n, float) ** (-self.b) + self.c

    def labels_for(self, target: float) -> float:
        """``n*(t) = (a / (t - c))^(1/b)``; ``inf`` when the floor ``c`` is at or above ``t``."""
        if target <= self.c:
            return math.inf
        return float((self.a / (target - self.c)) ** (1.0 / self.b))


def _power(n, a, b):
    return a * n ** (-b)


def _power_floor(n, a, b, c):
    return a * n ** (-b) + c


def _jac_power(n, a, b):
    return np.stack([n ** (-b), -a * np.log(n) * n ** (-b)], axis=1)


def _jac_power_floor(n, a, b, c):
    return np.stack([n ** (-b), -a * np.log(n) * n ** (-b), np.ones_like(n)], axis=1)


def _fit_one(n: np.ndarray, e: np.ndarray, sigma: np.ndarray, floor: bool,
             start: Sequence[float] | None = None) -> tuple[np.ndarray, float] | None:
    """(parameters, weighted sum of squares) of one model, or None when the optimiser fails."""
    c0 = 0.5 * float(e.min()) if floor else 0.0
    guess = list(start) if start is not None else [max(float(e[0]) - c0, 1e-3) * float(n[0]) ** 0.5, 0.5, c0]
    f, jac = (_power_floor, _jac_power_floor) if floor else (_power, _jac_power)
    lower, upper = [1e-9, 1e-3, 0.0], [np.inf, 2.0, 1.0]
    k = 3 if floor else 2
    p0 = np.clip(guess[:k], lower[:k], [1e6, 2.0, 1.0][:k])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            p, _ = curve_fit(f, n, e, p0=p0, sigma=sigma, jac=jac, bounds=(lower[:k], upper[:k]), maxfev=2000)
    except (RuntimeError, ValueError):
        return None
    wss = float((((e - f(n, *p)) / sigma) ** 2).sum())
    return p, wss


def fit_curve(labels: ArrayLike, error: ArrayLike, size: ArrayLike,
              start: Curve | None = None) -> Curve | None:
    """The weighted least-squares inverse power law through the points (see the module docstring);
    None with fewer than :data:`MIN_POINTS` distinct label counts or when no fit converges.
    ``start``: a curve to start the optimiser from (the bootstrap's refits start from the fit)."""
    n, e, m = (np.asarray(x, float) for x in (labels, error, size))
    distinct = len(np.unique(n))
    if distinct < MIN_POINTS:
        return None
    order = np.argsort(n, kind="stable")
    n, e, m = n[order], e[order], m[order]
    sigma = binomial_sigma(e, m)
    floor = distinct >= MIN_POINTS_FLOOR
    fit = _fit_one(n, e, sigma, floor, None if start is None else [start.a, start.b, start.c])
    if fit is None and floor:  # e.g. the floor and the slope trade off without end: the law without a floor
        floor, fit = False, _fit_one(n, e, sigma, False)
    if fit is None:
        return None
    p, wss = fit
    k = 3 if floor else 2
    dof = len(n) - k
    phi = max(1.0, wss / dof) if dof > 0 else 1.0
    return Curve(float(p[0]), float(p[1]), float(p[2]) if floor else 0.0, k, len(n), phi)


@dataclass
class Forecast:
    """Labels needed to reach a target error, with an interval. JSON-able with :meth:`to_dict`."""

    status: str                     # "reached", "forecast", "unreachable", "not enough versions", "no fit"
    target: float                   # the target held-out error
    labels_now: int                 # training labels of the newest version
    needed: float | None            # training labels where the fitted curve meets the target
    interval: tuple[float, float] | None   # bootstrap percentile interval of ``needed``
    more: float | None              # labels still to annotate: (needed - labels_now) / train_share
    more_interval: tuple[float, float] | None
    level: float
    method: str
    curve: Curve | None = None
    band: dict = field(default_factory=dict)   # n, lo, mid, hi: the fitted curve and its pointwise band
    message: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        return _finite(d)


def _finite(x):
    """JSON has no infinity: ``inf`` becomes None (read "no finite bound")."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


METHOD = ("weighted least squares inverse power law err(n) = a*n^-b + c (c = 0 with 3 versions); "
          "parametric bootstrap interval (binomial held-out noise, inflated by the residual over-dispersion)")


def bootstrap(curve: Curve, labels: np.ndarray, size: np.ndarray, target: float, replicates: int,
              rng: np.random.Generator) -> tuple[np.ndarray, list[Curve]]:
    """``n*`` of each replicate refitted on errors drawn from ``curve`` (inf: unreachable or no fit)."""
    m = np.maximum(np.round(np.asarray(size, float) / curve.dispersion), 1).astype(int)
    p = np.clip(curve.error_at(labels), 0.0, 1.0)
    needed, fits = np.full(replicates, math.inf), []
    for r in range(replicates):
        e = rng.binomial(m, p) / m
        fit = fit_curve(labels, e, m, start=curve)
        if fit is not None:
            needed[r] = fit.labels_for(target)
            fits.append(fit)
    return needed, fits


def forecast(points: Sequence[Point], target: float, train_share: float = 1.0, level: float = 0.9,
             replicates: int = 200, seed: int = 0, target_text: str | None = None) -> Forecast:
    """Labels to reach held-out error ``target``, from the versions' ``points``.

    ``train_share``: the share of new labels that trains (a hold-out of one label in five keeps 0.8),
    so ``more = (n* - n_now) / train_share`` labels are to be annotated. The last point (newest
    version) gives ``n_now``. The seed makes the interval reproducible (the page shows one answer).
    ``target_text`` names the target in messages (default: "error 0.05").
    """
    if not 0 < train_share <= 1:
        raise ValueError(f"train_share must lie in (0, 1], got {train_share}")
    n = np.array([p.labels for p in points], float)
    e = np.array([p.error for p in points], float)
    m = np.array([p.size for p in points], float)
    now = int(points[-1].labels) if len(points) else 0
    out = Forecast("not enough versions", target, now, None, None, None, None, level, METHOD)
    if len(np.unique(n)) < MIN_POINTS:
        out.message = (f"not enough versions: {len(np.unique(n))} distinct label count(s), a learning curve "
                       f"needs {MIN_POINTS}")
        return out
    curve = fit_curve(n, e, m)
    if curve is None:
        out.status, out.message = "no fit", "the learning curve could not be fitted to these versions"
        return out
    out.curve, out.needed = curve, curve.labels_for(target)
    draws, fits = bootstrap(curve, n, m, target, replicates, np.random.default_rng(seed))
    # no interpolation (inf - inf is nan): inf sorts last, so "never" counts as the largest draw
    lo = np.quantile(draws, (1 - level) / 2, method="lower")
    hi = np.quantile(draws, (1 + level) / 2, method="higher")
    out.interval = (float(lo), float(hi))
    out.more = max(0.0, (out.needed - now) / train_share)
    out.more_interval = (max(0.0, (lo - now) / train_share), max(0.0, (hi - now) / train_share))
    out.band = curve_band(curve, fits, n, (out.needed, *out.interval), level)
    out.status = ("unreachable" if not math.isfinite(out.needed) else
                  "reached" if out.needed <= now else "forecast")
    out.message = _forecast_message(out, target_text or f"error {target:.4g}")
    return out


def curve_band(curve: Curve, fits: list[Curve], labels: np.ndarray, marks: Sequence[float],
               level: float, points: int = 60) -> dict:
    """The fitted curve and the pointwise ``level`` band of the bootstrap curves, on a log grid from the
    first version to past the ``marks`` (the forecast and its interval; at most 20 times the newest
    version's labels)."""
    first, last = float(labels.min()), float(labels.max())
    ends = [x for x in marks if math.isfinite(x)]
    stop = min(max([2 * last] + [1.1 * x for x in ends]), 20 * last)
    grid = np.geomspace(first, stop, points)
    mid = curve.error_at(grid)
    if fits:
        all_ = np.array([f.error_at(grid) for f in fits])
        lo, hi = np.quantile(all_, [(1 - level) / 2, (1 + level) / 2], axis=0)
    else:
        lo = hi = mid
    return {"n": grid.tolist(), "lo": lo.tolist(), "mid": mid.tolist(), "hi": hi.tolist()}


def _about(x: float) -> str:
    """A label count for people: two significant figures, at least to the unit."""
    if not math.isfinite(x):
        return "no finite number"
    x = round(x)
    digits = max(len(str(x)) - 2, 0)
    return f"{round(x, -digits):,}"


def _forecast_message(f: Forecast, target: str) -> str:
    assert f.curve is not None and f.more_interval is not None and f.more is not None
    lo, hi = f.more_interval
    band = f"{f.level:.0%} interval {_about(lo)} to {_about(hi) if math.isfinite(hi) else 'possibly never'}"
    if f.status != "forecast":
        band = f"labels still needed: {band}"
    caveat = "; 3 versions: fitted without a floor, so optimistic" if f.curve.params == 2 else ""
    if f.status == "unreachable":
        return (f"{target} may not be reached by more labels: the fitted curve levels off at error "
                f"{f.curve.c:.4f}, above the target ({band}{caveat})")
    if f.status == "reached":
        return f"{target} is reached already on the fitted curve ({band}{caveat})"
    return f"about {_about(f.more)} more labels to reach {target} ({band}{caveat})"


@dataclass
class Plateau:
    """Did the last ``window`` labels improve the model? JSON-able with :meth:`to_dict`."""

    status: str                    # "improving", "plateau", "worse", "not enough versions"
    window: int
    newest: Point | None
    reference: Point | None        # the best version trained on at least ``window`` fewer labels
    gain: float | None             # e_ref - e_new (positive: the newest is better)
    interval: tuple[float, float] | None
    level: float
    message: str

    def to_dict(self) -> dict:
        return _finite(asdict(self))


def gain_interval(e_ref: float, m_ref: float, e_new: float, m_new: float, level: float = 0.95) -> tuple[float, float]:
    """Agresti-Caffo interval for ``e_ref - e_new`` (two independent proportions): add one error and
    one success to each, ``p~ = (e m + 1)/(m + 2)``, then the Wald interval ``d~ +- z SE~``."""
    p_ref, p_new = _shrunk(np.array(e_ref), np.array(m_ref)), _shrunk(np.array(e_new), np.array(m_new))
    se = math.sqrt(p_ref * (1 - p_ref) / (m_ref + 2) + p_new * (1 - p_new) / (m_new + 2))
    z = float(norm.ppf(0.5 + level / 2))
    d = float(p_ref - p_new)
    return d - z * se, d + z * se


def plateau(points: Sequence[Point], window: int = 100, level: float = 0.95) -> Plateau:
    """Compare the newest version (the last point) with the best one trained on ``window`` or more fewer
    labels; "plateau" when the gain's ``level`` interval holds 0, "improving" above, "worse" below."""
    out = Plateau("not enough versions", window, points[-1] if points else None, None, None, None, level, "")
    if not points:
        out.message = "not enough versions: no trained version yet"
        return out
    new = points[-1]
    older = [p for p in points[:-1] if p.labels <= new.labels - window]
    if not older:
        out.message = f"not enough versions: none trained on {window} or more labels fewer than {new.version or 'the newest'}"
        return out
    ref = min(older, key=lambda p: (p.error, -p.labels))
    lo, hi = gain_interval(ref.error, ref.size, new.error, new.size, level)
    out.reference, out.gain, out.interval = ref, ref.error - new.error, (lo, hi)
    out.status = "improving" if lo > 0 else "worse" if hi < 0 else "plateau"
    what = {"improving": f"the last {new.labels - ref.labels} labels improved the model",
            "plateau": f"the last {new.labels - ref.labels} labels did not measurably improve the model",
            "worse": f"the newest version is worse than one trained on {new.labels - ref.labels} fewer labels"}[out.status]
    out.message = (f"{what}: error {new.error:.4f} ({new.version or 'newest'}, {new.labels} labels) vs {ref.error:.4f} "
                   f"({ref.version or 'reference'}, {ref.labels} labels); gain {level:.0%} interval [{lo:+.4f}, {hi:+.4f}]")
    return out
