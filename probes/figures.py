"""Figures drawn from the tidy tables alone, so they can be redrawn without touching a model.

Each function takes data frames and returns a matplotlib figure; the plot stages read the tables and save it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probes.datasets import TASK_LEVELS
from probes.perturbations import unperturbed

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
_CI = 0.95


def _style() -> None:
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


def _relative_axis(ax, n_layers: int) -> None:
    """Second x axis in relative depth, so models of different depth read on one scale."""
    secondary = ax.secondary_xaxis("top", functions=(lambda l: l / n_layers, lambda d: d * n_layers))
    secondary.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    secondary.tick_params(labelsize=7)
    secondary.set_xlabel("relative depth (layer / L)", fontsize=7, labelpad=2)


def _ordered(summary: pd.DataFrame) -> pd.DataFrame:
    rank = {level: i for i, level in enumerate(LEVEL_ORDER)}
    return summary.assign(_rank=summary["level"].map(rank)).sort_values(["_rank", "dataset"]).drop(columns="_rank")


def weights_label(weights: str, embedded: bool) -> str:
    """A weight format as figures name it; the embedded models' float formats hold dequantised 4-bit weights."""
    return f"{weights}*" if embedded and weights != "int8" else weights


EMBEDDED_NOTE = "* weights dequantised from the model's 4-bit GGUF original"


INTERVAL_NOTE = "{ci:.0%} bootstrap intervals over examples"
NOT_DECODABLE = "#9a9a9a"


