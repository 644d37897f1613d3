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
from probes.resampling import bootstrap_weights

METRICS = (
    "accuracy",
    "f1",
    "roc_auc",
    "control_accuracy",
    "control_train_accuracy",
    "selectivity",
)
# The online codes probe_layers sends (online_codes): the task row by row, the task by whole groups, the type control.
MDL_CODES = ("task", "task_grouped", "control")
_CONTROL_STREAM = 0xC0  # mixed with the CV seed so control labels never reuse the fold-shuffle stream
_NULL_STREAM = 0x4E11  # mixed with the first CV seed and the permutation number for the null's labels
# The type control runs where the label is at least this much a function of the type (R^2, docs/methods.md §2.5).
TYPE_CONTROL_MIN = 0.5
_REFIT_STREAM = 0x2EF1  # mixed with the first CV seed for the refitted bootstrap resamples and their folds
# The null's fits stop at scikit-learn's default tolerance: half the iterations of the task's 1e-6, and
# on real activations they move a fold's accuracy by at most one or two test rows, far inside the
# spread of the null's maxima.
NULL_TOL = 1e-4


@dataclass(frozen=True)
class LayerProbes:
    """What :func:`probe_layers` returns; the summary (:mod:`probes.probing.depth`) needs only these tables.

    ``metrics``: per-fold scores (layer, seed, fold, metric, value) of :data:`METRICS` (the control's only under
    the type control). ``predictions``: one row per layer, seed and example: its fold, group, label and the
    out-of-fold decision value of the task probe (and under the type control the control label and probe's
    decision). ``null``: the accuracy
    curve of every label permutation, averaged over the CV seeds as the task's is (permutation, layer, accuracy).
    ``refits``: the probes refitted on ``settings.refits`` bootstrap resamples of the examples (groups), each with
    folds of its own: one row per replicate, layer and example drawn, with its multiplicity ``weight`` and its
    out-of-fold ``decision`` (and ``control_decision`` under the type control), from which the summary measures
    how much fitting the probes adds to the variance of every curve. ``control``: the control that fits the
    dataset, ``"type"`` or ``"shortcut"`` (the shortcut audit's baselines, :mod:`probes.probing.shortcuts`, which
    the summary measures selectivity against). Every ``layer`` column holds the model's layer numbers (``layers``);
    ``n_layers`` is the model's depth L and ``chance`` the majority-class rate, which the summary measures depth
    and rise against; ``control_chance`` is the type control's row-majority rate and ``type_dependence`` the R^2
    of the label on the declared type (None without types). ``mdl``: with ``settings.mdl``, the online codes
    (:func:`online_codes`: layer, code, order, example, bits, influence).
    """

    metrics: pd.DataFrame
    predictions: pd.DataFrame
    null: pd.DataFrame
    refits: pd.DataFrame
    control: str
    layers: tuple[int, ...]
    n_layers: int
    chance: float
    control_chance: float | None = None
    type_dependence: float | None = None
    mdl: pd.DataFrame | None = None


def type_dependence(y: np.ndarray, types: np.ndarray) -> float:
    """How far the label is a function of the type: the adjusted R^2 of the label on the type (clipped at 0), about
    0 when every type holds both classes in the overall proportion, 1 when each type holds one class. Adjusted,
    because with many small types the plain R^2 is about (types - 1) / (rows - 1) even for random labels."""
    y = np.asarray(y, dtype=np.float64)
    total = y.var() * y.size
    frame = pd.DataFrame({"y": y, "type": np.asarray(types)})
    n_types = frame["type"].nunique()
    if total == 0 or n_types >= y.size:
        return 1.0
    within = frame.groupby("type")["y"].agg(lambda v: v.var(ddof=0) * v.size).sum()
    return float(max(0.0, 1 - (within / (y.size - n_types)) / (total / (y.size - 1))))


