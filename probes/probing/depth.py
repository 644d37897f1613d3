"""Concept-depth summaries with honest intervals, from the probes' out-of-fold predictions (docs/methods.md §2).

Every interval is a percentile interval of one seeded bootstrap over examples (over groups when the
dataset declares them) that resamples the same rows at every layer, so curves, the statistics read
off them, and differences between runs on the same rows (a perturbation's shift) stay paired. The
depth of a task is only read off its curve when the best accuracy beats the permutation null of
the best accuracy over layers; otherwise the task is called undecodable and gets no depth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from probes.models.perturbations import unperturbed
from probes.probing.protocol import LayerProbes
from probes.resampling import bootstrap_weights, percentile_interval, resampled_means

_HALVES_STREAM = 0x4A1F  # mixed with the bootstrap seed for the cross-fitting halves
_HALF_SPLITS = 5  # random half-splits averaged in the cross-fitted best accuracy
# Layers on each side whose refit and fixed-fit spreads are pooled into one layer's inflation (docs/methods.md §2.7).
_INFLATION_WINDOW = 2
# E[w^2] of a bootstrap multiplicity w: a row drawn w times pulls the refitted probe w times as hard and is scored w
# times, so a refitted resample carries the covariance that fitting adds about twice (docs/methods.md §2.7).
_REFIT_OVERCOUNT = 2.0
LAYER_STATISTICS = ("half_rise", "best", "converging", "jump")
# What a perturbation moves, shifts taken on paired bootstrap replicates.
SHIFTED = ("half_rise_depth", "converging_depth", "best_accuracy")


@dataclass(frozen=True)
class DepthSummary:
    """One model x dataset: the summary ``row``, per-layer ``curves`` (layer, metric, value, lo, hi) and the
    bootstrap ``replicates`` of the statistics in :data:`SHIFTED` (NaN where undefined), for paired contrasts."""

    row: dict
    curves: pd.DataFrame
    replicates: dict[str, np.ndarray]

    @property
    def table(self) -> pd.DataFrame:
        """The summary row as a one-row frame, as the pipeline's ``concept_depth_summary`` table has it."""
        return pd.DataFrame([self.row])


def summarise_curve(
    acc: np.ndarray, chance: float, converging_rise: float = 0.9, jump_min: float = 0.03, best: float | None = None
) -> dict:
    """Half-rise, jump and converging layers of one accuracy-vs-layer curve (index = layer 0..L).

    The half-rise layer is the first to reach half the rise from ``chance`` to ``best``, the converging
    layer the first to reach ``converging_rise`` of it: both are properties of the curve, not of the sample
    size. Both are read off the curve's rising envelope, its isotonic (pool-adjacent-violators) fit up to its
    maximum: a single noisy layer that nearly reaches a threshold long before the curve does would otherwise
    decide the layer, and a bootstrap resample would cross there in a fifth of its draws (intervals from
    layer 0 to the jump on synthetic late-jump curves). A curve that rises to its maximum has the same
    layers either way. ``best`` is by default the curve's maximum; the summary passes the cross-fitted best
    accuracy, because the maximum of a noisy curve overshoots the plateau it estimates and would push both
    layers late.
    ``jump_layer`` is None when no one-layer rise reaches ``jump_min``; ``jump_size`` is always the largest
    one-layer rise (NaN for a single layer), so a "no jump" verdict can be checked.
    """
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 1 or acc.size == 0 or not np.isfinite(acc).all():
        raise ValueError("acc must be a non-empty 1-D array of finite accuracies")
    from scipy.optimize import isotonic_regression

    best = float(acc.max()) if best is None else float(best)
    peak = int(np.argmax(acc))
    rising = isotonic_regression(acc[: peak + 1]).x
    steps = np.diff(acc)
    jump = int(np.argmax(steps)) + 1 if steps.size else None
    jump_size = float(steps.max()) if steps.size else math.nan
    return {
        "best_accuracy": best,
        "best_layer": int(np.argmax(acc)),
        "half_rise_layer": _first(rising >= chance + 0.5 * (best - chance)),
        "jump_layer": jump if steps.size and jump_size >= jump_min else None,
        "jump_size": jump_size,
        "converging_layer": _first(rising >= chance + converging_rise * (best - chance)),
    }


