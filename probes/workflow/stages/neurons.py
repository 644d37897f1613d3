"""Stages of ``workflow/rules/neurons.smk``: k-sparse neuron probes per task, their summary and figures."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from probes.dictionaries.neurons import CRITERIA, NEURON_KS
from probes.io import read_json, write_parquet
from probes.workflow.stages import save_figure, write_table


def probe_neurons(
    mlp: str | os.PathLike,
    tensors: str | os.PathLike,
    activations_meta: str | os.PathLike,
    predictions: str | os.PathLike,
    best: str | os.PathLike,
    model: str,
    task: str,
    level: str,
    pooling: str,
    probe_settings: dict,
    ks: Sequence[int] = NEURON_KS,
    criteria: Sequence[str] = CRITERIA,
) -> dict:
    """The ``probe_neurons`` rule: k-sparse probes on every layer's MLP neurons of one task, and the neuron
    each layer's folds ranked first."""
    from probes.activations.storage import load_activations
    from probes.dictionaries.neurons import best_single_neurons, k_sparse_probe, load_mlp_activations
    from probes.probing.settings import ProbeSettings

    settings = ProbeSettings(**probe_settings)
    stored = load_activations(tensors, pooling)
    y, groups = stored.labels, stored.groups
    extraction = read_json(activations_meta)
    X = load_mlp_activations(mlp, "mlp_post", pooling)
    if not np.isfinite(X).all():
        raise ValueError(f"{mlp}: non-finite neuron activations; re-extract with neurons.dtype: bfloat16")
    frame, chosen = k_sparse_probe(X, y, settings, ks, criteria, groups)
    frame["label"] = y[frame["example"].to_numpy()]
    frame["group"] = pd.array(
        groups[frame["example"].to_numpy()] if groups is not None else [None] * len(frame), "Int64"
    )
    keys = {"model": model, "dataset": task, "level": level, "pooling": pooling, "n_layers": extraction["n_layers"]}
    write_parquet(predictions, pd.concat([pd.DataFrame(keys, index=frame.index), frame], axis=1))
    single = best_single_neurons(chosen, X, y, extraction["classes"])
    write_parquet(best, pd.concat([pd.DataFrame(keys, index=single.index), single], axis=1))
    return {"n_examples": len(y), "n_layers": X.shape[1], "d_mlp": X.shape[2]}


# The columns each table page opens with (estimates with their intervals); every column stays one click below.
SUMMARY_LEAD = {
    "model": "model",
    "dataset": "task",
    "criterion": "ranking",
    "layer": "layer",
    "k": "k",
    "accuracy": "accuracy",
    "dense_accuracy": "dense probe",
}
BEST_LEAD = {
    "model": "model",
    "dataset": "task",
    "criterion": "ranking",
    "layer": "layer",
    "neuron": "neuron",
    "fold_agreement": "fold agreement",
    "favours": "favours",
    "f1": "F1 (k = 1)",
}


def summarise_neurons(
    predictions: Sequence[str | os.PathLike],
    best: Sequence[str | os.PathLike],
    curves: str | os.PathLike,
    summary_csv: str | os.PathLike,
    summary_html: str | os.PathLike,
    summary_table: str | os.PathLike,
    best_csv: str | os.PathLike,
    best_html: str | os.PathLike,
    best_table: str | os.PathLike,
    weights: str,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> None:
    """The ``summarise_neurons`` rule: k-sparse accuracy per model, task, criterion, layer and k beside the
    dense probe's, and the best single neuron per task and layer with its out-of-fold k = 1 F1.

    Intervals are percentile bootstraps over each task's examples, or its groups where it declares them,
    the same resamples for every point of a task (:func:`probes.dictionaries.sae.sparse_accuracy`).
    """
    from probes.dictionaries.neurons import f1_scores
    from probes.dictionaries.sae import sparse_accuracy
    from probes.workflow.stages.sae import dense_accuracy

    dense = dense_accuracy(curves, weights).rename(columns={"value": "dense_accuracy"})
    dense = dense.rename(columns={"accuracy_lo": "dense_accuracy_lo", "accuracy_hi": "dense_accuracy_hi"})
    keys = ["model", "dataset", "level", "n_layers"]
    accuracy_parts, f1_parts = [], []
    for path in predictions:
        frame = pd.read_parquet(path)
        key = frame.iloc[0][keys].to_dict()
        per_example = frame.groupby("example")[["label", "group"]].first().sort_index()
        groups = None if per_example["group"].isna().all() else per_example["group"].to_numpy()
        accuracy = sparse_accuracy(frame.rename(columns={"criterion": "features"}), n_boot, ci, seed, groups)
        accuracy_parts.append(accuracy.rename(columns={"features": "criterion"}).assign(**key))
        at_one = frame[frame["k"] == 1]
        f1 = f1_scores(at_one, per_example["label"].to_numpy(), n_boot, ci, seed, groups, ("criterion", "layer"))
        f1_parts.append(f1.assign(**key))
    summary = pd.concat(accuracy_parts, ignore_index=True)
    summary = summary[[*keys, "criterion", "layer", "k", "accuracy", "accuracy_lo", "accuracy_hi", "n_examples"]]
    summary = summary.merge(dense, on=["model", "dataset", "layer"], how="left")
    singles = pd.concat([pd.read_parquet(path) for path in best], ignore_index=True)
    singles = singles.merge(pd.concat(f1_parts, ignore_index=True), on=[*keys, "criterion", "layer"], how="left")
    singles = singles.sort_values(["model", "dataset", "criterion", "layer"], ignore_index=True)
    write_table(
        summary,
        summary_csv,
        summary_html,
        f"k-sparse neuron probing: accuracy per model, task, ranking, layer and k ({ci:.0%} bootstrap intervals over "
        "examples, or groups)",
        lead=SUMMARY_LEAD,
    )
    write_table(
        singles,
        best_csv,
        best_html,
        f"Best single neuron per model, task, ranking and layer: the neuron most folds ranked first, its mean "
        f"activation and firing rate per class, and the out-of-fold F1 of the k = 1 probe ({ci:.0%} bootstrap "
        "intervals)",
        lead=BEST_LEAD,
    )
    write_parquet(summary_table, summary)
    write_parquet(best_table, singles)


def plot_neuron_probing(
    summary: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    model: str,
    dataset: str,
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_neuron_probing`` rule: one task of one model, every layer, k and ranking."""
    from probes.plotting.dictionaries import neuron_probing_figure

    rows = pd.read_parquet(summary).query("model == @model and dataset == @dataset")
    save_figure(neuron_probing_figure(rows, ci), figures, dpi)