def _curve(curves: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric's per-layer value and interval from the summary's curves table, indexed by layer."""
    rows = curves[curves["metric"] == metric].sort_values("layer")
    return rows.set_index("layer")[["value", "lo", "hi"]]


def _control_name(control: str) -> str:
    return {"type": "type control (random label per type)", "permuted": "permuted-label control"}.get(control, control)


# The shortcut audit's reference lines (probes.shortcuts): what words alone and the input embeddings reach.
SHORTCUT_LINES = {
    "bag_of_words": {"color": "#a6761d", "ls": (0, (4, 2)), "lw": 0.9},
    "embedding": {"color": "#e31a1c", "ls": (0, (1, 1.5)), "lw": 1.1},
}
SHORTCUT_LABELS = {
    "bag_of_words": "shortcut: bag of words (same folds)",
    "embedding": "shortcut: mean input embedding (same folds)",
}


def concept_depth_figure(
    curves: pd.DataFrame, table: pd.DataFrame, model: str, weights: str, embedded: bool, ci: float = _CI
) -> Figure:
    """One panel per task: accuracy and control with intervals, half-rise, jump and converging layers marked;
    the shortcut audit's bag-of-words and input-embedding accuracies as reference lines; a task whose best
    accuracy stays within the permutation null is drawn grey, without depth marks."""
    _style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    curves = curves[unperturbed(curves, weights) & (curves["model"] == model)]
    rows = _ordered(table[unperturbed(table, weights) & (table["model"] == model)])
    if rows.empty:
        raise ValueError(f"the summary has no rows for model {model!r}")
    n_panels = len(rows)
    n_cols = min(3, n_panels)
    n_rows = math.ceil(n_panels / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 2.9 * n_rows), squeeze=False, sharey=True)
    for ax, row in zip(axes.flat, rows.itertuples()):
        task = curves[curves["dataset"] == row.dataset]
        decodable = bool(row.decodable)
        colour = LEVEL_COLOURS.get(row.level, "#333333") if decodable else NOT_DECODABLE
        for metric, style, shade in (("accuracy", "-", colour), ("control_accuracy", "--", "#999999")):
            curve = _curve(task, metric)
            ax.plot(curve.index, curve["value"], style, color=colour if metric == "accuracy" else "#555555", lw=1.6)
            ax.fill_between(curve.index, curve["lo"], curve["hi"], color=shade, alpha=0.25, lw=0)
        train = _curve(task, "control_train_accuracy")
        ax.plot(train.index, train["value"], ":", color="#555555", lw=1.0)
        ax.axhline(row.chance, color="#bbbbbb", lw=0.8, zorder=0)
        for shortcut, style in SHORTCUT_LINES.items():
            value = getattr(row, f"{shortcut}_accuracy", np.nan)
            if not pd.isna(value):
                ax.axhline(value, zorder=0.5, **style)
        if decodable:
            ax.axvline(row.half_rise_layer, color="#1f78b4", ls="-", lw=1.2)
            ax.axvspan(row.half_rise_layer_lo, row.half_rise_layer_hi, color="#1f78b4", alpha=0.1, lw=0)
            if not pd.isna(row.jump_layer):
                ax.axvline(row.jump_layer, color="#e7298a", ls=":", lw=1.2)
            ax.axvline(row.converging_layer, color="#000000", ls="-.", lw=1.0)
            ax.axvspan(row.converging_layer_lo, row.converging_layer_hi, color="#000000", alpha=0.07, lw=0)
            title = f"{row.dataset} ({row.level})"
        else:
            title = f"{row.dataset} ({row.level}): not decodable, p = {row.null_p_value:.2f}"
        ax.set_title(title, pad=6, color="#000000" if decodable else "#666666")
        ax.set_xlim(task["layer"].min(), row.n_layers)
        ax.set_ylim(min(0.3, row.chance - 0.15), 1.02)
        ax.set_xlabel("layer")
        _relative_axis(ax, row.n_layers)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[n_panels:]:
        ax.set_visible(False)
    controls = sorted(set(rows["control"]))
    legend = [
        Line2D([], [], color="#333333", lw=1.6, label=f"probe (held-out, {INTERVAL_NOTE.format(ci=ci)})"),
        Line2D([], [], color="#555555", ls="--", lw=1.6, label=" / ".join(map(_control_name, controls))),
        Line2D([], [], color="#555555", ls=":", lw=1.0, label="control, training folds"),
        Line2D([], [], color="#1f78b4", lw=1.2, label="half-rise layer (band: interval)"),
        Line2D([], [], color="#e7298a", ls=":", lw=1.2, label="jump layer"),
        Line2D([], [], color="#000000", ls="-.", lw=1.0, label="converging layer (band: interval)"),
        Line2D([], [], color=NOT_DECODABLE, lw=1.6, label="not decodable (within the permutation null)"),
        *(Line2D([], [], label=SHORTCUT_LABELS[name], **style) for name, style in SHORTCUT_LINES.items()),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, -0.04))
    site, pooling = task["site"].iloc[0], task["pooling"].iloc[0]
    fig.suptitle(
        f"Concept depth of {model} ({weights_label(weights, embedded)}): "
        f"linear probes per layer ({site}, {pooling} token)",
        y=1.0,
    )
    if embedded:
        fig.text(0.01, -0.08, EMBEDDED_NOTE, fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _depth_errorbar(ax, value: float, lo: float, hi: float, position: float, vertical: bool, **style) -> None:
    if pd.isna(value):
        return
    error = [[value - lo], [hi - value]]
    if vertical:
        ax.errorbar(position, value, yerr=error, ms=5, capsize=2, lw=1, **style)
    else:
        ax.errorbar(value, position, xerr=error, ms=5, capsize=2, lw=1, **style)


def concept_depth_relative_figure(curves: pd.DataFrame, summary: pd.DataFrame, weights: str, ci: float = _CI) -> Figure:
    """Every model on relative depth: half-rise depths by task level, then the curves per level."""
    _style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    curves = curves[unperturbed(curves, weights)]
    summary = _ordered(summary[unperturbed(summary, weights)])
    models = list(dict.fromkeys(summary["model"]))
    tasks = list(dict.fromkeys(summary["dataset"]))
    levels = [level for level in LEVEL_ORDER if level in set(summary["level"])]
    fig, axes = plt.subplots(
        1,
        1 + len(levels),
        figsize=(4.2 + 3.0 * len(levels), max(3.0, 0.32 * len(tasks) * len(models) + 1.2)),
        gridspec_kw={"width_ratios": [1.4] + [1] * len(levels)},
    )
    dots = axes[0]
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
    dots.invert_yaxis()
    dots.set_xlim(-0.03, 1.03)
    dots.set_xlabel("half-rise layer / L")
    dots.set_title("Where concepts become decodable")
    dots.legend(
        [Line2D([], [], marker=MARKERS[m % len(MARKERS)], color="#333333", ls="") for m in range(len(models))],
        models,
        fontsize=7,
        loc="best",
    )
    styles = ("-", "--", ":", "-.")
    for ax, level in zip(axes[1:], levels):
        for m, model in enumerate(models):
            for t, row in enumerate(summary[(summary.model == model) & (summary.level == level)].itertuples()):
                curve = _curve(curves[(curves.model == model) & (curves.dataset == row.dataset)], "accuracy")
                depth = curve.index / row.n_layers
                colour = plt.cm.tab10(t) if row.decodable else NOT_DECODABLE
                suffix = "" if row.decodable else " (n.d.)"
                ax.plot(
                    depth,
                    curve["value"],
                    styles[m % len(styles)],
                    color=colour,
                    lw=1.4,
                    label=f"{row.dataset} · {model}{suffix}",
                )
                ax.fill_between(depth, curve["lo"], curve["hi"], color=colour, alpha=0.15, lw=0)
        ax.set_title(f"{level} tasks")
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0.3, 1.02)
        ax.legend(fontsize=6, loc="lower right")
    axes[1].set_ylabel("probe accuracy")
    fig.suptitle("Concept depth across models on relative depth (own weights, clean inputs)", y=1.0)
    fig.text(
        0.01,
        -0.03,
        f"{INTERVAL_NOTE.format(ci=ci)}; n.d.: not decodable (within the permutation null)",
        fontsize=7,
        color="#555555",
    )
    fig.tight_layout()
    return fig


LANGUAGE_COLOURS = {
    "en": "#1f4e9c",
    "fr": "#c0392b",
    "de": "#2e8b57",
    "es": "#17a2b8",
    "zh": "#e69f00",
    "ja": "#8e44ad",
    "ru": "#7f5539",
}
LENS_TITLES = {"logit": "logit lens", "tuned": "tuned lens"}


def _language_colour(language: str, languages: Sequence[str]) -> str:
    import matplotlib.pyplot as plt

    if language in LANGUAGE_COLOURS:
        return LANGUAGE_COLOURS[language]
    extra = [l for l in languages if l not in LANGUAGE_COLOURS]
    return plt.cm.Dark2(extra.index(language) % 8)


def _language_label(language: str, src: str, tgt: str) -> str:
    role = "target" if language == tgt else "source" if language == src else None
    return f"{language} ({role})" if role else language


def _probability_lines(ax, frame: pd.DataFrame, x_of, src: str, tgt: str, languages: Sequence[str]) -> None:
    """Mean over concepts per language with its bootstrap interval over concepts (``prob_lo``/``prob_hi``);
    target and English drawn heavier than the rest."""
    present = set(frame["language"])
    ordered = sorted((l for l in languages if l in present), key=lambda l: (l != tgt, l != "en", l))
    for language in reversed(ordered):
        curve = frame[frame["language"] == language].sort_values("layer")
        x = x_of(curve["layer"].to_numpy())
        heavy = language in (tgt, "en")
        colour = _language_colour(language, languages)
        ax.plot(
            x,
            curve["prob"],
            color=colour,
            lw=2.0 if heavy else 1.0,
            alpha=1.0 if heavy else 0.85,
            ls="-" if language != "en" or tgt == "en" else "--",
            label=_language_label(language, src, tgt),
            zorder=3 if heavy else 2,
        )
        ax.fill_between(x, curve["prob_lo"], curve["prob_hi"], color=colour, alpha=0.18 if heavy else 0.08, lw=0)


def _interval_label(frame: pd.DataFrame) -> str:
    return f"{frame['ci'].iloc[0]:.0%} CI over concepts" if "ci" in frame else "CI over concepts"


def latent_language_figure(frame: pd.DataFrame, model: str, word_list: str, task: str, src: str, tgt: str) -> Figure:
    """One model and pair: P(language) per layer under each lens, entropy strip below (docs/methods.md §3).

    ``frame`` is :func:`probes.lens.curve_intervals` of the pair's curves: means over concepts with
    percentile intervals from resampling concepts.
    """
    _style()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    lenses = [lens for lens in LENS_TITLES if lens in set(frame["lens"])]
    languages = sorted(frame["language"].unique())
    n_layers = int(frame["layer"].max())
    n_concepts = int(frame["n_concepts"].iloc[0])
    fig, axes = plt.subplots(
        2,
        len(lenses),
        figsize=(4.4 * len(lenses), 4.6),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08},
    )
    for column, lens in enumerate(lenses):
        part = frame[frame["lens"] == lens]
        top, strip = axes[0, column], axes[1, column]
        _probability_lines(top, part, lambda layers: layers, src, tgt, languages)
        top.set_ylim(0, 1)
        top.set_title(LENS_TITLES[lens], pad=26)
        _relative_axis(top, n_layers)
        entropy = part[part["language"] == tgt].sort_values("layer")
        strip.plot(entropy["layer"], entropy["entropy_bits"], color="#333333", lw=1.4)
        strip.fill_between(
            entropy["layer"], entropy["entropy_lo"], entropy["entropy_hi"], color="#333333", alpha=0.15, lw=0
        )
        strip.set_xlabel("layer")
        strip.xaxis.set_major_locator(MaxNLocator(integer=True))
        strip.set_xlim(0, n_layers)
        strip.set_ylim(bottom=0)
    axes[0, 0].set_ylabel(f"P(language)  (mean, {_interval_label(frame)})")
    axes[1, 0].set_ylabel("entropy (bits)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    order = sorted(
        range(len(labels)), key=lambda i: (not labels[i].endswith("(target)"), labels[i][:2] != "en", labels[i])
    )
    axes[0, -1].legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, loc="upper left")
    fig.suptitle(f"{model} · {task} {src}→{tgt} · {n_concepts} concepts ({word_list})", y=1.04)
    return fig


def latent_language_relative_figure(frame: pd.DataFrame) -> Figure:
    """Every model and pair on relative depth: target, English and the strongest other language.

    ``frame`` is :func:`probes.lens.curve_intervals` of every run (the summary's intervals table).
    """
    _style()
    import matplotlib.pyplot as plt

    keys = ["model", "word_list", "task", "src", "tgt"]
    runs = frame[keys].drop_duplicates().sort_values(keys).itertuples(index=False)
    runs = list(runs)
    lenses = [lens for lens in LENS_TITLES if lens in set(frame["lens"])]
    languages = sorted(frame["language"].unique())
    fig, axes = plt.subplots(
        len(lenses),
        len(runs),
        figsize=(2.9 * len(runs) + 0.6, 2.5 * len(lenses)),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for column, run in enumerate(runs):
        selected = frame
        for key, value in zip(keys, run):
            selected = selected[selected[key] == value]
        n_layers = int(selected["layer"].max())
        for row, lens in enumerate(lenses):
            part = selected[selected["lens"] == lens]
            means = part.groupby("language")["prob"].mean().drop([run.tgt, "en"], errors="ignore")
            shown = [run.tgt] + (["en"] if run.tgt != "en" else []) + ([means.idxmax()] if len(means) else [])
            _probability_lines(
                axes[row, column],
                part[part["language"].isin(shown)],
                lambda l: l / n_layers,
                run.src,
                run.tgt,
                languages,
            )
            axes[row, column].legend(fontsize=6, loc="upper left")
            if row == 0:
                axes[row, column].set_title(f"{run.model}\n{run.task} {run.src}→{run.tgt}", fontsize=8)
            if column == 0:
                axes[row, column].set_ylabel(f"{LENS_TITLES[lens]}\nP(language)")
    for ax in axes[-1]:
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_xlim(0, 1)
    axes[0, 0].set_ylim(0, 1)
    fig.suptitle(f"Latent language across models and pairs (mean, {_interval_label(frame)})", y=1.01)
    fig.tight_layout()
    return fig


def tuned_lens_kl_figure(frame: pd.DataFrame) -> Figure:
    """Held-out KL to the model's output per layer: how much each lens misses of the final prediction.

    Bands are the table's bootstrap intervals (``kl_lo``/``kl_hi``, resampling held-out sentences).
    """
    _style()
    import matplotlib.pyplot as plt

    models = sorted(frame["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(4.0 * len(models), 3.0), squeeze=False)
    for ax, model in zip(axes[0], models):
        part = frame[frame["model"] == model]
        n_layers = int(part["layer"].max())
        for lens, colour in (("logit", "#555555"), ("tuned", "#d95f02")):
            curve = part[(part["lens"] == lens) & (part["layer"] < n_layers)].sort_values("layer")
            ax.plot(curve["layer"], curve["kl_bits"], "o-", ms=3, color=colour, label=LENS_TITLES[lens])
            ax.fill_between(
                curve["layer"], curve["kl_lo"].clip(lower=1e-3), curve["kl_hi"], color=colour, alpha=0.2, lw=0
            )
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        first = part.iloc[0]
        ax.set_title(
            f"{model} ({int(first['n_tokens'])} held-out tokens, {int(first['n_texts'])} sentences)", fontsize=9
        )
        _relative_axis(ax, n_layers)
        ax.legend(fontsize=7)
    ci = frame["ci"].iloc[0]
    axes[0, 0].set_ylabel(f"KL(model ‖ lens), bits ({ci:.0%} CI)")
    fig.tight_layout()
    return fig


_SAE_PANELS = (
    ("fvu", "fraction of variance unexplained", (0, None)),
    ("l0", "mean L0 (active latents per token)", (0, None)),
    ("loss_recovered", "loss recovered (vs zero-ablation)", (None, 1.02)),
    ("dead_fraction", "dead / dense latent fraction", (0, None)),
)


def sae_metrics_figure(metrics: pd.DataFrame) -> Figure:
    """SAE (and transcoder) quality across relative depth, one line per model and kind: is any layer's
    dictionary too poor to read? A transcoder's FVU is of the MLP output it imitates."""
    _style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(_SAE_PANELS), figsize=(3.2 * len(_SAE_PANELS), 2.8))
    by = ["model", "kind"] if "kind" in metrics else ["model"]
    for (column, label, limits), ax in zip(_SAE_PANELS, axes):
        for index, (key, rows) in enumerate(metrics.groupby(by, sort=True)):
            marker = MARKERS[index % len(MARKERS)]
            model = " ".join(key)
            ax.plot(rows["relative_depth"], rows[column], marker=marker, lw=1.4, ms=4, label=model)
            if f"{column}_lo" in rows:  # bootstrap interval over held-out documents
                ax.errorbar(
                    rows["relative_depth"],
                    rows[column],
                    yerr=[rows[column] - rows[f"{column}_lo"], rows[f"{column}_hi"] - rows[column]],
                    fmt="none",
                    lw=1.0,
                    capsize=2,
                    color=ax.lines[-1].get_color(),
                )
            if column == "dead_fraction":
                ax.plot(
                    rows["relative_depth"],
                    rows["dense_fraction"],
                    marker=marker,
                    ls="--",
                    lw=1.0,
                    ms=3,
                    color=ax.lines[-1].get_color(),
                    label=f"{model} (dense)",
                )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_xlim(0, 1)
        ax.set_ylim(*limits)
    axes[-1].legend(fontsize=7)
    first = metrics.iloc[0]
    documents = (
        f";\nloss recovered over {int(first['n_loss_documents'])} held-out documents, bars: bootstrap interval "
        "over documents"
        if "loss_recovered_lo" in metrics and "n_loss_documents" in metrics
        else ""
    )
    fig.suptitle(
        f"SAEs per layer on held-out corpus tokens ({first['architecture']}, d_sae = {first['d_sae']}, "
        f"{first['training_tokens']:,} training tokens; dead = never fires, dashed = dense{documents})",
        y=1.02,
    )
    fig.tight_layout()
    return fig


def sparse_probing_figure(
    summary: pd.DataFrame, dense: pd.DataFrame, ci: float = _CI, neurons: pd.DataFrame | None = None
) -> Figure:
    """One panel per k: top-k SAE latents, transcoder latents and residual dimensions against the dense probe,
    across depth, with top-k neurons at every layer where ``neurons`` (the neuron summary's F-statistic
    rows, the same ranking) is given.

    ``summary`` holds one task's rows of the sparse-probing summary (``<features>_topk_accuracy`` with its
    ``_lo``/``_hi`` bootstrap interval over examples); ``dense`` the dense probe's table, whose mean
    accuracy per layer is drawn, with a band where it carries ``accuracy_lo``/``accuracy_hi``.
    """
    _style()
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
    colours = {
        features: colour
        for features, colour in {"sae": "#d95f02", "transcoder": "#7570b3", "residual": "#1b9e77"}.items()
        if f"{features}_topk_accuracy" in summary and summary[f"{features}_topk_accuracy"].notna().any()
    }
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
        for features, colour in colours.items():
            mean, lo, hi = (rows[f"{features}_topk_accuracy{end}"] for end in ("", "_lo", "_hi"))
            ax.errorbar(
                rows["layer"], mean, yerr=[mean - lo, hi - mean], color=colour, marker="o", ms=4, lw=1.4, capsize=2
            )
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
        *(
            Line2D([], [], color=colour, marker="o", lw=1.4, label=names[features])
            for features, colour in colours.items()
        ),
        *([Line2D([], [], color="#e7298a", lw=1.0, label="top-k MLP neurons")] if neurons is not None else []),
        Line2D([], [], color="#bbbbbb", lw=0.8, label="chance"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=7, bbox_to_anchor=(0.5, -0.03))
    unit = (
        f"{int(first['n_groups'])} groups"
        if "n_groups" in summary and pd.notna(first["n_groups"])
        else f"{int(first['n_examples'])} examples"
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


def neuron_probing_figure(summary: pd.DataFrame, ci: float = _CI) -> Figure:
    """k-sparse neuron probes across depth, one panel per ranking criterion, one line per k, beside the dense
    probe: at which layer do a handful of neurons carry the concept, and how many does it take?"""
    _style()
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
        f"k-sparse neuron probing, {model} on {dataset} ({first['n_examples']} examples): neurons ranked on each "
        f"training fold;\nbands: {ci:.0%} bootstrap intervals over examples (or groups); dense probe on the residual "
        "stream with the same folds",
        y=1.03,
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def perturbations_figure(summary: pd.DataFrame, model: str, weights: str, embedded: bool, ci: float = _CI) -> Figure:
    """How each perturbation moves one model's half-rise layer and best accuracy, task by task."""
    _style()
    import matplotlib.pyplot as plt

    table = _ordered(summary.query("model == @model"))
    perturbed = table.groupby("dataset")["noise"].transform("size") > 1
    table = table[perturbed] if perturbed.any() else table  # the tasks probed under perturbation
    conditions = sorted(
        set(zip(table["weights"], table["noise"])), key=lambda c: (c != (weights, "clean"), c[1] != "clean", c)
    )
    tasks = list(dict.fromkeys(table["dataset"]))
    fig, (depth_ax, accuracy_ax) = plt.subplots(
        1, 2, figsize=(10, 0.3 * len(tasks) * len(conditions) + 1.8), sharey=True
    )
    offsets = np.linspace(-0.3, 0.3, len(conditions)) if len(conditions) > 1 else [0.0]
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
                xerr=[value - lo, hi - value],
                fmt=MARKERS[c % len(MARKERS)],
                color=plt.cm.tab10(c),
                ms=5,
                capsize=2,
                lw=1,
                label=label,
            )
    levels = table.drop_duplicates("dataset").set_index("dataset")
    depth_ax.set_yticks(np.arange(len(tasks)), [f"{task} ({levels.loc[task, 'level']})" for task in tasks])
    depth_ax.invert_yaxis()
    depth_ax.set_xlim(-0.03, 1.03)
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


def concept_depth_levels_figure(table: pd.DataFrame, ci: float = _CI) -> Figure:
    """Every model's half-rise depth per task, grouped by task level: do complex concepts become decodable later?

    Level means (open markers, with intervals) are over the decodable tasks of a level only."""
    _style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    level_names = list(dict.fromkeys(table["level"]))
    models = list(dict.fromkeys(table["model"]))
    fig, ax = plt.subplots(figsize=(1.9 * len(level_names) + 2.2, 3.8))
    spread = np.linspace(-0.28, 0.28, len(models)) if len(models) > 1 else [0.0]
    for m, model in enumerate(models):
        rows = table[table["model"] == model]
        means = []
        for x, level in enumerate(level_names):
            tasks = rows[rows["level"] == level]
            jitter = np.linspace(-0.06, 0.06, len(tasks)) if len(tasks) > 1 else [0.0]
            for offset, row in zip(jitter, tasks.itertuples()):
                position = x + spread[m] + offset
                if not row.decodable:
                    ax.annotate(
                        f"{row.dataset}: n.d.",
                        (position, 0.0),
                        xytext=(2, 0),
                        textcoords="offset points",
                        fontsize=6,
                        color="#888888",
                        rotation=90,
                        va="bottom",
                    )
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
        positions = np.arange(len(level_names)) + spread[m] + 0.14
        ax.errorbar(
            positions,
            means[:, 0],
            yerr=[means[:, 0] - means[:, 1], means[:, 2] - means[:, 0]],
            fmt=MARKERS[m % len(MARKERS)],
            color="#333333",
            mfc="white",
            ms=7,
            capsize=2,
            lw=1,
            alpha=0.8,
        )
    ax.set_xticks(
        np.arange(len(level_names)),
        [f"{level}\n({(table['level'] == level).sum() // len(models)} tasks)" for level in level_names],
    )
    ax.set_ylim(-0.03, 1.03)
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
        f"{INTERVAL_NOTE.format(ci=ci)}; n.d.: not decodable; each model's own weights, clean inputs",
        fontsize=7,
        color="#555555",
    )
    fig.tight_layout()
    return fig


