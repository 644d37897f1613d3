"""MLP neurons (docs/methods.md §7): their pooled activations on disk, and k-sparse probes on them.

Gurnee et al. (2023), *Finding Neurons in a Haystack*: rank the neurons of a layer on the training fold by
how well each alone separates the classes, then fit the dense probe's logistic regression on the top k.
Every fold, layer and ranking criterion of one seed and one k is one batched solve
(:func:`probes.probing.solver.fit_probes`), so the folds, seeds, standardisation and C are exactly the dense probe's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

    from probes.probing.settings import ProbeSettings

NEURON_KS = (1, 2, 4, 8, 16, 32, 64)
CRITERIA = ("mean_difference", "f_statistic")
STORAGE_DTYPES = ("float16", "bfloat16")


def store_mlp_activations(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], dtype: str) -> dict:
    """Write the pooled MLP activations in ``dtype``; return the rounding it cost, per tensor.

    The cost is the relative RMS error ||x16 - x|| / ||x|| and the largest absolute error. A value beyond
    the format's range would be stored as inf, so that is refused with the format to use instead.
    """
    import torch
    from safetensors.torch import save_file

    from probes.io import atomic_path

    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"neurons.dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    stored, rounding = {}, {}
    for key, values in tensors.items():
        narrow = values.to(getattr(torch, dtype))
        if not bool(torch.isfinite(narrow).all()):
            largest = float(values.abs().max())
            raise ValueError(
                f"{path}: {key} holds values up to {largest:.3g}, beyond {dtype}'s range; set neurons.dtype: bfloat16"
            )
        error = (narrow.double() - values.double()).flatten()
        norm = float(values.double().norm())
        rounding[key] = {
            "relative_rms_error": float(error.norm()) / norm if norm else 0.0,
            "max_abs_error": float(error.abs().max()) if error.numel() else 0.0,
        }
        stored[key] = narrow.contiguous()
    with atomic_path(path) as tmp:
        save_file(stored, str(tmp))
    return rounding


def load_mlp_activations(path: str | os.PathLike, site: str, pooling: str) -> np.ndarray:
    """One site and pooling of :func:`store_mlp_activations`'s file as float32 (n, layers 1..L, width)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    key = f"{site}/{pooling}"
    if key not in tensors:
        raise KeyError(
            f"{path} holds {sorted(tensors)}, not {key!r}: a model's MLP sites are extracted only when it is in "
            "neurons.models or sae.models, at its own weights on clean inputs, in the poolings of activations.poolings"
        )
    return tensors[key].float().numpy()