def null_test(best_accuracy: float, null: pd.DataFrame, alpha: float) -> dict:
    """Permutation p-value of the best accuracy against the best accuracy over layers of each permuted sweep.

    p = (1 + #{null maxima >= observed}) / (1 + permutations); decodable when p <= ``alpha``. The null
    takes its maximum over the same layers, so the selection of the best layer is paid for.
    """
    maxima = null.groupby("permutation")["accuracy"].max().to_numpy()
    if maxima.size == 0:
        return {"decodable": True, "null_p_value": math.nan, "null_permutations": 0, "null_max_quantile": math.nan}
    if 1 / (maxima.size + 1) > alpha:
        raise ValueError(
            f"{maxima.size} null permutations cannot reach p <= {alpha}; use at least {math.ceil(1 / alpha) - 1}"
        )
    p_value = (1 + int((maxima >= best_accuracy).sum())) / (1 + maxima.size)
    return {
        "decodable": p_value <= alpha,
        "null_p_value": p_value,
        "null_permutations": int(maxima.size),
        "null_max_quantile": float(np.quantile(maxima, 1 - alpha, method="higher")),
    }


def summarise_concept_depth(
    layer_probes: LayerProbes,
    shortcuts: pd.DataFrame | None = None,
    converging_rise: float = 0.9,
    jump_min: float = 0.03,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    alpha: float = 0.05,
) -> DepthSummary:
    """The concept-depth summary of one model x dataset from :func:`probes.probing.protocol.probe_layers`.

    Decodability against the permutation null; half-rise, best, converging and jump layer (and depth = layer / L);
    cross-fitted best accuracy, F1, ROC-AUC, control accuracy, selectivity and MDL, each with a ``ci`` percentile
    interval of ``n_boot`` bootstrap resamples of the examples (of whole groups where the probes had groups),
    widened by what refitting the probes adds (the probes' ``refits``); per-layer curves with the same intervals.
    ``converging_rise`` is the fraction of the rise above chance that defines the converging layer. Where the probes
    ran no type control, selectivity is measured against the strongest of ``shortcuts`` (the shortcut audit's
    predictions for this model and dataset, :func:`probes.probing.shortcuts.audit_shortcuts`).
    """
    metrics = layer_probes.metrics
    control_train = metrics[metrics["metric"] == "control_train_accuracy"].groupby("layer")["value"].mean()
    summary = summarise_predictions(
        layer_probes.predictions,
        layer_probes.null,
        chance=layer_probes.chance,
        depth=layer_probes.n_layers,
        refits=layer_probes.refits,
        converging_rise=converging_rise,
        jump_min=jump_min,
        n_boot=n_boot,
        seed=seed,
        ci=ci,
        alpha=alpha,
        control_train=control_train,
        shortcuts=shortcuts,
        mdl=layer_probes.mdl,
    )
    summary.row.update(
        control=layer_probes.control,
        control_chance=layer_probes.control_chance,
        type_dependence=layer_probes.type_dependence,
    )
    return summary