def resolve_control(control: str, y: np.ndarray, types: np.ndarray | None) -> str:
    """The control a dataset gets (docs/methods.md §2.5): ``auto`` is the type control where the labels are mostly
    a function of the declared type (:func:`type_dependence` >= :data:`TYPE_CONTROL_MIN`), so that memorising the
    type could solve the task, and the shortcut baselines elsewhere."""
    if control == "type" and types is None:
        raise ValueError("control 'type' needs a dataset type column (datasets.<name>.type_column)")
    if control == "auto":
        return "type" if types is not None and type_dependence(y, types) >= TYPE_CONTROL_MIN else "shortcut"
    return control


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
    control = resolve_control(settings.control, y, types)
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
    runs, k = len(design.runs), design.per_run
    resamples = _resamples(y, settings, groups, design.labels[1] if control == "type" else None)
    # The task's, the null's and the refits' fits share one solve, the null's and the refits' at a looser tolerance.
    labels, train = np.concatenate([design.labels, resamples.labels]), np.concatenate([design.train, resamples.train])
    tol = np.where(np.arange(len(labels)) < k * runs, settings.tol, max(settings.tol, NULL_TOL))
    fit = fit_probes(X, labels, train, settings.solver, progress=progress, tol=tol)
    refit_decision = fit.decision[:, len(design.labels) :]
    n, n_columns = X.shape[0], X.shape[1]
    decision = fit.decision[:, : k * runs]
    scores = _scores(decision, design.labels[: k * runs], ~design.train[: k * runs])  # (3, layer, problem)
    task = np.arange(0, k * runs, k)
    values = scores[:, :, task]  # (metric, layer, run)
    if k == 2:
        ctrl = task + 1
        correct = (decision[:, ctrl] > 0) == design.labels[ctrl].astype(bool)[None]
        train_control = (correct & design.train[ctrl][None]).sum(-1) / design.train[ctrl].sum(-1)
        selectivity = scores[0][:, task] - scores[0][:, ctrl]
        values = np.concatenate([values, scores[:1, :, ctrl], train_control[None], selectivity[None]])
    names = METRICS[: len(values)]
    layer, run = np.meshgrid(np.arange(n_columns), np.arange(runs), indexing="ij")
    metrics = pd.DataFrame(
        {
            "layer": np.tile(layer.ravel(), len(names)),
            "seed": np.tile(np.array([s for s, _ in design.runs])[run].ravel(), len(names)),
            "fold": np.tile(np.array([f for _, f in design.runs])[run].ravel(), len(names)),
            "metric": np.repeat(names, layer.size),
            "value": values.reshape(-1).astype(np.float64),
        }
    ).sort_values(["layer", "seed", "fold", "metric"], kind="stable")

    predictions = _out_of_fold(decision, design, settings, n, groups)
    mdl = online_codes(X, y, settings, groups, types) if settings.mdl else None
    n_perm = settings.null_permutations
    labels, train = design.labels[k * runs :], design.train[k * runs :]
    null_decision = fit.decision[:, k * runs : len(design.labels)]
    null_correct = (((null_decision > 0) == labels.astype(bool)[None]) & ~train[None]).sum(-1)
    # Every row is tested once per seed: the mean over seeds of each seed's accuracy, the task's own statistic.
    null_accuracy = null_correct.reshape(n_columns, n_perm, runs).sum(-1) / (n * len(settings.seeds))
    null = pd.DataFrame(
        {
            "permutation": np.tile(np.arange(n_perm), n_columns),
            "layer": np.repeat(np.arange(n_columns), n_perm),
            "accuracy": null_accuracy.reshape(-1),
        }
    )
    refits = resamples.predictions(refit_decision)
    metrics, predictions, null, refits = (
        table.assign(layer=layers[table["layer"].to_numpy()])
        for table in (metrics.reset_index(drop=True), predictions, null, refits)
    )
    if mdl is not None:
        mdl = mdl.assign(layer=layers[mdl["layer"].to_numpy()])
    chance = float(np.bincount(y).max() / len(y))
    control_chance = float(np.bincount(design.labels[1]).max() / n) if k == 2 else None
    dependence = None if types is None else type_dependence(y, types)
    return LayerProbes(
        metrics,
        predictions,
        null,
        refits,
        control,
        tuple(int(l) for l in layers),
        depth,
        chance,
        control_chance,
        dependence,
        mdl,
    )


