"""The causal checks' summary: every model's tables in one, one headline row per model × task with the behavioural
effects skipped where the model cannot do the task, its results-page table and its figures redrawn from the tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from probes.workflow.results_page import causal_table
from probes.workflow.stages import causal as stages

MODELS = {"smollm2-135m": 30, "gemma3-270m": 18}
TASKS = ("cities", "sentiment", "coinflip")
CANNOT_DO = {("gemma3-270m", "coinflip")}
DEPTHS = (0.33, 0.67)
STRENGTHS = (0.25, 0.5, 1.0)
N_EVAL, N_DOCUMENTS, K = 160, 4, 16
SKIPPED = "skipped: cannot do"


def _effect(keys: dict, real: float, control: float, spread: float, unit: str = "examples") -> dict:
    """One measured row of effects.parquet (tables.md): real − control with an interval ``spread`` either side."""
    effect = real - control
    n = {"examples": N_EVAL, "documents": N_DOCUMENTS}[unit]
    values = {"real": real, "control": control, "effect": effect, "effect_lo": effect - spread}
    return keys | values | {"effect_hi": effect + spread, "n": n, "unit": unit, "status": "measured"}


def _behavioural(keys: dict, can_do: bool, metric: str, real: float, control: float, spread: float) -> list[dict]:
    """A readout effect and its accuracy drop where the model can do the task; else one row saying it was skipped,
    with no values, as causal_checks writes it."""
    if not can_do:
        return [keys | {"metric": metric, "unit": "examples", "status": SKIPPED}]
    rows = [_effect(keys | {"metric": metric}, real, control, spread)]
    if metric == "margin_lost":
        rows.append(_effect(keys | {"metric": "accuracy_drop"}, real / 4, control / 4, spread / 4))
    return rows


def causal_model_tables(model: str, n_layers: int) -> dict[str, pd.DataFrame]:
    """One model's per-model outputs of ``causal_checks`` in the format of tables.md: erasure and steering at a
    third and two thirds of the depth, deactivation (zero and mean ablation) of every task's neurons at two thirds."""
    layers = [round(depth * n_layers) for depth in DEPTHS]
    common = {"model": model, "n_layers": n_layers}
    m = list(MODELS).index(model)
    readout, effects, probes, fits = [], [], [], []
    for t, task in enumerate(TASKS):
        can_do = (model, task) not in CANNOT_DO
        auc = 0.8 + 0.05 * t if can_do else 0.52
        readout.append(
            common
            | {"task": task, "n_eval": N_EVAL, "auc": auc, "auc_lo": auc - 0.06, "auc_hi": auc + 0.06}
            | {"accuracy": auc - 0.05, "accuracy_lo": auc - 0.1, "accuracy_hi": auc}
            | {"raw_accuracy": auc - 0.08, "verbaliser_mass": 0.4, "can_do": can_do}
            | {"status": "can do" if can_do else "cannot do"}
        )
        for layer in layers:
            at = common | {"task": task, "layer": layer, "relative_depth": layer / n_layers, "target_task": task}
            erasure = at | {"intervention": "erasure", "setting": "leace", "strength": math.nan, "k": 0}
            effects += _behavioural(
                erasure, can_do, "margin_lost", 1.2 + 0.3 * t + 0.2 * m + layer / n_layers, 0.05, 0.1
            )
            effects.append(_effect(erasure | {"metric": "kl_bits"}, 0.021, 0.015, 0.004, "documents"))
            settings = ("probe", "mean_difference") if model == "smollm2-135m" else ("probe",)
            for s, setting in enumerate(settings):
                for strength in STRENGTHS:
                    steering = at | {"intervention": "steering", "setting": setting, "strength": strength, "k": 0}
                    shift = (2.0 + t - 0.5 * s + layer / n_layers) * strength
                    effects += _behavioural(steering, can_do, "steering_shift", shift, 0.05 * strength, 0.3)
                    kl = ((0.5 + s / 4) * strength**2, 0.4 * strength**2)
                    effects.append(_effect(steering | {"metric": "kl_bits"}, *kl, 0.05, "documents"))
            fits.append(at | {"intervention": "erasure", "setting": "leace", "rank": 1, "control_size_ratio": 1.1})
            for probe, floor in (("relearnt", 0.52), ("transfer", 0.5)):
                for later in np.unique(np.linspace(layer, n_layers, 4).round().astype(int)):
                    clean = 0.6 + 0.35 * later / n_layers
                    recovered = (later - layer) / max(n_layers - layer, 1)
                    erased = floor + (clean - 0.1 - floor) * recovered * (probe == "relearnt")
                    control = clean - 0.01
                    probes.append(
                        common
                        | {"task": task, "layer": layer, "relative_depth": layer / n_layers, "later_layer": later}
                        | {"later_depth": later / n_layers, "probe": probe, "clean": clean, "erased": erased}
                        | {"control": control, "effect": erased - control, "effect_lo": erased - control - 0.04}
                        | {"effect_hi": erased - control + 0.04, "n": N_EVAL}
                    )
    layer = layers[-1]
    for source in TASKS:  # every task's neurons, read on every task it can do (specificity)
        at = common | {"task": source, "layer": layer, "relative_depth": layer / n_layers, "k": K}
        for setting, scale in (("zero", 1.0), ("mean", 0.6)):
            keys = at | {"intervention": "deactivation", "setting": setting, "strength": math.nan}
            for target in TASKS:
                own = target == source
                moved = (source, target) == ("cities", "sentiment")
                real = scale * (0.8 if own else 0.4 if moved else 0.06)
                can_do = (model, target) not in CANNOT_DO
                row = keys | {"target_task": target}
                effects += _behavioural(row, can_do, "margin_lost", real, 0.04, 0.1 if own or moved else 0.05)
                if own and model == "smollm2-135m":
                    effects.append(_effect(row | {"metric": "kl_bits"}, 0.08 * scale, 0.03, 0.01, "documents"))
    return {
        "readout": pd.DataFrame(readout),
        "effects": pd.DataFrame(effects),
        "probes": pd.DataFrame(probes),
        "fits": pd.DataFrame(fits),
    }