def summarise_predictions(
    predictions: pd.DataFrame,
    null: pd.DataFrame,
    chance: float,
    depth: int,
    refits: pd.DataFrame | None = None,
    converging_rise: float = 0.9,
    jump_min: float = 0.03,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    alpha: float = 0.05,
    control_train: pd.Series | None = None,
    shortcuts: pd.DataFrame | None = None,
    mdl: pd.DataFrame | None = None,
) -> DepthSummary:
    """Concept-depth summary of one model x dataset from :class:`probes.probing.protocol.LayerProbes`' tables.

    Point estimates come from the out-of-fold predictions averaged over the CV seeds; intervals from
    ``n_boot`` resamples of the examples (groups) with ``seed``. Layer statistics are reported in the
    tables' layer numbers (0..L for the residual stream, 1..L inside blocks) and as relative depth
    layer / L with ``depth`` = L; a statistic undefined in a resample (no jump) is left out of its
    interval. ``refits`` (:class:`~probes.probing.protocol.LayerProbes`' table) widens every curve's resamples by
    what refitting the probes adds, layer by layer (without it, the probes count as fixed). ``converging_rise``
    is the fraction of the rise above chance that defines the converging layer. ``control_train`` is the
    control probe's mean training-fold accuracy per layer (memorisation capacity), shown as a curve.

    Selectivity is accuracy minus the control's: the type control's where the predictions hold one, else the
    strongest of ``shortcuts`` (the shortcut audit's out-of-fold correctness of this model and dataset: shortcut,
    seed, example, correct), on the same folds and the same resamples; the row names which (``control_baseline``).
    ``mdl`` (the probes' online codes, :func:`probes.probing.protocol.online_codes`) adds codelength and compression
    curves of every code, resampled over examples and transmission orders, and each one's highest compression and
    its layer, with intervals.
    """
    if depth < 1:
        raise ValueError("depth (the model's number of blocks L) must be >= 1 to define relative depth")
    if not 0.5 < converging_rise <= 1:
        raise ValueError(f"converging_rise must be in (0.5, 1], got {converging_rise}")
    rows = _Rows(predictions)
    W = bootstrap_weights(rows.n, n_boot, seed, rows.groups)
    correct = _correct(rows)
    typed = "control_decision" in predictions
    control_correct = ((rows.array("control_decision") > 0) == rows.array("control_label")).mean(1) if typed else None
    decision, label = rows.array("decision"), rows.label
    inflation = _fitting_inflation(rows, refits, correct, control_correct)
    acc, acc_boot = correct.mean(1), _inflated(correct.mean(1), resampled_means(W, correct), inflation["accuracy"])
    f1 = _f1(decision, label, np.ones((1, rows.n)))[0]
    f1_boot = _inflated(f1, _f1(decision, label, W), inflation["f1"])
    auc = _roc_auc(decision, label, np.ones((1, rows.n)))[0]
    auc_boot = _inflated(auc, _roc_auc(decision, label, W), inflation["roc_auc"])
    curves = {"accuracy": (acc, acc_boot), "f1": (f1, f1_boot), "roc_auc": (auc, auc_boot)}
    baseline = None
    if typed:
        control = control_correct.mean(1)
        control_boot = _inflated(control, resampled_means(W, control_correct), inflation["control_accuracy"])
        curves["control_accuracy"] = (control, control_boot)
        baseline = "type control"
    elif shortcuts is not None and not shortcuts.empty:
        baseline, per_example = _strongest_shortcut(shortcuts, rows.n)
        control = np.full(len(rows.layers), per_example.mean())
        control_boot = np.broadcast_to(resampled_means(W, per_example[None]), acc_boot.shape)
        curves["baseline_accuracy"] = (control, control_boot)
    if baseline is not None:
        curves["selectivity"] = (acc - control, acc_boot - control_boot)
    if mdl is not None and not mdl.empty:
        curves |= _mdl_curves(mdl, rows, W)

    best = int(np.argmax(acc))
    halves = _halves(rows, seed)
    best_point = _cross_fitted_best(correct, np.ones((1, rows.n)), halves)[0]
    best_boot = _inflated(best_point, _cross_fitted_best(correct, W, halves), inflation["accuracy"][best])
    point = summarise_curve(acc, chance, converging_rise, jump_min, best_point)
    boot = [summarise_curve(curve, chance, converging_rise, jump_min, b) for curve, b in zip(acc_boot, best_boot)]
    verdict = null_test(float(acc.max()), null, alpha)

    row: dict = {
        "n_examples": rows.n,
        "n_groups": int(np.unique(rows.groups).size) if rows.groups is not None else rows.n,
        "n_seeds": rows.n_seeds,
        "refits": 0 if refits is None else int(refits["replicate"].nunique()),
        "fitting_inflation": float(inflation["accuracy"][best]),
        "chance": float(chance),
        **verdict,
        "undecodable_reason": None,
    }
    if not verdict["decodable"]:
        row["undecodable_reason"] = (
            f"best accuracy {acc.max():.3f} does not beat the permutation null of the best layer "
            f"(p = {verdict['null_p_value']:.2f}, {verdict['null_permutations']} permutations, level {alpha})"
        )
    replicates: dict[str, np.ndarray] = {"best_accuracy": best_boot}
    for name in LAYER_STATISTICS:
        key = f"{name}_layer"
        samples = np.array([np.nan if b[key] is None else rows.layers[b[key]] for b in boot], dtype=np.float64)
        lo, hi = percentile_interval(samples, ci)
        values = [None if point[key] is None else int(rows.layers[point[key]]), _layer(lo), _layer(hi)]
        if not verdict["decodable"]:
            values = [None, None, None]
            samples = np.full_like(samples, np.nan)
        row |= dict(zip((key, f"{key}_lo", f"{key}_hi"), values))
        row |= {f"{name}_depth{s}": None if v is None else v / depth for s, v in zip(("", "_lo", "_hi"), values)}
        replicates[f"{name}_depth"] = samples / depth
    row |= _with_interval("best_accuracy", best_point, best_boot, ci)
    row["max_accuracy"] = float(acc.max())
    row["converging_rise"] = converging_rise
    row["jump_size"] = point["jump_size"]
    row |= _with_interval("f1", f1[best], f1_boot[:, best], ci)
    row |= _with_interval("roc_auc", auc[best], auc_boot[:, best], ci)
    row["control_baseline"] = baseline
    if typed:
        row |= _with_interval("mean_control_accuracy", control.mean(), control_boot.mean(1), ci)
        row |= _with_interval("max_control_accuracy", control.max(), control_boot.max(1), ci)
    elif baseline is not None:
        row |= _with_interval("baseline_accuracy", control[0], control_boot[:, 0], ci)
    if control_train is not None and typed:
        row["mean_control_train_accuracy"] = float(control_train.mean())
    if baseline is not None:
        selectivity, selectivity_boot = curves["selectivity"]
        row |= _with_interval("max_selectivity", selectivity.max(), selectivity_boot.max(1), ci)
        row["max_selectivity_layer"] = int(rows.layers[np.argmax(selectivity)])
        row["max_selectivity_depth"] = row["max_selectivity_layer"] / depth
    for code in ("mdl", "mdl_grouped", "mdl_control"):
        if f"{code}_compression" in curves:
            compression, compression_boot = curves[f"{code}_compression"]
            row |= _with_interval(f"max_{code}_compression", compression.max(), compression_boot.max(1), ci)
            at = rows.layers[compression_boot.argmax(1)].astype(np.float64)  # the layer each resample peaks at
            lo, hi = percentile_interval(at, ci)
            layer = int(rows.layers[np.argmax(compression)])
            row |= {f"max_{code}_compression_layer": layer, f"max_{code}_compression_layer_lo": _layer(lo)}
            row |= {f"max_{code}_compression_layer_hi": _layer(hi), f"max_{code}_compression_depth": layer / depth}

    frames = []
    for metric, (value, samples) in curves.items():
        lo, hi = percentile_interval(samples, ci)
        frames.append(pd.DataFrame({"layer": rows.layers, "metric": metric, "value": value, "lo": lo, "hi": hi}))
    if control_train is not None and typed:
        train = control_train.reindex(rows.layers).to_numpy(dtype=np.float64)
        frames.append(
            pd.DataFrame({"layer": rows.layers, "metric": "control_train_accuracy", "value": train, "lo": np.nan})
        )
    curves_frame = pd.concat(frames, ignore_index=True)
    curves_frame["hi"] = curves_frame["hi"].where(curves_frame["metric"] != "control_train_accuracy")
    return DepthSummary(row, curves_frame, replicates)