def online_codes(
    X: np.ndarray,
    y: np.ndarray,
    settings: ProbeSettings,
    groups: np.ndarray | None = None,
    types: np.ndarray | None = None,
) -> pd.DataFrame:
    """The online codes (:mod:`probes.probing.mdl`) of one dataset, per layer, code, order and example: ``bits`` and
    ``influence`` (the derivative of the codelength with respect to the example's weight).

    Codes (:data:`MDL_CODES`): ``task``, the labels sent row by row as Voita & Titov send examples, in
    ``settings.mdl_orders`` orders; with ``groups``, ``task_grouped``, whole groups sent together, in the first
    order; with ``types``, ``control``, the type control's labels (:func:`control_labels`, one label per type, Hewitt &
    Liang's control task) sent as the task is, in the same orders. Order k is the transmission order of seed
    ``seeds[0] + k``.
    """
    from probes.probing.mdl import online_code

    orders = replace(settings, seeds=tuple(settings.seeds[0] + k for k in range(settings.mdl_orders)))
    grid, inner = settings.mdl_C_grid, settings.mdl_inner_folds
    codes = {"task": online_code(X, y, orders, grid, inner, groups, whole_groups=False)}
    if groups is not None:
        first = replace(orders, seeds=orders.seeds[:1])
        codes["task_grouped"] = online_code(X, y, first, grid, inner, groups, whole_groups=True)
    if types is not None:
        control = control_labels(y, settings.seeds[0], types)
        codes["control"] = online_code(X, control, orders, grid, inner, groups, whole_groups=False)
    frames = []
    for name, code in codes.items():
        n_layers, n_orders, n = code.bits.shape
        layer, order, example = np.meshgrid(np.arange(n_layers), np.arange(n_orders), np.arange(n), indexing="ij")
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer.ravel(),
                    "code": name,
                    "order": order.ravel(),
                    "example": example.ravel(),
                    "bits": code.bits.ravel(),
                    "influence": code.influence.ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def control_labels(y: np.ndarray, seed: int, types: np.ndarray) -> np.ndarray:
    """The type control's labels for one CV seed (Hewitt & Liang), from a stream derived from that seed.

    Every type gets one label, so a probe that memorises the surface identity of a type scores above chance on
    held-out rows of types it saw in training. The types are dealt in a seeded order, largest first, each to the
    class that then holds fewer rows, so the control's classes are balanced on rows, not on types (its chance is
    the row majority, as the task's is). The same labels serve every fold of the seed.
    """
    rng = np.random.default_rng([seed, _CONTROL_STREAM])
    kinds, codes, sizes = np.unique(np.asarray(types), return_inverse=True, return_counts=True)
    if kinds.size < 2:
        raise ValueError("the type control needs at least two types")
    shuffled = rng.permutation(kinds.size)
    per_type, rows = np.zeros(kinds.size, dtype=np.int64), np.zeros(2)
    for kind in shuffled[np.argsort(-sizes[shuffled], kind="stable")]:
        label = int(rows[1] < rows[0]) if rows[0] != rows[1] else int(rng.integers(2))
        per_type[kind] = label
        rows[label] += sizes[kind]
    return per_type[codes.ravel()]


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
    labels: np.ndarray  # (problem, n): each run's task (and control, alternating), then the null's problems
    train: np.ndarray  # (problem, n)
    runs: list[tuple[int, int]]  # (seed, fold) of each run
    per_run: int  # problems per run: 2 with the type control, else 1


def _design(y: np.ndarray, settings: ProbeSettings, groups: np.ndarray | None, types: np.ndarray | None) -> _Design:
    """Labels and training masks of every problem of one sweep.

    Folds come from :func:`cv_splits` on the true labels, so a plain scikit-learn loop sees identical
    splits; a seed's control labels serve all its folds. The null refits the first seed's protocol
    on each label permutation, with folds drawn for the permuted labels, as the task's were for its own.
    """
    labels, train, runs = [], [], []
    for seed, fold, mask in cv_splits(y, settings, groups):
        labels.append(y)
        train.append(mask)
        runs.append((seed, fold))
        if types is not None:
            control = control_labels(y, seed, types)
            if np.unique(control[mask]).size != 2:
                raise ValueError(f"seed {seed}: a control training fold holds a single class; too few types")
            labels.append(control)
            train.append(mask)
    for permutation in range(settings.null_permutations):
        permuted = null_labels(y, permutation, settings.seeds[0], groups)
        for _, _, mask in cv_splits(permuted, settings, groups):
            labels.append(permuted)
            train.append(mask)
    return _Design(np.array(labels), np.array(train), runs, 1 if types is None else 2)