def neuron_scores(X: np.ndarray, y: np.ndarray, rows: np.ndarray, criterion: str) -> np.ndarray:
    """How well each neuron of each layer alone separates the classes on ``rows``: (layers, neurons), or
    (runs, layers, neurons) for a stack of row masks (runs, n), all from one pass over ``X``.

    ``mean_difference`` is |mean1 − mean0|. ``f_statistic`` is the one-way ANOVA F of the two classes,
    between-class over within-class mean squares; a neuron constant within each class but not across them
    separates them perfectly and scores inf, one constant over the rows scores 0.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    X, y, rows = np.asarray(X), np.asarray(y), np.asarray(rows, dtype=bool)
    single = rows.ndim == 1
    rows = rows[None] if single else rows
    n, n_layers, width = X.shape
    ones, zeros = (rows & (y == 1)).astype(np.float64), (rows & (y == 0)).astype(np.float64)
    n1, n0 = ones.sum(1)[:, None], zeros.sum(1)[:, None]
    if (n1 == 0).any() or (n0 == 0).any():
        raise ValueError("ranking neurons needs rows of both classes")
    flat = X.reshape(n, -1).astype(np.float64)
    mean1, mean0 = ones @ flat / n1, zeros @ flat / n0
    difference = np.abs(mean1 - mean0)
    if criterion == "mean_difference":
        scores = difference
    else:
        squares = flat**2
        # within-class sums of squares, one pass; a class whose values are all equal gives exactly 0 up to
        # rounding, so anything below rounding of the raw second moments counts as 0
        raw = ones @ squares + zeros @ squares
        within = np.clip(raw - n1 * mean1**2 - n0 * mean0**2, 0, None)
        within = np.where(within <= 1e-12 * raw, 0.0, within) / np.maximum(n1 + n0 - 2, 1)
        between = n1 * n0 / (n1 + n0) * difference**2  # n1 (m1 − m)² + n0 (m0 − m)², one degree of freedom
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = np.where(within > 0, between / within, np.where(difference > 0, np.inf, 0.0))
    scores = scores.reshape(len(rows), n_layers, width)
    return scores[0] if single else scores


def ranked_neurons(scores: np.ndarray) -> np.ndarray:
    """Neurons of each layer by decreasing score; ties keep neuron order."""
    return np.argsort(-scores, axis=-1, kind="stable")


def k_sparse_probe(
    X: np.ndarray,
    y: np.ndarray,
    settings: ProbeSettings,
    ks: Sequence[int] = NEURON_KS,
    criteria: Sequence[str] = CRITERIA,
    groups: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Out-of-fold predictions of k-sparse neuron probes at every layer, criterion and k.

    ``X`` is (n, layers, neurons) with column ``i`` holding layer ``i + 1``. Folds and seeds are the dense
    probe's (:func:`probes.probing.protocol.cv_splits`, by group when ``groups`` is given); neurons are ranked on
    each training fold only. For one seed and k, every fold, criterion and layer is one batched solve (each
    fold's neurons fitted on every fold's rows, of which the fold's own fit is kept). Returns the
    predictions (criterion, layer, k, seed, fold, example, predicted, correct: every example once per seed,
    from the fold where it was a test row) and the neurons each fold chose (criterion, layer, seed, fold,
    rank, neuron, score) up to the largest k.
    """
    from probes.probing.protocol import cv_splits
    from probes.probing.solver import fit_probes, probe_inputs

    X, y = probe_inputs(X, y)
    n, n_layers, width = X.shape
    ks = sorted({min(k, width) for k in ks})
    splits = cv_splits(y, settings, groups)
    trains = np.stack([train for _, _, train in splits])
    scores = {criterion: neuron_scores(X, y, trains, criterion) for criterion in criteria}  # (runs, layers, width)
    orders = {criterion: ranked_neurons(values)[..., : ks[-1]] for criterion, values in scores.items()}
    layers = np.arange(1, n_layers + 1)
    chosen = [
        pd.DataFrame(
            {
                "criterion": criterion,
                "layer": np.repeat(layers, ks[-1]),
                "seed": seed,
                "fold": fold,
                "rank": np.tile(np.arange(ks[-1]), n_layers),
                "neuron": orders[criterion][run].ravel(),
                "score": np.take_along_axis(scores[criterion][run], orders[criterion][run], 1).ravel(),
            }
        )
        for criterion in criteria
        for run, (seed, fold, _) in enumerate(splits)
    ]
    frames = []
    for seed in dict.fromkeys(seed for seed, _, _ in splits):
        runs = [run for run, (run_seed, _, _) in enumerate(splits) if run_seed == seed]
        # (n, runs x criteria x layers, largest k): each run's own top neurons of every layer and criterion,
        # gathered once; a probe on the top k reads the first k columns
        slices = [(run, criterion) for run in runs for criterion in criteria]
        top = np.concatenate(
            [np.take_along_axis(X, orders[criterion][run][None], 2) for run, criterion in slices], axis=1
        ).astype(np.float32)
        for k in ks:
            fit = fit_probes(top[..., :k], np.repeat(y[None], len(runs), 0), trains[runs], settings.solver)
            for index, (run, criterion) in enumerate(slices):
                test = np.flatnonzero(~trains[run])
                decision = fit.decision[index * n_layers : (index + 1) * n_layers, runs.index(run)][:, test]
                predicted = (decision > 0).astype(np.int64)  # (layers, test rows)
                frames.append(
                    pd.DataFrame(
                        {
                            "criterion": criterion,
                            "layer": np.repeat(layers, len(test)),
                            "k": k,
                            "seed": seed,
                            "fold": splits[run][1],
                            "example": np.tile(test, n_layers),
                            "predicted": predicted.ravel(),
                            "correct": predicted.ravel() == np.tile(y[test], n_layers),
                        }
                    )
                )
    predictions = pd.concat(frames, ignore_index=True)
    predictions = predictions.sort_values(["criterion", "layer", "k", "seed", "example"], ignore_index=True)
    return predictions, pd.concat(chosen, ignore_index=True)