def perturbation_effects(
    summary: pd.DataFrame, replicates: Mapping[tuple, Mapping[str, np.ndarray]], weights: str, ci: float = 0.95
) -> pd.DataFrame:
    """Each perturbed run beside its model's unperturbed run on the task, with paired-bootstrap intervals of
    the shifts (both runs' replicates resample the same rows). ``replicates`` is keyed by
    (model, weights, noise, dataset)."""
    keys = ["model", "dataset"]
    own = unperturbed(summary, weights)
    base = summary[own].set_index(keys)
    columns = [f"{name}{suffix}" for name in SHIFTED for suffix in ("", "_lo", "_hi")]
    effects = summary.loc[~own, [*keys, "level", "weights", "noise", "decodable", *columns]].reset_index(drop=True)
    records = []
    for row in effects.itertuples(index=False):
        reference = base.loc[(row.model, row.dataset)]
        mine = replicates[(row.model, row.weights, row.noise, row.dataset)]
        theirs = replicates[(row.model, reference["weights"], reference["noise"], row.dataset)]
        record = {}
        for name in SHIFTED:
            record[f"{name}_unperturbed"] = reference[name]
            value = getattr(row, name)
            shift = None if value is None or pd.isna(value) or pd.isna(reference[name]) else value - reference[name]
            lo, hi = percentile_interval(mine[name] - theirs[name], ci) if shift is not None else (None, None)
            record |= {f"{name}_shift": shift, f"{name}_shift_lo": _float(lo), f"{name}_shift_hi": _float(hi)}
        records.append(record)
    return pd.concat([effects, pd.DataFrame(records, index=effects.index)], axis=1)


