"""What every family's figures share: the house style, colours, markers, relative-depth axes and interval bands."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probes.datasets.concepts import TASK_LEVELS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("png", "pdf", "svg")


LEVEL_ORDER = TASK_LEVELS


LEVEL_COLOURS = {
    "factual": "#1b9e77",
    "affective": "#d95f02",
    "affective-lexical": "#fdb863",
    "inferential": "#7570b3",
    "other": "#666666",
}


MARKERS = ("o", "s", "D", "^", "v", "P", "X")


CI = 0.95


def apply_style() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "pdf.fonttype": 42,  # editable text in the PDF
            "svg.fonttype": "none",
        }
    )


def relative_depth_axis(ax, n_layers: int) -> None:
    """Second x axis in relative depth, so models of different depth read on one scale."""
    secondary = ax.secondary_xaxis("top", functions=(lambda l: l / n_layers, lambda d: d * n_layers))
    secondary.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    secondary.tick_params(labelsize=7)
    secondary.set_xlabel("relative depth (layer / L)", fontsize=7, labelpad=2)


def ordered_tasks(summary: pd.DataFrame) -> pd.DataFrame:
    rank = {level: i for i, level in enumerate(LEVEL_ORDER)}
    return summary.assign(_rank=summary["level"].map(rank)).sort_values(["_rank", "dataset"]).drop(columns="_rank")


def weights_label(weights: str, embedded: bool) -> str:
    """A weight format as figures name it; the embedded models' float formats hold dequantised 4-bit weights."""
    return f"{weights}*" if embedded and weights != "int8" else weights


EMBEDDED_NOTE = "* weights dequantised from the model's 4-bit GGUF original"


INTERVAL_NOTE = "{ci:.0%} bootstrap intervals over examples"


NOT_DECODABLE = "#9a9a9a"


UNIT_LIMITS = (-0.03, 1.03)  # an axis of values in [0, 1] (relative depth, a fraction): a marker at 0 or 1 stays whole


def models_with_values(table: pd.DataFrame, column: str = "value", key: str = "model") -> list[str]:
    """The models in table order that have at least one finite ``column``: an all-NaN model is left out."""
    finite = table[column].notna().groupby(table[key], sort=False).any()
    return list(finite.index[finite])


def count(n: int, noun: str) -> str:
    """``1 task``, ``3 tasks``: figures label counts that are often one in a small run."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def categorical_colours(n: int) -> list[tuple]:
    """``n`` different colours: tab10 while it lasts, then tab20, then evenly spaced hues, so no two series of
    one axis share a colour however many tasks or models a run has."""
    import matplotlib.pyplot as plt

    if n <= 10:
        return [plt.cm.tab10(index) for index in range(n)]
    if n <= 20:
        return [plt.cm.tab20(index) for index in range(n)]
    return [plt.cm.turbo(value) for value in np.linspace(0.05, 0.95, n)]


def _model_colours(models: Sequence[str]) -> dict[str, tuple]:
    return dict(zip(models, categorical_colours(len(models))))


def edge_labels(ax, lines: Sequence[tuple[float, str, str]], gap: float = 0.08) -> None:
    """Name horizontal reference lines (value, text, colour) just right of the axis at their height; names of
    lines closer than ``gap`` (axes fraction) are stacked around their mean height: chance and the shortcut
    baselines often all sit near 0.5."""
    bottom, top = ax.get_ylim()
    lines = sorted(lines, key=lambda line: line[0])
    clusters = []
    for value, _, _ in lines:
        clusters.append([(value - bottom) / (top - bottom)])
        while len(clusters) > 1 and _stacked(clusters[-1], gap)[0] - _stacked(clusters[-2], gap)[-1] < gap:
            last = clusters.pop()
            clusters[-1] += last
    heights = [height for cluster in clusters for height in _stacked(cluster, gap)]
    for height, (_, text, colour) in zip(heights, lines):
        ax.text(1.02, height, text, transform=ax.transAxes, color=colour, fontsize=6, va="center")


def _stacked(heights: list[float], gap: float) -> list[float]:
    """Heights ``gap`` apart, centred on the mean of ``heights``."""
    centre = float(np.mean(heights))
    return [centre + gap * (i - (len(heights) - 1) / 2) for i in range(len(heights))]


def interval_errors(value, lo, hi) -> list[np.ndarray]:
    """Error bar lengths; a point estimate outside its percentile interval gets a bar of length 0 on that side."""
    value, lo, hi = (np.asarray(x, dtype=float) for x in (value, lo, hi))
    return [np.clip(value - lo, 0, None), np.clip(hi - value, 0, None)]


def interval_band(ax, rows: pd.DataFrame, x: str, colour, log: bool = False, **style) -> None:
    """A curve with its ``lo``/``hi`` interval band; nothing when no value is finite. On a log axis a value that
    is not positive (KL at the output layer) is left out of the line."""
    rows = rows.sort_values(x)
    value = rows["value"].where(rows["value"] > 0) if log else rows["value"]
    if value.notna().any():
        ax.plot(rows[x], value, color=colour, **style)
        ax.fill_between(rows[x], rows["lo"], rows["hi"], color=colour, alpha=0.18, lw=0)


def curve_panels(table: pd.DataFrame, panels, title: str, unit: str) -> Figure:
    """One panel per metric of ``panels`` (metric, title, y label, axis: "log", "zero" for a zero line, or
    "linear") present in ``table``: a curve per model over relative depth with its interval band over ``unit``."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels = [panel for panel in panels if panel[0] in set(table["metric"])]
    models = models_with_values(table)
    colours = _model_colours(models)
    n_cols = len(panels) if len(panels) <= 4 else 3
    n_rows = math.ceil(len(panels) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.3 * n_cols, 2.7 * n_rows + 0.9), squeeze=False)
    for ax, (metric, panel_title, ylabel, axis) in zip(axes.flat, panels):
        for model in models:
            rows = table[(table["model"] == model) & (table["metric"] == metric)]
            interval_band(ax, rows, "depth", colours[model], axis == "log", lw=1.4, marker=".", ms=4)
        if axis == "log":
            ax.set_yscale("log")
        if axis == "zero":
            ax.axhline(0, color="#999999", lw=0.8, zorder=0)
        ax.set_title(panel_title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_xlim(*UNIT_LIMITS)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    labels = []
    for model in models:
        rows = table[table["model"] == model]
        labels.append(f"{model} (L = {int(rows['layer'].max())}, {count(int(rows[f'n_{unit}'].iloc[0]), unit[:-1])})")
    handles = [Line2D([], [], color=colours[model], marker=".", lw=1.4) for model in models]
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(models)), fontsize=7, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"{title}\nbands: {table['ci'].iloc[0]:.0%} bootstrap intervals over {unit}", y=1.0)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


LINE_STYLES = ("-", "--", ":", "-.")
