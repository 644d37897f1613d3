"""The concept-depth summary on known answers: example-level intervals, the null, paired shifts, the validation."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from helpers import REPO
from probes.probing.depth import depth_by_level, perturbation_effects, summarise_curve, summarise_predictions
from probes.resampling import bootstrap_weights, percentile_interval


def load_benchmark():
    spec = importlib.util.spec_from_file_location("validate_intervals", REPO / "benchmarks" / "validate_intervals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VALIDATE = load_benchmark()


def tables(shape: str = "ramp", n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    return VALIDATE.oof_tables(VALIDATE.shape_curve(shape), n, 3, 19, np.random.default_rng(seed))[:2]


def test_bootstrap_weights_resample_rows_or_whole_groups() -> None:
    plain = bootstrap_weights(50, 200, seed=1)
    assert plain.shape == (200, 50) and (plain.sum(1) == 50).all()
    np.testing.assert_array_equal(plain, bootstrap_weights(50, 200, seed=1))
    groups = np.repeat(np.arange(25), 2)
    grouped = bootstrap_weights(50, 200, seed=1, groups=groups)
    assert (grouped[:, 0::2] == grouped[:, 1::2]).all()  # both rows of a group drawn together
    assert (grouped.reshape(200, 25, 2)[:, :, 0].sum(1) == 25).all()  # as many groups drawn as there are
    lo, hi = percentile_interval(np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]]), 0.5)
    assert lo[0] in (1.0, 2.0) and np.isnan(hi[1])


def test_summary_is_seeded_and_its_intervals_hold_the_point_estimates() -> None:
    predictions, null = tables()
    first = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=300, seed=3)
    again = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=300, seed=3)
    assert first.row == again.row
    pd.testing.assert_frame_equal(first.curves, again.curves)
    row = first.row
    assert row["decodable"] and row["null_p_value"] == pytest.approx(1 / 20)
    for key in ("best_accuracy", "half_rise_layer", "converging_layer", "f1", "roc_auc", "max_selectivity"):
        assert row[f"{key}_lo"] <= row[key] <= row[f"{key}_hi"], key
    for name in ("half_rise", "converging"):
        assert row[f"{name}_depth"] == pytest.approx(row[f"{name}_layer"] / 24)
    curve = first.curves[first.curves["metric"] == "accuracy"]
    assert (curve["lo"] <= curve["value"]).all() and (curve["value"] <= curve["hi"]).all()
    # Out-of-fold predictions alone: the probes count as fixed, nothing widens the bootstrap
    assert row["converging_rise"] == 0.9 and row["refits"] == 0 and row["fitting_inflation"] == 1
    assert abs(row["mean_control_accuracy"] - 0.5) < 0.03


def test_intervals_are_as_wide_as_the_examples_allow() -> None:
    """At n = 400 and accuracy 0.75 a layer's accuracy varies by sqrt(p(1-p)/n) = 0.022 between datasets, so a
    95% band is about 0.085 wide; resampling seed x fold runs gave half that."""
    predictions, null = tables()
    curves = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=500).curves
    plateau = curves[(curves["metric"] == "accuracy") & (curves["layer"] >= 14)]
    width = (plateau["hi"] - plateau["lo"]).median()
    assert 0.065 < width < 0.11


def test_groups_widen_the_intervals_when_rows_come_in_copies() -> None:
    """Each example twice, as one group: resampling rows would pretend to twice the data."""
    predictions, null = tables(n=200)
    copy = predictions.assign(example=predictions["example"] + 200)
    doubled = pd.concat([predictions, copy], ignore_index=True)
    doubled["group"] = doubled["example"]  # every row its own group: the copies resampled apart
    rows = summarise_predictions(doubled, null, 0.5, depth=24, n_boot=400).curves
    groups = summarise_predictions(doubled.assign(group=doubled["example"] % 200), null, 0.5, 24, n_boot=400)
    width = [(c["hi"] - c["lo"])[c["metric"] == "accuracy"].median() for c in (rows, groups.curves)]
    assert width[1] > 1.25 * width[0]
    assert groups.row["n_groups"] == 200


def test_a_curve_within_the_null_gets_no_depth() -> None:
    predictions, null = tables("flat", seed=4)
    row = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=100).row
    if row["decodable"]:  # about 1 seed in 20 is a false positive by design; this one is not
        pytest.fail("seed 4 of the flat shape was expected undecodable")
    assert all(
        row[f"{name}_{unit}"] is None for name in ("half_rise", "converging", "jump") for unit in ("layer", "depth")
    )
    assert "does not beat the permutation null" in row["undecodable_reason"]


def test_f1_and_roc_auc_are_those_of_the_pooled_out_of_fold_predictions() -> None:
    predictions, null = tables(n=120)
    summary = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=50)
    curves = summary.curves.set_index(["metric", "layer"])["value"]
    for layer in (0, 20):
        rows = predictions[predictions["layer"] == layer]
        f1 = np.mean([f1_score(r["label"], r["decision"] > 0) for _, r in rows.groupby("seed")])
        auc = np.mean([roc_auc_score(r["label"], r["decision"]) for _, r in rows.groupby("seed")])
        assert curves[("f1", layer)] == pytest.approx(f1)
        assert curves[("roc_auc", layer)] == pytest.approx(auc)


def test_incomplete_predictions_are_refused() -> None:
    predictions, null = tables(n=60)
    with pytest.raises(ValueError, match="every example for every layer and seed"):
        summarise_predictions(predictions.iloc[:-1], null, 0.5, depth=24)
    with pytest.raises(ValueError, match="cannot reach p <= 0.01"):
        summarise_predictions(predictions, null, 0.5, depth=24, alpha=0.01)


def summary_table(runs: dict) -> tuple[pd.DataFrame, dict]:
    rows, replicates = [], {}
    for (model, noise, dataset, level), (predictions, null) in runs.items():
        result = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=200)
        keys = {"model": model, "weights": "fp32", "noise": noise, "dataset": dataset, "level": level, "n_layers": 24}
        rows.append(keys | result.row)
        replicates[(model, "fp32", noise, dataset)] = result.replicates
    return pd.DataFrame(rows), replicates


def test_perturbation_shifts_are_paired_and_level_means_skip_undecodable_tasks() -> None:
    ramp, late, flat = tables("ramp"), tables("late_jump", seed=1), tables("flat", seed=4)
    summary, replicates = summary_table(
        {
            ("m", "clean", "a", "factual"): ramp,
            ("m", "chars-insert-0.1", "a", "factual"): ramp,  # the same predictions: no shift, no spread
            ("m", "clean", "b", "factual"): late,
            ("m", "clean", "c", "factual"): flat,
        }
    )
    effects = perturbation_effects(summary, replicates, "fp32")
    assert len(effects) == 1
    for name in ("half_rise_depth", "converging_depth", "best_accuracy"):
        assert effects.loc[0, f"{name}_shift"] == 0
        assert effects.loc[0, f"{name}_shift_lo"] == effects.loc[0, f"{name}_shift_hi"] == 0
    levels = depth_by_level(summary, replicates, "fp32")
    decodable = levels[levels["decodable"]]
    assert set(levels["dataset"]) == {"a", "b", "c"} and set(decodable["dataset"]) == {"a", "b"}
    mean = levels["level_mean_half_rise_depth"].iloc[0]
    assert mean == pytest.approx(decodable["half_rise_depth"].mean())
    assert levels["level_mean_half_rise_depth_lo"].iloc[0] <= mean <= levels["level_mean_half_rise_depth_hi"].iloc[0]


def test_summarise_curve_on_known_shapes() -> None:
    acc = np.array([0.50, 0.52, 0.55, 0.70, 0.792, 0.80, 0.795, 0.80])
    summary = summarise_curve(acc, chance=0.5, converging_rise=0.9)
    assert summary["best_accuracy"] == pytest.approx(0.80) and summary["best_layer"] == 5
    assert summary["half_rise_layer"] == 3  # threshold 0.65
    assert summary["jump_layer"] == 3 and summary["jump_size"] == pytest.approx(0.15)
    assert summary["converging_layer"] == 4  # first >= 0.5 + 0.9 * 0.3 = 0.77
    assert summarise_curve(acc, chance=0.5, converging_rise=0.9, best=0.71)["converging_layer"] == 3  # >= 0.689
    spike = summarise_curve(np.array([0.50, 0.66, 0.50, 0.50, 0.80, 0.80]), chance=0.5)  # one noisy early layer
    assert spike["half_rise_layer"] == 4 and spike["converging_layer"] == 4  # read off the rising envelope
    flat = summarise_curve(np.linspace(0.5, 0.56, 7), chance=0.5)  # steps of 0.01 < jump_min
    assert flat["jump_layer"] is None and flat["jump_size"] == pytest.approx(0.01)
    assert summarise_curve(np.array([0.4, 0.45]), chance=0.5)["half_rise_layer"] is None


def test_validation_benchmark_meets_its_targets_in_a_small_run() -> None:
    """benchmarks/validate_intervals.py with 30 replicates per shape (the benchmark runs 200)."""
    table = VALIDATE.validate("oof", replicates=30, n=400, n_boot=200)
    decodable = table[(table["shape"] != "flat") & table["statistic"].isin(VALIDATE.STATISTICS)]
    assert (decodable["coverage"] >= 0.85).all(), decodable
    bands = table[table["statistic"].str.startswith("band")]
    assert (bands["coverage"] >= 0.85).all(), bands
    converging = decodable[decodable["statistic"] == "converging_layer"]
    assert (converging["median_bias"].abs() <= 1).all()
    assert (table.query("shape == 'flat' and statistic == 'best_accuracy'")["decodable_rate"] <= 0.1).all()
    assert (decodable["decodable_rate"] == 1).all()


def test_without_a_type_control_selectivity_is_measured_against_the_strongest_shortcut() -> None:
    """Plant two shortcuts, right on 90% and 60% of the examples: the summary names the stronger, and selectivity
    is the accuracy curve minus its accuracy, resampled with the same examples."""
    predictions, null = tables(n=400)
    predictions = predictions.drop(columns=["control_label", "control_decision"])
    rng = np.random.default_rng(5)
    shortcuts = pd.concat(
        [
            pd.DataFrame({"shortcut": name, "seed": 0, "example": np.arange(400), "correct": rng.random(400) < rate})
            for name, rate in (("length", 0.9), ("bag_of_words", 0.6))
        ]
    )
    result = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=300, shortcuts=shortcuts)
    strongest = shortcuts.query("shortcut == 'length'")["correct"].mean()
    assert result.row["control_baseline"] == "length"
    assert result.row["baseline_accuracy"] == pytest.approx(strongest)
    curves = result.curves.set_index(["metric", "layer"])
    np.testing.assert_allclose(
        curves.loc["selectivity", "value"], curves.loc["accuracy", "value"] - strongest, atol=1e-12
    )
    assert (curves.loc["selectivity", "value"] < 0).all()  # the planted shortcut beats the ramp's plateau of 0.75
    assert result.row["max_selectivity_lo"] <= result.row["max_selectivity"] <= result.row["max_selectivity_hi"]
    no_control = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=300)
    assert no_control.row["control_baseline"] is None and "selectivity" not in set(no_control.curves["metric"])


@pytest.mark.slow
def test_validation_benchmark_with_the_real_probes_in_a_small_run() -> None:
    """The benchmark's default generator (real probes, refits and null on Gaussian activations) at 12 replicates
    per shape: loose bounds, as 12 replicates put a coverage of 0.95 anywhere in 0.8-1 by chance."""
    table = VALIDATE.validate("probes", replicates=12, n=200, n_boot=200)
    decodable = table[(table["shape"] != "flat") & table["statistic"].isin(VALIDATE.STATISTICS)]
    assert (decodable["coverage"] >= 0.75).all(), decodable
    assert (decodable["decodable_rate"] == 1).all()
    bands = table[table["statistic"].str.startswith("band")]
    assert (bands["coverage"] >= 0.8).all() and bands["width_vs_honest"].between(0.7, 1.6).all(), bands
    assert (table.query("shape == 'flat' and statistic == 'best_accuracy'")["decodable_rate"] <= 0.25).all()


def codes_table(bits: np.ndarray, influence: np.ndarray | None = None, code: str = "task") -> pd.DataFrame:
    """An online-code table (layer, code, order, example, bits, influence) from (layer, order, example) arrays."""
    layer, order, example = np.meshgrid(*(np.arange(k) for k in bits.shape), indexing="ij")
    influence = bits if influence is None else influence
    return pd.DataFrame(
        {"layer": layer.ravel(), "code": code, "order": order.ravel(), "example": example.ravel()}
        | {"bits": bits.ravel(), "influence": influence.ravel()}
    )


def test_mdl_curves_resample_the_bits_of_each_example_and_the_orders():
    predictions, null = tables(n=200)
    ones = np.ones((25, 1, 200))
    uniform = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=100, mdl=codes_table(ones))
    curve = uniform.curves[uniform.curves["metric"] == "mdl_compression"]
    assert np.allclose(curve[["value", "lo", "hi"]], 1.0)  # one bit a label: no compression, in every resample
    cheap = np.broadcast_to(np.where(np.arange(200) < 100, 0.1, 1.9), (25, 1, 200))
    row = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=300, mdl=codes_table(cheap)).row
    assert row["max_mdl_compression"] == pytest.approx(1.0)  # 200 bits for 200 labels on average
    assert row["max_mdl_compression_lo"] < 1 < row["max_mdl_compression_hi"]  # which rows are drawn matters

    # Two orders 20 bits apart on every layer, every row with the same influence: the point is their mean and the
    # interval the linear bootstrap of that mean (each resample the mean code length plus the rows' extra draws
    # times the influence, scaled to n rows); a peak planted at layer 7 is found with an interval of layers; the
    # control's and the grouped code's curves come beside the task's.
    rng = np.random.default_rng(0)
    base = 0.9 + 0.02 * rng.standard_normal((25, 1, 200))
    base[7] -= 0.3
    orders = np.concatenate([base - 0.05, base + 0.05], axis=1)
    flat = np.full(orders.shape, 0.9)
    mdl = pd.concat(
        [
            codes_table(orders, flat),
            codes_table(base, flat[:, :1], "task_grouped"),
            codes_table(np.ones((25, 2, 200)), code="control"),
        ]
    )
    result = summarise_predictions(predictions, null, 0.5, depth=24, n_boot=400, mdl=mdl)
    curves = result.curves.set_index(["metric", "layer"])
    np.testing.assert_allclose(curves.loc["mdl_codelength", "value"], base.sum(-1)[:, 0])
    grouped = result.curves.set_index(["metric", "layer"]).loc["mdl_grouped_codelength"]
    np.testing.assert_allclose(curves.loc["mdl_codelength", ["lo", "hi"]], grouped[["lo", "hi"]])  # same mean, same U
    row = result.row
    assert row["max_mdl_compression_layer"] == 7 and row["max_mdl_compression_layer_lo"] == 7
    assert row["max_mdl_compression_depth"] == pytest.approx(7 / 24)
    assert row["max_mdl_control_compression"] == pytest.approx(1.0)
    assert row["max_mdl_grouped_compression"] == pytest.approx(row["max_mdl_compression"])
