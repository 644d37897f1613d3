"""Stages of ``workflow/rules/result_tables.smk``: the README's result tables, rendered from the summaries."""

from __future__ import annotations

import os

import pandas as pd

from probes.stages import write_text


def result_tables(
    concept_depth: str | os.PathLike,
    levels: str | os.PathLike,
    perturbations: str | os.PathLike,
    shortcuts: str | os.PathLike,
    concept_depth_md: str | os.PathLike,
    concept_depth_by_level_md: str | os.PathLike,
    concept_depth_perturbations_md: str | os.PathLike,
    shortcut_audit_md: str | os.PathLike,
    weights: str,
    latent_language: str | os.PathLike | None = None,
    sae_metrics: str | os.PathLike | None = None,
    sparse_probing: str | os.PathLike | None = None,
    depth_usage: str | os.PathLike | None = None,
    neuron_probing: str | os.PathLike | None = None,
    best_neurons: str | os.PathLike | None = None,
    latent_language_md: str | os.PathLike | None = None,
    sae_metrics_md: str | os.PathLike | None = None,
    sparse_probing_md: str | os.PathLike | None = None,
    depth_usage_md: str | os.PathLike | None = None,
    neuron_probing_md: str | os.PathLike | None = None,
) -> None:
    """The ``result_tables`` rule: one markdown table per README marker (``python -m probes.result_tables``).

    The latent-language, SAE, neuron and depth-usage tables exist when the config runs those experiments.
    """
    from probes import result_tables as render

    summary = pd.read_parquet(concept_depth)
    write_text(concept_depth_md, render.concept_depth_table(summary, weights))
    write_text(shortcut_audit_md, render.shortcut_audit_table(pd.read_csv(shortcuts), summary, weights))
    write_text(concept_depth_by_level_md, render.levels_table(pd.read_csv(levels)))
    write_text(concept_depth_perturbations_md, render.perturbations_table(pd.read_csv(perturbations)))
    if latent_language_md:
        write_text(latent_language_md, render.latent_language_table(pd.read_csv(latent_language)))
    if sae_metrics_md:
        write_text(sae_metrics_md, render.sae_metrics_table(pd.read_parquet(sae_metrics)))
        write_text(sparse_probing_md, render.sparse_probing_table(pd.read_parquet(sparse_probing)))
    if neuron_probing_md:
        tables = pd.read_parquet(neuron_probing), pd.read_parquet(best_neurons)
        write_text(neuron_probing_md, render.neuron_probing_table(*tables))
    if depth_usage_md:
        write_text(depth_usage_md, render.depth_usage_table(pd.read_parquet(depth_usage)))
