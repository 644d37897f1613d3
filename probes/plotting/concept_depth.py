"""Concept-depth figures: accuracy per layer with its controls, on relative depth, by task level, under perturbations.

Each function takes data frames and returns a matplotlib figure; the plot stages read the tables and save it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probes.models.perturbations import unperturbed
from probes.plotting.style import (
    CI,
    EMBEDDED_NOTE,
    INTERVAL_NOTE,
    LEVEL_COLOURS,
    LEVEL_ORDER,
    LINE_STYLES,
    MARKERS,
    NOT_DECODABLE,
    UNIT_LIMITS,
    apply_style,
    categorical_colours,
    count,
    edge_labels,
    interval_errors,
    ordered_tasks,
    relative_depth_axis,
    weights_label,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _curve(curves: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric's per-layer value and interval from the summary's curves table, indexed by layer."""
    rows = curves[curves["metric"] == metric].sort_values("layer")
    return rows.set_index("layer")[["value", "lo", "hi"]]


# The shortcut audit's reference lines (probes.probing.shortcuts): what words alone, the text's length and the input
# embeddings reach; selectivity is measured against the strongest where a task has no type control.
SHORTCUT_LINES = {
    "bag_of_words": {"color": "#a6761d", "ls": (0, (4, 2)), "lw": 0.9},
    "length": {"color": "#666666", "ls": (0, (6, 1.5, 1, 1.5, 1, 1.5)), "lw": 0.9},
    "embedding": {"color": "#e31a1c", "ls": (0, (1, 1.5)), "lw": 1.1},
}


SHORTCUT_LABELS = {
    "bag_of_words": "shortcut: bag of words (same folds)",
    "length": "shortcut: text length (same folds)",
    "embedding": "shortcut: mean input embedding (same folds)",
}


SHORTCUT_EDGE_LABELS = {"bag_of_words": "words", "length": "length", "embedding": "embedding"}


CHANCE_LINE = {"color": "#bbbbbb", "ls": "-", "lw": 0.8}


# Vertical depth marks: each its own colour and dash, none shared with a curve or reference line of the panel.
HALF_RISE_LINE = {"color": "#1f78b4", "ls": "-", "lw": 1.2}
JUMP_LINE = {"color": "#e7298a", "ls": (0, (5, 2)), "lw": 1.2}
CONVERGING_LINE = {"color": "#000000", "ls": "-.", "lw": 1.0}


