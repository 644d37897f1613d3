"""Stages of ``workflow/rules/result_tables.smk``: the README's result tables, rendered from the summaries."""

from __future__ import annotations

import os

import pandas as pd

from probes.stages import write_text


def result_tables(
    concept_depth: str | os.PathLike,
    levels: str | os.PathLike,
    perturbations: str | os.PathLike,
    concept_depth_md: str | os.PathLike,
    concept_depth_by_level_md: str | os.PathLike,
    concept_depth_perturbations_md: str | os.PathLike,
    weights: str,
) -> None:
    """The ``result_tables`` rule: one markdown table per README marker (``python -m probes.result_tables``)."""
    from probes import result_tables as render

    write_text(concept_depth_md, render.concept_depth_table(pd.read_parquet(concept_depth), weights))
    write_text(concept_depth_by_level_md, render.levels_table(pd.read_csv(levels)))
    write_text(concept_depth_perturbations_md, render.perturbations_table(pd.read_csv(perturbations)))