def depth_by_level(
    summary: pd.DataFrame,
    replicates: Mapping[tuple, Mapping[str, np.ndarray]],
    weights: str,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Every model's half-rise and converging depth per task, grouped by level, with each model's mean over a
    level's decodable tasks and its interval (the tasks' bootstrap replicates averaged, replicate by replicate)."""
    from probes.datasets.concepts import TASK_LEVELS

    rank = {level: i for i, level in enumerate(TASK_LEVELS)}
    table = summary[unperturbed(summary, weights)]
    depths = [f"{name}_{unit}" for name in ("half_rise", "converging") for unit in ("layer", "depth")]
    table = table[
        [
            "level",
            "dataset",
            "model",
            "weights",
            "noise",
            "n_layers",
            "decodable",
            *(f"{column}{suffix}" for column in depths for suffix in ("", "_lo", "_hi")),
            "best_accuracy",
            "best_accuracy_lo",
            "best_accuracy_hi",
        ]
    ].reset_index(drop=True)
    for name in ("half_rise_depth", "converging_depth"):
        means = {}
        for (model, level), rows in table[table["decodable"].astype(bool)].groupby(["model", "level"]):
            samples = np.nanmean(
                [replicates[(r.model, r.weights, r.noise, r.dataset)][name] for r in rows.itertuples()], axis=0
            )
            lo, hi = percentile_interval(samples, ci)
            means[(model, level)] = (float(rows[name].astype(float).mean()), _float(lo), _float(hi))
        for i, suffix in enumerate(("", "_lo", "_hi")):
            keys = zip(table["model"], table["level"])
            table[f"level_mean_{name}{suffix}"] = [means.get(key, (None,) * 3)[i] for key in keys]
    order = table["level"].map(rank).fillna(len(rank))
    return (
        table.assign(_order=order)
        .sort_values(["_order", "dataset", "model"])
        .drop(columns=["_order", "weights", "noise"])
        .reset_index(drop=True)
    )


# ---------------------------------------------------------------------------------------------------


class _Rows:
    """The predictions table as (layer, seed, example) arrays, checked to be complete."""

    def __init__(self, predictions: pd.DataFrame) -> None:
        frame = predictions.sort_values(["layer", "seed", "example"], kind="stable")
        self.layers = np.unique(frame["layer"].to_numpy())
        self.n_seeds = int(frame["seed"].nunique())
        self.n = int(frame["example"].nunique())
        if frame.empty or len(frame) != len(self.layers) * self.n_seeds * self.n:
            raise ValueError("predictions must hold every example for every layer and seed")
        self._frame = frame
        self.label = self.array("label")[0, 0].astype(bool)
        groups = self.array("group")[0, 0]
        self.groups = None if np.unique(groups).size == self.n else groups

    def array(self, column: str) -> np.ndarray:
        values = self._frame[column].to_numpy()
        if column in ("label", "control_label"):
            values = values.astype(bool)
        return values.reshape(len(self.layers), self.n_seeds, self.n)


def _correct(rows: _Rows) -> np.ndarray:
    """Out-of-fold correctness per layer and example, (layer, n), averaged over the CV seeds."""
    return ((rows.array("decision") > 0) == rows.label).mean(1)


def accuracy_replicates(predictions: pd.DataFrame, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layers, the accuracy curve and its (n_boot, layers) bootstrap replicates, resampled as the concept-depth
    summary resamples (examples, or their groups), so other per-layer curves can be correlated with it."""
    rows = _Rows(predictions)
    correct = _correct(rows)
    return rows.layers, correct.mean(1), resampled_means(bootstrap_weights(rows.n, n_boot, seed, rows.groups), correct)


