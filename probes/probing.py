"""Concept depth: layer-wise linear probes with a control task, and summaries of the accuracy-vs-layer curve.

docs/methods.md §2. For every layer, seed and fold we fit scikit-learn's L2 logistic regression on
features standardised with the training fold's statistics, once on the true labels and once on
permuted (control) labels. That is about a thousand small fits per model x dataset, so instead of
a loop over ``sklearn.linear_model.LogisticRegression`` every fit runs at once as one batched
L-BFGS solve of the same objective (:func:`probes.solver.fit_probes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from probes.perturbations import unperturbed
from probes.solver import fit_probes

METRICS = (
    "accuracy",
    "f1",
    "roc_auc",
    "control_accuracy",
    "control_f1",
    "control_roc_auc",
    "selectivity",
)
CONTROLS = ("permuted",)
DTYPES = ("float32", "float64")

_CONTROL_STREAM = 0xC0  # mixed with the CV seed so control permutations never reuse the fold-shuffle stream


@dataclass(frozen=True)
class ProbeSettings:
    """The probe protocol; every field that changes a number is recorded with the results.

    ``tol`` is in the units of scikit-learn's ``lbfgs`` tolerance: a fit has converged when every
    component of the gradient of (mean training log-loss + ||w||^2 / (2 C n_train)) is below ``tol``
    in absolute value (scikit-learn's default is 1e-4; 1e-6 puts the probe well inside the region
    where test predictions no longer change). ``max_iter`` caps the L-BFGS iterations of each fit.
    ``mdl`` adds online-code MDL rows (:func:`online_codelength`) to :func:`probe_layers`'s table.
    ``dtype`` is the solver's float type: float32 halves the cost and reaches tolerances down to
    about 1e-7 on real activations; below that it stalls at its precision until ``max_iter``, so use
    float64.
    """

    folds: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    C: float = 1.0
    tol: float = 1e-6
    max_iter: int = 500
    control: str = "permuted"
    device: str = "cpu"
    dtype: str = "float32"
    mdl: bool = False

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty tuple of distinct integers, got {self.seeds!r}")
        if not self.C > 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {self.control!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")


# ---------------------------------------------------------------------------------------------------
# Public API


def probe_layers(X: np.ndarray, y: np.ndarray, settings: ProbeSettings, progress: bool = False) -> pd.DataFrame:
    """Probe every layer with repeated stratified CV and a permuted-label control task.

    ``X`` is (n_examples, n_layers, d) pooled activations, ``y`` binary labels. Returns a tidy frame
    (layer, seed, fold, metric, value) with the metrics in :data:`METRICS`; the same inputs and
    settings always give the same numbers.
    """
    X, y = _validate(X, y, settings)
    labels, train = _design(y, settings)
    fit = fit_probes(X, labels, train, settings, progress=progress)
    scores = _scores(fit.decision, labels, ~train)  # (metric, layer, problem)
    n_layers = X.shape[1]
    n_runs = len(settings.seeds) * settings.folds
    task, control = scores[:, :, 0::2], scores[:, :, 1::2]  # problems alternate task, control
    values = np.concatenate([task, control, (task[0] - control[0])[None]])  # (7, layer, run)
    layer, run = np.meshgrid(np.arange(n_layers), np.arange(n_runs), indexing="ij")
    seeds = np.asarray(settings.seeds)[run // settings.folds]
    frame = pd.DataFrame(
        {
            "layer": np.tile(layer.ravel(), len(METRICS)),
            "seed": np.tile(seeds.ravel(), len(METRICS)),
            "fold": np.tile((run % settings.folds).ravel(), len(METRICS)),
            "metric": np.repeat(METRICS, layer.size),
            "value": values.reshape(-1).astype(np.float64),
        }
    )
    if settings.mdl:
        frame = pd.concat([frame, online_codelength(X, y, settings)], ignore_index=True)
    return frame.sort_values(["layer", "seed", "fold", "metric"], kind="stable").reset_index(drop=True)


def control_labels(y: np.ndarray, seed: int) -> np.ndarray:
    """The control task's labels for one CV seed: ``y`` permuted by a stream derived from that seed.

    The same permutation serves every fold of the seed, so a probe can only beat chance on it by
    memorising training examples.
    """
    return np.random.default_rng([seed, _CONTROL_STREAM]).permutation(np.asarray(y))


def cv_splits(y: np.ndarray, settings: ProbeSettings) -> list[tuple[int, int, np.ndarray]]:
    """(seed, fold, training-row mask) of every probe run: ``StratifiedKFold(shuffle=True, random_state=seed)``.

    Every probe of the pipeline (dense, control, sparse) uses these splits, so their scores compare run by run.
    """
    from sklearn.model_selection import StratifiedKFold

    splits = []
    for seed in settings.seeds:
        splitter = StratifiedKFold(settings.folds, shuffle=True, random_state=seed)
        for fold, (train_idx, _) in enumerate(splitter.split(np.zeros((len(y), 1)), y)):
            mask = np.zeros(len(y), dtype=bool)
            mask[train_idx] = True
            splits.append((seed, fold, mask))
    return splits


def summarise_curve(acc: np.ndarray, chance: float, delta: float = 0.01, jump_min: float = 0.03) -> dict:
    """Half-rise, jump and converging layers of one accuracy-vs-layer curve (index = layer 0..L).

    ``jump_layer`` is None when no one-layer rise reaches ``jump_min``; ``jump_size`` is always the
    largest one-layer rise (NaN for a single layer), so a "no jump" verdict can be checked.
    """
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 1 or acc.size == 0 or not np.isfinite(acc).all():
        raise ValueError("acc must be a non-empty 1-D array of finite accuracies")
    best = float(acc.max())
    steps = np.diff(acc)
    jump = int(np.argmax(steps)) + 1 if steps.size else None
    jump_size = float(steps.max()) if steps.size else math.nan
    return {
        "best_accuracy": best,
        "best_layer": int(np.argmax(acc)),
        "half_rise_layer": _first(acc >= chance + 0.5 * (best - chance)),
        "jump_layer": jump if steps.size and jump_size >= jump_min else None,
        "jump_size": jump_size,
        "converging_layer": _first(acc >= best - delta),
    }


def summarise_concept_depth(
    tidy: pd.DataFrame,
    chance: float,
    depth: int,
    delta: float = 0.01,
    jump_min: float = 0.03,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """Concept-depth summary of one model x dataset from :func:`probe_layers`'s tidy frame.

    Point estimates come from the accuracy curve averaged over all seed x fold runs. Intervals
    (``*_lo``/``*_hi``) are percentile intervals of a seeded bootstrap that resamples whole runs, so
    the dependence between layers of one run is kept; the bounds are bootstrap values themselves,
    so layer bounds are layers. Layer statistics are reported in the tidy frame's layer numbers
    (0..L for the residual stream, 1..L for sites inside blocks) and as relative depth layer / L,
    with ``depth`` = L. Intervals of a statistic that can be undefined (no jump; never above chance)
    use the resamples where it is defined. With MDL rows, the highest mean compression and its layer too.
    """
    if depth < 1:
        raise ValueError("depth (the model's number of blocks L) must be >= 1 to define relative depth")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    layers, runs = None, {}
    for metric in ("accuracy", "control_accuracy", "selectivity"):
        layers, runs[metric] = _runs(tidy, metric, layers)
    acc = runs["accuracy"]
    point = summarise_curve(acc.mean(0), chance, delta, jump_min)

    rng = np.random.default_rng(seed)
    curves = acc[rng.integers(0, len(acc), size=(n_boot, len(acc)))].mean(1)
    boot = [summarise_curve(curve, chance, delta, jump_min) for curve in curves]

    summary: dict = {"n_runs": len(acc), "chance": float(chance), "jump_size": point["jump_size"]}
    for key in ("best_accuracy", "best_layer", "half_rise_layer", "jump_layer", "converging_layer"):
        is_layer = key.endswith("_layer")
        values = [point[key], *_percentile_interval([b[key] for b in boot], ci, layers=is_layer)]
        if is_layer:
            values = [None if v is None else int(layers[v]) for v in values]
        summary |= dict(zip((key, f"{key}_lo", f"{key}_hi"), values))
    for name in ("best", "half_rise", "jump", "converging"):
        for suffix in ("", "_lo", "_hi"):
            layer = summary[f"{name}_layer{suffix}"]
            summary[f"{name}_depth{suffix}"] = None if layer is None else layer / depth

    selectivity = runs["selectivity"].mean(0)
    summary["mean_control_accuracy"] = float(runs["control_accuracy"].mean())
    summary["max_selectivity"] = float(selectivity.max())
    summary["max_selectivity_layer"] = int(layers[np.argmax(selectivity)])
    summary["max_selectivity_depth"] = summary["max_selectivity_layer"] / depth
    compression = tidy[tidy["metric"] == "mdl_compression"].groupby("layer")["value"].mean()
    if len(compression):  # MDL rows are there when the probes were run with mdl=True
        summary["max_mdl_compression"] = float(compression.max())
        summary["max_mdl_compression_layer"] = int(compression.idxmax())
    return summary


# ---------------------------------------------------------------------------------------------------
# Protocol: validation, folds and control labels, metrics


def _validate(X: np.ndarray, y: np.ndarray, settings: ProbeSettings) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y).ravel()
    if X.ndim != 3:
        raise ValueError(f"X must be (n_examples, n_layers, d), got shape {X.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} examples but y has {y.shape[0]} labels")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite activations")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size != 2 or not set(classes.tolist()) <= {0, 1}:
        raise ValueError(f"y must hold both binary classes 0 and 1, got classes {classes.tolist()}")
    if counts.min() < settings.folds:
        counts_by_class = dict(zip(classes.tolist(), counts.tolist()))
        raise ValueError(f"too few examples per class for {settings.folds}-fold CV: class counts {counts_by_class}")
    return X, y.astype(np.int64)


def _design(y: np.ndarray, settings: ProbeSettings) -> tuple[np.ndarray, np.ndarray]:
    """Labels and training masks of all problems: for each seed and fold, the task then its control.

    Folds are scikit-learn's ``StratifiedKFold(shuffle=True, random_state=seed)`` on the true labels,
    so a plain scikit-learn loop sees identical splits; the control labels of a seed are one
    permutation of ``y`` (shared by its folds) drawn from a stream derived from that seed.
    """
    labels, train = [], []
    for seed, _, mask in cv_splits(y, settings):
        control = control_labels(y, seed)
        if np.unique(control[mask]).size != 2:
            raise ValueError(f"seed {seed}: a control training fold holds a single class; too few examples")
        labels += [y, control]
        train += [mask, mask]
    return np.array(labels), np.array(train)


def _scores(decision: np.ndarray, labels: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Accuracy, F1 (class 1) and ROC-AUC on each problem's test rows; (3, layer, problem).

    ROC-AUC is the Mann-Whitney statistic with tied scores counted half, which is what
    ``sklearn.metrics.roc_auc_score`` computes; it is NaN when a test fold holds one class.
    """
    from scipy.stats import rankdata

    positive = labels.astype(bool)[None]
    pred = decision > 0
    tp = (test & pred & positive).sum(-1)
    fp = (test & pred & ~positive).sum(-1)
    fn = (test & ~pred & positive).sum(-1)
    n_test = test.sum(-1)
    accuracy = (n_test - fp - fn) / n_test
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        # Rows outside the test fold get +inf so the ranks of test rows are their ranks among test rows.
        ranks = rankdata(np.where(test, decision, np.inf), axis=-1)
        n_pos = (test & positive).sum(-1)
        n_neg = n_test - n_pos
        auc = ((ranks * (test & positive)).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.stack([accuracy, f1, np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)])


