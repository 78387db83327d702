"""Temperature scaling of zero-shot class scores (Guo et al., 2017).

With evidence ``s`` (N, C) and labels ``y``, the temperature minimises the
negative log-likelihood of the softmax:

    T* = argmin_T  -1/N sum_i log softmax(s_i / T)[y_i]

One parameter cannot change the ranking inside an image, only how peaked the
probabilities are, so "uncertain" comes to mean what it says.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar


def nll(scores: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``y`` under ``softmax(scores / T)``."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(scores: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """The NLL-minimising temperature, searched on log T within ``bounds``."""
    y = np.asarray(y, dtype=int)
    if len(y) == 0:
        return 1.0
    res = minimize_scalar(lambda lt: nll(scores, y, float(np.exp(lt))),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))