@dataclass(frozen=True)
class _Resamples:
    """The refitted bootstrap: ``weights`` (replicate, n) multiplicities, and per replicate and fold one problem
    (and one more for the control labels) whose training rows carry the replicate's multiplicities."""

    weights: np.ndarray
    test: np.ndarray  # (replicate, fold, n): the rows each fold's probe is tested on
    labels: np.ndarray  # (problem, n), replicate by replicate, fold by fold, task then control
    train: np.ndarray  # (problem, n) row weights
    controlled: bool

    def predictions(self, decision: np.ndarray) -> pd.DataFrame:
        """Each drawn row's out-of-fold decision per layer and replicate, from ``decision`` (layer, problem, n)."""
        n_layers = decision.shape[0]
        n_boot, folds, n = self.test.shape
        per = decision.reshape(n_layers, n_boot, folds, 1 + self.controlled, n)
        held = (per * self.test[None, :, :, None]).sum(2)  # every row is tested in exactly one fold
        layer, replicate, example = np.nonzero(np.broadcast_to(self.weights[None] > 0, (n_layers, n_boot, n)))
        table = {
            "layer": layer,
            "replicate": replicate,
            "example": example,
            "weight": self.weights[replicate, example].astype(np.int64),
            "decision": held[layer, replicate, 0, example].astype(np.float32),
        }
        if self.controlled:
            table["control_decision"] = held[layer, replicate, 1, example].astype(np.float32)
        return pd.DataFrame(table)


def _resamples(
    y: np.ndarray, settings: ProbeSettings, groups: np.ndarray | None, control: np.ndarray | None
) -> _Resamples:
    """The problems of the refitted bootstrap: ``settings.refits`` resamples of the rows (whole groups), each split
    into folds of its own over the original rows (or groups), so copies of a row never sit on both sides of a split.

    Refitting is what lets an interval include the variance of fitting the probe; the folds are drawn anew
    because the split is part of what a new sample of the task would change.
    """
    n, n_boot = len(y), settings.refits
    empty = np.zeros((0, n))
    if n_boot == 0:
        return _Resamples(np.zeros((0, n)), np.zeros((0, settings.folds, n), dtype=bool), empty, empty, False)
    rng = np.random.default_rng([settings.seeds[0], _REFIT_STREAM])
    weights = bootstrap_weights(n, n_boot, int(rng.integers(2**32)), groups)
    split_seeds = rng.integers(2**31, size=n_boot)
    labels, train, test = [], [], []
    for replicate, split_seed in enumerate(split_seeds):
        splits = cv_splits(y, replace(settings, seeds=(int(split_seed),)), groups)
        test.append([~mask for _, _, mask in splits])
        for _, _, mask in splits:
            labels += [y] if control is None else [y, control]
            train += [weights[replicate] * mask] * (1 if control is None else 2)
    return _Resamples(weights, np.array(test), np.array(labels), np.array(train), control is not None)


def _out_of_fold(
    decision: np.ndarray, design: _Design, settings: ProbeSettings, n: int, groups: np.ndarray | None
) -> pd.DataFrame:
    """Each example's held-out decision values per layer and seed (it is tested in exactly one fold per seed)."""
    n_layers, n_seeds, k = decision.shape[0], len(settings.seeds), design.per_run
    values = np.zeros((k, n_layers, n_seeds, n))
    fold_of = np.zeros((n_seeds, n), dtype=np.int64)
    control_of = np.zeros((n_seeds, n), dtype=np.int64)
    for r, (seed, fold) in enumerate(design.runs):
        s, test = settings.seeds.index(seed), ~design.train[k * r]
        for j in range(k):
            values[j][:, s, test] = decision[:, k * r + j, test]
        fold_of[s, test] = fold
        if k == 2:
            control_of[s] = design.labels[k * r + 1]
    layer, seed, example = np.meshgrid(np.arange(n_layers), np.arange(n_seeds), np.arange(n), indexing="ij")
    group = np.arange(n) if groups is None else np.asarray(groups)
    table = {
        "layer": layer.ravel(),
        "seed": np.asarray(settings.seeds)[seed.ravel()],
        "example": example.ravel(),
        "fold": fold_of[seed.ravel(), example.ravel()],
        "group": np.asarray(group)[example.ravel()],
        "label": design.labels[0][example.ravel()],
        "decision": values[0].ravel(),
    }
    if k == 2:
        table["control_label"] = control_of[seed.ravel(), example.ravel()]
        table["control_decision"] = values[1].ravel()
    return pd.DataFrame(table)


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