def summarised(folder) -> dict[str, pd.DataFrame]:
    """Both models' tables written as causal_checks writes them, run through summarise_causal into
    ``folder/tables``; the summary tables read back."""
    inputs = {name: [] for name in ("readout", "effects", "probes", "fits")}
    for model, n_layers in MODELS.items():
        for name, frame in causal_model_tables(model, n_layers).items():
            path = folder / "causal" / model / f"{name}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(path)
            inputs[name].append(path)
    outputs = {}
    for name in ("readout", "effects", "probes", "fits", "summary"):
        for kind, ext in (("table", "parquet"), ("csv", "csv"), ("html", "html")):
            outputs[f"{name}_{kind}"] = folder / "tables" / f"causal_{name}.{ext}"
    stages.summarise_causal(**inputs, **outputs, ci=0.95)
    return {name: pd.read_parquet(outputs[f"{name}_table"]) for name in ("readout", "effects", "probes", "summary")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("causal")


@pytest.fixture(scope="module")
def tables(folder):
    return summarised(folder)


BEHAVIOURAL = ("erasure_margin_lost", "erasure_accuracy_drop", "steering_shift", "deactivation_margin_lost")
REPRESENTATIONAL = ("erasure_relearnt_last", "erasure_transfer_last", "erasure_kl_bits", "steering_kl_bits")


def test_every_model_table_is_concatenated_with_its_csv_and_page(tables, folder):
    for name in ("readout", "effects", "probes"):
        assert len(tables[name]) == sum(len(causal_model_tables(m, n)[name]) for m, n in MODELS.items())
    for name in ("readout", "effects", "probes", "fits", "summary"):
        assert len(pd.read_csv(folder / "tables" / f"causal_{name}.csv")) > 0
        assert "<h1>Causal checks" in (folder / "tables" / f"causal_{name}.html").read_text()
    page = (folder / "tables" / "causal_summary.html").read_text()
    assert "<th>erasure: margin lost − control (d1)</th>" in page and "<td>skipped (cannot do)</td>" in page


def test_the_summary_has_one_row_per_model_and_task_with_every_headline_at_each_depth(tables):
    summary = tables["summary"].set_index(["model", "task"])
    assert sorted(summary.index) == sorted((model, task) for model in MODELS for task in TASKS)
    assert summary.loc["smollm2-135m", "erasure_layer_d1"].eq(10).all()
    assert summary.loc["gemma3-270m", "erasure_layer_d2"].eq(12).all()
    assert summary.loc["gemma3-270m", "deactivation_layer_d1"].eq(12).all()
    assert "erasure_layer_d3" not in summary and "deactivation_layer_d2" not in summary
    assert (summary["steering_setting"] == "probe").all() and (summary["steering_strength"] == max(STRENGTHS)).all()
    assert (summary["deactivation_setting"] == "zero").all() and (summary["deactivation_k"] == K).all()

    can_do = summary[summary["behaviour"] == "measured"]
    columns = [f"{name}_d{d}{end}" for name in BEHAVIOURAL + REPRESENTATIONAL for d in (1, 2) for end in ("", "_lo")]
    columns = [column for column in columns if not column.startswith("deactivation_margin_lost_d2")]
    assert len(can_do) == 5 and can_do[columns].notna().all().all()
    effects = tables["effects"]
    cities = effects.query(
        "model == 'smollm2-135m' and task == 'cities' and layer == 20 and intervention == 'steering' "
        "and setting == 'probe' and strength == 1.0 and metric == 'steering_shift'"
    ).iloc[0]
    row = summary.loc[("smollm2-135m", "cities")]
    assert row[["steering_shift_d2", "steering_shift_d2_lo", "steering_shift_d2_real"]].tolist() == pytest.approx(
        [cities["effect"], cities["effect_lo"], cities["real"]]
    )
    assert row["deactivation_off_target_d1_moved"] == 1 and row["deactivation_off_target_d1_n"] == 2
    last = tables["probes"].query("model == 'smollm2-135m' and task == 'cities' and layer == 10 and later_layer == 30")
    relearnt = last[last["probe"] == "relearnt"].iloc[0]
    assert row["erasure_relearnt_last_d1_erased"] == pytest.approx(relearnt["erased"])


def test_a_task_the_model_cannot_do_keeps_its_representational_numbers_and_skips_the_behavioural_ones(tables):
    row = tables["summary"].set_index(["model", "task"]).loc[("gemma3-270m", "coinflip")]
    assert row["behaviour"] == "skipped (cannot do)" and not row["can_do"]
    assert all(pd.isna(row[f"{name}_d1"]) for name in BEHAVIOURAL)
    assert all(pd.notna(row[f"{name}_d{d}"]) for name in REPRESENTATIONAL for d in (1, 2))
    skipped = tables["effects"].query("model == 'gemma3-270m' and target_task == 'coinflip' and metric != 'kl_bits'")
    assert len(skipped) and (skipped["status"] == SKIPPED).all() and skipped["effect"].isna().all()


def test_the_results_page_table_gives_intervals_per_depth_and_says_where_it_skipped(tables):
    table = causal_table(tables["summary"])
    lines = table.splitlines()
    assert len(lines) == 2 + len(MODELS) * len(TASKS)
    assert "steering at α = 1: shift − control (nats)" in lines[0]
    assert "top-16 neurons, zero ablation" in lines[0]
    cities = next(line for line in lines if line.startswith("| smollm2-135m | cities |"))
    cells = [cell.strip() for cell in cities.strip("|").split("|")]
    assert cells[2] == "yes, AUC 0.80 [0.74, 0.86]"
    assert cells[3] == "0.33: 1.48 [1.38, 1.58]; 0.67: 1.82 [1.72, 1.92]"
    assert cells[4].startswith("0.33: ") and " vs " in cells[4]
    assert cells[9] == "0.67: 1 of 2 (0.19)"
    coinflip = next(line for line in lines if line.startswith("| gemma3-270m | coinflip |"))
    cells = [cell.strip() for cell in coinflip.strip("|").split("|")]
    assert cells[2].startswith("no, AUC 0.52")
    assert [cells[i] for i in (3, 6, 8)] == ["skipped (cannot do)"] * 3
    assert cells[9] == "0.67: 0 of 2 (0.02)"  # its neurons still read on the tasks the model can do
    cost = "0.021 vs 0.015, 0.006 [0.002, 0.010]"  # the edit's cost is still measured
    assert cells[5] == f"0.33: {cost}; 0.67: {cost}"


def test_every_figure_redraws_from_the_summary_tables(tables, folder, tmp_path):
    paths = {name: folder / "tables" / f"causal_{name}.parquet" for name in ("readout", "effects", "probes")}
    stages.plot_causal_effects(paths["effects"], paths["readout"], [tmp_path / "causal_effects.png"], dpi=40)
    for model in MODELS:
        erasure, steering = tmp_path / f"causal_erasure_{model}.png", tmp_path / f"causal_steering_{model}.png"
        stages.plot_causal_model(
            paths["probes"], paths["effects"], paths["readout"], [erasure], [steering], model, dpi=40
        )
        specificity = tmp_path / f"causal_specificity_{model}.svg"
        stages.plot_causal_specificity(paths["effects"], paths["readout"], [specificity], model, dpi=40)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["causal_effects.png"]
        + [f"causal_{kind}_{model}.png" for kind in ("erasure", "steering") for model in MODELS]
        + [f"causal_specificity_{model}.svg" for model in MODELS]
    )
