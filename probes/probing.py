"""Concept depth: layer-wise linear probes with a control task, and summaries of the accuracy-vs-layer curve.

METHODS.md §2. For every layer, seed and fold we fit scikit-learn's L2 logistic regression on
features standardised with the training fold's statistics, once on the true labels and once on
permuted (control) labels. That is about a thousand small fits per model x dataset, so instead of
a loop over ``sklearn.linear_model.LogisticRegression`` every fit runs at once as one batched
L-BFGS solve of the same objective in torch (see :func:`fit_probes`); the solutions agree with
scikit-learn's to the solver tolerance, and ``benchmarks/bench_probes.py`` measures the speed-up.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probes.io import atomic_path, read_json, sha256_file, stage, write_json
from probes.perturbations import unperturbed
from probes.provenance import package_versions
from probes.report import write_table

if TYPE_CHECKING:
    import torch
    from tqdm.auto import tqdm

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

# Solver constants. None of them changes the solution, only how fast it is reached.
_HISTORY = 10  # L-BFGS memory (pairs of steps and gradient changes)
_PRECOND_FLOOR = 0.05  # preconditioner directions must be able to add this much curvature to the identity
_LINE_SEARCH_STEPS = 2  # safeguarded 1-D Newton steps on the exact (convex) objective along each direction
_MEMORY_BUDGET = 2 << 30  # bytes of solver state per chunk of layers
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


@dataclass(frozen=True)
class ProbeFit:
    """Solutions of a batch of probes, in the standardised coordinates scikit-learn would report.

    Arrays are indexed [layer, problem, ...]: ``coef`` (d) and ``intercept`` equal
    ``LogisticRegression.coef_[0]`` / ``intercept_[0]`` fitted on the problem's standardised training
    rows, and ``decision`` (n) is its ``decision_function`` on every row, standardised the same way.
    """

    coef: np.ndarray
    intercept: np.ndarray
    decision: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray


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


def fit_probes(
    X: np.ndarray, labels: np.ndarray, train: np.ndarray, settings: ProbeSettings, progress: bool = False
) -> ProbeFit:
    """Fit standardise + L2 logistic regression for every layer x problem at once.

    ``labels`` and ``train`` are (n_problems, n) arrays: the binary targets and training-row mask of
    each problem; every problem is fitted on every layer of ``X`` (n, n_layers, d). The objective is
    scikit-learn's, C * sum(log-loss) + ||w||^2 / 2 with an unpenalised intercept, on features
    standardised with the problem's training mean and (ddof=0) std. A public seam so that notebooks
    and tests can inspect coefficients, not only scores.
    """
    import torch
    from tqdm.auto import tqdm
    X = np.asarray(X)
    labels = np.asarray(labels, dtype=np.float64)
    train = np.asarray(train, dtype=bool)
    n, n_layers, d = X.shape
    n_problems = labels.shape[0]
    if labels.shape != (n_problems, n) or train.shape != labels.shape:
        raise ValueError(f"labels {labels.shape} and train {train.shape} must both be (n_problems, {n})")
    for p in range(n_problems):
        if np.unique(labels[p, train[p]]).size != 2:
            raise ValueError(f"problem {p}: its training rows must hold both classes")

    device, dtype = torch.device(settings.device), getattr(torch, settings.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    # Solver state (activations, preconditioner, iterates, L-BFGS history, margins) plus float64 temporaries.
    rank = min(n, d)
    state = n * d + rank * (d + rank) + (2 * _HISTORY + 10) * n_problems * (d + 1) + _HISTORY * n_problems * rank
    per_layer = itemsize * (state + 8 * n * n_problems) + 8 * 4 * n * d
    chunk = max(1, min(n_layers, _MEMORY_BUDGET // per_layer))

    out = ProbeFit(
        coef=np.zeros((n_layers, n_problems, d)),
        intercept=np.zeros((n_layers, n_problems)),
        decision=np.zeros((n_layers, n_problems, n)),
        n_iter=np.zeros((n_layers, n_problems), dtype=np.int64),
        converged=np.zeros((n_layers, n_problems), dtype=bool),
    )
    targets = torch.as_tensor(labels, dtype=dtype, device=device)  # (P, n)
    mask = torch.as_tensor(train, dtype=dtype, device=device)  # (P, n)
    with tqdm(total=n_layers, desc="probe layers", unit="layer", disable=not progress) as bar:
        for start in range(0, n_layers, chunk):
            Xt, centre, inv_scale = _standardisation(X[:, start : start + chunk], train, dtype, device)
            batch = _Problems(Xt, centre, inv_scale, targets, mask, settings.C)
            _lbfgs(batch, settings.tol, settings.max_iter, start, out, bar)
    if not out.converged.all():
        warnings.warn(
            f"{int((~out.converged).sum())} of {out.converged.size} probes did not reach tol={settings.tol} "
            f"within max_iter={settings.max_iter} L-BFGS iterations (median {np.median(out.n_iter):.0f}); "
            "raise max_iter or use dtype='float64' for very small tolerances",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


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
    """Online-code MDL of the labels given each layer's activations, per seed (METHODS.md §2).

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


