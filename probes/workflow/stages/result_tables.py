"""Stages of ``workflow/rules/result_tables.smk``: the results page and its tables, rendered from the summaries."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pandas as pd

from probes.workflow.stages import write_text


def result_tables(
    concept_depth: str | os.PathLike,
    levels: str | os.PathLike,
    perturbations: str | os.PathLike,
    shortcuts: str | os.PathLike,
    concept_depth_md: str | os.PathLike,
    concept_depth_by_level_md: str | os.PathLike,
    concept_depth_perturbations_md: str | os.PathLike,
    shortcut_audit_md: str | os.PathLike,
    mdl_md: str | os.PathLike,
    run_info: str | os.PathLike,
    results_page: str | os.PathLike,
    weights: str,
    latent_language: str | os.PathLike | None = None,
    dual_latent: str | os.PathLike | None = None,
    tuned_lens: str | os.PathLike | None = None,
    sae_metrics: str | os.PathLike | None = None,
    sparse_probing: str | os.PathLike | None = None,
    depth_usage: str | os.PathLike | None = None,
    causal: str | os.PathLike | None = None,
    neuron_probing: str | os.PathLike | None = None,
    best_neurons: str | os.PathLike | None = None,
    latent_language_md: str | os.PathLike | None = None,
    dual_latent_md: str | os.PathLike | None = None,
    tuned_lens_md: str | os.PathLike | None = None,
    sae_metrics_md: str | os.PathLike | None = None,
    sparse_probing_md: str | os.PathLike | None = None,
    depth_usage_md: str | os.PathLike | None = None,
    causal_md: str | os.PathLike | None = None,
    neuron_probing_md: str | os.PathLike | None = None,
) -> None:
    """The ``result_tables`` rule: one markdown file per table, and the results page of them all
    (``python -m probes.workflow.results_page`` copies it to ``docs/results.md``).

    The latent-language, tuned-lens, dual-latent, SAE, neuron and depth-usage tables exist when the config runs those
    experiments. The page names the commit of the run's jobs (from ``run_info``), the date it was rendered and
    this machine.
    """
    from probes.workflow import results_page as render

    summary = pd.read_parquet(concept_depth)
    tables = {
        "concept_depth": render.concept_depth_table(summary, weights),
        "shortcut_audit": render.shortcut_audit_table(pd.read_csv(shortcuts), summary, weights),
        "concept_depth_by_level": render.levels_table(pd.read_csv(levels)),
        "concept_depth_perturbations": render.perturbations_table(pd.read_csv(perturbations)),
        "mdl": render.mdl_table(summary, weights),
    }
    if latent_language_md:
        tables["latent_language"] = render.latent_language_table(pd.read_csv(latent_language))
    if tuned_lens_md:
        tables["tuned_lens"] = render.tuned_lens_table(pd.read_parquet(tuned_lens))
    if dual_latent_md:
        tables["dual_latent"] = render.dual_latent_table(pd.read_csv(dual_latent))
    if sae_metrics_md:
        tables["sae_metrics"] = render.sae_metrics_table(pd.read_parquet(sae_metrics))
        tables["sparse_probing"] = render.sparse_probing_table(pd.read_parquet(sparse_probing))
    if neuron_probing_md:
        tables["neuron_probing"] = render.neuron_probing_table(
            pd.read_parquet(neuron_probing), pd.read_parquet(best_neurons)
        )
    if depth_usage_md:
        tables["depth_usage"] = render.depth_usage_table(pd.read_parquet(depth_usage))
    if causal_md:
        tables["causal"] = render.causal_table(pd.read_parquet(causal))
    outputs = {
        "concept_depth": concept_depth_md,
        "shortcut_audit": shortcut_audit_md,
        "concept_depth_by_level": concept_depth_by_level_md,
        "concept_depth_perturbations": concept_depth_perturbations_md,
        "mdl": mdl_md,
        "latent_language": latent_language_md,
        "tuned_lens": tuned_lens_md,
        "dual_latent": dual_latent_md,
        "sae_metrics": sae_metrics_md,
        "sparse_probing": sparse_probing_md,
        "neuron_probing": neuron_probing_md,
        "depth_usage": depth_usage_md,
        "causal": causal_md,
    }
    for name, table in tables.items():
        write_text(outputs[name], table)
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = render.results_page(tables, pd.read_csv(run_info), date, render.machine_description())
    write_text(results_page, page)
