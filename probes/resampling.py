"""The bootstrap every interval of the project comes from: resample examples (or groups), never re-splits.

Re-splitting the same rows with another CV seed does not draw a new sample of the task, so intervals
that resample seed x fold runs are too narrow (about 2x at n = 400, docs/methods.md §2). Here a
resample draws the rows themselves (or, when the dataset declares groups, whole groups) with
replacement, and is represented by each row's multiplicity, so any per-example quantity (a probe's
out-of-fold correctness at every layer, the bits of an online code, a document's loss) is
resampled by one matrix product and every layer sees the same resample.
"""

from __future__ import annotations

import warnings

import numpy as np

_BOOTSTRAP_STREAM = 0xB007  # mixed with the configured seed, apart from every CV and control stream


def bootstrap_weights(n: int, n_boot: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """(n_boot, n) multiplicities of the rows in ``n_boot`` seeded bootstrap resamples.

    Without ``groups`` each resample draws n rows with replacement. With ``groups`` (one label per
    row) it draws as many groups as there are, with replacement, and a row counts as often as its
    group was drawn, so rows that share a group (a minimal pair, a template) stay together.
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 rows and n_boot >= 1 resamples, got n={n}, n_boot={n_boot}")
    rng = np.random.default_rng([seed, _BOOTSTRAP_STREAM])
    if groups is None:
        codes, n_groups = np.arange(n), n
    else:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups must hold one label per row ({n}), got shape {groups.shape}")
        _, codes = np.unique(groups, return_inverse=True)
        n_groups = int(codes.max()) + 1
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    counts = np.zeros((n_boot, n_groups), dtype=np.float64)
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return counts[:, codes]


def resampled_means(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Weighted means over the last axis of ``values`` (..., n) for every resample: (n_boot, ...)."""
    values = np.asarray(values, dtype=np.float64)
    totals = weights.sum(1)
    return np.tensordot(weights, values, axes=([1], [values.ndim - 1])) / totals.reshape(-1, *([1] * (values.ndim - 1)))


def percentile_interval(samples: np.ndarray, ci: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along ``axis`` whose bounds are sample values (so layer bounds are layers).

    NaN marks a resample where the statistic is undefined (no jump, never above chance) and is left
    out; where every resample is NaN both bounds are NaN.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    samples = np.asarray(samples, dtype=np.float64)
    alpha = (1 - ci) / 2
    with warnings.catch_warnings():  # an all-NaN slice is an answer here (undefined), not a mistake
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanquantile(samples, alpha, axis=axis, method="lower")
        hi = np.nanquantile(samples, 1 - alpha, axis=axis, method="higher")
    return lo, hi
