"""Latent-language figures: each language's probability per layer under the logit and tuned lens, the dual-latent
comparison, and the lens KL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from probes.plotting.style import apply_style, count, relative_depth_axis

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LANGUAGE_COLOURS = {
    "en": "#1f4e9c",
    "fr": "#c0392b",
    "de": "#2e8b57",
    "es": "#17a2b8",
    "zh": "#e69f00",
    "ja": "#8e44ad",
    "ru": "#7f5539",
    "shared": "#9a9a9a",
}


LENS_TITLES = {"logit": "logit lens", "tuned": "tuned lens"}


def _language_colour(language: str, languages: Sequence[str]) -> str:
    import matplotlib.pyplot as plt

    if language in LANGUAGE_COLOURS:
        return LANGUAGE_COLOURS[language]
    extra = [l for l in languages if l not in LANGUAGE_COLOURS]
    return plt.cm.Dark2(extra.index(language) % 8)


def _language_label(language: str, src: str, tgt: str) -> str:
    if language == "shared":
        return "shared tokens"
    role = "target" if language == tgt else "source" if language == src and src != tgt else None
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
            ls=":" if language == "shared" else "-" if language != "en" or tgt == "en" else "--",
            label=_language_label(language, src, tgt),
            zorder=3 if heavy else 2,
        )
        ax.fill_between(x, curve["prob_lo"], curve["prob_hi"], color=colour, alpha=0.18 if heavy else 0.08, lw=0)


def _legend(ax, source, **style) -> None:
    """``source``'s lines in ``ax``'s legend: the target first, then English, the others, the shared tokens."""
    handles, labels = source.get_legend_handles_labels()
    order = sorted(
        range(len(labels)),
        key=lambda i: (
            labels[i] == "shared tokens",
            not labels[i].endswith("(target)"),
            labels[i][:2] != "en",
            labels[i],
        ),
    )
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left", **style)


def _interval_label(frame: pd.DataFrame) -> str:
    return f"{frame['ci'].iloc[0]:.0%} CI over concepts" if "ci" in frame else "CI over concepts"


def latent_language_figure(frame: pd.DataFrame, model: str, word_list: str, task: str, src: str, tgt: str) -> Figure:
    """One model and pair: P(language) per layer under each lens, entropy and energy strips below
    (docs/methods.md §3). Each language's P counts its exclusive token set; the shared tokens are a dotted line.

    ``frame`` is :func:`probes.lenses.curves.curve_intervals` of the pair's curves: means over concepts with
    percentile intervals from resampling concepts.
    """
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    lenses = [lens for lens in LENS_TITLES if lens in set(frame["lens"])]
    languages = sorted(frame["language"].unique())
    n_layers = int(frame["layer"].max())
    n_concepts = int(frame["n_concepts"].iloc[0])
    fig, axes = plt.subplots(
        3,
        len(lenses),
        figsize=(4.4 * len(lenses), 5.6),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1, 1], "hspace": 0.1},
    )
    for column, lens in enumerate(lenses):
        part = frame[frame["lens"] == lens]
        top, strip = axes[0, column], axes[1, column]
        _probability_lines(top, part, lambda layers: layers, src, tgt, languages)
        top.set_ylim(0, 1)
        top.set_title(LENS_TITLES[lens], pad=26)
        relative_depth_axis(top, n_layers)
        entropy = part[part["language"] == tgt].sort_values("layer")
        strip.plot(entropy["layer"], entropy["entropy_bits"], color="#333333", lw=1.4)
        strip.fill_between(
            entropy["layer"], entropy["entropy_lo"], entropy["entropy_hi"], color="#333333", alpha=0.15, lw=0
        )
        strip.set_ylim(bottom=0)
        energy = axes[2, column]
        energy.plot(entropy["layer"], entropy["energy"], color="#2e8b57", lw=1.4)
        energy.fill_between(
            entropy["layer"], entropy["energy_lo"], entropy["energy_hi"], color="#2e8b57", alpha=0.15, lw=0
        )
        energy.set_xlabel("layer")
        energy.xaxis.set_major_locator(MaxNLocator(integer=True))
        energy.set_xlim(0, n_layers)
        energy.set_ylim(bottom=0)
    axes[0, 0].set_ylabel(f"P(language)  (mean, {_interval_label(frame)})")
    axes[1, 0].set_ylabel("entropy (bits)")
    axes[2, 0].set_ylabel("energy")
    _legend(axes[0, -1], axes[0, 0], fontsize=7)
    fig.suptitle(f"{model} · {task} {src}→{tgt} · {count(n_concepts, 'concept')} ({word_list})", y=1.04)
    return fig


def latent_language_relative_figure(frame: pd.DataFrame) -> Figure:
    """Every model and pair on relative depth: target, English and the strongest other language.

    ``frame`` is :func:`probes.lenses.curves.curve_intervals` of every run (the summary's intervals table).
    """
    apply_style()
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
            means = part.groupby("language")["prob"].mean().drop([run.tgt, "en", "shared"], errors="ignore")
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


def dual_latent_figure(frame: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    """Per model and lens (rows) and target language (columns): P(English), P(target), P(related) and the shared
    tokens on relative depth, the middle layers shaded and their latent language(s) named (Zhong et al. 2024).

    ``frame`` is :func:`probes.lenses.curves.curve_intervals` of the dual-latent runs, ``summary``
    :func:`probes.lenses.curves.dual_latent_summary` of them.
    """
    apply_style()
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(summary["tgt"]))
    rows = list(summary[["model", "lens"]].drop_duplicates().itertuples(index=False))
    fig, axes = plt.subplots(
        len(rows),
        len(targets),
        figsize=(2.4 * len(targets) + 0.6, 2.3 * len(rows) + 0.6),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    languages = sorted(frame["language"].unique())
    for (row, (model, lens)), (column, tgt) in ((r, c) for r in enumerate(rows) for c in enumerate(targets)):
        ax = axes[row, column]
        part = frame[(frame["model"] == model) & (frame["lens"] == lens) & (frame["tgt"] == tgt)]
        found = summary[(summary["model"] == model) & (summary["lens"] == lens) & (summary["tgt"] == tgt)]
        if part.empty or found.empty:
            ax.set_axis_off()
            continue
        result = found.iloc[0]
        n_layers = int(result["n_layers"])
        ax.axvspan(result["window_first"] / n_layers, result["window_last"] / n_layers, color="#eeeeee", lw=0)
        _probability_lines(ax, part, lambda layers: layers / n_layers, tgt, tgt, languages)
        ax.set_title(f"{tgt}: latent {result['latent']}", fontsize=8)
        _legend(ax, ax, fontsize=6)
        if column == 0:
            ax.set_ylabel(f"{model}\n{LENS_TITLES[lens]}\nP(language)", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("relative depth")
        ax.set_xlim(0, 1)
    # the probabilities of small models stay far below 1: a shared scale fitted to the bands keeps them readable
    axes[0, 0].set_ylim(0, min(1.0, max(0.05, 1.15 * float(frame["prob_hi"].max()))))
    fig.suptitle(
        f"Monolingual cloze: English, target and related language (mean, {_interval_label(frame)}; "
        "shaded: the middle layers)",
        y=1.0,
    )
    fig.tight_layout()
    return fig


def tuned_lens_kl_figure(frame: pd.DataFrame) -> Figure:
    """Held-out KL to the model's output per layer: how much each lens misses of the final prediction.

    The least-squares map is where the tuned lens starts; the tuned lens below it at a layer is what its KL
    training bought there. Bands are the table's bootstrap intervals (``kl_lo``/``kl_hi``, resampling
    held-out documents).
    """
    apply_style()
    import matplotlib.pyplot as plt

    lenses = {
        "logit": ("logit lens", "#555555", "o"),
        "linear": ("least-squares map (tuned lens's start)", "#1b9e77", "s"),
        "tuned": ("tuned lens", "#d95f02", "^"),
    }
    models = sorted(frame["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(4.0 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        part = frame[frame["model"] == model]
        n_layers = int(part["layer"].max())
        for lens, (label, colour, marker) in lenses.items():
            curve = part[(part["lens"] == lens) & (part["layer"] < n_layers)].sort_values("layer")
            ax.plot(curve["layer"], curve["kl_bits"], marker=marker, ms=3, color=colour, label=label)
            ax.fill_between(
                curve["layer"], curve["kl_lo"].clip(lower=1e-3), curve["kl_hi"], color=colour, alpha=0.2, lw=0
            )
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        first = part.iloc[0]
        ax.set_title(
            f"{model} ({count(int(first['n_tokens']), 'held-out token')}, {count(int(first['n_texts']), 'document')})",
            fontsize=9,
        )
        relative_depth_axis(ax, n_layers)
        ax.legend(fontsize=7)
    ci = frame["ci"].iloc[0]
    axes[0, 0].set_ylabel(f"KL(model ‖ lens), bits per token ({ci:.0%} CI)")
    fig.tight_layout()
    return fig