def concept_depth_figure(
    curves: pd.DataFrame, table: pd.DataFrame, model: str, weights: str, embedded: bool, ci: float = CI
) -> Figure:
    """One panel per task: accuracy and control with intervals, half-rise, jump and converging layers marked;
    the shortcut audit's bag-of-words, length and input-embedding accuracies as reference lines; a task whose best
    accuracy stays within the permutation null is drawn grey, without depth marks."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    curves = curves[unperturbed(curves, weights) & (curves["model"] == model)]
    rows = ordered_tasks(table[unperturbed(table, weights) & (table["model"] == model)])
    if rows.empty:
        raise ValueError(f"the summary has no rows for model {model!r}")
    n_panels = len(rows)
    n_cols = min(3, n_panels)
    n_rows = math.ceil(n_panels / n_cols)
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(max(6.4, 3.6 * n_cols), 2.9 * n_rows + 1.2),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, row in zip(axes.flat, rows.itertuples()):
        task = curves[curves["dataset"] == row.dataset]
        decodable = bool(row.decodable)
        colour = LEVEL_COLOURS.get(row.level, "#333333") if decodable else NOT_DECODABLE
        for metric, style, shade in (("accuracy", "-", colour), ("control_accuracy", "--", "#999999")):
            curve = _curve(task, metric)  # a task whose control is the shortcut audit has no control curve
            ax.plot(curve.index, curve["value"], style, color=colour if metric == "accuracy" else "#555555", lw=1.6)
            ax.fill_between(curve.index, curve["lo"], curve["hi"], color=shade, alpha=0.25, lw=0)
        train = _curve(task, "control_train_accuracy")
        ax.plot(train.index, train["value"], ":", color="#555555", lw=1.0)
        ax.axhline(row.chance, zorder=0, **CHANCE_LINE)
        references = [(row.chance, "chance", CHANCE_LINE["color"])]
        for shortcut, style in SHORTCUT_LINES.items():
            value = getattr(row, f"{shortcut}_accuracy", np.nan)
            if not pd.isna(value):
                ax.axhline(value, zorder=0.5, **style)
                references.append((value, SHORTCUT_EDGE_LABELS[shortcut], style["color"]))
        if decodable:
            ax.axvline(row.half_rise_layer, **HALF_RISE_LINE)
            ax.axvspan(row.half_rise_layer_lo, row.half_rise_layer_hi, color="#1f78b4", alpha=0.1, lw=0)
            if not pd.isna(row.jump_layer):
                ax.axvline(row.jump_layer, **JUMP_LINE)
            ax.axvline(row.converging_layer, **CONVERGING_LINE)
            ax.axvspan(row.converging_layer_lo, row.converging_layer_hi, color="#000000", alpha=0.07, lw=0)
            title = f"{row.dataset} ({row.level})"
        else:
            title = f"{row.dataset} ({row.level}): not decodable, p = {row.null_p_value:.2f}"
        ax.set_title(title, pad=6, color="#000000" if decodable else "#666666")
        ax.set_xlim(task["layer"].min(), row.n_layers)
        ax.set_ylim(min(0.3, row.chance - 0.15), 1.02)
        edge_labels(ax, references)
        ax.set_xlabel("layer")
        relative_depth_axis(ax, row.n_layers)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[n_panels:]:
        ax.set_visible(False)
    typed = (rows["control"] == "type").any()
    legend = [
        Line2D([], [], color="#333333", lw=1.6, label=f"probe (held-out, {INTERVAL_NOTE.format(ci=ci)})"),
        *(
            [
                Line2D([], [], color="#555555", ls="--", lw=1.6, label="type control (one label per type)"),
                Line2D([], [], color="#555555", ls=":", lw=1.0, label="type control, training folds"),
            ]
            if typed
            else []
        ),
        Line2D([], [], label="half-rise layer (band: interval)", **HALF_RISE_LINE),
        Line2D([], [], label="jump layer", **JUMP_LINE),
        Line2D([], [], label="converging layer (band: interval)", **CONVERGING_LINE),
        Line2D([], [], color=NOT_DECODABLE, lw=1.6, label="not decodable (within the permutation null)"),
        Line2D([], [], label="chance", **CHANCE_LINE),
        *(Line2D([], [], label=SHORTCUT_LABELS[name], **style) for name, style in SHORTCUT_LINES.items()),
    ]
    fig.legend(handles=legend, loc="outside lower center", ncol=2 if n_cols == 1 else 4, fontsize=7)
    site, pooling = task["site"].iloc[0], task["pooling"].iloc[0]
    fig.suptitle(
        f"Concept depth of {model} ({weights_label(weights, embedded)}): "
        f"linear probes per layer ({site}, {pooling} token)" + (f"\n{EMBEDDED_NOTE}" if embedded else "")
    )
    return fig


def _depth_errorbar(ax, value: float, lo: float, hi: float, position: float, vertical: bool, **style) -> None:
    if pd.isna(value):
        return
    error = interval_errors([value], [lo], [hi])
    if vertical:
        ax.errorbar(position, value, yerr=error, ms=5, capsize=2, lw=1, **style)
    else:
        ax.errorbar(value, position, xerr=error, ms=5, capsize=2, lw=1, **style)


def concept_depth_relative_figure(curves: pd.DataFrame, summary: pd.DataFrame, weights: str, ci: float = CI) -> Figure:
    """Every model on relative depth: half-rise depths by task level, then the curves per level, each level's
    legend below its panel so the panels keep their size however many tasks a level has."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    curves = curves[unperturbed(curves, weights)]
    summary = ordered_tasks(summary[unperturbed(summary, weights)])
    models = list(dict.fromkeys(summary["model"]))
    tasks = list(dict.fromkeys(summary["dataset"]))
    levels = [level for level in LEVEL_ORDER if level in set(summary["level"])]
    level_tasks = {level: list(dict.fromkeys(summary.loc[summary.level == level, "dataset"])) for level in levels}
    legend_rows = max(len(names) for names in level_tasks.values()) + (len(models) if len(models) > 1 else 0)
    legend_height = 0.15 * legend_rows + 0.3
    height = max(3.0 + legend_height, max(0.25, 0.14 * len(models)) * len(tasks) + 1.2)
    fig = plt.figure(figsize=(4.2 + 3.0 * len(levels), height), layout="constrained")
    grid = fig.add_gridspec(
        2, 1 + len(levels), width_ratios=[1.4] + [1] * len(levels), height_ratios=[2.8, max(0.1, height - 3.6)]
    )
    dots = fig.add_subplot(grid[:, 0])
    offsets = np.linspace(-0.25, 0.25, len(models)) if len(models) > 1 else [0.0]
    for m, model in enumerate(models):
        rows = summary[summary["model"] == model].set_index("dataset").reindex(tasks)
        y = np.arange(len(tasks)) + offsets[m]
        for yi, row in zip(y, rows.itertuples()):
            if not row.decodable:
                dots.text(1.0, yi, "n.d.", fontsize=6, color="#666666", va="center", ha="right")
                continue
            _depth_errorbar(
                dots,
                row.half_rise_depth,
                row.half_rise_depth_lo,
                row.half_rise_depth_hi,
                yi,
                vertical=False,
                fmt=MARKERS[m % len(MARKERS)],
                color=LEVEL_COLOURS.get(row.level, "#333333"),
            )
    dots.set_yticks(
        np.arange(len(tasks)), [f"{t} ({summary.loc[summary.dataset == t, 'level'].iloc[0]})" for t in tasks]
    )
    dots.set_ylim(len(tasks) - 0.5, -0.5)
    dots.set_xlim(*UNIT_LIMITS)
    dots.set_xlabel("half-rise layer / L")
    dots.set_title("Where concepts become decodable")
    dots.legend(
        [Line2D([], [], marker=MARKERS[m % len(MARKERS)], color="#333333", ls="") for m in range(len(models))],
        models,
        fontsize=7,
        loc="best",
    )
    model_handles = [
        Line2D([], [], ls=LINE_STYLES[m % len(LINE_STYLES)], color="#333333", lw=1.4, label=model)
        for m, model in enumerate(models)
        if len(models) > 1
    ]
    for column, level in enumerate(levels, start=1):
        ax = fig.add_subplot(grid[0, column], sharey=fig.axes[1] if column > 1 else None)
        colours = dict(zip(level_tasks[level], categorical_colours(len(level_tasks[level]))))
        for m, model in enumerate(models):
            for row in summary[(summary.model == model) & (summary.level == level)].itertuples():
                curve = _curve(curves[(curves.model == model) & (curves.dataset == row.dataset)], "accuracy")
                depth = curve.index / row.n_layers
                colour = colours[row.dataset]
                ax.plot(
                    depth,
                    curve["value"],
                    LINE_STYLES[m % len(LINE_STYLES)],
                    color=colour,
                    lw=1.4 if row.decodable else 0.9,
                    alpha=1.0 if row.decodable else 0.45,
                    label=f"{row.dataset} · {model}{'' if row.decodable else ' (n.d.)'}",
                )
                ax.fill_between(
                    depth, curve["lo"], curve["hi"], color=colour, alpha=0.15 if row.decodable else 0.05, lw=0
                )
        ax.set_title(f"{level} tasks")
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0.3, 1.02)
        if column == 1:
            ax.set_ylabel("probe accuracy")
        key = fig.add_subplot(grid[1, column])
        key.axis("off")
        task_handles = [Line2D([], [], color=colour, lw=1.4, label=task) for task, colour in colours.items()]
        key.legend(handles=model_handles + task_handles, fontsize=6, loc="upper left", borderaxespad=0)
    fig.suptitle("Concept depth across models on relative depth (own weights, clean inputs)")
    fig.supxlabel(
        f"{INTERVAL_NOTE.format(ci=ci)}; n.d.: not decodable (within the permutation null), drawn faint",
        fontsize=7,
        color="#555555",
    )
    return fig


