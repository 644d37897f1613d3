"""Stage functions of workflow/rules/causal.smk: is what a probe finds used? (docs/methods.md §8)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from probes.interventions.checks import CausalTask, evaluation_rows
from probes.io import write_arrays, write_parquet
from probes.workflow.stages import save_figure, shared_model, write_table

log = logging.getLogger(__name__)


def _load_task(name, dataset, columns, tensors, mlp, pooling, settings, configured_readout, seed) -> CausalTask:
    """A task's rows as the causal checks take them, refused (naming the file) where they cannot be used."""
    from probes.activations.storage import load_activations
    from probes.datasets.concepts import load_dataset
    from probes.dictionaries.neurons import load_mlp_activations
    from probes.interventions.readout import task_readout

    stored = load_activations(tensors, pooling)
    texts = load_dataset(dataset, **columns).texts
    if len(texts) != len(stored.labels):
        raise ValueError(f"{tensors}: {len(stored.labels)} rows, but {dataset} has {len(texts)}; re-extract it")
    if not np.isfinite(stored.vectors).all():
        raise ValueError(f"{tensors}: non-finite activations; the causal checks cannot fit on them")
    return CausalTask(
        name,
        list(texts),
        stored.labels,
        stored.groups,
        stored.vectors,
        list(stored.layers),
        evaluation_rows(stored.labels, stored.groups, settings.n_eval, seed),
        load_mlp_activations(mlp, "mlp_post", pooling) if mlp else None,
        task_readout(name, configured_readout),
    )


