"""Steering directions at a layer (docs/methods.md §8.3): the probe's normal, the class-mean difference, random.

A steering vector is ``alpha * rho * unit``, with ``rho`` the mean residual norm (:func:`residual_norm`), so
``alpha`` is a fraction of the residual norm and comparable across layers and models (neither ActAdd nor CAA
scale this way). Directions live in raw residual coordinates, the ones the model adds to. The control is an
isotropic random direction of the same norm (ActAdd's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from probes.interventions.erasure import concept_inputs

if TYPE_CHECKING:
    from probes.probing.solver import SolverSettings

_RANDOM_DIRECTION_STREAM = 0x57EE  # mixed with the caller's seed, apart from the CV, null and bootstrap streams


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    norm = np.linalg.norm(v)
    if not norm > 0:
        raise ValueError(f"the {what} is zero: no direction to steer along")
    return v / norm


def mean_difference(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Unit vector of class 1's mean minus class 0's (CAA's vector), (d,) in raw coordinates."""
    X, y = concept_inputs(X, y)
    X = X.astype(np.float64)
    return _unit(X[y == 1].mean(0) - X[y == 0].mean(0), "class-mean difference")


def probe_direction(X: np.ndarray, y: np.ndarray, solver_settings: SolverSettings) -> np.ndarray:
    """Unit normal (d,) of the project's probe fitted on all rows, mapped back to raw coordinates.

    The solver reports coefficients on features standardised with the rows' (ddof=0) std, so the raw normal is
    coef / std, with the solver's (StandardScaler's) scale 1 for a constant feature. It points towards class 1.
    """
    from probes.probing.solver import fit_probes

    X, y = concept_inputs(X, y)
    n = len(y)
    raw = X.astype(np.float64)  # a copy: the solver standardises a float64 input in place
    mean, var = raw.mean(0), raw.var(0)
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    coef = fit_probes(raw[:, None, :], y[None], np.ones((1, n), dtype=bool), solver_settings).coef[0, 0]
    return _unit(coef / np.where(constant, 1.0, np.sqrt(var)), "probe normal")


def residual_norm(X: np.ndarray) -> float:
    """Mean L2 norm of the rows of X (n, d): the scale rho of a steering vector."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not len(X):
        raise ValueError(f"X must be a non-empty (n_examples, d) array, got shape {X.shape}")
    return float(np.linalg.norm(X, axis=1).mean())


def random_directions(d: int, n: int, seed: int) -> np.ndarray:
    """(n, d) seeded unit vectors uniform on the sphere: normalised standard Gaussians."""
    rng = np.random.default_rng([seed, _RANDOM_DIRECTION_STREAM])
    g = rng.standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)
