"""Stages of ``workflow/rules/concept_depth.smk``: probes per layer, the concept-depth summary, and its figures."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from probes.io import read_json, write_json, write_parquet
from probes.stages import save_figure, write_table

WEIGHTS_NOTE = (
    "weights: the format the model ran in (int8: weight-only, per output channel). The embedded models' originals "
    "are 4-bit GGUF files, so their fp32 is float32 arithmetic on weights dequantised from 4 bits."
)


def probe_layers(
    tensors: str | os.PathLike,
    activations_meta: str | os.PathLike,
    metrics: str | os.PathLike,
    metrics_meta: str | os.PathLike,
    model: str,
    dataset: str,
    level: str,
    pooling: str,
    settings: dict,
    weights: str,
    noise: str,
) -> None:
    """The ``probe_layers`` rule: probe every stored layer of one model x perturbation x dataset into a tidy table."""
    from probes import probing
    from probes.stages.models import load_activations

    vectors, labels = load_activations(tensors, pooling)
    extraction = read_json(activations_meta)
    y = labels.numpy()
    tidy = probing.probe_layers(vectors.numpy(), y, probing.ProbeSettings(**settings), progress=True)
    tidy["layer"] = np.asarray(extraction["layers"])[tidy["layer"].to_numpy()]
    keys = {
        "model": model,
        "weights": weights,
        "noise": noise,
        "dataset": dataset,
        "level": level,
        "site": extraction["site"],
        "pooling": pooling,
    }
    write_parquet(metrics, pd.concat([pd.DataFrame(keys, index=tidy.index), tidy], axis=1))
    write_json(
        metrics_meta,
        keys
        | {
            "n_layers": extraction["n_layers"],
            "chance": float(np.bincount(y).max() / len(y)),
            "n_examples": int(len(y)),
        },
    )


def summarise_concept_depth(
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
    from probes.probing import depth_by_level, perturbation_effects
    from probes.probing import summarise_concept_depth as summarise

    rows, tables = [], []
    for metrics_path, meta_path in zip(metrics, metrics_meta, strict=True):
        tidy, meta = pd.read_parquet(metrics_path), read_json(meta_path)
        depth_summary = summarise(
            tidy,
            chance=meta["chance"],
            depth=meta["n_layers"],
            delta=delta,
            jump_min=jump_min,
            n_boot=n_boot,
            seed=seed,
            ci=ci,
        )
        keys = ("model", "weights", "noise", "dataset", "level", "site", "pooling", "n_layers", "chance", "n_examples")
        rows.append({key: meta[key] for key in keys} | depth_summary)
        tables.append(tidy)
    summary_table = pd.DataFrame(rows)
    write_table(
        summary_table,
        summary_csv,
        summary_html,
        "Concept-depth summary: one row per model, perturbation and task",
        WEIGHTS_NOTE,
    )
    write_table(
        perturbation_effects(summary_table, weights),
        perturbations_csv,
        perturbations_html,
        "Concept depth under perturbation: each perturbed run against the unperturbed one",
        WEIGHTS_NOTE,
    )
    write_table(
        depth_by_level(summary_table, weights),
        levels_csv,
        levels_html,
        "Converging depth by task level, every model (own weights, clean inputs)",
        WEIGHTS_NOTE,
    )
    write_parquet(summary, summary_table)
    write_parquet(metrics_table, pd.concat(tables, ignore_index=True))


def plot_concept_depth(
    metrics_table: str | os.PathLike,
    summary: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    model: str,
    weights: str,
    embedded: bool,
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_concept_depth`` rule."""
    from probes.figures import concept_depth_figure

    fig = concept_depth_figure(pd.read_parquet(metrics_table), pd.read_parquet(summary), model, weights, embedded, ci)
    save_figure(fig, figures, dpi)


def plot_concept_depth_relative(
    metrics_table: str | os.PathLike,
    summary: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    weights: str,
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_concept_depth_relative`` rule."""
    from probes.figures import concept_depth_relative_figure

    fig = concept_depth_relative_figure(pd.read_parquet(metrics_table), pd.read_parquet(summary), weights, ci)
    save_figure(fig, figures, dpi)


def plot_concept_depth_levels(
    levels: str | os.PathLike, figures: Sequence[str | os.PathLike], ci: float = 0.95, dpi: int = 200
) -> None:
    """The ``plot_concept_depth_levels`` rule."""
    from probes.figures import concept_depth_levels_figure

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
    from probes.figures import perturbations_figure

    save_figure(perturbations_figure(pd.read_parquet(summary), model, weights, embedded, ci), figures, dpi)