def _models_with_values(table: pd.DataFrame, column: str = "value", key: str = "model") -> list[str]:
    """The models in table order that have at least one finite ``column``: an all-NaN model is left out."""
    finite = table[column].notna().groupby(table[key], sort=False).any()
    return list(finite.index[finite])


def _model_colours(models: Sequence[str]) -> dict[str, tuple]:
    import matplotlib.pyplot as plt

    return {model: plt.cm.tab10(index % 10) for index, model in enumerate(models)}


def _errors(value, lo, hi) -> list[np.ndarray]:
    """Error bar lengths; a point estimate outside its percentile interval gets a bar of length 0 on that side."""
    value, lo, hi = (np.asarray(x, dtype=float) for x in (value, lo, hi))
    return [np.clip(value - lo, 0, None), np.clip(hi - value, 0, None)]


def _band(ax, rows: pd.DataFrame, x: str, colour, log: bool = False, **style) -> None:
    """A curve with its ``lo``/``hi`` interval band; nothing when no value is finite. On a log axis a value that
    is not positive (KL at the output layer) is left out of the line."""
    rows = rows.sort_values(x)
    value = rows["value"].where(rows["value"] > 0) if log else rows["value"]
    if value.notna().any():
        ax.plot(rows[x], value, color=colour, **style)
        ax.fill_between(rows[x], rows["lo"], rows["hi"], color=colour, alpha=0.18, lw=0)