def _runs(tidy: pd.DataFrame, metric: str, layers: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One metric as a (seed x fold run, layer) matrix and its layer numbers, checking that every run
    covers every layer (the same layers as ``layers``, when given)."""
    rows = tidy[tidy["metric"] == metric]
    table = rows.pivot_table(index=["seed", "fold"], columns="layer", values="value", aggfunc="mean")
    found = table.columns.to_numpy()
    if table.empty or table.isna().any().any() or (layers is not None and not np.array_equal(found, layers)):
        raise ValueError(f"tidy frame must hold metric {metric!r} for the same layers in every seed x fold run")
    return found, table.to_numpy(dtype=np.float64)


def _percentile_interval(samples: list, ci: float, layers: bool) -> tuple:
    """Conservative percentile interval whose bounds are sample values (so layer bounds are layers)."""
    kept = np.array([s for s in samples if s is not None], dtype=np.float64)
    if not kept.size:
        return None, None
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(kept, alpha, method="lower"), np.quantile(kept, 1 - alpha, method="higher")
    return (int(lo), int(hi)) if layers else (float(lo), float(hi))


def _first(condition: np.ndarray) -> int | None:
    return int(np.argmax(condition)) if condition.any() else None


# ---------------------------------------------------------------------------------------------------
# Minimum description length (online code)

MDL_FRACTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
MDL_METRICS = ("mdl_codelength", "mdl_compression")
_MDL_STREAM = 0x3D1  # mixed with the seed for the transmission order, apart from the CV and control streams


def mdl_boundaries(n: int) -> np.ndarray:
    """Block ends of the online code: Voita & Titov's fractions of the data (0.1%, 0.2%, ..., 50%, 100%)."""
    return np.unique(np.clip(np.round(np.asarray(MDL_FRACTIONS) * n).astype(int), 1, n))


def online_codelength(X: np.ndarray, y: np.ndarray, settings: ProbeSettings) -> pd.DataFrame:
    """Online-code MDL of the labels given each layer's activations, per seed (docs/methods.md §2).

    For each seed the examples are sent in a seeded random order, in blocks ending at
    :func:`mdl_boundaries`. A block is coded with the probe fitted (same protocol as the accuracy
    probes) on every example before it, at -log2 p(label) bits per example; the first block, and any
    block whose predecessors hold a single class, is sent with the uniform code, log2(2) = 1 bit per
    label. Returns tidy rows (layer, seed, fold = -1, metric, value) with the online codelength in bits
    and the compression, uniform codelength / online codelength: about 1 when the layer carries nothing
    about the labels, higher the more it does.
    """
    X, y = _validate(X, y, settings)
    n, n_layers = X.shape[0], X.shape[1]
    boundaries = mdl_boundaries(n)
    problems, uniform_bits = [], {}
    for seed in settings.seeds:
        order = np.random.default_rng([seed, _MDL_STREAM]).permutation(n)
        uniform_bits[seed] = float(boundaries[0])
        for start, end in zip(boundaries[:-1], boundaries[1:]):
            train = np.zeros(n, dtype=bool)
            train[order[:start]] = True
            block = np.zeros(n, dtype=bool)
            block[order[start:end]] = True
            if np.unique(y[train]).size < 2:
                uniform_bits[seed] += float(end - start)
            else:
                problems.append((seed, train, block))
    online = np.array([[uniform_bits[seed] for seed in settings.seeds]] * n_layers)  # (layer, seed)
    if problems:
        fit = fit_probes(X, np.tile(y, (len(problems), 1)), np.array([train for _, train, _ in problems]), settings)
        # -log2 p(label) from the decision z: log2(1 + exp(-z)) for label 1, log2(1 + exp(z)) for label 0
        bits = np.logaddexp(0.0, np.where(y == 1, -1.0, 1.0) * fit.decision) / np.log(2)  # (layer, problem, n)
        block_bits = (bits * np.array([block for _, _, block in problems])[None]).sum(-1)  # (layer, problem)
        for p, (seed, _, _) in enumerate(problems):
            online[:, settings.seeds.index(seed)] += block_bits[:, p]
    rows = [
        {"layer": layer, "seed": seed, "fold": -1, "metric": metric, "value": value}
        for layer in range(n_layers)
        for s, seed in enumerate(settings.seeds)
        for metric, value in zip(MDL_METRICS, (online[layer, s], n / online[layer, s]))
    ]
    return pd.DataFrame(rows)


def perturbation_effects(summary: pd.DataFrame, weights: str) -> pd.DataFrame:
    """Each perturbed run beside its model's unperturbed run on the task: how far convergence and accuracy moved."""
    keys = ["model", "dataset"]
    columns = [f"{name}{suffix}" for name in ("converging_depth", "best_accuracy") for suffix in ("", "_lo", "_hi")]
    own = unperturbed(summary, weights)
    base = summary[own].set_index(keys)
    effects = summary.loc[~own, [*keys, "level", "weights", "noise", *columns]].reset_index(drop=True)
    for name in ("converging_depth", "best_accuracy"):
        reference = base[name].reindex(pd.MultiIndex.from_frame(effects[keys])).to_numpy()
        effects[f"{name}_unperturbed"] = reference
        effects[f"{name}_shift"] = effects[name] - reference
    return effects


def depth_by_level(summary: pd.DataFrame, weights: str) -> pd.DataFrame:
    """Every model's converging depth per task, grouped by task level, with each model's mean over a level's tasks."""
    from probes.datasets import TASK_LEVELS

    rank = {level: i for i, level in enumerate(TASK_LEVELS)}
    table = summary[unperturbed(summary, weights)]
    table = table[
        [
            "level",
            "dataset",
            "model",
            "n_layers",
            *(f"converging_{unit}{suffix}" for unit in ("layer", "depth") for suffix in ("", "_lo", "_hi")),
            "best_accuracy",
        ]
    ]
    table = table.assign(
        level_mean_converging_depth=table.groupby(["model", "level"])["converging_depth"].transform("mean")
    )
    order = table["level"].map(rank).fillna(len(rank))
    return (
        table.assign(_order=order)
        .sort_values(["_order", "dataset", "model"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )
