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
DELTA_AUTO = "auto"  # delta = the bootstrap standard error of the best layer's accuracy
CURVE_METRICS = ("accuracy", "control_accuracy", "selectivity", "f1", "roc_auc")
MDL_CURVES = ("mdl_compression", "mdl_codelength")
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
    acc: np.ndarray, chance: float, delta: float, jump_min: float = 0.03, best: float | None = None
) -> dict:
    """Half-rise, jump and converging layers of one accuracy-vs-layer curve (index = layer 0..L).

    The half-rise and converging thresholds are measured from ``best``, by default the curve's
    maximum; the summary passes the cross-fitted best accuracy, because the maximum of a noisy curve
    overshoots the plateau it estimates and would push both layers late. ``jump_layer`` is None when
    no one-layer rise reaches ``jump_min``; ``jump_size`` is always the largest one-layer rise (NaN
    for a single layer), so a "no jump" verdict can be checked.
    """
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 1 or acc.size == 0 or not np.isfinite(acc).all():
        raise ValueError("acc must be a non-empty 1-D array of finite accuracies")
    best = float(acc.max()) if best is None else float(best)
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
    delta: float | str = DELTA_AUTO,
    jump_min: float = 0.03,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    alpha: float = 0.05,
) -> DepthSummary:
    """The concept-depth summary of one model x dataset from :func:`probes.probing.protocol.probe_layers`.

    Decodability against the permutation null; half-rise, best, converging and jump layer (and depth = layer / L);
    cross-fitted best accuracy, F1, ROC-AUC, control accuracy, selectivity and MDL, each with a ``ci`` percentile
    interval of ``n_boot`` bootstrap resamples of the examples (of whole groups where the probes had groups);
    per-layer curves with the same intervals. ``delta`` is the converging tolerance, a number or ``"auto"``.
    """
    metrics = layer_probes.metrics
    control_train = metrics[metrics["metric"] == "control_train_accuracy"].groupby("layer")["value"].mean()
    return summarise_predictions(
        layer_probes.predictions,
        layer_probes.null,
        chance=layer_probes.chance,
        depth=layer_probes.n_layers,
        delta=delta,
        jump_min=jump_min,
        n_boot=n_boot,
        seed=seed,
        ci=ci,
        alpha=alpha,
        control_train=control_train,
    )


def summarise_predictions(
    predictions: pd.DataFrame,
    null: pd.DataFrame,
    chance: float,
    depth: int,
    delta: float | str = DELTA_AUTO,
    jump_min: float = 0.03,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    alpha: float = 0.05,
    control_train: pd.Series | None = None,
) -> DepthSummary:
    """Concept-depth summary of one model x dataset from :class:`probes.probing.protocol.LayerProbes`' tables.

    Point estimates come from the out-of-fold predictions averaged over the CV seeds; intervals from
    ``n_boot`` resamples of the examples (groups) with ``seed``. Layer statistics are reported in the
    tables' layer numbers (0..L for the residual stream, 1..L inside blocks) and as relative depth
    layer / L with ``depth`` = L; a statistic undefined in a resample (no jump) is left out of its
    interval. ``delta`` is the converging tolerance, a number or ``"auto"``. ``control_train`` is the
    control probe's mean training-fold accuracy per layer (memorisation capacity), shown as a curve.
    """
    if depth < 1:
        raise ValueError("depth (the model's number of blocks L) must be >= 1 to define relative depth")
    rows = _Rows(predictions)
    W = bootstrap_weights(rows.n, n_boot, seed, rows.groups)
    correct = _correct(rows)
    control_correct = ((rows.array("control_decision") > 0) == rows.array("control_label")).mean(1)
    acc, acc_boot = correct.mean(1), resampled_means(W, correct)
    control, control_boot = control_correct.mean(1), resampled_means(W, control_correct)
    f1, f1_boot = _f1(rows, np.ones((1, rows.n)))[0], _f1(rows, W)
    auc, auc_boot = _roc_auc(rows, np.ones((1, rows.n)))[0], _roc_auc(rows, W)
    curves = {
        "accuracy": (acc, acc_boot),
        "control_accuracy": (control, control_boot),
        "selectivity": (acc - control, acc_boot - control_boot),
        "f1": (f1, f1_boot),
        "roc_auc": (auc, auc_boot),
    }
    if "mdl_bits" in predictions:
        bits = rows.array("mdl_bits").mean(1)  # (layer, n), already the mean over the transmission orders
        # A resample's online bits, scaled to n rows (a grouped resample draws a varying number of rows); a row
        # costs the bits it cost in the full-sample code: rows are reweighted, the code is not re-run.
        resampled, drawn = W @ bits.T, W.sum(1)[:, None]
        curves["mdl_codelength"] = (bits.sum(1), resampled * rows.n / drawn)
        curves["mdl_compression"] = (rows.n / bits.sum(1), drawn / resampled)

    best = int(np.argmax(acc))
    if delta == DELTA_AUTO:
        delta = float(acc_boot[:, best].std(ddof=1))
    halves = _halves(rows, seed)
    best_point = _cross_fitted_best(correct, np.ones((1, rows.n)), halves)[0]
    best_boot = _cross_fitted_best(correct, W, halves)
    point = summarise_curve(acc, chance, delta, jump_min, best_point)
    boot = [summarise_curve(curve, chance, delta, jump_min, b) for curve, b in zip(acc_boot, best_boot)]
    verdict = null_test(float(acc.max()), null, alpha)

    row: dict = {
        "n_examples": rows.n,
        "n_groups": int(np.unique(rows.groups).size) if rows.groups is not None else rows.n,
        "n_seeds": rows.n_seeds,
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
    row["delta"] = delta
    row["jump_size"] = point["jump_size"]
    row |= _with_interval("f1", f1[best], f1_boot[:, best], ci)
    row |= _with_interval("roc_auc", auc[best], auc_boot[:, best], ci)
    row |= _with_interval("mean_control_accuracy", control.mean(), control_boot.mean(1), ci)
    row |= _with_interval("max_control_accuracy", control.max(), control_boot.max(1), ci)
    if control_train is not None:
        row["mean_control_train_accuracy"] = float(control_train.mean())
    selectivity, selectivity_boot = curves["selectivity"]
    row |= _with_interval("max_selectivity", selectivity.max(), selectivity_boot.max(1), ci)
    row["max_selectivity_layer"] = int(rows.layers[np.argmax(selectivity)])
    row["max_selectivity_depth"] = row["max_selectivity_layer"] / depth
    if "mdl_compression" in curves:
        compression, compression_boot = curves["mdl_compression"]
        row |= _with_interval("max_mdl_compression", compression.max(), compression_boot.max(1), ci)
        row["max_mdl_compression_layer"] = int(rows.layers[np.argmax(compression)])

    frames = []
    for metric, (value, samples) in curves.items():
        lo, hi = percentile_interval(samples, ci)
        frames.append(pd.DataFrame({"layer": rows.layers, "metric": metric, "value": value, "lo": lo, "hi": hi}))
    if control_train is not None:
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
    averaged over both ways and several splits (per resample; ``correct`` is (layer, n), ``W`` (n_boot, n))."""
    rows, total = np.arange(W.shape[0]), np.zeros(W.shape[0])
    for half in halves:
        first = resampled_means(W[:, half], correct[:, half])
        second = resampled_means(W[:, ~half], correct[:, ~half])
        total += second[rows, first.argmax(1)] + first[rows, second.argmax(1)]
    return total / (2 * len(halves))


def _f1(rows: _Rows, W: np.ndarray) -> np.ndarray:
    """F1 of class 1 per resample and layer, each seed's pooled out-of-fold predictions, averaged over seeds."""
    predicted = rows.array("decision") > 0
    positive = rows.label
    tp = np.einsum("bn,lsn->bls", W, (predicted & positive).astype(np.float64))
    fp = np.einsum("bn,lsn->bls", W, (predicted & ~positive).astype(np.float64))
    fn = np.einsum("bn,lsn->bls", W, (~predicted & positive).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return f1.mean(-1)


def _roc_auc(rows: _Rows, W: np.ndarray) -> np.ndarray:
    """ROC-AUC per resample and layer (Mann-Whitney, ties half, rows weighted by multiplicity) of each seed's
    pooled out-of-fold decision values, averaged over seeds."""
    decision = rows.array("decision")
    positive = rows.label
    Wp, Wn = W[:, positive], W[:, ~positive]
    out = np.zeros((W.shape[0], len(rows.layers)))
    for layer in range(len(rows.layers)):
        for seed in range(rows.n_seeds):
            scores = decision[layer, seed]
            order = np.argsort(scores[~positive], kind="stable")
            negatives = scores[~positive][order]
            cumulative = np.concatenate([np.zeros((W.shape[0], 1)), np.cumsum(Wn[:, order], axis=1)], axis=1)
            left = np.searchsorted(negatives, scores[positive], "left")
            right = np.searchsorted(negatives, scores[positive], "right")
            below = cumulative[:, left] + 0.5 * (cumulative[:, right] - cumulative[:, left])
            out[:, layer] += (Wp * below).sum(1) / (Wp.sum(1) * Wn.sum(1))
    return out / rows.n_seeds


def _with_interval(name: str, value: float, samples: np.ndarray, ci: float) -> dict:
    lo, hi = percentile_interval(samples, ci)
    return {name: float(value), f"{name}_lo": _float(lo), f"{name}_hi": _float(hi)}


def _float(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _layer(value: float) -> int | None:
    return None if not np.isfinite(value) else int(value)


def _first(condition: np.ndarray) -> int | None:
    return int(np.argmax(condition)) if condition.any() else None
