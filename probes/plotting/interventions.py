"""Causal-check figures, drawn from the summary tables alone: each edit's effect beyond its random control on
relative depth, probes after erasure, steering's dose-response and the specificity of neuron deactivation."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probes.plotting.style import (
    CI,
    MARKERS,
    NOT_DECODABLE,
    UNIT_LIMITS,
    apply_style,
    categorical_colours,
    count,
    interval_errors,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Where a run has several settings of an intervention, the one its headline numbers read, in order of preference.
HEADLINE_SETTINGS = {"erasure": ("leace",), "steering": ("probe", "mean_difference"), "deactivation": ("zero", "mean")}
SETTING_NAMES = {
    "leace": "LEACE",
    "probe": "probe normal",
    "mean_difference": "class-mean difference",
    "zero": "zero ablation",
    "mean": "mean ablation",
}
ERASED, CONTROL, CLEAN = "#d62728", "#1f77b4", "#222222"
CHANCE = 0.5  # every causal task has two balanced classes
DEPTH_LIMITS = (-0.07, 1.07)  # room for the dodge of series at relative depth 0 or 1


def skipped(rows: pd.DataFrame) -> pd.Series:
    """Rows the stage did not measure (``skipped: cannot do``): the model cannot do the task behaviourally."""
    return rows["status"].astype(str).str.startswith("skipped")


def headline_effects(effects: pd.DataFrame) -> pd.DataFrame:
    """The effects the summary table and the depth figure read: per model and intervention one setting (the first
    of :data:`HEADLINE_SETTINGS` it has), steering at its largest strength and deactivation at its largest k."""
    parts = []
    for (_, intervention), rows in effects.groupby(["model", "intervention"], sort=False):
        present = list(dict.fromkeys(rows["setting"]))
        preferred = [setting for setting in HEADLINE_SETTINGS.get(intervention, ()) if setting in present]
        rows = rows[rows["setting"] == (preferred or present)[0]]
        if intervention == "steering":
            rows = rows[rows["strength"] == rows["strength"].max()]
        if intervention == "deactivation":
            rows = rows[rows["k"] == rows["k"].max()]
        parts.append(rows)
    return pd.concat(parts, ignore_index=True) if parts else effects.iloc[:0]


def _can_do(readout: pd.DataFrame, model: str) -> dict[str, bool]:
    rows = readout[readout["model"] == model]
    return dict(zip(rows["task"], rows["status"] == "can do"))


def _task_title(ax, task: str, can_do: bool) -> None:
    """A task's panel title, greyed and marked where the model cannot do the task."""
    if can_do:
        ax.set_title(task)
    else:
        ax.set_title(f"{task} (the model cannot do it)", color=NOT_DECODABLE)


def _panel_titles(rows: pd.DataFrame, intervention: str) -> tuple[str, str]:
    """The behaviour panel's title and the KL panel's for the headline setting(s) of one intervention."""
    names = " / ".join(SETTING_NAMES.get(s, s) for s in dict.fromkeys(rows["setting"]))
    if intervention == "steering":
        return f"steering ({names}, α = {rows['strength'].max():g}):\nshift towards the steered class", "steering: KL"
    if intervention == "deactivation":
        return f"top-{int(rows['k'].max())} neurons, {names}:\nown-task margin lost", "deactivation: KL"
    return f"erasure ({names}):\nreadout margin lost", "erasure: KL"


def _effect_points(ax, rows: pd.DataFrame, models: list[str], colours: dict, dodge: dict) -> None:
    """Per model × task, real − control with its interval bars (filled) and the control alone (open); a grey × at 0
    where the row was skipped. The few depths stay points: a line would invent the layers between."""
    for m, model in enumerate(models):
        for task, colour in colours.items():
            own = rows[(rows["model"] == model) & (rows["task"] == task)].sort_values("relative_depth")
            if own.empty:
                continue
            x = own["relative_depth"] + dodge[(model, task)]
            missing = skipped(own).to_numpy()
            marker = MARKERS[m % len(MARKERS)]
            measured = own[~missing]
            if len(measured):
                errors = interval_errors(measured["effect"], measured["effect_lo"], measured["effect_hi"])
                style = {"fmt": marker, "color": colour, "ms": 4, "lw": 1, "capsize": 2}
                ax.errorbar(x[~missing], measured["effect"], yerr=errors, label=f"{task} · {model}", **style)
                ax.plot(x[~missing], measured["control"], marker, color=colour, mfc="white", ms=4, ls="none")
            if missing.any():
                ax.plot(x[missing], np.zeros(missing.sum()), "x", color=NOT_DECODABLE, ms=5, ls="none")
    ax.axhline(0, color="#999999", lw=0.8, zorder=0)
    ax.set_xlim(*DEPTH_LIMITS)
    ax.margins(y=0.12)


