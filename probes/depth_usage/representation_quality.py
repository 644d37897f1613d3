"""Per-layer representation quality (Skean et al., "Layer by Layer"), with bootstrap intervals over prompts.

Four curves over layers 0..L, read off held-out corpus windows (BOS excluded):

* prompt entropy: matrix-based Renyi alpha-entropy of a prompt's unit-normalised token Gram matrix, scaled
  by log(min(n_tokens, d)) into [0, 1] (one direction -> 0, mutually orthogonal tokens -> 1); mean over prompts;
* dataset entropy: the same entropy of the prompts' pooled vectors (token mean, unit-normalised), written
  through their weighted second moment so a bootstrap resample is the plug-in estimate of its multiplicities;
* curvature (Hosseini & Fedorenko 2023): mean angle in radians between successive token-to-token steps;
* augmentation invariance: the InfoNCE bound, in bits, on the mutual information between each prompt's clean
  and noised pooled vectors (higher = the layer keeps prompts apart under input noise).

Every interval resamples prompts (or whole groups, e.g. documents) with one set of bootstrap multiplicities
shared by all metrics and layers (:mod:`probes.resampling`); the replicates are returned so a curve can be
rank-correlated with accuracy curves resampled independently (:func:`curve_correlations`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from probes.resampling import bootstrap_weights, percentile_interval, resampled_means

METRICS = ("prompt_entropy", "dataset_entropy", "curvature", "infonce_bits")
# A token-to-token step shorter than this fraction of the prompt's mean vector norm at that layer is a repeat
# (float32 inputs resolve about 1e-7 of a norm): it has no direction, so the angles it makes are dropped.
_STEP_TOL = 1e-6
_CHUNK_ELEMENTS = 2**23  # float64 entries of the resampled second moments eigendecomposed at once (64 MiB)


@dataclass(frozen=True)
class QualityCurves:
    """Tidy per-layer ``table`` (layer, metric, value, lo, hi, n_prompts, ci, n_boot, alpha, temperature) and the
    (n_boot, L+1) bootstrap ``replicates`` of every metric's curve, all drawn from the same prompt resamples."""

    table: pd.DataFrame
    replicates: dict[str, np.ndarray]


