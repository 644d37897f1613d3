"""The concept-depth figures drawn from small synthetic tables, with one task and with twenty: legible either way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import clipped_markers, dash, legibility_problems, shared_looks, singular_plurals
from probes.plotting import concept_depth as figures

MODELS = {"smollm2-135m": 30, "gemma3-270m": 18}
LEVELS = ("factual", "affective", "inferential")
METRICS = ("accuracy", "control_accuracy", "control_train_accuracy")


def concept_tables(n_tasks: int, models=MODELS, undecodable: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The summary and curves tables of ``n_tasks`` tasks, the first twelve factual (more than tab10 has
    colours), then levels in turn, the last ``undecodable`` within the null; chance and the three shortcut baselines
    all at 0.5, as on balanced tasks without a shortcut."""
    rows, curves = [], []
    for model, n_layers in models.items():
        layers = np.arange(n_layers + 1)
        for t in range(n_tasks):
            decodable = t < n_tasks - undecodable
            half = 3 + t % (n_layers - 6)
            rise = 0.4 if decodable else 0.02
            values = {
                "accuracy": 0.5 + rise / (1 + np.exp(-(layers - half))),
                "control_accuracy": 0.5 + 0.04 * layers / n_layers,
                "control_train_accuracy": 0.6 + 0.3 * layers / n_layers,
            }
            keys = {"model": model, "weights": "fp32", "noise": "clean", "dataset": f"task{t:02d}"}
            for metric, value in values.items():
                curves.append(
                    pd.DataFrame(keys | {"metric": metric, "layer": layers, "value": value}).assign(
                        lo=value - 0.03, hi=value + 0.03, site="resid", pooling="mean"
                    )
                )
            depth = {"half_rise_layer": half, "converging_layer": half + 3} if decodable else {}
            level = LEVELS[0] if t < 12 else LEVELS[t % len(LEVELS)]
            row = keys | {"level": level, "n_layers": n_layers, "control": "type"}
            row |= {"decodable": decodable, "null_p_value": 0.01 if decodable else 0.6, "chance": 0.5}
            row |= {"jump_layer": half if decodable else np.nan, "best_accuracy": 0.5 + rise}
            row |= {"bag_of_words_accuracy": 0.5, "length_accuracy": 0.5, "embedding_accuracy": 0.5}
            for name in ("half_rise_layer", "converging_layer"):
                value = depth.get(name, np.nan)
                row |= {name: value, f"{name}_lo": value - 1, f"{name}_hi": value + 1}
                depth_name = name.replace("_layer", "_depth")
                row |= {f"{depth_name}{end}": row[f"{name}{end}"] / n_layers for end in ("", "_lo", "_hi")}
            row |= {"best_accuracy_lo": row["best_accuracy"] - 0.03, "best_accuracy_hi": row["best_accuracy"] + 0.03}
            rows.append(row)
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


def levels_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The by-level table: each row's depths and its model's mean over the decodable tasks of its level."""
    columns = ["level", "dataset", "model", "n_layers", "decodable"]
    columns += [f"half_rise_depth{end}" for end in ("", "_lo", "_hi")]
    table = summary[columns].copy()
    means = summary[summary["decodable"]].groupby(["model", "level"])["half_rise_depth"].mean()
    mean = [means.get((model, level), np.nan) for model, level in zip(table["model"], table["level"])]
    return table.assign(
        level_mean_half_rise_depth=mean,
        level_mean_half_rise_depth_lo=np.array(mean) - 0.05,
        level_mean_half_rise_depth_hi=np.array(mean) + 0.05,
    )


def edge_label_boxes(ax) -> list:
    """Window extents of the reference-line names right of an axis."""
    return [text.get_window_extent() for text in ax.texts if text.get_position()[0] > 1]


def check_legible(fig, tmp_path, name: str) -> None:
    fig.savefig(tmp_path / f"{name}.png", dpi=60)
    assert not legibility_problems(fig)


@pytest.mark.parametrize("n_tasks", [1, 20])
def test_model_figure_tells_every_line_apart_and_names_the_baselines(tmp_path, n_tasks):
    summary, curves = concept_tables(n_tasks, undecodable=1 if n_tasks > 1 else 0)
    fig = figures.concept_depth_figure(curves, summary, "smollm2-135m", "fp32", embedded=False)
    check_legible(fig, tmp_path, f"model_{n_tasks}")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_xlabel() == "layer"]
    assert len(panels) == n_tasks
    for ax in panels:
        names = [text.get_text() for text in ax.texts if text.get_position()[0] > 1]
        assert names == ["chance", "words", "length", "embedding"]  # all four at 0.5: named one above the other
        boxes = edge_label_boxes(ax)
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    legend = {text.get_text(): line for text, line in zip(fig.legends[0].get_texts(), fig.legends[0].get_lines())}
    assert "chance" in legend
    # both reddish: the dash has to tell them apart
    assert dash(legend["jump layer"]) != dash(legend[figures.SHORTCUT_LABELS["embedding"]])


@pytest.mark.parametrize("n_tasks", [1, 20])
def test_levels_figure_counts_tasks_and_keeps_every_marker_inside(tmp_path, n_tasks):
    summary, _ = concept_tables(n_tasks, undecodable=4 if n_tasks > 1 else 0)
    fig = figures.concept_depth_levels_figure(levels_table(summary))
    check_legible(fig, tmp_path, f"levels_{n_tasks}")
    ticks = [label.get_text() for label in fig.axes[0].get_xticklabels()]
    assert ticks[0] == ("factual\n(1 task)" if n_tasks == 1 else "factual\n(15 tasks)")
    width, height = fig.get_size_inches()
    assert width >= 5 and height >= 3.5  # not a narrow strip


def test_levels_figure_keeps_a_depth_of_zero_or_one_inside():
    summary, _ = concept_tables(2)
    edges = [0.0, 1.0, 0.0, 1.0]
    table = levels_table(summary).assign(half_rise_depth=edges, half_rise_depth_lo=edges, half_rise_depth_hi=edges)
    assert not clipped_markers(figures.concept_depth_levels_figure(table))


@pytest.mark.parametrize("n_tasks", [1, 20])
def test_relative_figure_gives_every_task_and_model_its_own_line(tmp_path, n_tasks):
    summary, curves = concept_tables(n_tasks, undecodable=4 if n_tasks > 1 else 0)
    fig = figures.concept_depth_relative_figure(curves, summary, "fp32")
    check_legible(fig, tmp_path, f"relative_{n_tasks}")


@pytest.mark.parametrize("n_tasks", [1, 20])
def test_perturbations_figure_is_legible(tmp_path, n_tasks):
    summary, _ = concept_tables(n_tasks, models={"smollm2-135m": 30})
    noisy = summary.assign(noise="char-insert-0.05", best_accuracy=summary["best_accuracy"] - 0.05)
    fig = figures.perturbations_figure(pd.concat([summary, noisy]), "smollm2-135m", "fp32", embedded=False)
    check_legible(fig, tmp_path, f"perturbations_{n_tasks}")


def test_the_checks_catch_shared_styles_clipped_markers_and_singular_plurals():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], ":", color="#e31a1c", label="embedding")
    ax.axvline(0.5, ls=":", color="#e31a1c")
    ax.plot([1.0], [1.0], "o", ms=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("(1 tasks)")
    assert shared_looks(fig) == {"(1 tasks)": [("#e31a1c", "dotted", "None", None)]}
    assert len(clipped_markers(fig)) == 1
    assert singular_plurals(fig) == ["(1 tasks)"]
