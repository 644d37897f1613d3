"""Depth-usage figures: sublayer contributions, layer skipping, linear shortcuts, layer maps, representation quality."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probes.plotting.style import (
    CI,
    LINE_STYLES,
    MARKERS,
    UNIT_LIMITS,
    apply_style,
    count,
    curve_panels,
    interval_band,
    interval_errors,
    models_with_values,
    relative_depth_axis,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_SUBLAYER_PANELS = (
    ("attn_relative_norm", "attention: update size", "‖attn_out‖ / ‖resid_pre‖", "log"),
    ("mlp_relative_norm", "MLP: update size", "‖mlp_out‖ / ‖resid_mid‖", "log"),
    ("resid_norm", "residual stream (layer 0..L)", "‖resid‖ (L2 norm)", "log"),
    ("attn_cosine", "attention: direction", "cos(attn_out, resid_pre)", "zero"),
    ("mlp_cosine", "MLP: direction", "cos(mlp_out, resid_mid)", "zero"),
)


def depth_usage_sublayers_figure(table: pd.DataFrame) -> Figure:
    """What each block's attention and MLP add to the residual stream across relative depth: the norm of their
    output over that of the residual they are added to, their cosine with it, and the residual norm itself."""
    return curve_panels(
        table,
        _SUBLAYER_PANELS,
        "What each sublayer writes into the residual stream (means over tokens; "
        "a block's sublayers at the residual it writes, 1..L)",
        "documents",
    )


def layer_skipping_figure(table: pd.DataFrame, model: str) -> Figure:
    """One model with each block replaced by the identity in turn: how much every later residual changes
    (heatmap, blank where the residual comes before the skipped block), and how the output distribution
    moves (KL) and keeps its top-1 token."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    rows = table[table["model"] == model]
    if rows.empty:
        raise ValueError(f"the skipping table has no rows for model {model!r}")
    n_layers = int(rows["layer"].max())
    layers = np.arange(1, n_layers + 1)
    change = (
        rows[rows["metric"] == "relative_change"]
        .pivot(index="skipped_layer", columns="layer", values="value")
        .reindex(index=layers, columns=layers)
        .to_numpy(dtype=float)
    )
    fig = plt.figure(figsize=(10.5, 4.8), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(1.2, 1))
    heat = fig.add_subplot(grid[:, 0])
    kl_ax = fig.add_subplot(grid[0, 1])
    agreement_ax = fig.add_subplot(grid[1, 1], sharex=kl_ax)
    edges = np.arange(n_layers + 1) + 0.5
    mesh = heat.pcolormesh(edges, edges, np.ma.masked_where(~(change > 0), change), norm=LogNorm(), cmap="viridis")
    fig.colorbar(mesh, ax=heat, label="‖h′ − h‖ / ‖h‖ at the measured residual (mean over tokens)")
    heat.invert_yaxis()
    heat.set_aspect("equal")
    heat.set_xlabel("measured residual layer")
    heat.set_ylabel("skipped block (the residual layer it writes)")
    heat.set_title("Change of every later residual (blank: before the skipped block)", pad=6)
    relative_depth_axis(heat, n_layers)
    outputs = (
        (kl_ax, "kl_bits", "KL(intact ‖ skipped), bits", "#d95f02"),
        (agreement_ax, "top1_agreement", "top-1 agreement", "#1b9e77"),
    )
    for ax, metric, ylabel, colour in outputs:
        interval_band(
            ax, rows[rows["metric"] == metric], "skipped_layer", colour, metric == "kl_bits", marker=".", lw=1.4
        )
        ax.set_ylabel(ylabel)
        ax.set_xlim(0.5, n_layers + 0.5)
    kl_ax.set_yscale("log")
    kl_ax.set_title("Change of the output distribution", pad=6)
    kl_ax.tick_params(labelbottom=False)
    relative_depth_axis(kl_ax, n_layers)
    agreement_ax.set_ylim(0, 1.02)
    agreement_ax.set_xlabel("skipped block (the residual layer it writes)")
    first = rows.iloc[0]
    fig.suptitle(
        f"{model}: each block replaced by the identity in turn "
        f"({count(int(first['n_documents']), 'held-out document')}; "
        f"bands: {first['ci']:.0%} bootstrap intervals over documents)"
    )
    return fig


SHORTCUT_LENS_STYLES = {
    "logit": ("logit lens", "#555555"),
    "linear": ("linear shortcut", "#1b9e77"),
    "tuned": ("tuned lens", "#d95f02"),
}


_SHORTCUT_PANELS = (
    ("precision_at_1", "precision@1", "P(lens top-1 = model's top-1)", False),
    ("surprisal_bits", "surprisal of the model's top-1", "−log₂ P_lens(model's top-1), bits", True),
    ("kl_bits", "distance to the model's output", "KL(model ‖ lens), bits", True),
)