def renyi_entropy(eigenvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Renyi alpha-entropy (nats) of spectra along the last axis, each rescaled to sum to 1.

    Negative round-off is clipped and eigenvalues below the rank tolerance (size x eps x largest) are dropped:
    for alpha < 1 a 1e-17 of noise would otherwise count (1e-17 ** 0.01 = 0.68). alpha = 1 is the Shannon
    limit, computed exactly. An all-zero spectrum has no entropy: NaN.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    tol = lam.shape[-1] * np.finfo(np.float64).eps * lam.max(-1, keepdims=True)
    lam = np.where(lam > tol, lam, 0.0)
    total = lam.sum(-1, keepdims=True)
    p = np.divide(lam, total, out=np.zeros_like(lam), where=total > 0)
    kept = p > 0
    if alpha == 1:
        entropy = -np.sum(p * np.log(p, out=np.zeros_like(p), where=kept), axis=-1)
    else:
        entropy = np.log(np.sum(np.power(p, alpha, out=np.zeros_like(p), where=kept), axis=-1)) / (1 - alpha)
    return np.where(total[..., 0] > 0, entropy, np.nan)


def prompt_entropy(tokens: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """(L+1,) normalised alpha-entropy of one prompt's (n_tokens, L+1, d) token vectors at every layer.

    The spectrum comes from the smaller of Z Z^T and Z^T Z (the same nonzero eigenvalues), so a long prompt
    costs a d x d eigendecomposition, never n x n. A prompt of fewer than 2 tokens has no spread to measure:
    NaN, which :func:`quality_curves` skips.
    """
    import torch

    x = _float64(tokens)
    n, layers, d = x.shape
    if n < 2 or d < 2:
        return np.full(layers, np.nan)
    z = torch.from_numpy(_unit(x)).transpose(0, 1)  # (L+1, n, d)
    gram = z @ z.mT if n <= d else z.mT @ z
    return renyi_entropy(torch.linalg.eigvalsh(gram).numpy(), alpha) / math.log(min(n, d))


def dataset_entropy(pooled: np.ndarray, alpha: float = 1.0, weights: np.ndarray | None = None) -> np.ndarray:
    """Normalised alpha-entropy of the unit-normalised pooled vectors (n_prompts, L+1, d) at every layer.

    The entropy is that of M = sum_i w_i z_i z_i^T / sum w (unit weights: the trace-normalised Gram matrix), so
    bootstrap multiplicities ``weights`` (n_boot, n) give each resample's plug-in estimate: (n_boot, L+1);
    without weights, (L+1,). When n <= d, M's nonzero spectrum is that of diag(sqrt w) Z Z^T diag(sqrt w) / sum w,
    so 1000 resamples x 31 layers cost batched eigendecompositions of (at most) n x n matrices, not d x d ones
    (32 prompts at d = 576: about a second on 2 cores). The scale log(min(n, d)) is the full sample's in every
    resample. Entropy is concave in M and a resample holds only ~63% of the distinct prompts, so resampled
    entropies sit below the plug-in one: the percentile interval can lie wholly below the point. The replicates
    still serve paired comparisons (across layers, with other curves), where that downward shift is common.
    """
    import torch

    x = _float64(pooled)
    n, layers, d = x.shape
    single = weights is None
    w = np.ones((1, n)) if single else _check_weights(weights, n)
    size = min(n, d)
    if size < 2:
        return np.full((layers,) if single else (len(w), layers), np.nan)
    z = torch.from_numpy(_unit(x)).transpose(0, 1)  # (L+1, n, d)
    share = torch.from_numpy(w / w.sum(1, keepdims=True))
    entropy = np.empty((len(w), layers))
    if n > d:
        for rows in _chunks(np.arange(len(w)), layers * d * d):
            moment = torch.einsum("bn,lnd,lne->blde", share[torch.from_numpy(rows)], z, z)
            entropy[rows] = renyi_entropy(torch.linalg.eigvalsh(moment).numpy(), alpha)
    else:
        # A prompt left out of a resample only adds zero eigenvalues, so each resample's matrix is cut down to the
        # k prompts it drew (about 63% of n: a quarter of the cost), resamples of equal k eigendecomposed together.
        gram = (z @ z.mT).reshape(layers, n * n)
        drawn = w > 0
        k = drawn.sum(1)
        for size_k in np.unique(k):
            for rows in _chunks(np.flatnonzero(k == size_k), layers * size_k * size_k):
                picked = torch.from_numpy(np.argsort(~drawn[rows], axis=1, kind="stable")[:, :size_k])
                root = torch.gather(share[torch.from_numpy(rows)], 1, picked).sqrt()
                cells = (picked[:, :, None] * n + picked[:, None, :]).reshape(-1)
                sub = gram.index_select(1, cells).reshape(layers, len(rows), size_k, size_k)
                moment = (sub * (root[:, :, None] * root[:, None, :])).transpose(0, 1)  # (b, L+1, k, k)
                entropy[rows] = renyi_entropy(torch.linalg.eigvalsh(moment).numpy(), alpha)
    entropy /= math.log(size)
    return entropy[0] if single else entropy


def curvature(tokens: np.ndarray) -> np.ndarray:
    """(L+1,) mean angle (radians) between successive steps x_{k+1} - x_k of one prompt's token trajectory.

    A straight path is 0 and a path of right-angle turns pi/2. A repeated token makes a step of no length,
    whose angles are dropped; a prompt of fewer than 3 tokens has no pair of steps: NaN (as is a layer where
    every angle was dropped), which :func:`quality_curves` skips.
    """
    x = _float64(tokens)
    n, layers, _ = x.shape
    if n < 3:
        return np.full(layers, np.nan)
    steps = np.diff(x, axis=0)  # (n-1, L+1, d)
    norms = np.linalg.norm(steps, axis=-1)
    moving = norms > _STEP_TOL * np.linalg.norm(x, axis=-1).mean(0)
    pairs = moving[:-1] & moving[1:]
    dots = np.sum(steps[:-1] * steps[1:], axis=-1)
    cos = np.divide(dots, norms[:-1] * norms[1:], out=np.zeros_like(dots), where=pairs)
    angles = np.where(pairs, np.arccos(np.clip(cos, -1.0, 1.0)), 0.0)
    counts = pairs.sum(0)
    return np.divide(angles.sum(0), counts, out=np.full(layers, np.nan), where=counts > 0)


def infonce_losses(clean: np.ndarray, noised: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """(n_prompts, L+1) InfoNCE loss (nats) of picking each prompt's noised pooled vector among all of them.

    Per layer both sets are unit-normalised, S_ij = c_i . p_j / temperature and l_i = -log softmax_j(S_ij)[i];
    the bound on the mutual information is (log n - mean l) / log 2 bits, at most log2(n).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    from scipy.special import logsumexp

    c = _unit(_float64(clean)).transpose(1, 0, 2)  # (L+1, n, d)
    p = _unit(_float64(noised)).transpose(1, 0, 2)
    if c.shape != p.shape:
        raise ValueError(f"clean and noised pooled vectors differ in shape: {clean.shape} vs {noised.shape}")
    scores = c @ p.transpose(0, 2, 1) / temperature
    losses = logsumexp(scores, axis=-1) - np.diagonal(scores, axis1=1, axis2=2)
    return losses.T


def quality_curves(
    prompts: Sequence[np.ndarray],
    noised_pooled: np.ndarray | None = None,
    alpha: float = 1.0,
    temperature: float = 0.1,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> QualityCurves:
    """Prompt entropy, dataset entropy, curvature and (with ``noised_pooled``) InfoNCE bits at every layer.

    ``prompts`` are (n_tokens_i, L+1, d) arrays or tensors; ``noised_pooled`` (n_prompts, L+1, d) holds the same
    prompts' pooled vectors under input noise, and without it there are no invariance rows. Per-prompt metrics
    are means over the prompts where they are defined (``n_prompts`` counts those, per layer), resampled as
    weighted means; dataset entropy is re-estimated from each resample's weighted second moment , less the mean
    shift of the resamples from the point (duplicated prompts bias it low); the InfoNCE
    losses are resampled as means while every loss keeps the full set of prompts as its negatives (so log n
    stays that of the full sample). ``groups`` (one label per prompt, e.g. its document) resamples whole groups.
    """
    arrays = _check_prompts(prompts)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    n = len(arrays)
    layers, d = arrays[0].shape[1:]
    noised = None if noised_pooled is None else _float64(noised_pooled)
    if noised is not None and noised.shape != (n, layers, d):
        raise ValueError(f"noised_pooled must have shape {(n, layers, d)} (prompts, layers, d), got {noised.shape}")
    if noised is not None and (bad := _first_non_finite(noised)) is not None:
        raise ValueError(f"noised_pooled has non-finite values for prompt {bad[0]} at layer {bad[1]}")
    weights = bootstrap_weights(n, n_boot, seed, groups)
    pooled = np.stack([x.mean(0) for x in arrays])
    per_prompt = {
        "prompt_entropy": np.stack([prompt_entropy(x, alpha) for x in arrays]),
        "curvature": np.stack([curvature(x) for x in arrays]),
    }
    points, replicates, counts = {}, {}, {}
    for name, values in per_prompt.items():
        points[name] = _defined_means(np.ones((1, n)), values)[0]
        replicates[name] = _defined_means(weights, values)
        counts[name] = np.isfinite(values).sum(0)
    points["dataset_entropy"] = dataset_entropy(pooled, alpha)
    # A resample holds about 63% distinct prompts and entropy is concave, so resampled entropies run low by a
    # near-constant shift (the percentile interval can miss the point entirely): the shift is removed, keeping
    # the resamples' spread, i.e. the interval measures how much the estimate varies at this sample size.
    resampled = dataset_entropy(pooled, alpha, weights)
    replicates["dataset_entropy"] = resampled - (resampled.mean(0) - points["dataset_entropy"])
    counts["dataset_entropy"] = np.full(layers, n)
    if noised is not None:
        losses = infonce_losses(pooled, noised, temperature)
        points["infonce_bits"] = (math.log(n) - losses.mean(0)) / math.log(2)
        replicates["infonce_bits"] = (math.log(n) - resampled_means(weights, losses.T)) / math.log(2)
        counts["infonce_bits"] = np.full(layers, n)
    frames = []
    for name in (metric for metric in METRICS if metric in points):
        lo, hi = percentile_interval(replicates[name], ci)
        frames.append(
            pd.DataFrame(
                {
                    "layer": np.arange(layers),
                    "metric": name,
                    "value": points[name],
                    "lo": lo,
                    "hi": hi,
                    "n_prompts": counts[name],
                }
            )
        )
    table = pd.concat(frames, ignore_index=True).assign(ci=ci, n_boot=n_boot, alpha=alpha, temperature=temperature)
    return QualityCurves(table=table, replicates={name: replicates[name] for name in table["metric"].unique()})


def curve_correlations(
    quality: QualityCurves, accuracy: Mapping[str, tuple[np.ndarray, np.ndarray]], ci: float = 0.95
) -> pd.DataFrame:
    """Spearman correlation across layers of every quality curve with every task's accuracy curve.

    ``accuracy[task] = (point (L+1,), replicates (n_boot, L+1))``. The point pairs the two point curves; the
    interval pairs quality replicate b with accuracy replicate b (the first min of the two counts): the two were
    resampled independently (prompts vs the task's examples), so any pairing is a draw of the pair. A constant
    curve, or one undefined at some layer, has no rank correlation: NaN, left out of the interval.
    Columns: metric, task, spearman, lo, hi, n_layers, ci.
    """
    points = quality.table.pivot(index="layer", columns="metric", values="value")
    layers = len(points)
    rows = []
    for task, (point, replicates) in accuracy.items():
        point = np.asarray(point, dtype=np.float64)
        replicates = np.asarray(replicates, dtype=np.float64)
        if point.shape != (layers,) or replicates.ndim != 2 or replicates.shape[1] != layers:
            raise ValueError(
                f"accuracy[{task!r}] must be a ({layers},) point curve and (n_boot, {layers}) replicates, "
                f"got {point.shape} and {replicates.shape}"
            )
        for metric, curves in quality.replicates.items():
            m = min(len(curves), len(replicates))
            lo, hi = percentile_interval(_spearman(curves[:m], replicates[:m]), ci)
            rho = _spearman(points[metric].to_numpy()[None], point[None])[0]
            rows.append(
                {"metric": metric, "task": task, "spearman": rho, "lo": lo, "hi": hi, "n_layers": layers, "ci": ci}
            )
    return pd.DataFrame(rows, columns=["metric", "task", "spearman", "lo", "hi", "n_layers", "ci"])


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Spearman correlation of (k, L) curves (ties get average ranks); NaN for constant or NaN rows."""
    from scipy.stats import rankdata

    defined = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    ra = rankdata(np.where(defined[:, None], a, 0.0), axis=1)
    rb = rankdata(np.where(defined[:, None], b, 0.0), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    scale = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    ok = defined & (scale > 0)
    return np.divide((ra * rb).sum(1), scale, out=np.full(len(a), np.nan), where=ok)


def _defined_means(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(n_boot, L+1) weighted means of (n, L+1) per-prompt values over the prompts where they are not NaN."""
    defined = np.isfinite(values)
    totals = resampled_means(weights, np.where(defined, values, 0.0).T)
    shares = resampled_means(weights, defined.T.astype(np.float64))
    return np.divide(totals, shares, out=np.full_like(totals, np.nan), where=shares > 0)


def _check_prompts(prompts: Sequence[np.ndarray]) -> list[np.ndarray]:
    arrays = [_float64(x) for x in prompts]
    if len(arrays) < 2:
        raise ValueError(f"need at least 2 prompts, got {len(arrays)}")
    for i, x in enumerate(arrays):
        if x.ndim != 3:
            raise ValueError(f"prompt {i} must be (n_tokens, n_layers + 1, d_model), got shape {x.shape}")
        if x.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(
                f"prompt {i} has (layers, d) = {x.shape[1:]}, prompt 0 has {arrays[0].shape[1:]}: "
                "every prompt must come from the same layers of the same model"
            )
        if (bad := _first_non_finite(x)) is not None:
            raise ValueError(f"prompt {i} has non-finite values at layer {bad[1]} (token {bad[0]})")
    return arrays


def _first_non_finite(x: np.ndarray) -> tuple[int, int] | None:
    """(row, layer) of the first (rows, layers, d) vector holding a NaN or an infinity, None if all are finite."""
    bad = ~np.isfinite(x).all(-1)
    return tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None


def _check_weights(weights: np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != n or (w < 0).any() or (w.sum(1) <= 0).any():
        raise ValueError(f"weights must be (n_boot, {n}) non-negative multiplicities with positive sums")
    return w


def _chunks(rows: np.ndarray, elements_per_row: int) -> list[np.ndarray]:
    """``rows`` split so that no piece holds more than :data:`_CHUNK_ELEMENTS` float64 entries."""
    per = max(1, _CHUNK_ELEMENTS // elements_per_row)
    return [rows[start : start + per] for start in range(0, len(rows), per)]


def _float64(x) -> np.ndarray:
    """A float64 numpy array from an array or a (possibly CUDA, possibly bfloat16) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm along the last axis; a zero row stays zero (it adds nothing to a Gram matrix)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
