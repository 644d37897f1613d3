"""Per-layer representation quality as Skean et al. ("Layer by Layer") compute it, with bootstrap intervals.

Four curves over layers 0..L (the last read after the model's final norm, its weight included, as Hugging Face's
``hidden_states`` give it), on held-out corpus windows (BOS excluded); the definitions are those of the authors'
code (``information_flow``'s metric functions, and ``repitl``'s matrix entropy), which
``tests/depth_usage/test_representation_quality.py`` re-implements independently:

* every set of vectors is first centred (a prompt's tokens over the prompt, pooled windows over the windows) and
  scaled to unit rows; a row that centring zeroes has no direction, and its metric is NaN;
* prompt entropy: Gram matrix Z Z^T (Z^T Z when there are more tokens than dimensions), clamped at 0 elementwise
  and divided by its trace; von Neumann (alpha = 1) or Renyi entropy of its positive eigenvalues, divided by
  min(log n, log d); mean over prompts;
* dataset entropy: the same of the prompts' mean-pooled vectors, centred over the prompts;
* curvature: mean over consecutive pairs of steps v_k = z_k - z_{k-1} of arccos(|cos(v_k, v_{k+1})|), in
  [0, pi/2] (a reversal counts 0); a pair with a step of zero length counts 0;
* InfoNCE: two augmented views of every prompt, mean-pooled and normalised per view; the cross-entropy of
  picking view B of each prompt from view A by cosine / temperature, in nats, reported as the reference's
  ``mi-lower-bound`` 1 - loss / log n (1: every prompt identified; 0: chance).

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

METRICS = ("prompt_entropy", "dataset_entropy", "curvature", "infonce_mi_lower_bound")
_CHUNK_ELEMENTS = 2**23  # float64 entries of the resampled matrices eigendecomposed at once (64 MiB)


@dataclass(frozen=True)
class QualityCurves:
    """Tidy per-layer ``table`` (layer, metric, value, lo, hi, n_prompts, ci, n_boot, alpha, temperature) and the
    (n_boot, L+1) bootstrap ``replicates`` of every metric's curve, all drawn from the same prompt resamples."""

    table: pd.DataFrame
    replicates: dict[str, np.ndarray]


