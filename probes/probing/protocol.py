"""Concept depth: layer-wise linear probes with a control task, a permutation null, and their out-of-fold predictions.

docs/methods.md §2. For every layer, seed and fold we fit scikit-learn's L2 logistic regression on
features standardised with the training fold's statistics: on the true labels, on control labels,
and (for one seed) on label permutations that give the null of the best accuracy over layers. That
is thousands of small fits per model x dataset, so every fit runs at once as one batched L-BFGS
solve of the same objective (:func:`probes.probing.solver.fit_probes`). Every interval is computed from the
kept out-of-fold predictions by :mod:`probes.probing.depth` (a bootstrap over examples), never from the
spread of re-splits.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from probes.activations.extraction import Activations
from probes.activations.storage import StoredActivations
from probes.probing.settings import ProbeSettings
from probes.probing.solver import fit_probes, probe_inputs

METRICS = (
    "accuracy",
    "f1",
    "roc_auc",
    "control_accuracy",
    "control_train_accuracy",
    "selectivity",
)
_CONTROL_STREAM = 0xC0  # mixed with the CV seed so control labels never reuse the fold-shuffle stream
_NULL_STREAM = 0x4E11  # mixed with the first CV seed and the permutation number for the null's labels
# The null's fits stop at scikit-learn's default tolerance: half the iterations of the task's 1e-6, and
# on real activations they move a fold's accuracy by at most one or two test rows, far inside the
# spread of the null's maxima.
NULL_TOL = 1e-4


@dataclass(frozen=True)
class LayerProbes:
    """What :func:`probe_layers` returns; the summary (:mod:`probes.probing.depth`) needs only these tables.

    ``metrics``: per-fold scores (layer, seed, fold, metric, value) of :data:`METRICS`.
    ``predictions``: one row per layer, seed and example: its fold, group, label, control label and
    the out-of-fold decision values of the task and control probes (plus ``mdl_bits``, the bits the
    online code paid for the example's label, with MDL, the same for every seed). ``null``: the accuracy
    curve of every label permutation (permutation, layer, accuracy). ``control``: the control that was run.
    Every ``layer`` column holds the model's layer numbers (``layers``); ``n_layers`` is the model's depth L
    and ``chance`` the majority-class rate, which the summary measures depth and rise against.
    """

    metrics: pd.DataFrame
    predictions: pd.DataFrame
    null: pd.DataFrame
    control: str
    layers: tuple[int, ...]
    n_layers: int
    chance: float


def resolve_control(control: str, has_types: bool) -> str:
    """The control a dataset gets: ``auto`` is the type control where types are declared, else the permuted one."""
    if control == "type" and not has_types:
        raise ValueError("control 'type' needs a dataset type column (datasets.<name>.type_column)")
    return "type" if control == "auto" and has_types else ("permuted" if control == "auto" else control)


def probe_layers(
    X: np.ndarray | Activations | StoredActivations,
    y: np.ndarray,
    settings: ProbeSettings | None = None,
    groups: np.ndarray | None = None,
    types: np.ndarray | None = None,
    progress: bool = False,
    *,
    layers: Sequence[int] | None = None,
    n_layers: int | None = None,
    pooling: str = "last",
) -> LayerProbes:
    """Probe every layer with repeated stratified (group) CV, a control task and a permutation null.

    ``X`` is (n_examples, n_layers, d) pooled activations, or :class:`~probes.activations.extraction.Activations` (its
    ``pooling`` vectors, layers and depth) or a stored file's :class:`~probes.activations.storage.StoredActivations`,
    ``y`` binary labels; ``groups`` keeps rows in one fold, ``types``
    are what the type control labels. ``layers`` are the layer numbers of ``X``'s columns (default 0, 1, ...)
    and ``n_layers`` the model's depth L (default the largest of ``layers``). ``settings`` default to
    :class:`ProbeSettings`, the config schema's defaults. The same inputs and settings always give the same numbers.
    """
    if isinstance(X, Activations | StoredActivations):
        layers = X.layers if layers is None else layers
        n_layers = X.n_layers if n_layers is None else n_layers
        if isinstance(X, Activations):
            if pooling not in X.vectors:
                raise ValueError(f"pooling {pooling!r} was not extracted; the activations hold {sorted(X.vectors)}")
            X = X.vectors[pooling]
        else:
            X = X.vectors
    settings = settings or ProbeSettings()
    X, y = _validate(X, y, settings)
    layers = np.arange(X.shape[1]) if layers is None else np.asarray(layers, dtype=np.int64)
    if layers.shape != (X.shape[1],):
        raise ValueError(f"{len(layers)} layer numbers for activations of {X.shape[1]} layers")
    depth = int(layers.max()) if n_layers is None else int(n_layers)
    control = resolve_control(settings.control, types is not None)
    if control == "type" and groups is not None:
        spread = pd.Series(np.asarray(groups)).groupby(np.asarray(types)).nunique()
        if (spread == 1).all():
            warnings.warn(
                "every type sits in a single group, so grouped folds never show a tested row's type in "
                "training and the type control cannot rise above chance; declare a type that crosses groups",
                RuntimeWarning,
                stacklevel=2,
            )
    design = _design(y, settings, groups, types if control == "type" else None)
    runs = len(design.runs)
    # The task's and the null's fits share one solve, the null's at its looser tolerance.
    tol = np.where(np.arange(len(design.labels)) < 2 * runs, settings.tol, max(settings.tol, NULL_TOL))
    fit = fit_probes(X, design.labels, design.train, settings.solver, progress=progress, tol=tol)
    n, n_columns = X.shape[0], X.shape[1]
    test = ~design.train
    decision = fit.decision[:, : 2 * runs]
    correct = (decision > 0) == design.labels[: 2 * runs].astype(bool)[None]  # (layer, problem, n)
    task, ctrl = np.arange(0, 2 * runs, 2), np.arange(1, 2 * runs, 2)
    scores = _scores(decision, design.labels[: 2 * runs], test[: 2 * runs])  # (3, layer, problem)
    train_control = (correct[:, ctrl] & design.train[ctrl][None]).sum(-1) / design.train[ctrl].sum(-1)
    values = np.concatenate(
        [scores[:, :, task], scores[:1, :, ctrl], train_control[None], (scores[0][:, task] - scores[0][:, ctrl])[None]]
    )  # (metric, layer, run)
    layer, run = np.meshgrid(np.arange(n_columns), np.arange(runs), indexing="ij")
    metrics = pd.DataFrame(
        {
            "layer": np.tile(layer.ravel(), len(METRICS)),
            "seed": np.tile(np.array([s for s, _ in design.runs])[run].ravel(), len(METRICS)),
            "fold": np.tile(np.array([f for _, f in design.runs])[run].ravel(), len(METRICS)),
            "metric": np.repeat(METRICS, layer.size),
            "value": values.reshape(-1).astype(np.float64),
        }
    ).sort_values(["layer", "seed", "fold", "metric"], kind="stable")

    predictions = _out_of_fold(decision, design, settings, n, groups)
    if settings.mdl:
        from probes.probing.mdl import online_code

        orders = replace(settings, seeds=settings.seeds[: settings.mdl_orders])
        code = online_code(X, y, orders, settings.mdl_C_grid, settings.mdl_inner_folds, groups)
        bits = np.broadcast_to(code.bits.mean(1, keepdims=True), (n_columns, len(settings.seeds), n))
        predictions["mdl_bits"] = bits.reshape(-1)  # (layer, seed, example), the predictions' order
    n_perm = settings.null_permutations
    labels, train = design.labels[2 * runs :], design.train[2 * runs :]
    null_correct = (((fit.decision[:, 2 * runs :] > 0) == labels.astype(bool)[None]) & ~train[None]).sum(-1)
    null_accuracy = null_correct.reshape(n_columns, n_perm, settings.folds).sum(-1) / n  # every row tested once
    null = pd.DataFrame(
        {
            "permutation": np.tile(np.arange(n_perm), n_columns),
            "layer": np.repeat(np.arange(n_columns), n_perm),
            "accuracy": null_accuracy.reshape(-1),
        }
    )
    metrics, predictions, null = (
        table.assign(layer=layers[table["layer"].to_numpy()])
        for table in (metrics.reset_index(drop=True), predictions, null)
    )
    chance = float(np.bincount(y).max() / len(y))
    return LayerProbes(metrics, predictions, null, control, tuple(int(l) for l in layers), depth, chance)


def control_labels(y: np.ndarray, seed: int, types: np.ndarray | None = None) -> np.ndarray:
    """The control task's labels for one CV seed, from a stream derived from that seed.

    Without ``types``: ``y`` permuted, so a probe can only beat chance on held-out rows by luck.
    With ``types`` (Hewitt & Liang): every type gets one random label, half the types each class,
    so a probe that memorises the surface identity of a type scores above chance on held-out rows
    of types it saw in training; selectivity (accuracy - control accuracy) is then informative.
    The same labels serve every fold of the seed.
    """
    rng = np.random.default_rng([seed, _CONTROL_STREAM])
    if types is None:
        return rng.permutation(np.asarray(y))
    kinds, codes = np.unique(np.asarray(types), return_inverse=True)
    if kinds.size < 2:
        raise ValueError("the type control needs at least two types")
    per_type = rng.permutation(np.arange(kinds.size) % 2)
    return per_type[codes].astype(np.int64)


def null_labels(y: np.ndarray, permutation: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Labels of one permutation of the null: rows permuted, or whole groups' labels moved between groups.

    With ``groups``, each group takes the labels of a random group of the same size, in random order
    within it, so a group's label mix (a minimal pair's one-and-one, a form's constant label) is kept
    and only its link to the representations is broken.
    """
    rng = np.random.default_rng([seed, _NULL_STREAM, permutation])
    y = np.asarray(y)
    if groups is None:
        return rng.permutation(y)
    out = np.empty_like(y)
    members = pd.Series(np.arange(len(y))).groupby(np.asarray(groups)).apply(np.asarray)
    sizes = members.map(len)
    for _, same in members.groupby(sizes):
        blocks = list(same)
        for target, source in zip(blocks, rng.permutation(len(blocks))):
            out[target] = rng.permutation(y[blocks[source]])
    return out


def cv_splits(
    y: np.ndarray, settings: ProbeSettings, groups: np.ndarray | None = None
) -> list[tuple[int, int, np.ndarray]]:
    """(seed, fold, training-row mask) of every probe run, for each seed of ``settings``.

    ``StratifiedKFold(shuffle=True, random_state=seed)``, or with ``groups`` (one label per row)
    ``StratifiedGroupKFold``, which keeps every group in one fold and balances the classes as far as
    the groups allow. Every probe of the pipeline (dense, control, sparse, null) uses these splits, so
    their scores compare run by run.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    if groups is not None and np.unique(groups).size < settings.folds:
        raise ValueError(f"{np.unique(groups).size} groups cannot fill {settings.folds} cross-validation folds")
    splits = []
    for seed in settings.seeds:
        if groups is None:
            folds = StratifiedKFold(settings.folds, shuffle=True, random_state=seed).split(np.zeros((len(y), 1)), y)
        else:
            splitter = StratifiedGroupKFold(settings.folds, shuffle=True, random_state=seed)
            folds = splitter.split(np.zeros((len(y), 1)), y, groups)
        for fold, (train_idx, _) in enumerate(folds):
            mask = np.zeros(len(y), dtype=bool)
            mask[train_idx] = True
            splits.append((seed, fold, mask))
    return splits


# ---------------------------------------------------------------------------------------------------
# Protocol: validation, the problems of one sweep, metrics


def _validate(X: np.ndarray, y: np.ndarray, settings: ProbeSettings) -> tuple[np.ndarray, np.ndarray]:
    X, y = probe_inputs(X, y)
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < settings.folds:
        counts_by_class = dict(zip(classes.tolist(), counts.tolist()))
        raise ValueError(f"too few examples per class for {settings.folds}-fold CV: class counts {counts_by_class}")
    return X, y


@dataclass(frozen=True)
class _Design:
    labels: np.ndarray  # (problem, n): task and control of each run alternating, then the null's problems
    train: np.ndarray  # (problem, n)
    runs: list[tuple[int, int]]  # (seed, fold) of each task/control pair


def _design(y: np.ndarray, settings: ProbeSettings, groups: np.ndarray | None, types: np.ndarray | None) -> _Design:
    """Labels and training masks of every problem of one sweep.

    Folds come from :func:`cv_splits` on the true labels, so a plain scikit-learn loop sees identical
    splits; a seed's control labels serve all its folds. The null refits the first seed's protocol
    on each label permutation, with folds drawn for the permuted labels, as the task's were for its own.
    """
    labels, train, runs = [], [], []
    for seed, fold, mask in cv_splits(y, settings, groups):
        control = control_labels(y, seed, types)
        if np.unique(control[mask]).size != 2:
            raise ValueError(f"seed {seed}: a control training fold holds a single class; too few examples or types")
        labels += [y, control]
        train += [mask, mask]
        runs.append((seed, fold))
    first = replace(settings, seeds=settings.seeds[:1], mdl_orders=1)
    for permutation in range(settings.null_permutations):
        permuted = null_labels(y, permutation, settings.seeds[0], groups)
        for _, _, mask in cv_splits(permuted, first, groups):
            labels.append(permuted)
            train.append(mask)
    return _Design(np.array(labels), np.array(train), runs)


def _out_of_fold(
    decision: np.ndarray, design: _Design, settings: ProbeSettings, n: int, groups: np.ndarray | None
) -> pd.DataFrame:
    """Each example's held-out decision values per layer and seed (it is tested in exactly one fold per seed)."""
    n_layers, n_seeds = decision.shape[0], len(settings.seeds)
    task = np.zeros((n_layers, n_seeds, n))
    control = np.zeros_like(task)
    fold_of = np.zeros((n_seeds, n), dtype=np.int64)
    control_of = np.zeros((n_seeds, n), dtype=np.int64)
    for r, (seed, fold) in enumerate(design.runs):
        s, test = settings.seeds.index(seed), ~design.train[2 * r]
        task[:, s, test] = decision[:, 2 * r, test]
        control[:, s, test] = decision[:, 2 * r + 1, test]
        fold_of[s, test] = fold
        control_of[s] = design.labels[2 * r + 1]
    layer, seed, example = np.meshgrid(np.arange(n_layers), np.arange(n_seeds), np.arange(n), indexing="ij")
    group = np.arange(n) if groups is None else np.asarray(groups)
    return pd.DataFrame(
        {
            "layer": layer.ravel(),
            "seed": np.asarray(settings.seeds)[seed.ravel()],
            "example": example.ravel(),
            "fold": fold_of[seed.ravel(), example.ravel()],
            "group": np.asarray(group)[example.ravel()],
            "label": design.labels[0][example.ravel()],
            "control_label": control_of[seed.ravel(), example.ravel()],
            "decision": task.ravel(),
            "control_decision": control.ravel(),
        }
    )


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