def perturbations_figure(summary: pd.DataFrame, model: str, weights: str, embedded: bool, ci: float = CI) -> Figure:
    """How each perturbation moves one model's half-rise layer and best accuracy, task by task."""
    apply_style()
    import matplotlib.pyplot as plt

    table = ordered_tasks(summary.query("model == @model"))
    perturbed = table.groupby("dataset")["noise"].transform("size") > 1
    table = table[perturbed] if perturbed.any() else table  # the tasks probed under perturbation
    conditions = sorted(
        set(zip(table["weights"], table["noise"])), key=lambda c: (c != (weights, "clean"), c[1] != "clean", c)
    )
    tasks = list(dict.fromkeys(table["dataset"]))
    fig, (depth_ax, accuracy_ax) = plt.subplots(
        1, 2, figsize=(10, 0.3 * len(tasks) * len(conditions) + 2.2), sharey=True
    )
    offsets = np.linspace(-0.3, 0.3, len(conditions)) if len(conditions) > 1 else [0.0]
    colours = categorical_colours(len(conditions))
    for c, (condition_weights, noise) in enumerate(conditions):
        rows = (
            table[(table["weights"] == condition_weights) & (table["noise"] == noise)]
            .set_index("dataset")
            .reindex(tasks)
        )
        label = weights_label(condition_weights, embedded) + ("" if noise == "clean" else f", noise {noise}")
        y = np.arange(len(tasks)) + offsets[c]
        for ax, column in ((depth_ax, "half_rise_depth"), (accuracy_ax, "best_accuracy")):
            value, lo, hi = (rows[f"{column}{suffix}"].to_numpy(dtype=float) for suffix in ("", "_lo", "_hi"))
            ax.errorbar(
                value,
                y,
                xerr=interval_errors(value, lo, hi),
                fmt=MARKERS[c % len(MARKERS)],
                color=colours[c],
                ms=5,
                capsize=2,
                lw=1,
                label=label,
            )
    levels = table.drop_duplicates("dataset").set_index("dataset")
    depth_ax.set_yticks(np.arange(len(tasks)), [f"{task} ({levels.loc[task, 'level']})" for task in tasks])
    depth_ax.set_ylim(len(tasks) - 0.5, -0.5)
    depth_ax.set_xlim(*UNIT_LIMITS)
    depth_ax.set_xlabel("half-rise layer / L (empty: not decodable)")
    depth_ax.set_title("Where the concept becomes decodable")
    accuracy_ax.scatter(
        levels["chance"].reindex(tasks), np.arange(len(tasks)), marker="|", s=120, color="#999999", label="chance"
    )
    accuracy_ax.set_xlabel("best probe accuracy")
    accuracy_ax.set_title("How decodable it gets")
    accuracy_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    note = INTERVAL_NOTE.format(ci=ci) + "; shifts and their paired intervals: concept_depth_perturbations.csv"
    note += f"; {EMBEDDED_NOTE}" if embedded else ""
    fig.suptitle(f"{model}: concept depth under perturbation, one at a time", y=1.0)
    fig.text(0.01, -0.03, note, fontsize=7, color="#555555")
    fig.tight_layout()
    return fig