def _curve_panels(table: pd.DataFrame, panels, title: str, unit: str) -> Figure:
    """One panel per metric of ``panels`` (metric, title, y label, axis: "log", "zero" for a zero line, or
    "linear") present in ``table``: a curve per model over relative depth with its interval band over ``unit``."""
    _style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels = [panel for panel in panels if panel[0] in set(table["metric"])]
    models = _models_with_values(table)
    colours = _model_colours(models)
    n_cols = len(panels) if len(panels) <= 4 else 3
    n_rows = math.ceil(len(panels) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.3 * n_cols, 2.7 * n_rows + 0.9), squeeze=False)
    for ax, (metric, panel_title, ylabel, axis) in zip(axes.flat, panels):
        for model in models:
            rows = table[(table["model"] == model) & (table["metric"] == metric)]
            _band(ax, rows, "depth", colours[model], axis == "log", lw=1.4, marker=".", ms=4)
        if axis == "log":
            ax.set_yscale("log")
        if axis == "zero":
            ax.axhline(0, color="#999999", lw=0.8, zorder=0)
        ax.set_title(panel_title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_xlim(0, 1)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    labels = []
    for model in models:
        rows = table[table["model"] == model]
        labels.append(f"{model} (L = {int(rows['layer'].max())}, {int(rows[f'n_{unit}'].iloc[0])} {unit})")
    handles = [Line2D([], [], color=colours[model], marker=".", lw=1.4) for model in models]
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(models)), fontsize=7, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"{title}\nbands: {table['ci'].iloc[0]:.0%} bootstrap intervals over {unit}", y=1.0)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


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
    return _curve_panels(
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
    _style()
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
    _relative_axis(heat, n_layers)
    outputs = (
        (kl_ax, "kl_bits", "KL(intact ‖ skipped), bits", "#d95f02"),
        (agreement_ax, "top1_agreement", "top-1 agreement", "#1b9e77"),
    )
    for ax, metric, ylabel, colour in outputs:
        _band(ax, rows[rows["metric"] == metric], "skipped_layer", colour, metric == "kl_bits", marker=".", lw=1.4)
        ax.set_ylabel(ylabel)
        ax.set_xlim(0.5, n_layers + 0.5)
    kl_ax.set_yscale("log")
    kl_ax.set_title("Change of the output distribution", pad=6)
    kl_ax.tick_params(labelbottom=False)
    _relative_axis(kl_ax, n_layers)
    agreement_ax.set_ylim(0, 1.02)
    agreement_ax.set_xlabel("skipped block (the residual layer it writes)")
    first = rows.iloc[0]
    fig.suptitle(
        f"{model}: each block replaced by the identity in turn ({int(first['n_documents'])} held-out documents; "
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
LINE_STYLES = ("-", "--", ":", "-.")


def linear_shortcuts_figure(table: pd.DataFrame) -> Figure:
    """Every layer's residual read through the unembedding as it is (logit lens), after a least-squares map
    to the last layer (linear shortcut) and after the tuned lens, against the model's own output."""
    _style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    models = _models_with_values(table)
    lenses = [lens for lens in SHORTCUT_LENS_STYLES if lens in set(table["lens"])]
    fig, axes = plt.subplots(1, len(_SHORTCUT_PANELS), figsize=(11, 3.6))
    for ax, (metric, title, ylabel, log) in zip(axes, _SHORTCUT_PANELS):
        for m, model in enumerate(models):
            style = {"ls": LINE_STYLES[m % len(LINE_STYLES)], "marker": MARKERS[m % len(MARKERS)], "ms": 3}
            for lens in lenses:
                rows = table[(table["model"] == model) & (table["lens"] == lens) & (table["metric"] == metric)]
                _band(ax, rows, "depth", SHORTCUT_LENS_STYLES[lens][1], log, lw=1.3, **style)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_xlim(0, 1)
    axes[0].set_ylim(0, 1.02)
    handles = [
        Line2D([], [], color=SHORTCUT_LENS_STYLES[lens][1], lw=1.6, label=SHORTCUT_LENS_STYLES[lens][0])
        for lens in lenses
    ]
    for m, model in enumerate(models):
        first = table[table["model"] == model].iloc[0]
        label = f"{model} (L = {int(table.loc[table['model'] == model, 'layer'].max())}, "
        label += f"{int(first['n_documents'])} documents, {int(first['n_tokens'])} tokens)"
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
    _style()
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
            ax.plot(match["best_depth"], match["source_depth"], "o", ms=2.5, color="#e31a1c")
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
        f"Layer maps: ridge from each source layer to each target layer ({int(first['n_texts'])} texts, "
        f"{int(first['n_groups'])} groups)\nred: best target layer per source layer; dashed: equal relative depth",
        fontsize=9,
    )
    return fig


def layer_map_matches_figure(best: pd.DataFrame, ci: float = _CI) -> Figure:
    """The best-predicted target depth of every source layer for each cross-model pair, against the diagonal
    of equal relative depth; the within-model pairs when there is only one model."""
    _style()
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
            yerr=_errors(rows["best_depth"], rows["best_depth_lo"], rows["best_depth_hi"]),
            fmt=MARKERS[p % len(MARKERS)] + "-",
            color=plt.cm.tab10(p % 10),
            ms=4,
            lw=1,
            capsize=2,
            label=f"{source} → {target}",
        )
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
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
    ("curvature", "curvature", "mean angle between steps (radians)", "linear"),
    ("infonce_bits", "augmentation invariance", "InfoNCE bound on MI (bits)", "linear"),
)