def causal_checks(
    manifest: str | os.PathLike,
    tensors: Sequence[str | os.PathLike],
    mlp: Sequence[str | os.PathLike],
    datasets: Sequence[str | os.PathLike],
    corpus: Sequence[str | os.PathLike],
    corpus_datasets: Sequence[str | os.PathLike],
    readout: str | os.PathLike,
    effects: str | os.PathLike,
    probes: str | os.PathLike,
    fits: str | os.PathLike,
    rows: str | os.PathLike,
    directions: str | os.PathLike,
    model: str,
    tasks: Sequence[str],
    dataset_columns: Sequence[dict],
    corpus_columns: Sequence[dict],
    readouts: Sequence[dict | None],
    settings: dict,
    probe_settings: dict,
    corpus_settings: dict,
    pooling: str = "last",
    max_tokens: int = 512,
    hf_dataset: dict | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``causal_checks`` rule: behavioural readout, LEACE erasure, steering and neuron deactivation of one
    model on every task, each against its control, with paired bootstrap intervals (docs/methods.md §8)."""
    from probes.activations.token_cache import TokenCacheSettings, tokenised_corpus
    from probes.depth_usage.contributions import corpus_windows
    from probes.interventions.checks import causal_checks as check
    from probes.interventions.settings import CausalSettings
    from probes.probing.settings import ProbeSettings
    from probes.workflow.stages.sae import corpus_texts

    settings = CausalSettings(**{key: tuple(v) if isinstance(v, list) else v for key, v in settings.items()})
    hooked = shared_model(manifest, device=settings.device, dtype=settings.dtype)
    loaded = [
        _load_task(name, dataset, columns, tensor, mlp[i] if mlp else None, pooling, settings, configured, seed)
        for i, (name, dataset, columns, tensor, configured) in enumerate(
            zip(tasks, datasets, dataset_columns, tensors, readouts, strict=True)
        )
    ]
    # The cost of each edit is read on the held-out documents the token cache keeps out of training.
    skip_first = int(bool(hooked.cfg.default_prepend_bos))
    texts = corpus_texts(corpus, corpus_datasets, corpus_columns, hf_dataset)
    token_lists, _, heldout, _ = tokenised_corpus(hooked, texts, TokenCacheSettings(**corpus_settings), seed)
    windows, documents = corpus_windows(token_lists, heldout, skip_first + settings.kl_context, settings.kl_documents)
    results = check(
        hooked, loaded, windows, settings, ProbeSettings(**probe_settings).solver, model, max_tokens, n_boot, ci, seed
    )
    write_parquet(readout, results.readout)
    write_parquet(effects, results.effects)
    write_parquet(probes, results.probes)
    write_parquet(fits, results.fits)
    write_parquet(rows, results.rows)
    write_arrays(directions, results.directions)
    n_layers = hooked.cfg.n_layers
    return {
        "layers": settings.layers(n_layers),
        "neuron_layers": settings.layers(n_layers, settings.deactivation_depths),
        "n_documents": len(documents),
        "can_do": results.readout.loc[results.readout["can_do"], "task"].tolist(),
    }


# The columns each table page opens with (estimates with their intervals); every column stays one click below.
READOUT_LEAD = {
    "model": "model",
    "task": "task",
    "status": "readout",
    "auc": "pair-ordering AUC",
    "accuracy": "accuracy",
    "verbaliser_mass": "verbaliser mass",
    "n_eval": "examples",
}
EFFECTS_LEAD = {
    "model": "model",
    "task": "task",
    "layer": "layer",
    "intervention": "intervention",
    "setting": "setting",
    "strength": "α",
    "k": "k",
    "target_task": "readout of",
    "metric": "metric",
    "real": "real",
    "control": "control",
    "effect": "real − control",
    "status": "status",
}
PROBES_LEAD = {
    "model": "model",
    "task": "task",
    "layer": "erased at",
    "later_layer": "probed at",
    "probe": "probe",
    "clean": "clean",
    "erased": "erased",
    "control": "control",
    "effect": "erased − control",
}
FITS_LEAD = {"model": "model", "task": "task", "layer": "layer", "intervention": "intervention", "setting": "setting"}
# A headline's value columns: its name plus these suffixes (``interval`` and the pages read ``_lo`` / ``_hi``).
EFFECT_COLUMNS = {"effect": "", "effect_lo": "_lo", "effect_hi": "_hi", "real": "_real", "control": "_control"}
PROBE_COLUMNS = {
    "effect": "",
    "effect_lo": "_lo",
    "effect_hi": "_hi",
    "clean": "_clean",
    "erased": "_erased",
    "control": "_control",
}


def _depth_index(rows: pd.DataFrame) -> pd.Series:
    """1 for a model's shallowest layer of an intervention, 2 for the next...: the same configured depth is the
    same column for models of different depth."""
    return rows.groupby(["model", "intervention"])["layer"].rank(method="dense").astype(int)


def _wide(rows: pd.DataFrame, name: str, columns: Mapping[str, str]) -> pd.DataFrame:
    """Rows (model, task, depth index d) as one row per model × task: ``{name}_d{d}{suffix}`` per value column."""
    wide = rows.set_index(["model", "task", "d"])[list(columns)].unstack("d")
    wide = wide[[(column, d) for d in sorted(rows["d"].unique()) for column in columns]]
    wide.columns = [f"{name}_d{d}{columns[column]}" for column, d in wide.columns]
    return wide


def _per_model(summary: pd.DataFrame, values: pd.DataFrame) -> pd.DataFrame:
    """Values indexed by model, repeated on each of its tasks' rows."""
    return summary[[]].join(values, on="model")


def _metric_name(intervention: str, metric: str) -> str:
    return metric if metric.startswith(intervention) else f"{intervention}_{metric}"


def causal_summary(readout: pd.DataFrame, effects: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """One row per model × task: can the model do it, and at each depth (d1, d2, ...: its layers in order) what the
    headline setting of each intervention does to its own readout and costs on other text (real − control, with
    the real and control values), what probes read after erasure at the deepest layer probed, and how many other
    tasks deactivating its neurons moves. Behavioural numbers are empty where the model cannot do the task."""
    from probes.plotting.interventions import headline_effects, skipped

    keys = ["model", "task"]
    readout_columns = ["n_layers", "n_eval", "status", "can_do", "auc", "auc_lo", "auc_hi"]
    readout_columns += ["accuracy", "accuracy_lo", "accuracy_hi"]
    summary = readout.reindex(columns=keys + readout_columns)  # a run whose tasks have no readout lacks the AUCs
    summary["behaviour"] = np.where(summary["status"] == "can do", "measured", "skipped (" + summary["status"] + ")")
    summary = summary.set_index(keys)
    chosen = headline_effects(effects)
    chosen = chosen.assign(d=_depth_index(chosen))
    own = chosen[chosen["target_task"] == chosen["task"]]
    parts = []
    for intervention, rows in own.groupby("intervention", sort=False):
        per_model = rows.groupby("model").agg(
            setting=("setting", "first"), strength=("strength", "max"), k=("k", "max")
        )
        wanted = {"steering": ["setting", "strength"], "deactivation": ["setting", "k"]}.get(intervention, ["setting"])
        parts.append(_per_model(summary, per_model[wanted].add_prefix(f"{intervention}_")))
        depths = rows.groupby(["model", "d"])[["layer", "relative_depth"]].first().unstack("d")
        depths.columns = [
            f"{intervention}_{'layer' if column == 'layer' else 'depth'}_d{d}" for column, d in depths.columns
        ]
        parts.append(_per_model(summary, depths))
        for metric, measured in rows.groupby("metric", sort=False):
            parts.append(_wide(measured, _metric_name(intervention, metric), EFFECT_COLUMNS))
    others = chosen[
        (chosen["intervention"] == "deactivation")
        & (chosen["target_task"] != chosen["task"])
        & (chosen["metric"] == "margin_lost")
        & ~skipped(chosen)
    ]
    if len(others):
        moved = (others["effect_lo"] > 0) | (others["effect_hi"] < 0)
        grouped = others.assign(moved=moved).groupby(["model", "task", "d"])
        off = pd.DataFrame({"mean": grouped["effect"].mean(), "moved": grouped["moved"].sum(), "n": grouped.size()})
        parts.append(_wide(off.reset_index(), "deactivation_off_target", {"mean": "", "moved": "_moved", "n": "_n"}))
    probes = probes.assign(intervention="erasure")
    probes = probes.assign(d=_depth_index(probes))
    deepest = probes[
        probes["later_layer"] == probes.groupby(["model", "task", "layer"])["later_layer"].transform("max")
    ]
    for probe, rows in deepest.groupby("probe", sort=True):
        parts.append(_wide(rows, f"erasure_{probe}_last", PROBE_COLUMNS))
    return summary.join(parts).reset_index()


def _summary_lead(summary: pd.DataFrame) -> dict[str, str]:
    """The summary page's first columns: the readout, then each headline effect at each depth."""
    lead = {"model": "model", "task": "task", "behaviour": "behavioural effects", "auc": "readout AUC"}
    headers = {
        "erasure_margin_lost": "erasure: margin lost − control",
        "erasure_relearnt_last": "erasure: re-learnt probe at L, erased − control",
        "steering_shift": "steering: shift − control",
        "deactivation_margin_lost": "deactivation: own-task margin lost − control",
    }
    for name, header in headers.items():
        for column in summary.columns:
            found = re.fullmatch(rf"{name}_d(\d+)", column)
            if found:
                lead[column] = f"{header} (d{found.group(1)})"
    return lead


def summarise_causal(
    readout: Sequence[str | os.PathLike],
    effects: Sequence[str | os.PathLike],
    probes: Sequence[str | os.PathLike],
    fits: Sequence[str | os.PathLike],
    readout_table: str | os.PathLike,
    readout_csv: str | os.PathLike,
    readout_html: str | os.PathLike,
    effects_table: str | os.PathLike,
    effects_csv: str | os.PathLike,
    effects_html: str | os.PathLike,
    probes_table: str | os.PathLike,
    probes_csv: str | os.PathLike,
    probes_html: str | os.PathLike,
    fits_table: str | os.PathLike,
    fits_csv: str | os.PathLike,
    fits_html: str | os.PathLike,
    summary_table: str | os.PathLike,
    summary_csv: str | os.PathLike,
    summary_html: str | os.PathLike,
    ci: float = 0.95,
) -> None:
    """The ``summarise_causal`` rule: every model's causal-check tables in one, and the headline per model × task.

    The intervals are the per-model tables' own (paired bootstraps of real − control over examples, their groups,
    or documents); nothing is resampled here.
    """
    interval = f"{ci:.0%} paired bootstrap intervals of real − control over examples (groups), or documents for KL"
    tables = {
        "readout": (
            readout,
            readout_table,
            readout_csv,
            readout_html,
            "Causal checks: the model's own readout per task (verbalised answer log-odds)",
            f"Pair-ordering AUC and cross-fitted accuracy with {ci:.0%} bootstrap intervals over examples (groups); "
            "a task the model cannot do is skipped for the behavioural effects.",
            READOUT_LEAD,
        ),
        "effects": (
            effects,
            effects_table,
            effects_csv,
            effects_html,
            "Causal checks: each edit's effect beside an equal-size random edit",
            f"Readout metrics in nats (accuracy_drop: a fraction), KL in bits; {interval}.",
            EFFECTS_LEAD,
        ),
        "probes": (
            probes,
            probes_table,
            probes_csv,
            probes_html,
            "Causal checks: probe accuracy after LEACE erasure at a layer, at that layer and later ones",
            f"relearnt: 5-fold CV probe on the edited rows; transfer: the clean probe applied; {interval}.",
            PROBES_LEAD,
        ),
        "fits": (
            fits,
            fits_table,
            fits_csv,
            fits_html,
            "Causal checks: what was fitted per task, layer and intervention",
            "Ranks, edit sizes and the size of each random control against its real edit.",
            FITS_LEAD,
        ),
    }
    frames = {}
    for name, (paths, table, csv, html, title, note, lead) in tables.items():
        frames[name] = pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)
        write_parquet(table, frames[name])
        write_table(frames[name], csv, html, title, note, lead=lead)
    summary = causal_summary(frames["readout"], frames["effects"], frames["probes"])
    write_parquet(summary_table, summary)
    write_table(
        summary,
        summary_csv,
        summary_html,
        "Causal checks: one row per model and task",
        f"d1, d2, ...: each model's intervention layers in order (the configured depths); {interval}.",
        lead=_summary_lead(summary),
    )


def plot_causal_effects(
    effects: str | os.PathLike,
    readout: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_causal_effects`` rule: every model's effects beyond their controls on relative depth."""
    from probes.plotting.interventions import causal_effects_figure

    save_figure(causal_effects_figure(pd.read_parquet(effects), pd.read_parquet(readout), ci), figures, dpi)


def plot_causal_model(
    probes: str | os.PathLike,
    effects: str | os.PathLike,
    readout: str | os.PathLike,
    erasure_figures: Sequence[str | os.PathLike],
    steering_figures: Sequence[str | os.PathLike],
    model: str,
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_causal_model`` rule: one model's probes after erasure and its steering dose-response."""
    from probes.plotting.interventions import erasure_probes_figure, steering_figure

    readout_rows = pd.read_parquet(readout)
    save_figure(erasure_probes_figure(pd.read_parquet(probes), readout_rows, model, ci), erasure_figures, dpi)
    save_figure(steering_figure(pd.read_parquet(effects), readout_rows, model, ci), steering_figures, dpi)


def plot_causal_specificity(
    effects: str | os.PathLike,
    readout: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    model: str,
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_causal_specificity`` rule: one model's deactivation of each task's neurons read on every task."""
    from probes.plotting.interventions import specificity_figure

    save_figure(specificity_figure(pd.read_parquet(effects), pd.read_parquet(readout), model, ci), figures, dpi)