NOT_DECODABLE_DEPTH = -0.12  # where an undecodable task sits on a depth axis: a strip below 0, marked n.d.


NAMED_TASKS = 5  # the most tasks per level that the levels figure names beside their points


def concept_depth_levels_figure(table: pd.DataFrame, ci: float = CI) -> Figure:
    """Every model's half-rise depth per task, grouped by task level: do complex concepts become decodable later?

    Level means (open markers, with intervals, left of the tasks) are over the decodable tasks of a level only;
    undecodable tasks have no depth and sit, unnamed, in a strip below the axis. Decodable tasks are named
    beside their points while a level has few enough to read; beyond that the table names them."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    level_names = list(dict.fromkeys(table["level"]))
    models = list(dict.fromkeys(table["model"]))
    n_tasks = {level: table.loc[table["level"] == level, "dataset"].nunique() for level in level_names}
    fig, ax = plt.subplots(figsize=(2.0 * len(level_names) + 4.0, 4.0))
    spread = np.linspace(-0.24, 0.24, len(models)) if len(models) > 1 else [0.0]
    for m, model in enumerate(models):
        rows = table[table["model"] == model]
        means = []
        for x, level in enumerate(level_names):
            tasks = rows[rows["level"] == level]
            width = min(0.1, 0.015 * len(tasks))
            jitter = np.linspace(-width, width, len(tasks)) if len(tasks) > 1 else [0.0]
            for offset, row in zip(jitter, tasks.itertuples()):
                position = x + spread[m] + offset
                if not row.decodable:
                    ax.plot(position, NOT_DECODABLE_DEPTH, MARKERS[m % len(MARKERS)], color=NOT_DECODABLE, ms=5)
                    continue
                _depth_errorbar(
                    ax,
                    row.half_rise_depth,
                    row.half_rise_depth_lo,
                    row.half_rise_depth_hi,
                    position,
                    vertical=True,
                    fmt=MARKERS[m % len(MARKERS)],
                    color=LEVEL_COLOURS.get(level, "#333333"),
                    alpha=0.9,
                )
                if n_tasks[level] <= NAMED_TASKS:
                    ax.annotate(
                        row.dataset,
                        (position, row.half_rise_depth),
                        xytext=(4, 0),
                        textcoords="offset points",
                        fontsize=6,
                        color="#555555",
                        va="center",
                    )
            first = tasks.iloc[0]
            means.append([first[f"level_mean_half_rise_depth{suffix}"] for suffix in ("", "_lo", "_hi")])
        means = np.array(means, dtype=float)
        positions = np.arange(len(level_names)) + spread[m] - 0.14
        ax.errorbar(
            positions,
            means[:, 0],
            yerr=interval_errors(*means.T),
            fmt=MARKERS[m % len(MARKERS)],
            color="#333333",
            mfc="white",
            ms=7,
            capsize=2,
            lw=1,
            alpha=0.8,
        )
    ax.set_xticks(np.arange(len(level_names)), [f"{level}\n({count(n_tasks[level], 'task')})" for level in level_names])
    ax.set_xlim(-0.55, len(level_names) - 0.4)
    ax.axhspan(-0.2, -0.05, color="#f1f1f1", lw=0, zorder=0)  # the n.d. strip
    ax.set_ylim(-0.2, 1.06)
    ax.set_yticks([NOT_DECODABLE_DEPTH, 0, 0.25, 0.5, 0.75, 1.0], ["n.d.", "0", "0.25", "0.5", "0.75", "1"])
    ax.set_ylabel("half-rise layer / L")
    ax.set_title("Half-rise depth by task level (simple concepts early, complex late?)")
    handles = [
        Line2D([], [], marker=MARKERS[m % len(MARKERS)], color="#333333", ls="", label=model)
        for m, model in enumerate(models)
    ]
    handles.append(
        Line2D(
            [], [], color="#333333", marker="o", mfc="white", ls="", label="model's mean over a level's decodable tasks"
        )
    )
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.text(
        0.01,
        -0.04,
        f"{INTERVAL_NOTE.format(ci=ci)}; n.d.: not decodable (within the permutation null), named in the table; "
        "each model's own weights, clean inputs",
        fontsize=7,
        color="#555555",
    )
    fig.tight_layout()
    return fig