# ---------------------------------------------------------------------------------------------------
# The batched solver


def _standardisation(
    X: np.ndarray, train: np.ndarray, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Globally standardised activations plus each problem's training mean and 1/std in those units.

    Fitting on (x - centre) * inv_scale is exactly StandardScaler on the raw training rows (the
    affine maps compose), but the global step keeps float32 arithmetic well conditioned: fold means
    are then near 0 and fold stds near 1 even for "massive activation" dimensions. Statistics are
    float64; features that StandardScaler would call constant in a training fold (its own variance
    test) get scale 1. Returns Xt (layer, n, d), centre and inv_scale (layer, problem, d).
    """
    import torch
    raw = torch.as_tensor(X).to(device=device, dtype=torch.float64)
    n, n_layers, d = raw.shape
    raw = raw.reshape(n, -1)
    mean = raw.mean(0)
    std = raw.std(0, correction=0)
    std = torch.where(std == 0, 1.0, std)
    Xt = raw.sub_(mean).div_(std)
    mask = torch.as_tensor(train, dtype=torch.float64, device=device)
    n_train = mask.sum(1, keepdim=True)
    centre = (mask @ Xt) / n_train
    second = (mask @ Xt.square()) / n_train
    var = (second - centre.square()).clamp_min_(0)
    # One-pass variance loses digits when a fold's variance is tiny next to the global one; redo those
    # two-pass. (Features constant over all rows are exactly 0 here and need no second pass.)
    suspect = (var <= 1e-8 * second) & (second > 0)
    for p in torch.nonzero(suspect.any(1)).flatten().tolist():
        cols = torch.nonzero(suspect[p]).flatten()
        rows = Xt[:, cols][mask[p].bool()]
        var[p, cols] = (rows - rows.mean(0)).square().mean(0)
    raw_mean, raw_var = mean + centre * std, var * std.square()
    eps = torch.finfo(torch.float64).eps
    constant = raw_var <= n_train * eps * raw_var + (n_train * raw_mean * eps).square()
    inv_scale = std / torch.where(constant, 1.0, raw_var.sqrt())

    def by_layer(a: torch.Tensor) -> torch.Tensor:
        return a.reshape(-1, n_layers, d).transpose(0, 1).to(dtype).contiguous()

    return by_layer(Xt), by_layer(centre), by_layer(inv_scale)


class _Problems:
    """The objectives of one chunk of layers x problems, sharing each layer's activations.

    A problem's weights w live in its standardised coordinates; its margins on all rows are
    Xt @ (w * inv_scale) + b - centre . (w * inv_scale), one batched GEMM per layer for all problems.
    Margins and per-row tensors are laid out (layer, problem, row) so both GEMMs are row-major.
    """

    def __init__(self, Xt, centre, inv_scale, targets, mask, C: float) -> None:
        self.Xt, self.targets, self.mask, self.C = Xt, targets, mask, C
        self.inv_scale = inv_scale
        self.shifted = centre * inv_scale
        self.n_train = mask.sum(-1)  # (P,)
        # Keep the directions where even the largest logistic curvature, 1/4, adds _PRECOND_FLOOR to the Hessian.
        floor = _PRECOND_FLOOR * 4 * Xt.shape[1] / (C * float(self.n_train.min()))
        self.basis, self.spectrum = _principal_directions(Xt, floor)  # (layer, rank, d), (layer, rank)

    def select(self, keep: torch.Tensor) -> None:
        """Drop finished layers so that later iterations only pay for the active ones."""
        self.Xt, self.inv_scale, self.shifted = self.Xt[keep], self.inv_scale[keep], self.shifted[keep]
        self.basis, self.spectrum = self.basis[keep], self.spectrum[keep]

    def margins(self, w: torch.Tensor, b: torch.Tensor, layers: torch.Tensor | None = None) -> torch.Tensor:
        """(layer, P, n) decision values of weights (layer, P, d) and intercepts (layer, P).

        ``layers`` (a mask over the active layers) evaluates only those layers.
        """
        import torch
        Xt, inv_scale, shifted = self.Xt, self.inv_scale, self.shifted
        if layers is not None:
            Xt, inv_scale, shifted = Xt[layers], inv_scale[layers], shifted[layers]
        z = torch.bmm(w * inv_scale, Xt.transpose(1, 2))
        return z.add_((b - torch.linalg.vecdot(w, shifted))[..., None])

    def gradient(self, w: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient (w part, intercept part) and the mean logistic curvature p(1-p) of the training rows."""
        import torch
        p = torch.sigmoid(z)
        residual = (p - self.targets).mul_(self.mask).mul_(self.C)
        grad_b = residual.sum(-1)
        grad_w = torch.bmm(residual, self.Xt).mul_(self.inv_scale).add_(w).sub_(self.shifted * grad_b[..., None])
        curvature = torch.linalg.vecdot(p.mul_(1 - p), self.mask) / self.n_train
        return grad_w, grad_b, curvature


def _principal_directions(Xt: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Right singular vectors (layer, rank, d) and squared singular values of each layer's Xt.

    They make the L-BFGS preconditioner (see :func:`_lbfgs`), so only the speed of convergence,
    never the solution, depends on them. Exact, from the eigendecomposition of the smaller Gram
    matrix (O(min(n, d)^3) per layer). Directions whose squared singular value is below ``floor``
    barely change the Hessian and are dropped (zeroed where other layers of the chunk need them, so
    that every layer keeps one shape).
    """
    import torch
    n_layers, n, d = Xt.shape
    if n <= d:
        spectrum, vectors = torch.linalg.eigh(torch.bmm(Xt, Xt.transpose(1, 2)))
    else:
        spectrum, vectors = torch.linalg.eigh(torch.bmm(Xt.transpose(1, 2), Xt))
    keep = spectrum.flip(-1) >= floor
    rank = max(int(keep.sum(1).max()), 1)
    spectrum, vectors, keep = spectrum.flip(-1)[:, :rank], vectors.flip(-1)[:, :, :rank], keep[:, :rank]
    if n <= d:
        directions = torch.bmm(vectors.transpose(1, 2), Xt) * torch.where(keep, spectrum, 1.0).rsqrt()[..., None]
    else:
        directions = vectors.transpose(1, 2)
    return (directions * keep[..., None]).contiguous(), spectrum * keep


def _lbfgs(batch: _Problems, tol: float, max_iter: int, first_layer: int, out: ProbeFit, bar: tqdm) -> None:
    """Minimise every objective of ``batch`` with L-BFGS and write the solutions into ``out``.

    The initial inverse Hessian of each problem is that of I + C * mean(p(1-p)) * Z^T Z, with the
    fold's Z^T Z approximated by (n_train / n) Xt^T Xt on the layer's principal directions (identity
    elsewhere), and 1 / (C * sum p(1-p)) for the intercept, rescaled by the usual s'y / y'Hy factor.
    It follows the logistic curvature as the fit sharpens. Activations are strongly correlated, so
    this matters: on SmolLM2 residual streams it cuts the median iterations from ~370 to ~30.
    Margins are linear in the step, so the line search minimises the exact objective along the
    direction without further GEMMs. Problems stop individually at the gradient test of
    :class:`ProbeSettings`, and layers leave the batch once all their problems have.
    """
    import torch
    Xt = batch.Xt
    n_layers, n, d = Xt.shape
    n_problems = batch.targets.shape[0]
    C, n_train = batch.C, batch.n_train
    threshold = tol * C * n_train
    layer_ids = torch.arange(first_layer, first_layer + n_layers)
    tiny = torch.finfo(Xt.dtype).tiny

    prior = torch.linalg.vecdot(batch.mask, batch.targets) / n_train
    w = Xt.new_zeros(n_layers, n_problems, d)
    b = torch.log(prior / (1 - prior)).expand(n_layers, n_problems).clone()
    z = batch.margins(w, b)
    grad_w, grad_b, curvature = batch.gradient(w, z)
    grad_p = torch.bmm(grad_w, batch.basis.transpose(1, 2))  # gradient in the principal directions
    steps_w = Xt.new_zeros(_HISTORY, n_layers, n_problems, d)
    steps_b = Xt.new_zeros(_HISTORY, n_layers, n_problems)
    diffs_w, diffs_b = torch.zeros_like(steps_w), torch.zeros_like(steps_b)
    diffs_p = Xt.new_zeros(_HISTORY, n_layers, n_problems, batch.basis.shape[1])
    rho = Xt.new_zeros(_HISTORY, n_layers, n_problems)
    done = torch.zeros(n_layers, n_problems, dtype=torch.bool, device=Xt.device)
    converged = torch.zeros_like(done)
    n_iter = torch.zeros(n_layers, n_problems, dtype=torch.long, device=Xt.device)
    stored = 0

    for iteration in range(max_iter + 1):
        small = torch.maximum(grad_w.abs().amax(-1), grad_b.abs()) <= threshold
        converged |= small & ~done
        done |= small
        if iteration == max_iter:
            done[:] = True
        finished = done.all(1)
        if finished.any():
            ids = layer_ids[finished.cpu()].numpy()
            decision = batch.margins(w[finished], b[finished], finished)  # fresh, without accumulated updates
            out.coef[ids] = w[finished].double().cpu().numpy()
            out.intercept[ids] = b[finished].double().cpu().numpy()
            out.decision[ids] = decision.double().cpu().numpy()
            out.n_iter[ids] = n_iter[finished].cpu().numpy()
            out.converged[ids] = converged[finished].cpu().numpy()
            bar.update(len(ids))
            keep = ~finished
            if not keep.any():
                return
            batch.select(keep)
            layer_ids, w, b, z = layer_ids[keep.cpu()], w[keep], b[keep], z[keep]
            grad_w, grad_b, grad_p, curvature = grad_w[keep], grad_b[keep], grad_p[keep], curvature[keep]
            steps_w, steps_b, diffs_w, diffs_b = steps_w[:, keep], steps_b[:, keep], diffs_w[:, keep], diffs_b[:, keep]
            diffs_p = diffs_p[:, keep]
            rho, done, converged, n_iter = rho[:, keep], done[keep], converged[keep], n_iter[keep]

        # Two-loop recursion around the curvature-scaled principal-direction preconditioner H0.
        scale = (C * curvature * n_train / n)[..., None] * batch.spectrum[:, None, :]
        shrink = scale / (1 + scale)  # H0 = I - V diag(shrink) V^T on w
        intercept_scale = 1 / (C * curvature * n_train)
        q_w, q_b, q_p = grad_w.clone(), grad_b.clone(), grad_p.clone()
        history = [i % _HISTORY for i in range(stored - 1, max(stored - _HISTORY, 0) - 1, -1)]  # newest first
        alphas = []
        for i in history:
            a = rho[i] * (torch.linalg.vecdot(steps_w[i], q_w) + steps_b[i] * q_b)
            q_w.addcmul_(a[..., None], diffs_w[i], value=-1)
            q_b.addcmul_(a, diffs_b[i], value=-1)
            q_p.addcmul_(a[..., None], diffs_p[i], value=-1)  # keeps q_p = V^T q without a GEMM
            alphas.append(a)
        q_w.sub_(torch.bmm(q_p.mul_(shrink), batch.basis))
        q_b.mul_(intercept_scale)
        if history:
            i = history[0]
            yhy = torch.linalg.vecdot(diffs_w[i], diffs_w[i]) - torch.linalg.vecdot(shrink, diffs_p[i] ** 2)
            yhy += intercept_scale * diffs_b[i] ** 2
            gamma = torch.where(rho[i] > 0, 1 / (rho[i] * yhy).clamp_min(tiny), 1.0)
            q_w.mul_(gamma[..., None])
            q_b.mul_(gamma)
        for i, a in zip(reversed(history), reversed(alphas)):
            beta = rho[i] * (torch.linalg.vecdot(diffs_w[i], q_w) + diffs_b[i] * q_b)
            q_w.addcmul_((a - beta)[..., None], steps_w[i])
            q_b.addcmul_(a - beta, steps_b[i])
        active = ~done
        sign = active.to(q_w.dtype).neg_()  # direction -H g, zero for problems that have stopped
        dir_w, dir_b = q_w.mul_(sign[..., None]), q_b.mul_(sign)

        dz = batch.margins(dir_w, dir_b)
        step = torch.where(active, _line_search(batch, z, dz, w, dir_w), 0.0)
        slot = stored % _HISTORY
        steps_w[slot] = dir_w.mul_(step[..., None])
        steps_b[slot] = dir_b.mul_(step)
        w = w + steps_w[slot]
        b = b + steps_b[slot]
        z.addcmul_(step[..., None], dz)
        new_w, new_b, curvature = batch.gradient(w, z)
        torch.sub(new_w, grad_w, out=diffs_w[slot])
        torch.sub(new_b, grad_b, out=diffs_b[slot])
        new_p = torch.bmm(new_w, batch.basis.transpose(1, 2))
        torch.sub(new_p, grad_p, out=diffs_p[slot])
        sy = torch.linalg.vecdot(steps_w[slot], diffs_w[slot]) + steps_b[slot] * diffs_b[slot]
        rho[slot] = torch.where(sy > 0, 1 / sy.clamp_min(tiny), 0.0)  # a pair without curvature is skipped
        stored += 1
        grad_w, grad_b, grad_p = new_w, new_b, new_p
        n_iter += active


def _line_search(
    batch: _Problems, z: torch.Tensor, dz: torch.Tensor, w: torch.Tensor, dir_w: torch.Tensor
) -> torch.Tensor:
    """Step length along each direction: safeguarded Newton on the convex 1-D objective, from t = 1.

    phi(t) = C sum log-loss(z + t dz) + ||w + t d||^2 / 2; its derivatives cost O(n) per problem
    because the margins along the direction are already known. Each evaluation narrows a bracket
    around the minimiser (phi' < 0 at lo, >= 0 at hi); a Newton step that leaves the bracket is
    replaced by bisection, or by doubling while no upper end is known.
    """
    import torch
    C, targets = batch.C, batch.targets
    masked_dz = batch.mask * dz
    masked_dz2 = masked_dz * dz
    w_dot = torch.linalg.vecdot(w, dir_w)
    d_dot = torch.linalg.vecdot(dir_w, dir_w)
    lo = torch.zeros_like(w_dot)
    hi = torch.full_like(w_dot, math.inf)
    t = torch.ones_like(w_dot)
    for _ in range(_LINE_SEARCH_STEPS):
        p = torch.sigmoid(torch.addcmul(z, t[..., None], dz))
        slope = C * torch.linalg.vecdot(masked_dz, p - targets) + w_dot + t * d_dot
        curve = C * torch.linalg.vecdot(masked_dz2, p.mul_(1 - p)) + d_dot
        lo = torch.where(slope < 0, t, lo)
        hi = torch.where(slope >= 0, t, hi)
        newton = t - slope / curve
        fallback = torch.where(torch.isinf(hi), 2 * lo, (lo + hi) / 2)
        t = torch.where((newton > lo) & (newton < hi), newton, fallback)
    return t



@stage
def probe_stage(
    tensors: str | os.PathLike,
    activations_meta: str | os.PathLike,
    metrics: str | os.PathLike,
    metrics_meta: str | os.PathLike,
    model: str,
    dataset: str,
    level: str,
    pooling: str,
    settings: ProbeSettings | dict,
    weights: str,
    noise: str,
) -> None:
    """The ``probe_layers`` rule: probe every stored layer of one model x perturbation x dataset into a tidy table."""
    settings = settings if isinstance(settings, ProbeSettings) else ProbeSettings(**settings)
    from probes.activations import load_activations

    vectors, labels = load_activations(tensors, pooling)
    extraction = read_json(activations_meta)
    y = labels.numpy()
    tidy = probe_layers(vectors.numpy(), y, settings, progress=True)
    tidy["layer"] = np.asarray(extraction["layers"])[tidy["layer"].to_numpy()]
    keys = {"model": model, "weights": weights, "noise": noise, "dataset": dataset, "level": level,
            "site": extraction["site"], "pooling": pooling}
    tidy = pd.concat([pd.DataFrame(keys, index=tidy.index), tidy], axis=1)
    with atomic_path(metrics) as tmp:
        tidy.to_parquet(tmp, index=False)
    write_json(
        metrics_meta,
        keys
        | {
            "n_layers": extraction["n_layers"],
            "chance": float(np.bincount(y).max() / len(y)),
            "n_examples": int(len(y)),
            "settings": asdict(settings),
            "activations_sha256": sha256_file(tensors),
            "dataset_sha256": extraction["dataset_sha256"],
            "model_weights_sha256": extraction["model_weights_sha256"],
            "versions": package_versions(),
        },
    )


WEIGHTS_NOTE = (
    "weights: the format the model ran in (int8: weight-only, per output channel). The embedded models' originals "
    "are 4-bit GGUF files, so their fp32 is float32 arithmetic on weights dequantised from 4 bits."
)


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
    from probes.datasets import LEVELS

    rank = {level: i for i, level in enumerate(LEVELS)}
    table = summary[unperturbed(summary, weights)]
    table = table[["level", "dataset", "model", "n_layers", *(f"converging_{unit}{suffix}" for unit in ("layer", "depth") for suffix in ("", "_lo", "_hi")), "best_accuracy"]]
    table = table.assign(level_mean_converging_depth=table.groupby(["model", "level"])["converging_depth"].transform("mean"))
    order = table["level"].map(rank).fillna(len(rank))
    return table.assign(_order=order).sort_values(["_order", "dataset", "model"]).drop(columns="_order").reset_index(drop=True)


@stage
def summary_stage(
    metrics: Sequence[str | os.PathLike],
    metrics_meta: Sequence[str | os.PathLike],
    summary_csv: str | os.PathLike,
    summary_html: str | os.PathLike,
    summary: str | os.PathLike,
    metrics_table: str | os.PathLike,
    perturbations_csv: str | os.PathLike,
    perturbations_html: str | os.PathLike,
    levels_csv: str | os.PathLike,
    levels_html: str | os.PathLike,
    weights: str,
    delta: float = 0.01,
    jump_min: float = 0.03,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> None:
    """The ``summarise_concept_depth`` rule: one summary row per model x perturbation x dataset, all metrics in
    one table, the perturbations' effects, and the converging depths grouped by task level across models."""
    rows, tables = [], []
    for metrics_path, meta_path in zip(metrics, metrics_meta, strict=True):
        tidy, meta = pd.read_parquet(metrics_path), read_json(meta_path)
        depth_summary = summarise_concept_depth(
            tidy, chance=meta["chance"], depth=meta["n_layers"], delta=delta, jump_min=jump_min,
            n_boot=n_boot, seed=seed, ci=ci,
        )
        keys = {k: meta[k] for k in ("model", "weights", "noise", "dataset", "level", "site", "pooling", "n_layers", "chance", "n_examples")}
        rows.append(keys | depth_summary)
        tables.append(tidy)
    summary_table = pd.DataFrame(rows)
    write_table(summary_table, summary_csv, summary_html, "Concept-depth summary: one row per model, perturbation and task", WEIGHTS_NOTE)
    write_table(
        perturbation_effects(summary_table, weights), perturbations_csv, perturbations_html,
        "Concept depth under perturbation: each perturbed run against the unperturbed one", WEIGHTS_NOTE,
    )
    write_table(
        depth_by_level(summary_table, weights), levels_csv, levels_html,
        "Converging depth by task level, every model (own weights, clean inputs)", WEIGHTS_NOTE,
    )
    with atomic_path(summary) as tmp:
        summary_table.to_parquet(tmp, index=False)
    with atomic_path(metrics_table) as tmp:
        pd.concat(tables, ignore_index=True).to_parquet(tmp, index=False)