def representation_quality_figure(table: pd.DataFrame) -> Figure:
    """Representation quality per layer on relative depth, one panel per metric (Skean et al., "Layer by Layer"):
    token-level and dataset-level entropy, trajectory curvature and invariance to input noise."""
    first = table.iloc[0]
    return _curve_panels(
        table,
        _QUALITY_PANELS,
        f"Representation quality across depth (Rényi α = {first['alpha']:g}, InfoNCE τ = {first['temperature']:g})",
        "prompts",
    )


def quality_correlation_figure(table: pd.DataFrame) -> Figure:
    """Per model, the Spearman correlation across layers of each quality curve with each task's probe-accuracy
    curve: a quality metric that tracks concept depth correlates the same way on every task."""
    _style()
    import matplotlib.pyplot as plt

    models = _models_with_values(table, "spearman")
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
                xerr=_errors(part["spearman"], part["lo"], part["hi"]),
                fmt=MARKERS[k % len(MARKERS)],
                color=plt.cm.Dark2(k % 8),
                ms=4,
                lw=1,
                capsize=2,
                label=names.get(metric, metric),
            )
        ax.axvline(0, color="#999999", lw=0.8, zorder=0)
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(f"{model} ({int(rows['n_layers'].iloc[0])} residual layers)")
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
