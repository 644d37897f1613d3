"""Effect minus control with a paired bootstrap interval (docs/methods.md §8): every row is measured under the
real intervention and under its control, so the interval resamples the per-row difference, not each side alone.
"""

from __future__ import annotations

import numpy as np


def paired_effect(real: np.ndarray, control: np.ndarray, weights: np.ndarray, ci: float) -> dict:
    """Mean real and control values of n rows, their difference ``effect``, and its percentile interval.

    ``control`` is (n,) or (n_draws, n), averaged over draws first so each row keeps one paired difference;
    ``weights`` (n_boot, n) are row multiplicities from :func:`probes.resampling.bootstrap_weights` (by group or
    document when rows share one).
    """
    from probes.resampling import percentile_interval, resampled_means

    real = np.asarray(real, dtype=np.float64)
    control = np.asarray(control, dtype=np.float64)
    n = real.shape[0] if real.ndim == 1 else -1
    if n < 1 or control.shape[-1:] != (n,) or control.ndim > 2 or np.shape(weights)[1:] != (n,):
        raise ValueError(
            f"need real (n,), control (n,) or (n_draws, n) and weights (n_boot, n); got {real.shape}, "
            f"{control.shape}, {np.shape(weights)}"
        )
    control = control.reshape(-1, n).mean(0)
    difference = real - control
    lo, hi = percentile_interval(resampled_means(weights, difference), ci)
    return {
        "real": float(real.mean()),
        "control": float(control.mean()),
        "effect": float(difference.mean()),
        "effect_lo": float(lo),
        "effect_hi": float(hi),
        "n": n,
    }