def f1_scores(
    predictions: pd.DataFrame,
    labels: np.ndarray,
    n_boot: int,
    ci: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
    points: Sequence[str] = ("criterion", "layer", "k"),
) -> pd.DataFrame:
    """Out-of-fold F1 of the positive class per point, with a percentile bootstrap over examples (or groups).

    Each example's true-positive, false-positive and false-negative indicators are averaged over seeds;
    a resample's F1 is 2TP / (2TP + FP + FN) of its resampled sums, the same resamples for every point.
    """
    from probes.dictionaries.sae import per_example
    from probes.resampling import bootstrap_weights, percentile_interval

    labels = np.asarray(labels)
    frame = predictions.assign(
        tp=(predictions["predicted"] == 1) & (labels[predictions["example"]] == 1),
        fp=(predictions["predicted"] == 1) & (labels[predictions["example"]] == 0),
        fn=(predictions["predicted"] == 0) & (labels[predictions["example"]] == 1),
    )
    counts = {name: per_example(frame, points, name) for name in ("tp", "fp", "fn")}
    weights = bootstrap_weights(counts["tp"].shape[1], n_boot, seed, groups)
    tp, fp, fn = (counts[name].to_numpy(np.float64) for name in ("tp", "fp", "fn"))

    def f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)

    samples = f1(weights @ tp.T, weights @ fp.T, weights @ fn.T)  # (n_boot, points)
    lo, hi = percentile_interval(samples, ci)
    summary = counts["tp"].index.to_frame(index=False)
    return summary.assign(f1=f1(tp.sum(1), fp.sum(1), fn.sum(1)), f1_lo=lo, f1_hi=hi)


def best_single_neurons(chosen: pd.DataFrame, X: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Per criterion and layer, the neuron the folds ranked first most often, with its activation per class.

    ``fold_agreement`` is the share of (seed, fold) runs that ranked it first; the k = 1 probe's F1 is
    out-of-fold, so it may rest on other neurons in the folds that disagree. Means and firing rates
    (activation > 0) are over all rows of each class (``class_0``, ``class_1``).
    """
    X, y = np.asarray(X), np.asarray(y)
    first = chosen[chosen["rank"] == 0]
    rows = []
    for (criterion, layer), group in first.groupby(["criterion", "layer"], sort=True):
        counts = group["neuron"].value_counts()
        best = int(counts[counts == counts.max()].index.min())
        values = X[:, int(layer) - 1, best].astype(np.float64)
        means = [float(values[y == c].mean()) for c in (0, 1)]
        rows.append(
            {
                "criterion": criterion,
                "layer": int(layer),
                "neuron": best,
                "fold_agreement": float(counts.max() / len(group)),
                "class_0": classes[0],
                "class_1": classes[1],
                "mean_0": means[0],
                "mean_1": means[1],
                "firing_0": float((values[y == 0] > 0).mean()),
                "firing_1": float((values[y == 1] > 0).mean()),
                "favours": classes[int(means[1] > means[0])],
            }
        )
    return pd.DataFrame(rows)