def causal_effects_figure(effects: pd.DataFrame, readout: pd.DataFrame, ci: float = CI) -> Figure:
    """Every model × task on relative depth: what erasure, steering and neuron deactivation do to the model's own
    readout beyond an equal-size random edit (top), and what each costs on unrelated text (bottom, KL)."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = headline_effects(effects)
    rows = rows[rows["target_task"] == rows["task"]]
    behaviour = {"erasure": "margin_lost", "steering": "steering_shift", "deactivation": "margin_lost"}
    interventions = [name for name in behaviour if name in set(rows["intervention"])]
    models = list(dict.fromkeys(readout["model"]))
    tasks = list(dict.fromkeys(readout["task"]))
    colours = dict(zip(tasks, categorical_colours(len(tasks))))
    series = [(model, task) for model in models for task in tasks]
    dodge = dict(zip(series, np.linspace(-0.04, 0.04, len(series)) if len(series) > 1 else [0.0]))
    fig, axes = plt.subplots(
        2, len(interventions), figsize=(3.5 * len(interventions), 6.2), squeeze=False, layout="constrained"
    )
    for column, intervention in enumerate(interventions):
        part = rows[rows["intervention"] == intervention]
        titles = _panel_titles(part, intervention)
        units = ("real − control (nats)", "KL to the clean output,\nreal − control (bits)")
        for ax, metric, title, unit in zip(axes[:, column], (behaviour[intervention], "kl_bits"), titles, units):
            measured = part[part["metric"] == metric]
            if measured.empty:
                ax.set_visible(False)
                continue
            _effect_points(ax, measured, models, colours, dodge)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(unit)
            ax.set_xlabel("relative depth (layer / L)")
    handles = [Line2D([], [], color=colour, lw=4, label=task) for task, colour in colours.items()]
    for m, model in enumerate(models):
        first = readout[readout["model"] == model].iloc[0]
        label = f"{model} (L = {int(first['n_layers'])}, n = {int(first['n_eval'])})"
        handles.append(Line2D([], [], color="#444444", marker=MARKERS[m % len(MARKERS)], ls="none", label=label))
    handles += [
        Line2D([], [], color="#444444", marker="o", mfc="white", ls="none", label="open: the random control alone"),
        Line2D([], [], color=NOT_DECODABLE, marker="x", ls="none", label="not measured: the model cannot do the task"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles) if len(handles) <= 7 else 5, fontsize=7)
    fig.suptitle(
        "Is what the probe finds used? Each edit against an equal-size random edit, on relative depth\n"
        f"filled: real − control, bars: {ci:.0%} paired bootstrap intervals over the n examples per task (KL: over "
        "documents)",
        fontsize=10,
    )
    return fig


def erasure_probes_figure(probes: pd.DataFrame, readout: pd.DataFrame, model: str, ci: float = CI) -> Figure:
    """One model, one panel per task: probe accuracy after LEACE erasure at layer l, at l and the later layers
    probed, beside the clean vectors and the random control: does the concept come back downstream?"""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = probes[probes["model"] == model]
    if rows.empty:
        raise ValueError(f"the erasure probe table has no rows for model {model!r}")
    tasks = list(dict.fromkeys(rows["task"]))
    layers = sorted(rows["layer"].unique())
    can_do = _can_do(readout, model)
    n_cols = min(3, len(tasks))
    n_rows = math.ceil(len(tasks) / n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.4 * n_cols, 2.8 * n_rows + 1.4), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, task in zip(axes.flat, tasks):
        part = rows[rows["task"] == task]
        for probe, dash in (("relearnt", "-"), ("transfer", "--")):
            curve = part[part["probe"] == probe]
            clean = curve.drop_duplicates("later_layer").sort_values("later_layer")
            ax.plot(clean["later_depth"], clean["clean"], dash, color=CLEAN, lw=1.2)
            for j, layer in enumerate(layers):
                one = curve[curve["layer"] == layer].sort_values("later_layer")
                style = {"marker": MARKERS[j % len(MARKERS)], "ms": 3}
                ax.fill_between(
                    one["later_depth"],
                    one["control"] + one["effect_lo"],
                    one["control"] + one["effect_hi"],
                    color=ERASED,
                    alpha=0.15,
                    lw=0,
                )
                ax.plot(one["later_depth"], one["erased"], dash, color=ERASED, lw=1.3, **style)
                ax.plot(one["later_depth"], one["control"], dash, color=CONTROL, lw=1.0, mfc="white", **style)
        ax.axhline(CHANCE, color="#999999", ls=":", lw=0.9, zorder=0)
        _task_title(ax, task, can_do.get(task, True))
        ax.set_xlim(*UNIT_LIMITS)
        ax.set_xlabel("probed layer / L")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("probe accuracy")
    low = np.nanmin(rows[["clean", "erased", "control"]].to_numpy(dtype=float))
    axes[0, 0].set_ylim(min(CHANCE - 0.1, low - 0.05), 1.03)
    n_layers = int(rows["n_layers"].iloc[0])
    handles = [
        Line2D([], [], color=CLEAN, lw=1.2, label="clean"),
        Line2D([], [], color=ERASED, lw=1.3, label="erased (LEACE)"),
        Line2D([], [], color=CONTROL, lw=1.0, label="random control of the same rank"),
        Patch(color=ERASED, alpha=0.15, label=f"control + {ci:.0%} interval of erased − control"),
        Line2D([], [], color="#888888", lw=1.2, label="solid: probe re-learnt on the edited rows"),
        Line2D([], [], color="#888888", ls="--", lw=1.2, label="dashed: clean probe applied (transfer)"),
        Line2D([], [], color="#999999", ls=":", lw=0.9, label="chance"),
    ]
    handles += [
        Line2D(
            [], [], color="#444444", marker=MARKERS[j % len(MARKERS)], ms=3, ls="none", label=f"erased at layer {layer}"
        )
        for j, layer in enumerate(layers)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7)
    fig.suptitle(
        f"{model} (L = {n_layers}, {count(int(rows['n'].max()), 'example')} per task): probe accuracy after erasing "
        "the concept at layer l,\nat l and the later layers probed (paired bootstrap intervals over examples)",
        fontsize=9,
    )
    return fig


def steering_figure(effects: pd.DataFrame, readout: pd.DataFrame, model: str, ci: float = CI) -> Figure:
    """One model's dose-response, one column per task: the readout's shift towards the steered class (top) and
    the KL on unrelated text (bottom) against the strength, steered and along a random direction of the same norm."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = effects[
        (effects["model"] == model)
        & (effects["intervention"] == "steering")
        & (effects["target_task"] == effects["task"])
    ]
    if rows.empty:
        raise ValueError(f"the effects table has no steering rows for model {model!r}")
    tasks = list(dict.fromkeys(rows["task"]))
    layers = sorted(rows["layer"].unique())
    settings = list(dict.fromkeys(rows["setting"]))
    colours = dict(zip(layers, categorical_colours(len(layers))))
    can_do = _can_do(readout, model)
    fig, axes = plt.subplots(
        2, len(tasks), figsize=(3.0 * len(tasks) + 0.6, 5.6), squeeze=False, sharex=True, layout="constrained"
    )
    panels = (
        ("steering_shift", "shift towards the\nsteered class (nats)"),
        ("kl_bits", "KL to the clean\noutput (bits)"),
    )
    for column, task in enumerate(tasks):
        for ax, (metric, ylabel) in zip(axes[:, column], panels):
            part = rows[(rows["task"] == task) & (rows["metric"] == metric)]
            measured = part[~skipped(part)]
            if measured.empty:
                note = "not measured:\nthe model cannot do the task"
                ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color=NOT_DECODABLE)
                ax.set_yticks([])
                continue
            for (layer, setting), one in measured.groupby(["layer", "setting"], sort=True):
                one = one.sort_values("strength")
                style = {"color": colours[layer], "marker": MARKERS[settings.index(setting) % len(MARKERS)], "ms": 3}
                band = (one["control"] + one["effect_lo"], one["control"] + one["effect_hi"])
                ax.fill_between(one["strength"], *band, color=colours[layer], alpha=0.15, lw=0)
                ax.plot(one["strength"], one["real"], "-", lw=1.3, **style)
                ax.plot(one["strength"], one["control"], "--", lw=1.0, mfc="white", **style)
            ax.axhline(0, color="#999999", lw=0.8, zorder=0)
            ax.margins(y=0.1)
            if column == 0:
                ax.set_ylabel(ylabel)
        _task_title(axes[0, column], task, can_do.get(task, True))
        axes[1, column].set_xlabel("strength α (× residual norm)")
    strengths = rows["strength"].dropna()
    axes[0, 0].set_xlim(-0.05 * strengths.max(), 1.08 * strengths.max())
    n_layers = int(rows["n_layers"].iloc[0])
    handles = [
        Line2D([], [], color=colour, lw=1.3, label=f"layer {layer} ({layer / n_layers:.2f} of the depth)")
        for layer, colour in colours.items()
    ]
    handles += [
        Line2D(
            [], [], color="#444444", marker=MARKERS[s % len(MARKERS)], ms=3, ls="none", label=SETTING_NAMES.get(x, x)
        )
        for s, x in enumerate(settings)
    ]
    handles += [
        Line2D([], [], color="#444444", lw=1.3, label="steered"),
        Line2D([], [], color="#444444", ls="--", lw=1.0, label="random direction, same norm"),
        Patch(color="#444444", alpha=0.15, label=f"control + {ci:.0%} interval of steered − control"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=7)
    first = rows[~skipped(rows)]
    documents = first.loc[first["metric"] == "kl_bits", "n"]
    examples = first.loc[first["metric"] == "steering_shift", "n"]
    sizes = [count(int(n.max()), noun) for n, noun in ((examples, "example"), (documents, "document")) if len(n)]
    fig.suptitle(
        f"{model} (L = {n_layers}): steering along the concept direction at the read position, dose-response\n"
        f"paired bootstrap intervals over {' and '.join(sizes)}",
        fontsize=9,
    )
    return fig


def specificity_figure(effects: pd.DataFrame, readout: pd.DataFrame, model: str, ci: float = CI) -> Figure:
    """One model: the readout margin each task loses when the top-k neurons of a task are deactivated, beyond k
    random neurons of the same layer; the diagonal is the task's own readout, the rest is what else it hits."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    rows = effects[
        (effects["model"] == model) & (effects["intervention"] == "deactivation") & (effects["metric"] == "margin_lost")
    ]
    if rows.empty:  # neurons are deactivated only for tasks the model can do
        fig, ax = plt.subplots(figsize=(6.0, 2.6), layout="constrained")
        ax.axis("off")
        ax.text(0.5, 0.5, f"{model}: no task it can do, so no neurons deactivated", ha="center", va="center")
        return fig
    k = int(rows["k"].max())
    rows = rows[rows["k"] == k]
    can_do = _can_do(readout, model)
    tasks = [task for task in can_do if task in set(rows["task"]) | set(rows["target_task"])]
    panels = list(dict.fromkeys(zip(rows["setting"], rows["layer"])))
    measured = rows[~skipped(rows)]
    limit = max(float(np.nanmax(np.abs(measured["effect"]))) if len(measured) else 0.0, 1e-3)
    norm, cmap = Normalize(-limit, limit), plt.get_cmap("RdBu_r").with_extremes(bad="#e6e6e6")
    size = 0.9 * len(tasks) + 1.2
    fig, axes = plt.subplots(
        1, len(panels), figsize=(size * len(panels) + 1.2, size + 0.6), squeeze=False, layout="constrained"
    )
    n_layers = int(rows["n_layers"].iloc[0])
    for ax, (setting, layer) in zip(axes[0], panels):
        cells = rows[(rows["setting"] == setting) & (rows["layer"] == layer)].set_index(["task", "target_task"])
        values = np.full((len(tasks), len(tasks)), np.nan)
        for i, source in enumerate(tasks):
            for j, target in enumerate(tasks):
                if (source, target) not in cells.index:
                    ax.text(j, i, "not run", ha="center", va="center", fontsize=6, color="#777777")
                    continue
                cell = cells.loc[(source, target)]
                if str(cell["status"]).startswith("skipped"):
                    ax.text(j, i, "skipped", ha="center", va="center", fontsize=6, color="#777777")
                    continue
                values[i, j] = cell["effect"]
                moved = cell["effect_lo"] > 0 or cell["effect_hi"] < 0
                ax.text(
                    j,
                    i,
                    f"{cell['effect']:.2f}\n[{cell['effect_lo']:.2f}, {cell['effect_hi']:.2f}]",
                    ha="center",
                    va="center",
                    fontsize=6,
                    fontweight="bold" if moved else "normal",
                    color="white" if abs(cell["effect"]) > 0.6 * limit else "black",
                )
        ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm)
        for i in range(len(tasks)):
            ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, lw=1.4, ec="#222222"))
        ax.set_xticks(range(len(tasks)), [t if can_do.get(t, True) else f"{t}\n(cannot do)" for t in tasks])
        for label, task in zip(ax.get_xticklabels(), tasks):
            label.set_color(NOT_DECODABLE if not can_do.get(task, True) else "black")
        ax.set_yticks(range(len(tasks)), tasks)
        ax.set_xlabel("readout of task")
        ax.set_ylabel("neurons of task")
        ax.set_title(f"{SETTING_NAMES.get(setting, setting)}, layer {layer} ({layer / n_layers:.2f} of the depth)")
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes, shrink=0.8, label="margin lost, deactivated − random (nats)")
    fig.suptitle(
        f"{model}: deactivating the top-{k} neurons of one task (rows), every task's readout (columns)\n"
        f"real − control with its {ci:.0%} paired bootstrap interval over examples; bold: the interval excludes 0; "
        "outlined: the task's own readout; grey: not measured",
        fontsize=9,
    )
    return fig