def _halves(rows: _Rows, seed: int) -> np.ndarray:
    """Seeded splits of the examples (whole groups) into two halves, (split, n), for the cross-fitted best."""
    codes = np.unique(rows.groups if rows.groups is not None else np.arange(rows.n), return_inverse=True)[1]
    rng = np.random.default_rng([seed, _HALVES_STREAM])
    return np.stack([(rng.permutation(codes.max() + 1) % 2)[codes].astype(bool) for _ in range(_HALF_SPLITS)])


def _cross_fitted_best(correct: np.ndarray, W: np.ndarray, halves: np.ndarray) -> np.ndarray:
    """Best accuracy without the winner's curse: the layer chosen on one half is scored on the other, both ways,
    averaged over both ways and several splits (per resample; ``correct`` is (layer, n), ``W`` (n_boot, n)).

    The layers are chosen once, on the sample: a resample that chose again would add the spread of the sample's
    own half-curves across the layers it picks, which the sample's estimate does not have (the interval was 1.2-1.6
    times as wide as the estimate's spread over replicate datasets, benchmarks/validate_intervals.py).
    """
    total = np.zeros(W.shape[0])
    for half in halves:
        first_layer, second_layer = (correct[:, part].mean(1).argmax() for part in (half, ~half))
        # the layer chosen on one half, scored on the other
        total += resampled_means(W[:, ~half], correct[first_layer, ~half][None])[:, 0]
        total += resampled_means(W[:, half], correct[second_layer, half][None])[:, 0]
    return total / (2 * len(halves))