def linear_shortcuts_figure(table: pd.DataFrame) -> Figure:
    """Every layer's residual read through the unembedding as it is (logit lens), after a least-squares map
    to the last layer (linear shortcut) and after the tuned lens, against the model's own output."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    models = models_with_values(table)
    lenses = [lens for lens in SHORTCUT_LENS_STYLES if lens in set(table["lens"])]
    fig, axes = plt.subplots(1, len(_SHORTCUT_PANELS), figsize=(11, 3.6))
    for ax, (metric, title, ylabel, log) in zip(axes, _SHORTCUT_PANELS):
        for m, model in enumerate(models):
            style = {"ls": LINE_STYLES[m % len(LINE_STYLES)], "marker": MARKERS[m % len(MARKERS)], "ms": 3}
            for lens in lenses:
                rows = table[(table["model"] == model) & (table["lens"] == lens) & (table["metric"] == metric)]
                interval_band(ax, rows, "depth", SHORTCUT_LENS_STYLES[lens][1], log, lw=1.3, **style)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_xlim(*UNIT_LIMITS)
    axes[0].set_ylim(*UNIT_LIMITS)
    handles = [
        Line2D([], [], color=SHORTCUT_LENS_STYLES[lens][1], lw=1.6, label=SHORTCUT_LENS_STYLES[lens][0])
        for lens in lenses
    ]
    for m, model in enumerate(models):
        first = table[table["model"] == model].iloc[0]
        label = f"{model} (L = {int(table.loc[table['model'] == model, 'layer'].max())}, "
        label += f"{count(int(first['n_documents']), 'document')}, {count(int(first['n_tokens']), 'token')})"
        style = {"ls": LINE_STYLES[m % len(LINE_STYLES)], "marker": MARKERS[m % len(MARKERS)], "ms": 3}
        handles.append(Line2D([], [], color="#333333", lw=1.3, label=label, **style))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(
        "How linearly each layer already predicts the output: lenses compared with the model's own next-token "
        f"distribution\nbands: {table['ci'].iloc[0]:.0%} bootstrap intervals over documents",
        y=1.0,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _cell_edges(centres) -> np.ndarray:
    """Cell edges halfway between sorted relative depths, the outer ones at 0 and 1."""
    centres = np.asarray(centres, dtype=float)
    return np.concatenate([[min(0.0, centres[0])], (centres[1:] + centres[:-1]) / 2, [max(1.0, centres[-1])]])


def layer_maps_figure(r2: pd.DataFrame, best: pd.DataFrame) -> Figure:
    """Out-of-fold R² of the ridge map from every source layer to every target layer, one heatmap per ordered
    model pair (rows: source model, columns: target model) on relative depth, with each source layer's best
    target layer marked: if models compute in the same order, the best matches lie on the diagonal."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    models = list(dict.fromkeys([*r2["source_model"], *r2["target_model"]]))
    n = len(models)
    fig, axes = plt.subplots(
        n, n, figsize=(2.6 * n + 1.3, 2.6 * n + 0.9), squeeze=False, sharex=True, sharey=True, layout="constrained"
    )
    norm, cmap = Normalize(0, 1), "viridis"
    for i, source in enumerate(models):
        for j, target in enumerate(models):
            ax = axes[i, j]
            block = r2[(r2["source_model"] == source) & (r2["target_model"] == target)]
            ax.set_title(f"{source} → {target}", fontsize=8)
            if block.empty:
                continue
            grid = (
                block.pivot(index="source_depth", columns="target_depth", values="r2").sort_index().sort_index(axis=1)
            )
            values = np.ma.masked_invalid(grid.to_numpy(dtype=float).clip(0, 1))
            ax.pcolormesh(_cell_edges(grid.columns), _cell_edges(grid.index), values, norm=norm, cmap=cmap)
            ax.plot([0, 1], [0, 1], "--", color="white", lw=0.9)
            match = best[(best["source_model"] == source) & (best["target_model"] == target)]
            # the map's cells end at depths 0 and 1: a best match there is drawn whole, over the edge
            ax.plot(match["best_depth"], match["source_depth"], "o", ms=2.5, color="#e31a1c", clip_on=False)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
    for ax in axes[-1]:
        ax.set_xlabel("target depth (layer / L)")
    for ax in axes[:, 0]:
        ax.set_ylabel("source depth (layer / L)")
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes, shrink=0.8, label="held-out R² (clipped to [0, 1])")
    first = r2.iloc[0]
    fig.suptitle(
        f"Layer maps: ridge from each source layer to each target layer ({count(int(first['n_texts']), 'text')}, "
        f"{count(int(first['n_groups']), 'group')})\n"
        "red: best target layer per source layer; dashed: equal relative depth",
        fontsize=9,
    )
    return fig


