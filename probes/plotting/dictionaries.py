"""SAE, transcoder and neuron figures: dictionary quality per layer and sparse probing against the dense probe."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probes.plotting.style import CI, MARKERS, UNIT_LIMITS, apply_style, categorical_colours, count, interval_errors

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_SAE_PANELS = (
    ("fvu", "fraction of variance unexplained"),
    ("l0", "mean L0 (active latents per token)"),
    ("ce_loss_score", "CE loss score (filled: SAELens's;\nopen: BOS kept clean)"),
    ("dead_fraction", "dead / dense latent fraction"),
)


def sae_metrics_figure(metrics: pd.DataFrame) -> Figure:
    """SAE (and transcoder) quality across relative depth, one series of points per model and kind: is any
    layer's dictionary too poor to read? Dictionaries sit at a few layers, so their values are points with
    interval bars, never joined: a line would invent the layers between. A transcoder's FVU is of the MLP
    output it imitates. The loss panel shows SAELens's ``ce_loss_score`` (the ablation zeroes every position)
    and, open, the score with the BOS kept clean in the ablation (``loss_recovered``)."""
    apply_style()
    import matplotlib.pyplot as plt

    by = ["model", "kind"] if "kind" in metrics else ["model"]
    series = list(metrics.groupby(by, sort=True))
    legend_rows = math.ceil(2 * len(series) / 4)
    fig, axes = plt.subplots(
        1, len(_SAE_PANELS), figsize=(3.2 * len(_SAE_PANELS), 3.0 + 0.16 * legend_rows), layout="constrained"
    )
    colours = categorical_colours(len(series))
    dodge = np.linspace(-0.01, 0.01, len(series)) if len(series) > 1 else [0.0]
    for (column, label), ax in zip(_SAE_PANELS, axes):
        for index, (key, rows) in enumerate(series):
            style = {"marker": MARKERS[index % len(MARKERS)], "color": colours[index], "ls": "none", "ms": 4}
            depth = rows["relative_depth"] + dodge[index]
            name = " ".join(key)
            if f"{column}_lo" in rows:  # bootstrap interval over held-out documents
                errors = interval_errors(rows[column], rows[f"{column}_lo"], rows[f"{column}_hi"])
                ax.errorbar(depth, rows[column], yerr=errors, lw=1.0, capsize=2, label=name, **style)
            else:
                ax.plot(depth, rows[column], label=name, **style)
            if column == "dead_fraction":
                ax.plot(depth, rows["dense_fraction"], mfc="white", label=f"{name} (dense)", **style)
            if column == "ce_loss_score" and "loss_recovered" in rows:  # the same score with the BOS never ablated
                errors = (
                    interval_errors(rows["loss_recovered"], rows["loss_recovered_lo"], rows["loss_recovered_hi"])
                    if "loss_recovered_lo" in rows
                    else None
                )
                ax.errorbar(depth, rows["loss_recovered"], yerr=errors, lw=1.0, capsize=2, mfc="white", **style)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_xlim(*UNIT_LIMITS)
        ax.margins(y=0.1)  # a fraction of 0 or a loss recovered of 1 keeps its whole marker
    fig.legend(*axes[-1].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=7)
    first = metrics.iloc[0]
    documents = (
        f";\nloss scores over {count(int(first['n_loss_documents']), 'held-out document')}, bars: bootstrap "
        "interval over documents"
        if "ce_loss_score_lo" in metrics and "n_loss_documents" in metrics
        else ""
    )
    fig.suptitle(
        f"SAEs per layer on held-out corpus tokens ({first['architecture']}, d_sae = {first['d_sae']}, "
        f"{first['training_tokens']:,} training tokens; dead = never fires, open = dense{documents})",
    )
    return fig


# Sparse probes run at the SAE layers only: points with interval bars, one colour and marker per feature set.
_SPARSE_STYLES = {
    "sae": {"color": "#d95f02", "marker": "o"},
    "transcoder": {"color": "#7570b3", "marker": "s"},
    "residual": {"color": "#1b9e77", "marker": "D"},
}


def sparse_probing_figure(
    summary: pd.DataFrame, dense: pd.DataFrame, ci: float = CI, neurons: pd.DataFrame | None = None
) -> Figure:
    """One panel per k: top-k SAE latents, transcoder latents and residual dimensions against the dense probe,
    across depth, with top-k neurons at every layer where ``neurons`` (the neuron summary's F-statistic
    rows, the same ranking) is given. The feature sets are probed at the SAE layers only, so they are points
    with interval bars, a little apart where they share a layer.

    ``summary`` holds one task's rows of the sparse-probing summary (``<features>_topk_accuracy`` with its
    ``_lo``/``_hi`` bootstrap interval over examples); ``dense`` the dense probe's table, whose mean
    accuracy per layer is drawn, with a band where it carries ``accuracy_lo``/``accuracy_hi``.
    """
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    first = summary.iloc[0]
    model, dataset, n_layers = first["model"], first["dataset"], int(first["n_layers"])
    accuracy = dense[dense["metric"] == "accuracy"] if "metric" in dense else dense
    dense_curve = accuracy.groupby("layer")["value"].mean()
    dense_band = (
        accuracy.groupby("layer")[["accuracy_lo", "accuracy_hi"]].first()
        if {"accuracy_lo", "accuracy_hi"} <= set(accuracy.columns)
        else None
    )
    ks = sorted(summary["k"].unique())
    n_cols = min(3, len(ks))
    n_rows = math.ceil(len(ks) / n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.4 * n_cols, 2.7 * n_rows), squeeze=False, sharey=True, sharex=True
    )
    styles = {
        features: style
        for features, style in _SPARSE_STYLES.items()
        if f"{features}_topk_accuracy" in summary and summary[f"{features}_topk_accuracy"].notna().any()
    }
    dodge = dict(zip(styles, 0.012 * n_layers * (np.arange(len(styles)) - (len(styles) - 1) / 2)))
    for ax, k in zip(axes.flat, ks):
        ax.plot(dense_curve.index, dense_curve.to_numpy(), color="#555555", lw=1.4)
        if dense_band is not None:
            band = dense_band["accuracy_lo"], dense_band["accuracy_hi"]
            ax.fill_between(dense_band.index, *band, color="#999999", alpha=0.25, lw=0)
        if neurons is not None:
            at_k = neurons[neurons["k"] == k].sort_values("layer")
            ax.plot(at_k["layer"], at_k["accuracy"], color="#e7298a", lw=1.0)
            ax.fill_between(at_k["layer"], at_k["accuracy_lo"], at_k["accuracy_hi"], color="#e7298a", alpha=0.12, lw=0)
        rows = summary[summary["k"] == k].sort_values("layer")
        for features, style in styles.items():
            mean, lo, hi = (rows[f"{features}_topk_accuracy{end}"] for end in ("", "_lo", "_hi"))
            errors = interval_errors(mean, lo, hi)
            ax.errorbar(rows["layer"] + dodge[features], mean, yerr=errors, ls="none", ms=4, lw=1.2, capsize=2, **style)
        ax.axhline(0.5, color="#bbbbbb", lw=0.8, zorder=0)
        ax.set_title(f"k = {k}")
        ax.set_xlim(dense_curve.index.min(), n_layers)
        ax.set_ylim(0.3, 1.02)
    for ax in axes[-1]:
        ax.set_xlabel("layer")
    for ax in axes[:, 0]:
        ax.set_ylabel("out-of-fold accuracy")
    for ax in list(axes.flat)[len(ks) :]:
        ax.set_visible(False)
    names = {
        "sae": "top-k SAE latents",
        "transcoder": "top-k transcoder latents",
        "residual": "top-k residual dimensions",
    }
    legend = [
        Line2D([], [], color="#555555", lw=1.4, label="dense probe, all dimensions"),
        *(Line2D([], [], ls="none", ms=4, label=names[features], **style) for features, style in styles.items()),
        *([Line2D([], [], color="#e7298a", lw=1.0, label="top-k MLP neurons")] if neurons is not None else []),
        Line2D([], [], color="#bbbbbb", lw=0.8, label="chance"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=7, bbox_to_anchor=(0.5, -0.03))
    unit = (
        count(int(first["n_groups"]), "group")
        if "n_groups" in summary and pd.notna(first["n_groups"])
        else count(int(first["n_examples"]), "example")
    )
    fig.suptitle(
        f"Sparse probing, {model} on {dataset}: features ranked on each training fold by standardised mean\n"
        f"difference |mean1 − mean0| / pooled SD; mean over seeds, {ci:.0%} bootstrap interval over the {unit}",
        y=1.02,
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


_CRITERION_LABELS = {
    "mean_difference": "ranked by |mean1 − mean0|",
    "f_statistic": "ranked by ANOVA F",
}


def neuron_probing_figure(summary: pd.DataFrame, ci: float = CI) -> Figure:
    """k-sparse neuron probes across depth, one panel per ranking criterion, one line per k, beside the dense
    probe: at which layer do a handful of neurons carry the concept, and how many does it take?"""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    first = summary.iloc[0]
    model, dataset, n_layers = first["model"], first["dataset"], int(first["n_layers"])
    criteria = [c for c in _CRITERION_LABELS if c in set(summary["criterion"])]
    ks = sorted(summary["k"].unique())
    colours = colormaps["viridis"](np.linspace(0.05, 0.9, len(ks)))
    fig, axes = plt.subplots(1, len(criteria), figsize=(4.4 * len(criteria), 3.2), squeeze=False, sharey=True)
    for ax, criterion in zip(axes[0], criteria):
        dense = (
            summary[summary["criterion"] == criterion]
            .groupby("layer")[["dense_accuracy", "dense_accuracy_lo", "dense_accuracy_hi"]]
            .first()
        )
        ax.plot(dense.index, dense["dense_accuracy"], color="#555555", lw=1.6, label="dense probe (residual)")
        ax.fill_between(
            dense.index, dense["dense_accuracy_lo"], dense["dense_accuracy_hi"], color="#999999", alpha=0.25, lw=0
        )
        for k, colour in zip(ks, colours):
            rows = summary[(summary["criterion"] == criterion) & (summary["k"] == k)].sort_values("layer")
            ax.plot(rows["layer"], rows["accuracy"], color=colour, lw=1.2, label=f"k = {k}")
            ax.fill_between(rows["layer"], rows["accuracy_lo"], rows["accuracy_hi"], color=colour, alpha=0.12, lw=0)
        ax.axhline(0.5, color="#bbbbbb", lw=0.8, zorder=0)
        ax.set_title(f"neurons {_CRITERION_LABELS[criterion]}", fontsize=9)
        ax.set_xlabel("layer (MLP of block layer − 1)")
        ax.set_xlim(0, n_layers)
        ax.set_ylim(0.3, 1.02)
    axes[0, 0].set_ylabel("out-of-fold accuracy")
    axes[0, -1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle(
        f"k-sparse neuron probing, {model} on {dataset} ({count(int(first['n_examples']), 'example')}): neurons "
        f"ranked on each training fold;\nbands: {ci:.0%} bootstrap intervals over examples (or groups); dense probe "
        "on the residual stream with the same folds",
        y=1.03,
        fontsize=9,
    )
    fig.tight_layout()
    return fig