def centred_unit(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """``x`` centred over ``axis`` and scaled to unit rows along the last axis, as the reference's ``normalize``;
    a row that centring zeroes becomes NaN (the reference divides by its zero norm)."""
    x = _float64(x)
    centred = x - x.mean(axis, keepdims=True)
    norms = np.linalg.norm(centred, axis=-1, keepdims=True)
    return np.divide(centred, norms, out=np.full_like(centred, np.nan), where=norms > 0)


def renyi_entropy(eigenvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Renyi alpha-entropy (nats) of spectra along the last axis, as ``repitl``'s matrix entropy takes it: the
    strictly positive eigenvalues rescaled to sum to 1 (round-off and the negative eigenvalues of a clamped
    Gram matrix drop out); alpha = 1 is von Neumann's -sum p log p. No positive eigenvalue: NaN."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    lam = np.asarray(eigenvalues, dtype=np.float64)
    lam = np.where(lam > 0, lam, 0.0)
    total = lam.sum(-1, keepdims=True)
    p = np.divide(lam, total, out=np.zeros_like(lam), where=total > 0)
    kept = p > 0
    if alpha == 1:
        entropy = -np.sum(p * np.log(p, out=np.zeros_like(p), where=kept), axis=-1)
    else:
        entropy = np.log(np.sum(np.power(p, alpha, out=np.zeros_like(p), where=kept), axis=-1)) / (1 - alpha)
    return np.where(total[..., 0] > 0, entropy, np.nan)


def gram_entropy(z: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Normalised alpha-entropy of normalised rows z (..., n, d): the reference's ``compute_entropy``.

    K = z z^T when n <= d, else z^T z (the reference's two branches; the clamp makes them differ), clamped at 0
    elementwise, divided by its trace; entropy over min(log n, log d). Any NaN row: NaN.
    """
    import torch

    z = _float64(z)
    *_, n, d = z.shape
    if min(n, d) < 2:
        return np.full(z.shape[:-2], np.nan)
    undefined = np.isnan(z).any((-2, -1))
    zt = torch.from_numpy(np.nan_to_num(z))
    gram = (zt @ zt.mT if n <= d else zt.mT @ zt).clamp_(min=0)
    trace = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)
    gram /= torch.where(trace > 0, trace, 1.0)[..., None, None]
    entropy = renyi_entropy(torch.linalg.eigvalsh(gram).numpy(), alpha) / math.log(min(n, d))
    return np.where(undefined, np.nan, entropy)


def prompt_entropy(tokens: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """(L+1,) normalised entropy of one prompt's (n_tokens, L+1, d) token vectors at every layer, each layer's
    tokens centred over the prompt and unit-normalised first. Fewer than 2 tokens: NaN, which
    :func:`quality_curves` skips."""
    x = _float64(tokens)
    if len(x) < 2:
        return np.full(x.shape[1], np.nan)
    return gram_entropy(centred_unit(x, axis=0).transpose(1, 0, 2), alpha)


def dataset_entropy(pooled: np.ndarray, alpha: float = 1.0, weights: np.ndarray | None = None) -> np.ndarray:
    """Normalised entropy of the pooled vectors (n_prompts, L+1, d), centred over the prompts, at every layer.

    Bootstrap multiplicities ``weights`` (n_boot, n) give each resample's own estimate, (n_boot, L+1): the
    entropy of the sample with prompt i repeated w_i times, centred on that sample's mean. When n <= d its
    clamped Gram matrix P K P^T (P repeats rows) has the nonzero spectrum of diag(sqrt w) K diag(sqrt w) over
    the drawn prompts, and K comes from the raw Gram matrix G through the weighted mean m:
    <x_i - m, x_j - m> = G_ij - (G s)_i - (G s)_j + s^T G s with s = w / n, so 1000 resamples cost batched
    eigendecompositions of (at most) n x n matrices. When n > d the clamp acts on sum_i w_i z_i z_i^T, built
    directly. The scale min(log n, log d) is the sample's in every resample. Without weights, (L+1,).
    """
    import torch

    x = _float64(pooled)
    n, layers, d = x.shape
    if weights is None:
        return gram_entropy(centred_unit(x, axis=0).transpose(1, 0, 2), alpha)
    w = _check_weights(weights, n)
    entropy = np.full((len(w), layers), np.nan)
    if min(n, d) < 2:
        return entropy
    share = torch.from_numpy(w / w.sum(1, keepdims=True))
    xt = torch.from_numpy(x).transpose(0, 1)  # (L+1, n, d)
    if n > d:
        for rows in _chunks(np.arange(len(w)), layers * n * d):
            s = share[torch.from_numpy(rows)]  # (b, n)
            centred = xt[None] - torch.einsum("bn,lnd->bld", s, xt)[:, :, None]
            norms = centred.norm(dim=-1, keepdim=True)
            z = centred / torch.where(norms > 0, norms, 1.0)
            moment = torch.einsum("bn,blnd,blne->blde", s, z, z).clamp_(min=0)
            trace = torch.diagonal(moment, dim1=-2, dim2=-1).sum(-1)
            moment /= torch.where(trace > 0, trace, 1.0)[..., None, None]
            undefined = (norms[..., 0] == 0) & (s[:, None] > 0)
            spectrum = renyi_entropy(torch.linalg.eigvalsh(moment).numpy(), alpha)
            entropy[rows] = np.where(undefined.any(-1).numpy(), np.nan, spectrum)
    else:
        # A prompt left out of a resample adds only zero eigenvalues, so each resample's matrix is cut down to the
        # k prompts it drew (about 63% of n), resamples of equal k eigendecomposed together.
        gram = (xt @ xt.mT).reshape(layers, n * n)
        drawn = w > 0
        k = drawn.sum(1)
        for size_k in np.unique(k):
            for rows in _chunks(np.flatnonzero(k == size_k), layers * size_k * size_k):
                picked = torch.from_numpy(np.argsort(~drawn[rows], axis=1, kind="stable")[:, :size_k])
                s = torch.gather(share[torch.from_numpy(rows)], 1, picked)  # (b, k), sums to 1
                cells = (picked[:, :, None] * n + picked[:, None, :]).reshape(-1)
                sub = gram.index_select(1, cells).reshape(layers, len(rows), size_k, size_k).transpose(0, 1)
                gs = sub @ s[:, None, :, None]  # (b, L+1, k, 1)
                centred = sub - gs - gs.mT + (s[:, None, None, :] @ gs)
                sq = torch.diagonal(centred, dim1=-2, dim2=-1).clamp(min=0)  # squared norms (b, L+1, k)
                root = sq.sqrt()
                safe = torch.where(root > 0, root, 1.0)
                cosine = centred / safe[..., :, None] / safe[..., None, :]
                weighted = cosine.clamp_(min=0) * (s.sqrt()[:, None, :, None] * s.sqrt()[:, None, None, :])
                spectrum = renyi_entropy(torch.linalg.eigvalsh(weighted).numpy(), alpha)
                entropy[rows] = np.where((root == 0).any(-1).numpy(), np.nan, spectrum)
    return entropy / math.log(min(n, d))


def curvature(tokens: np.ndarray) -> np.ndarray:
    """(L+1,) mean turning angle (radians) of one prompt's normalised token trajectory, as the reference computes it.

    Tokens are centred over the prompt and unit-normalised; with steps v_k = z_k - z_{k-1}, each consecutive
    pair contributes arccos(|v_k . v_{k+1}| / (|v_k| |v_{k+1}|)), in [0, pi/2], or 0 if either step has no
    length; the mean is over all n - 2 pairs. Fewer than 3 tokens, or a token at the prompt's mean: NaN.
    """
    x = _float64(tokens)
    n, layers, _ = x.shape
    if n < 3:
        return np.full(layers, np.nan)
    z = centred_unit(x, axis=0)
    steps = np.diff(z, axis=0)  # (n-1, L+1, d)
    norms = np.linalg.norm(steps, axis=-1)
    lengths = norms[:-1] * norms[1:]
    moving = lengths > 0
    cos = np.divide(np.abs(np.sum(steps[:-1] * steps[1:], axis=-1)), lengths, out=np.ones_like(lengths), where=moving)
    angles = np.arccos(np.clip(cos, -1.0, 1.0))
    return np.where(np.isnan(z).any((0, 2)), np.nan, angles.mean(0))


def infonce_losses(view_a: np.ndarray, view_b: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """(n_prompts, L+1) InfoNCE loss (nats) of picking each prompt's view B among all prompts' view B from its
    view A: per layer each view's pooled vectors (n, L+1, d) are centred over the prompts and unit-normalised,
    S_ij = a_i . b_j / temperature and l_i = -log softmax_j(S_ij)[i]. Their mean is the reference's ``raw``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    from scipy.special import logsumexp

    a = centred_unit(view_a, axis=0).transpose(1, 0, 2)  # (L+1, n, d)
    b = centred_unit(view_b, axis=0).transpose(1, 0, 2)
    if a.shape != b.shape:
        raise ValueError(f"the two views' pooled vectors differ in shape: {view_a.shape} vs {view_b.shape}")
    scores = a @ b.transpose(0, 2, 1) / temperature
    losses = logsumexp(scores, axis=-1) - np.diagonal(scores, axis1=1, axis2=2)
    return losses.T


def quality_curves(
    prompts: Sequence[np.ndarray],
    views: tuple[np.ndarray, np.ndarray] | None = None,
    alpha: float = 1.0,
    temperature: float = 0.1,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> QualityCurves:
    """Prompt entropy, dataset entropy, curvature and (with ``views``) InfoNCE at every layer.

    ``prompts`` are (n_tokens_i, L+1, d) arrays or tensors; ``views`` holds the pooled vectors (n_prompts, L+1, d)
    of two augmented views of the same prompts, and without it there are no InfoNCE rows. Per-prompt metrics are
    means over the prompts where they are defined (``n_prompts`` counts those, per layer), resampled as weighted
    means; dataset entropy is re-estimated on each resample (:func:`dataset_entropy`), less the mean shift of the
    resamples from the point (duplicated prompts bias it low); the InfoNCE losses are resampled as means while
    every loss keeps the full set of prompts as its negatives and centring (so log n stays that of the full
    sample). ``groups`` (one label per prompt, e.g. its document) resamples whole groups.
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
    pooled_views = None if views is None else [_float64(view) for view in views]
    for which, view in enumerate(pooled_views or []):
        if view.shape != (n, layers, d):
            raise ValueError(f"view {which} must have shape {(n, layers, d)} (prompts, layers, d), got {view.shape}")
        if (bad := _first_non_finite(view)) is not None:
            raise ValueError(f"view {which} has non-finite values for prompt {bad[0]} at layer {bad[1]}")
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
    replicates["dataset_entropy"] = resampled - (np.nanmean(resampled, 0) - points["dataset_entropy"])
    counts["dataset_entropy"] = np.full(layers, n)
    if pooled_views is not None:
        losses = infonce_losses(*pooled_views, temperature)
        points["infonce_mi_lower_bound"] = 1 - losses.mean(0) / math.log(n)
        replicates["infonce_mi_lower_bound"] = 1 - resampled_means(weights, losses.T) / math.log(n)
        counts["infonce_mi_lower_bound"] = np.isfinite(losses).sum(0)
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