def layer_map_matches_figure(best: pd.DataFrame, ci: float = CI) -> Figure:
    """The best-predicted target depth of every source layer for each cross-model pair, against the diagonal
    of equal relative depth; the within-model pairs when there is only one model."""
    apply_style()
    import matplotlib.pyplot as plt

    cross = best[best["source_model"] != best["target_model"]]
    shown = cross if len(cross) else best
    pairs = list(dict.fromkeys(zip(shown["source_model"], shown["target_model"])))
    fig, ax = plt.subplots(figsize=(5.0, 4.6))
    ax.plot([0, 1], [0, 1], "--", color="#999999", lw=0.9, label="equal relative depth")
    for p, (source, target) in enumerate(pairs):
        rows = shown[(shown["source_model"] == source) & (shown["target_model"] == target)].sort_values("source_depth")
        ax.errorbar(
            rows["source_depth"],
            rows["best_depth"],
            yerr=interval_errors(rows["best_depth"], rows["best_depth_lo"], rows["best_depth_hi"]),
            fmt=MARKERS[p % len(MARKERS)] + "-",
            color=plt.cm.tab10(p % 10),
            ms=4,
            lw=1,
            capsize=2,
            label=f"{source} → {target}",
        )
    ax.set_xlim(*UNIT_LIMITS)
    ax.set_ylim(*UNIT_LIMITS)
    ax.set_aspect("equal")
    ax.set_xlabel("source depth (layer / L)")
    ax.set_ylabel("best-predicted target depth (layer / L)")
    scope = "" if len(cross) else "\n(no cross-model pairs: within-model maps shown)"
    ax.set_title(f"Where each source layer maps best{scope}\nbars: {ci:.0%} bootstrap intervals over texts", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


_QUALITY_PANELS = (
    ("prompt_entropy", "prompt entropy", "normalised Rényi entropy", "linear"),
    ("dataset_entropy", "dataset entropy", "normalised Rényi entropy", "linear"),
    ("curvature", "curvature", "mean |turning angle| (radians)", "linear"),
    ("infonce_mi_lower_bound", "augmentation invariance", "InfoNCE: 1 − loss / log n", "linear"),
)


def representation_quality_figure(table: pd.DataFrame) -> Figure:
    """Representation quality per layer on relative depth, one panel per metric (Skean et al., "Layer by Layer"):
    token-level and dataset-level entropy, trajectory curvature and invariance to text augmentation."""
    first = table.iloc[0]
    return curve_panels(
        table,
        _QUALITY_PANELS,
        f"Representation quality across depth (Rényi α = {first['alpha']:g}, InfoNCE τ = {first['temperature']:g})",
        "prompts",
    )


def quality_correlation_figure(table: pd.DataFrame) -> Figure:
    """Per model, the Spearman correlation across layers of each quality curve with each task's probe-accuracy
    curve: a quality metric that tracks concept depth correlates the same way on every task."""
    apply_style()
    import matplotlib.pyplot as plt

    models = models_with_values(table, "spearman")
    tasks = list(dict.fromkeys(table["task"]))
    names = {metric: title for metric, title, _, _ in _QUALITY_PANELS}
    metrics = list(dict.fromkeys(table["metric"]))
    height = max(2.8, 0.14 * len(tasks) * len(metrics) + 1.6)
    fig, axes = plt.subplots(
        1, len(models), figsize=(3.2 * len(models) + 2.4, height), sharex=True, sharey=True, squeeze=False
    )
    offsets = np.linspace(-0.3, 0.3, len(metrics)) if len(metrics) > 1 else [0.0]
    for ax, model in zip(axes[0], models):
        rows = table[table["model"] == model]
        for k, metric in enumerate(metrics):
            part = rows[rows["metric"] == metric].set_index("task").reindex(tasks)
            ax.errorbar(
                part["spearman"],
                np.arange(len(tasks)) + offsets[k],
                xerr=interval_errors(part["spearman"], part["lo"], part["hi"]),
                fmt=MARKERS[k % len(MARKERS)],
                color=plt.cm.Dark2(k % 8),
                ms=4,
                lw=1,
                capsize=2,
                label=names.get(metric, metric),
            )
        ax.axvline(0, color="#999999", lw=0.8, zorder=0)
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(f"{model} ({count(int(rows['n_layers'].iloc[0]), 'residual layer')})")
        ax.set_xlabel("Spearman ρ across layers")
    axes[0, 0].set_yticks(np.arange(len(tasks)), tasks)
    axes[0, 0].invert_yaxis()
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(
        "Does representation quality track concept depth? Quality curve vs probe-accuracy curve per task\n"
        f"bars: {table['ci'].iloc[0]:.0%} bootstrap intervals (prompts and the task's examples resampled)",
        y=1.02,
        fontsize=9,
    )
    fig.tight_layout()
    return fig