def _f1(decision: np.ndarray, positive: np.ndarray, W: np.ndarray) -> np.ndarray:
    """F1 of class 1 per resample and layer of out-of-fold ``decision`` (layer, seed, n), each seed's pooled
    predictions, averaged over seeds."""
    predicted = decision > 0
    tp = np.einsum("bn,lsn->bls", W, (predicted & positive).astype(np.float64))
    fp = np.einsum("bn,lsn->bls", W, (predicted & ~positive).astype(np.float64))
    fn = np.einsum("bn,lsn->bls", W, (~predicted & positive).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return f1.mean(-1)


def _roc_auc(decision: np.ndarray, positive: np.ndarray, W: np.ndarray) -> np.ndarray:
    """ROC-AUC per resample and layer (Mann-Whitney, ties half, rows weighted by multiplicity) of each seed's
    pooled out-of-fold ``decision`` values (layer, seed, n), averaged over seeds."""
    n_layers, n_seeds, _ = decision.shape
    Wp, Wn = W[:, positive], W[:, ~positive]
    out = np.zeros((W.shape[0], n_layers))
    for layer in range(n_layers):
        for seed in range(n_seeds):
            scores = decision[layer, seed]
            order = np.argsort(scores[~positive], kind="stable")
            negatives = scores[~positive][order]
            cumulative = np.concatenate([np.zeros((W.shape[0], 1)), np.cumsum(Wn[:, order], axis=1)], axis=1)
            left = np.searchsorted(negatives, scores[positive], "left")
            right = np.searchsorted(negatives, scores[positive], "right")
            below = cumulative[:, left] + 0.5 * (cumulative[:, right] - cumulative[:, left])
            out[:, layer] += (Wp * below).sum(1) / (Wp.sum(1) * Wn.sum(1))
    return out / n_seeds


def _fitting_inflation(
    rows: _Rows, refits: pd.DataFrame | None, correct: np.ndarray, control_correct: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Per metric and layer, the factor (>= 1) by which the summary widens its fixed-probe bootstrap around each
    point so that it includes the variance of fitting the probe.

    The variance a refitted resample adds over the same resample with the probes held fixed is about twice what
    fitting adds to a new sample of the task (``_REFIT_OVERCOUNT``), so the factor is
    sqrt(1 + (refit / fixed variance - 1) / 2). Both variances are taken over the same ``refits`` resamples, so
    their ratio is precise from a few dozen replicates; sums of squares are pooled over ``_INFLATION_WINDOW``
    layers on each side. Without refits every factor is 1.
    """
    ones = {name: np.ones(len(rows.layers)) for name in ("accuracy", "control_accuracy", "f1", "roc_auc")}
    if refits is None or refits.empty:
        return ones
    frame = refits.sort_values(["replicate", "layer", "example"], kind="stable")
    replicates = np.unique(frame["replicate"].to_numpy())
    layer_index = np.searchsorted(rows.layers, frame["layer"].to_numpy())
    replicate_index = np.searchsorted(replicates, frame["replicate"].to_numpy())
    examples = frame["example"].to_numpy()
    W = np.zeros((replicates.size, rows.n))
    W[replicate_index, examples] = frame["weight"].to_numpy()
    shape = (replicates.size, len(rows.layers), 1, rows.n)
    refit = np.zeros(shape)  # decisions of the refitted probes, (replicate, layer, 1, n); rows not drawn weigh 0
    refit[replicate_index, layer_index, 0, examples] = frame["decision"].to_numpy()
    label = rows.label
    fixed = {
        "accuracy": resampled_means(W, correct),
        "f1": _f1(rows.array("decision"), label, W),
        "roc_auc": _roc_auc(rows.array("decision"), label, W),
    }
    refitted = {
        "accuracy": np.stack([resampled_means(W[b : b + 1], (refit[b, :, 0] > 0) == label)[0] for b in range(len(W))]),
        "f1": np.stack([_f1(refit[b], label, W[b : b + 1])[0] for b in range(len(W))]),
        "roc_auc": np.stack([_roc_auc(refit[b], label, W[b : b + 1])[0] for b in range(len(W))]),
    }
    if "control_decision" in frame:
        control = np.zeros(shape[:2] + (rows.n,))
        control[replicate_index, layer_index, examples] = frame["control_decision"].to_numpy()
        control_label = rows.array("control_label")[0, 0]
        fixed["control_accuracy"] = resampled_means(W, control_correct)
        refitted["control_accuracy"] = np.stack(
            [resampled_means(W[b : b + 1], (control[b] > 0) == control_label)[0] for b in range(len(W))]
        )
    out = dict(ones)
    for name, values in refitted.items():
        spread, held = (np.nansum((v - np.nanmean(v, 0)) ** 2, 0) for v in (values, fixed[name]))
        pooled, pooled_held = (_window_sums(a, _INFLATION_WINDOW) for a in (spread, held))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(pooled_held > 0, pooled / pooled_held, 1.0)
        out[name] = np.sqrt(1 + np.maximum(ratio - 1, 0) / _REFIT_OVERCOUNT)
    return out


# What each online code of probes.probing.protocol.online_codes is called in the curves and the summary row.
_MDL_CURVES = {"task": "mdl", "task_grouped": "mdl_grouped", "control": "mdl_control"}


def _mdl_curves(mdl: pd.DataFrame, rows: _Rows, W: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Codelength and compression curves of every online code, point and resamples.

    The point is the mean over transmission orders. A resample's codelength is the linear bootstrap of that mean:
    each row's extra draws times its influence (its own bits and its pull on the probes that code later blocks),
    averaged over the orders, scaled to n rows (a grouped resample draws a varying number of rows). The orders are
    not resampled: on random labels the example resampling of one order already covered that order's variance
    (docs/methods.md §2.8), and drawing the orders as well made the interval 1.75 times the honest width.
    """
    frame = mdl.sort_values(["code", "layer", "order", "example"], kind="stable")
    drawn = W.sum(1)[:, None]
    curves = {}
    for code, name in _MDL_CURVES.items():
        rows_of_code = frame[frame["code"] == code]
        if rows_of_code.empty:
            continue
        n_orders = int(rows_of_code["order"].nunique())
        shape = (len(rows.layers), n_orders, rows.n)
        if len(rows_of_code) != np.prod(shape) or not np.array_equal(np.unique(rows_of_code["layer"]), rows.layers):
            raise ValueError(f"the online code {code!r} must hold every layer, order and example of the predictions")
        bits = rows_of_code["bits"].to_numpy(np.float64).reshape(shape)
        influence = rows_of_code["influence"].to_numpy(np.float64).reshape(shape)
        point = bits.sum(-1).mean(1)
        resampled = point[None] + (W - 1) @ influence.mean(1).T  # (resample, layer)
        curves[f"{name}_codelength"] = (point, resampled * rows.n / drawn)
        curves[f"{name}_compression"] = (rows.n / point, drawn / resampled)
    return curves


def _strongest_shortcut(shortcuts: pd.DataFrame, n: int) -> tuple[str, np.ndarray]:
    """The shortcut with the highest out-of-fold accuracy, and its per-example correctness averaged over seeds."""
    per_example = shortcuts.groupby(["shortcut", "example"])["correct"].mean().unstack("example")
    per_example = per_example.reindex(columns=range(n))
    if per_example.isna().any().any():
        raise ValueError("shortcut predictions must hold every example of the probes")
    name = per_example.mean(axis=1).idxmax()
    return str(name), per_example.loc[name].to_numpy(dtype=np.float64)


def _window_sums(values: np.ndarray, half: int) -> np.ndarray:
    """Sum of ``values`` over the ``half`` entries on each side of every entry (fewer at the ends)."""
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(values.size)
    return cumulative[np.minimum(index + half + 1, values.size)] - cumulative[np.maximum(index - half, 0)]


def _inflated(point: np.ndarray | float, samples: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    """Resamples spread ``factor`` times as far around ``point``, the centre the fixed-probe bootstrap keeps, and kept
    in [0, 1]: every quantity widened is a rate, and a spread past a perfect score is not a possible value."""
    return np.clip(point + factor * (samples - point), 0.0, 1.0)


def _with_interval(name: str, value: float, samples: np.ndarray, ci: float) -> dict:
    lo, hi = percentile_interval(samples, ci)
    return {name: float(value), f"{name}_lo": _float(lo), f"{name}_hi": _float(hi)}


def _float(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _layer(value: float) -> int | None:
    return None if not np.isfinite(value) else int(value)


def _first(condition: np.ndarray) -> int | None:
    return int(np.argmax(condition)) if condition.any() else None
