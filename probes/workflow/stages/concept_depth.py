"""Stages of ``workflow/rules/concept_depth.smk``: probes per layer, the concept-depth summary, and its figures."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from probes.io import read_json, write_json, write_parquet
from probes.workflow.stages import save_figure, write_table

WEIGHTS_NOTE = (
    "weights: the format the model ran in (int8: weight-only, per output channel). The embedded models' originals "
    "are 4-bit GGUF files, so their fp32 is float32 arithmetic on weights dequantised from 4 bits."
)
BOOTSTRAP_NOTE = (
    "Intervals: {ci:.0%} percentile intervals of {n_boot} bootstrap resamples of the examples (of the groups, "
    "where the dataset declares them), the same rows at every layer."
)
INTERVAL_NOTE = BOOTSTRAP_NOTE + " Undecodable tasks (best accuracy within the permutation null) get no depth."


def probe_layers(
    tensors: str | os.PathLike,
    activations_meta: str | os.PathLike,
    metrics: str | os.PathLike,
    predictions: str | os.PathLike,
    null: str | os.PathLike,
    refits: str | os.PathLike,
    mdl: str | os.PathLike,
    metrics_meta: str | os.PathLike,
    model: str,
    dataset: str,
    level: str,
    pooling: str,
    settings: dict,
    weights: str,
    noise: str,
) -> dict:
    """The ``probe_layers`` rule: probe every stored layer of one model x perturbation x dataset.

    Writes the per-fold scores, every example's out-of-fold predictions (what all intervals are drawn
    from), the permutation null's accuracy curves, the refitted resamples' predictions and the online codes'
    bits (empty where MDL is off), all in the model's layer numbers.
    """
    from probes.activations.storage import load_activations
    from probes.probing import protocol as probing
    from probes.probing.settings import ProbeSettings

    stored = load_activations(tensors, pooling)
    extraction = read_json(activations_meta)
    y = stored.labels
    result = probing.probe_layers(
        stored.vectors,
        y,
        ProbeSettings(**settings),
        stored.groups,
        stored.types,
        progress=True,
        layers=extraction["layers"],
        n_layers=extraction["n_layers"],
    )
    keys = {
        "model": model,
        "weights": weights,
        "noise": noise,
        "dataset": dataset,
        "level": level,
        "site": extraction["site"],
        "pooling": pooling,
    }
    outputs = ((metrics, result.metrics), (predictions, result.predictions), (null, result.null))
    codes = result.mdl if result.mdl is not None else pd.DataFrame(columns=["layer", "code", "order", "example"])
    for path, table in (*outputs, (refits, result.refits), (mdl, codes)):
        write_parquet(path, pd.concat([pd.DataFrame(keys, index=table.index), table], axis=1))
    write_json(
        metrics_meta,
        keys
        | {"n_layers": result.n_layers, "chance": result.chance, "n_examples": int(len(y)), "control": result.control}
        | {"control_chance": result.control_chance, "type_dependence": result.type_dependence},
    )
    return {"control": result.control}


def audit_shortcuts(
    dataset: str | os.PathLike,
    tensors: Sequence[str | os.PathLike],
    predictions: str | os.PathLike,
    models: Sequence[str],
    settings: dict,
    pooling: str,
    columns: dict | None = None,
) -> dict:
    """The ``audit_shortcuts`` rule: out-of-fold correctness of the bag-of-words, length and input-embedding
    classifiers on one task, under the folds of its layer probes (groups from the dataset)."""
    from probes.activations.storage import load_activations
    from probes.datasets.concepts import load_dataset
    from probes.probing.settings import ProbeSettings
    from probes.probing.shortcuts import audit_shortcuts as audit

    data = load_dataset(dataset, **(columns or {}))
    embeddings = {}
    for model, path in zip(models, tensors, strict=True):
        stored = load_activations(path, pooling)
        if not np.array_equal(stored.labels, data.labels):
            raise ValueError(f"{path}: labels differ from {dataset}; re-extract the activations")
        embeddings[model] = stored.input_embeddings
    table = audit(data.texts, data.labels, embeddings, ProbeSettings(**settings), data.groups)
    write_parquet(predictions, table)
    accuracy = table.groupby(["shortcut", "model"])["correct"].mean()
    return {f"{shortcut}/{model}" if model else shortcut: float(value) for (shortcut, model), value in accuracy.items()}


SUMMARY_KEYS = ("model", "weights", "noise", "dataset", "level", "site", "pooling", "n_layers", "control")


# The columns each table page opens with (estimates with their intervals); every column stays one click below.
SUMMARY_LEAD = {
    "model": "model",
    "weights": "weights",
    "noise": "noise",
    "dataset": "task",
    "level": "level",
    "decodable": "decodable",
    "half_rise_layer": "half-rise layer",
    "half_rise_depth": "half-rise depth",
    "best_accuracy": "best accuracy",
    "converging_layer": "converging layer",
    "max_selectivity": "selectivity (max)",
    "control_baseline": "selectivity against",
}
PERTURBATIONS_LEAD = {
    "model": "model",
    "weights": "weights",
    "noise": "noise",
    "dataset": "task",
    "decodable": "decodable",
    "half_rise_depth_shift": "half-rise depth shift",
    "converging_depth_shift": "converging depth shift",
    "best_accuracy_shift": "best accuracy shift",
}
LEVELS_LEAD = {
    "level": "level",
    "dataset": "task",
    "model": "model",
    "decodable": "decodable",
    "half_rise_depth": "half-rise depth",
    "converging_depth": "converging depth",
    "best_accuracy": "best accuracy",
    "level_mean_half_rise_depth": "level mean half-rise depth",
}
SHORTCUTS_LEAD = {"dataset": "task", "shortcut": "shortcut", "model": "model", "accuracy": "accuracy"}


def summarise_concept_depth(
    metrics: Sequence[str | os.PathLike],
    predictions: Sequence[str | os.PathLike],
    null: Sequence[str | os.PathLike],
    refits: Sequence[str | os.PathLike],
    mdl: Sequence[str | os.PathLike],
    metrics_meta: Sequence[str | os.PathLike],
    shortcuts: Sequence[str | os.PathLike],
    summary_csv: str | os.PathLike,
    summary_html: str | os.PathLike,
    summary: str | os.PathLike,
    metrics_table: str | os.PathLike,
    curves: str | os.PathLike,
    shortcuts_csv: str | os.PathLike,
    shortcuts_html: str | os.PathLike,
    perturbations_csv: str | os.PathLike,
    perturbations_html: str | os.PathLike,
    levels_csv: str | os.PathLike,
    levels_html: str | os.PathLike,
    weights: str,
    converging_rise: float = 0.9,
    jump_min: float = 0.03,
    n_boot: int = 1000,
    ci: float = 0.95,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """The ``summarise_concept_depth`` rule: one summary row and per-layer curves (with bootstrap intervals) per
    model x perturbation x dataset, all fold scores in one table, the perturbations' paired shifts, and the
    depths grouped by task level across models, and the shortcut audit of every task (its accuracies are also
    columns of the summary rows)."""
    from probes.probing.depth import depth_by_level, perturbation_effects, summarise_concept_depth
    from probes.probing.protocol import LayerProbes
    from probes.probing.shortcuts import shortcut_columns, summarise_shortcuts

    rows, tables, curve_tables, replicates = [], [], [], {}
    audits = {Path(path).stem: path for path in shortcuts}
    for metrics_path, predictions_path, null_path, refits_path, mdl_path, meta_path in zip(
        metrics, predictions, null, refits, mdl, metrics_meta, strict=True
    ):
        tidy, meta = pd.read_parquet(metrics_path), read_json(meta_path)
        layer_probes = LayerProbes(
            tidy,
            pd.read_parquet(predictions_path),
            pd.read_parquet(null_path),
            pd.read_parquet(refits_path),
            meta["control"],
            tuple(sorted(tidy["layer"].unique().tolist())),
            meta["n_layers"],
            meta["chance"],
            meta["control_chance"],
            meta["type_dependence"],
            pd.read_parquet(mdl_path),
        )
        audit = pd.read_parquet(audits[meta["dataset"]])
        own = audit[audit["model"].isin(["", meta["model"]])]  # the text shortcuts and this model's embedding
        options = {"jump_min": jump_min, "n_boot": n_boot, "seed": seed, "ci": ci, "alpha": alpha}
        result = summarise_concept_depth(layer_probes, own, converging_rise=converging_rise, **options)
        keys = {key: meta[key] for key in SUMMARY_KEYS}
        rows.append(keys | result.row)
        curve_tables.append(pd.concat([pd.DataFrame(keys, index=result.curves.index), result.curves], axis=1))
        replicates[(meta["model"], meta["weights"], meta["noise"], meta["dataset"])] = result.replicates
        tables.append(tidy)
    audit = pd.concat(
        [
            summarise_shortcuts(pd.read_parquet(path), n_boot, seed, ci).assign(dataset=Path(path).stem)
            for path in shortcuts
        ],
        ignore_index=True,
    )
    summary_table = pd.DataFrame(rows)
    summary_table = summary_table.merge(shortcut_columns(audit, summary_table), on=["model", "dataset"], how="left")
    write_table(
        audit[["dataset", *audit.columns.drop("dataset")]],
        shortcuts_csv,
        shortcuts_html,
        "Shortcut audit: each task solved without the concept, under its own cross-validation folds",
        "bag_of_words: logistic regression on word unigrams and bigrams; length: a depth-4 tree on characters and "
        "words; embedding: the layer probe on the mean input embedding (layer 0) of each model. "
        + BOOTSTRAP_NOTE.format(ci=ci, n_boot=n_boot),
        lead=SHORTCUTS_LEAD,
    )
    write_table(
        summary_table,
        summary_csv,
        summary_html,
        "Concept-depth summary: one row per model, perturbation and task",
        f"{WEIGHTS_NOTE} {INTERVAL_NOTE.format(ci=ci, n_boot=n_boot)}",
        lead=SUMMARY_LEAD,
    )
    write_table(
        perturbation_effects(summary_table, replicates, weights, ci),
        perturbations_csv,
        perturbations_html,
        "Concept depth under perturbation: each perturbed run against the unperturbed one",
        f"{WEIGHTS_NOTE} Shifts: paired bootstrap, the same resampled rows in both runs.",
        lead=PERTURBATIONS_LEAD,
    )
    write_table(
        depth_by_level(summary_table, replicates, weights, ci),
        levels_csv,
        levels_html,
        "Half-rise and converging depth by task level, every model (own weights, clean inputs)",
        f"{WEIGHTS_NOTE} Level means are over decodable tasks only.",
        lead=LEVELS_LEAD,
    )
    write_parquet(summary, summary_table)
    write_parquet(metrics_table, pd.concat(tables, ignore_index=True))
    write_parquet(curves, pd.concat(curve_tables, ignore_index=True))
    return {"decodable": {f"{r['model']}/{r['weights']}/{r['noise']}/{r['dataset']}": r["decodable"] for r in rows}}


def plot_concept_depth(
    curves: str | os.PathLike,
    summary: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    model: str,
    weights: str,
    embedded: bool,
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_concept_depth`` rule."""
    from probes.plotting.concept_depth import concept_depth_figure

    fig = concept_depth_figure(pd.read_parquet(curves), pd.read_parquet(summary), model, weights, embedded, ci)
    save_figure(fig, figures, dpi)


def plot_concept_depth_relative(
    curves: str | os.PathLike,
    summary: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    weights: str,
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_concept_depth_relative`` rule."""
    from probes.plotting.concept_depth import concept_depth_relative_figure

    fig = concept_depth_relative_figure(pd.read_parquet(curves), pd.read_parquet(summary), weights, ci)
    save_figure(fig, figures, dpi)


def plot_concept_depth_levels(
    levels: str | os.PathLike, figures: Sequence[str | os.PathLike], ci: float = 0.95, dpi: int = 200
) -> None:
    """The ``plot_concept_depth_levels`` rule."""
    from probes.plotting.concept_depth import concept_depth_levels_figure

    save_figure(concept_depth_levels_figure(pd.read_csv(levels), ci), figures, dpi)


def plot_perturbations(
    summary: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    model: str,
    weights: str,
    embedded: bool,
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_perturbations`` rule."""
    from probes.plotting.concept_depth import perturbations_figure

    save_figure(perturbations_figure(pd.read_parquet(summary), model, weights, embedded, ci), figures, dpi)
