"""The depth-usage, layer-map and representation-quality figures, drawn from small synthetic tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import QuadMesh

from helpers import legibility_problems
from probes.plotting import depth_usage as figures

MODELS = {"smollm2-135m": 30, "gemma3-270m": 18}
CI = {"ci": 0.95, "n_boot": 200}


def _interval(frame: pd.DataFrame, spread: float = 0.2) -> pd.DataFrame:
    return frame.assign(lo=frame["value"] * (1 - spread), hi=frame["value"] * (1 + spread), **CI)


def sublayers_table() -> pd.DataFrame:
    frames = []
    for model, n_layers in MODELS.items():
        blocks = np.arange(1, n_layers + 1)
        depth = blocks / n_layers
        curves = {
            "attn_relative_norm": 12 * np.exp(-8 * depth) + 0.05,
            "mlp_relative_norm": 20 * np.exp(-10 * depth) + 0.1,
            "attn_cosine": -0.3 + 0.4 * depth,
            "mlp_cosine": 0.2 * np.sin(6 * depth),
        }
        for metric, value in curves.items():
            frames.append(
                pd.DataFrame({"model": model, "metric": metric, "layer": blocks, "depth": depth, "value": value})
            )
        residual = np.arange(n_layers + 1)
        frames.append(
            pd.DataFrame(
                {
                    "model": model,
                    "metric": "resid_norm",
                    "layer": residual,
                    "depth": residual / n_layers,
                    "value": 5 * np.exp(3 * residual / n_layers),
                }
            )
        )
    table = pd.concat(frames, ignore_index=True).assign(n_documents=32)
    return _interval(table)


def skipping_table() -> pd.DataFrame:
    rows = []
    for model, n_layers in MODELS.items():
        for skipped in range(1, n_layers + 1):
            for measured in range(skipped, n_layers + 1):
                value = (
                    10 ** (1 - 3 * (measured - skipped) / n_layers)
                    if skipped == 1
                    else 0.3 * 0.9 ** (measured - skipped)
                )
                rows.append((model, "relative_change", skipped, measured, value))
            rows.append((model, "kl_bits", skipped, n_layers, 8.0 if skipped == 1 else 0.05 + 0.01 * skipped))
            rows.append((model, "top1_agreement", skipped, n_layers, 0.1 if skipped == 1 else 0.9))
    table = pd.DataFrame(rows, columns=["model", "metric", "skipped_layer", "layer", "value"])
    n_layers = table["model"].map(MODELS)
    table = table.assign(
        skipped_depth=table["skipped_layer"] / n_layers, depth=table["layer"] / n_layers, n_documents=16
    )
    return _interval(table, 0.1)


def shortcuts_table() -> pd.DataFrame:
    frames = []
    for model, n_layers in MODELS.items():
        layers = np.arange(n_layers + 1)
        depth = layers / n_layers
        for lens, gain in (("logit", 1.0), ("linear", 2.0), ("tuned", 3.0))[: 3 if model == "smollm2-135m" else 2]:
            kl = 12 * (1 - depth) ** gain
            curves = {"precision_at_1": depth ** (1 / gain), "surprisal_bits": 2 + kl, "kl_bits": kl}
            for metric, value in curves.items():
                frames.append(
                    pd.DataFrame(
                        {
                            "model": model,
                            "lens": lens,
                            "metric": metric,
                            "layer": layers,
                            "depth": depth,
                            "value": value,
                        }
                    )
                )
    table = pd.concat(frames, ignore_index=True).assign(n_documents=32, n_tokens=128)
    return _interval(table, 0.1)


def layer_map_tables(models=MODELS) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, best = [], []
    for source, n_source in models.items():
        for target, n_target in models.items():
            for i in range(n_source + 1):
                r2 = [1.2 - 2 * abs(i / n_source - j / n_target) for j in range(n_target + 1)]  # beyond [0, 1]
                for j, value in enumerate(r2):
                    rows.append((source, i, target, j, i / n_source, j / n_target, value))
                j = int(np.argmax(r2))
                best.append((source, target, i, i / n_source, j, j / n_target, r2[j]))
    r2 = pd.DataFrame(
        rows,
        columns=["source_model", "source_layer", "target_model", "target_layer", "source_depth", "target_depth", "r2"],
    ).assign(n_texts=64, n_groups=16, **CI)
    r2 = r2.assign(r2_lo=r2["r2"] - 0.05, r2_hi=r2["r2"] + 0.05)
    best = pd.DataFrame(
        best,
        columns=["source_model", "target_model", "source_layer", "source_depth", "best_layer", "best_depth", "best_r2"],
    )
    best = best.assign(
        best_depth_lo=(best["best_depth"] - 0.05).clip(0, 1),
        best_depth_hi=(best["best_depth"] + 0.05).clip(0, 1),
        offset=best["best_depth"] - best["source_depth"],
    )
    return r2, best.assign(offset_lo=best["offset"] - 0.05, offset_hi=best["offset"] + 0.05)


def quality_table() -> pd.DataFrame:
    frames = []
    for model, n_layers in MODELS.items():
        layers = np.arange(n_layers + 1)
        depth = layers / n_layers
        curves = {
            "prompt_entropy": 0.4 + 0.3 * np.sin(3 * depth),
            "dataset_entropy": 0.6 - 0.2 * depth,
            "curvature": 1.8 - 0.6 * np.sin(np.pi * depth),
            "infonce_mi_lower_bound": 0.3 + 0.5 * depth,
        }
        for metric, value in curves.items():
            frames.append(
                pd.DataFrame({"model": model, "metric": metric, "layer": layers, "depth": depth, "value": value})
            )
    table = pd.concat(frames, ignore_index=True).assign(n_prompts=48, alpha=1.0, temperature=0.1)
    return _interval(table, 0.05)


def correlations_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for model, n_layers in MODELS.items():
        for metric in ("prompt_entropy", "dataset_entropy", "curvature", "infonce_mi_lower_bound"):
            for task in ("capitals", "sentiment", "entailment"):
                rho = rng.uniform(-0.9, 0.9)
                rows.append((model, metric, task, rho, rho - 0.2, min(rho + 0.2, 1.0), n_layers + 1, 0.95))
    return pd.DataFrame(rows, columns=["model", "metric", "task", "spearman", "lo", "hi", "n_layers", "ci"])


def _drawn(fig, tmp_path, name: str):
    fig.savefig(tmp_path / f"{name}.png", dpi=60)
    return [ax for ax in fig.axes if ax.get_visible()]


def _curves(ax) -> list:
    """The data lines of an axis (reference lines such as y = 0 have two points)."""
    return [line for line in ax.lines if len(line.get_xdata()) > 2]


def test_sublayers_figure_draws_a_log_panel_per_norm_and_a_zero_line_per_cosine(tmp_path):
    axes = _drawn(figures.depth_usage_sublayers_figure(sublayers_table()), tmp_path, "sublayers")
    assert [ax.get_ylabel() for ax in axes] == [label for _, _, label, _ in figures._SUBLAYER_PANELS]
    assert [ax.get_yscale() for ax in axes] == ["log", "log", "log", "linear", "linear"]
    for ax in axes:
        assert len(_curves(ax)) == 2 and len(ax.collections) == 2  # a line and a band per model
        assert ax.get_xlabel() == "relative depth (layer / L)"
    assert [len(ax.lines) - len(_curves(ax)) for ax in axes] == [0, 0, 0, 1, 1]  # the zero lines
    residual = [line for line in axes[2].lines if line.get_color() == axes[2].lines[0].get_color()][0]
    assert residual.get_xdata()[0] == 0 and len(residual.get_xdata()) == 31  # residual layers 0..L


def test_sublayers_figure_leaves_out_a_model_without_values(tmp_path):
    table = sublayers_table()
    table.loc[table["model"] == "gemma3-270m", ["value", "lo", "hi"]] = np.nan
    fig = figures.depth_usage_sublayers_figure(table)
    axes = _drawn(fig, tmp_path, "sublayers_nan")
    assert all(len(_curves(ax)) == 1 for ax in axes)
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["smollm2-135m (L = 30, 32 documents)"]


def test_skipping_figure_masks_the_residuals_before_the_skipped_block(tmp_path):
    fig = figures.layer_skipping_figure(skipping_table(), "gemma3-270m")
    axes = _drawn(fig, tmp_path, "skipping")
    heat = next(ax for ax in axes if any(isinstance(c, QuadMesh) for c in ax.collections))
    values = next(c for c in heat.collections if isinstance(c, QuadMesh)).get_array()
    assert values.shape == (18, 18) and values.mask.sum() == 18 * 17 // 2  # measured < skipped: blank
    assert values.mask[3, 2] and not values.mask[2, 3]
    assert any("‖h′ − h‖" in ax.get_ylabel() for ax in axes)  # the colourbar
    kl, agreement = (next(ax for ax in axes if ax.get_ylabel().startswith(start)) for start in ("KL", "top-1"))
    assert kl.get_yscale() == "log" and agreement.get_ylim() == (0, 1.02)
    assert len(_curves(kl)[0].get_xdata()) == 18
    with pytest.raises(ValueError, match="no rows for model"):
        figures.layer_skipping_figure(skipping_table(), "pythia-70m")


def test_shortcuts_figure_draws_each_lens_of_each_model_and_skips_zero_kl(tmp_path):
    fig = figures.linear_shortcuts_figure(shortcuts_table())
    axes = _drawn(fig, tmp_path, "shortcuts")
    assert len(axes) == 3
    assert [ax.get_yscale() for ax in axes] == ["linear", "log", "log"]
    assert all(len(_curves(ax)) == 5 for ax in axes)  # smollm2: logit, linear, tuned; gemma3: no tuned lens
    for line in _curves(axes[2]):
        assert np.isnan(line.get_ydata()[-1])  # KL 0 at layer L, left out of the log axis
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels[:3] == ["logit lens", "linear shortcut", "tuned lens"]
    assert labels[3] == "smollm2-135m (L = 30, 32 documents, 128 tokens)"


def _meshes(fig) -> list[QuadMesh]:
    """The heatmaps of the layer-map panels (the last axis is the colourbar)."""
    return [c for ax in fig.axes[:-1] for c in ax.collections if isinstance(c, QuadMesh)]


def test_layer_maps_figure_draws_every_ordered_pair_on_shared_depth(tmp_path):
    r2, best = layer_map_tables()
    fig = figures.layer_maps_figure(r2, best)
    _drawn(fig, tmp_path, "layer_maps")
    meshes = _meshes(fig)
    assert len(meshes) == 4 and len(fig.axes) == 5  # four pairs and one shared colourbar
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "smollm2-135m → smollm2-135m",
        "smollm2-135m → gemma3-270m",
        "gemma3-270m → smollm2-135m",
        "gemma3-270m → gemma3-270m",
    ]
    for mesh in meshes:
        assert mesh.get_array().min() >= 0 and mesh.get_array().max() <= 1
        corners = mesh.get_coordinates()
        assert corners[..., 0].min() == 0 and corners[..., 0].max() == 1
    assert meshes[1].get_array().shape == (31, 19)  # source layers 0..30 by target layers 0..18
    assert np.isclose(meshes[1].get_coordinates()[0, 1, 0], 0.5 / 18)  # edges halfway between depths
    dots = [line for line in fig.axes[1].lines if line.get_marker() == "o"]
    assert len(dots) == 1 and len(dots[0].get_xdata()) == 31


def test_layer_maps_figure_works_with_one_model(tmp_path):
    r2, best = layer_map_tables({"gemma3-270m": 18})
    fig = figures.layer_maps_figure(r2, best)
    _drawn(fig, tmp_path, "layer_maps_one")
    assert len(_meshes(fig)) == 1


def test_layer_map_matches_figure_draws_cross_model_pairs_or_says_there_are_none(tmp_path):
    r2, best = layer_map_tables()
    ax = _drawn(figures.layer_map_matches_figure(best), tmp_path, "matches")[0]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        "equal relative depth",
        "smollm2-135m → gemma3-270m",
        "gemma3-270m → smollm2-135m",
    ]
    assert "95% bootstrap intervals" in ax.get_title()
    _, best = layer_map_tables({"gemma3-270m": 18})
    ax = _drawn(figures.layer_map_matches_figure(best), tmp_path, "matches_one")[0]
    assert "no cross-model pairs" in ax.get_title()
    assert [text.get_text() for text in ax.get_legend().get_texts()][1:] == ["gemma3-270m → gemma3-270m"]


def test_quality_figure_draws_one_panel_per_metric_present(tmp_path):
    axes = _drawn(figures.representation_quality_figure(quality_table()), tmp_path, "quality")
    assert [ax.get_title() for ax in axes] == [
        "prompt entropy",
        "dataset entropy",
        "curvature",
        "augmentation invariance",
    ]
    assert "radians" in axes[2].get_ylabel() and "1 − loss / log n" in axes[3].get_ylabel()
    assert all(len(_curves(ax)) == 2 for ax in axes)
    table = quality_table().query("metric != 'dataset_entropy'")
    axes = _drawn(figures.representation_quality_figure(table), tmp_path, "quality_three")
    assert [ax.get_title() for ax in axes] == ["prompt entropy", "curvature", "augmentation invariance"]


def test_quality_correlation_figure_puts_tasks_on_the_y_axis_per_model(tmp_path):
    table = correlations_table()
    axes = _drawn(figures.quality_correlation_figure(table), tmp_path, "correlations")
    assert [ax.get_title() for ax in axes] == ["smollm2-135m (31 residual layers)", "gemma3-270m (19 residual layers)"]
    assert [label.get_text() for label in axes[0].get_yticklabels()] == ["capitals", "sentiment", "entailment"]
    assert any(line.get_xdata()[0] == 0 for line in axes[0].lines)  # the zero line
    assert len(axes[1].get_legend().get_texts()) == 4
    table.loc[table["model"] == "smollm2-135m", ["spearman", "lo", "hi"]] = np.nan
    axes = _drawn(figures.quality_correlation_figure(table), tmp_path, "correlations_nan")
    assert [ax.get_title() for ax in axes] == ["gemma3-270m (19 residual layers)"]


@pytest.mark.parametrize(
    "draw",
    [
        lambda: figures.depth_usage_sublayers_figure(sublayers_table()),
        lambda: figures.layer_skipping_figure(skipping_table(), "gemma3-270m"),
        lambda: figures.linear_shortcuts_figure(shortcuts_table()),
        lambda: figures.layer_maps_figure(*layer_map_tables()),
        lambda: figures.layer_map_matches_figure(layer_map_tables()[1]),
        lambda: figures.representation_quality_figure(quality_table()),
        lambda: figures.quality_correlation_figure(correlations_table()),
    ],
    ids=["sublayers", "skipping", "shortcuts", "layer_maps", "matches", "quality", "correlations"],
)
def test_every_depth_usage_figure_is_legible(draw):
    assert not legibility_problems(draw())


def test_curve_panels_give_twelve_models_twelve_colours():
    many = {f"model{m:02d}": 12 for m in range(12)}
    table = pd.concat(
        [quality_table().query("model == 'gemma3-270m'").assign(model=model) for model in many], ignore_index=True
    )
    assert not legibility_problems(figures.representation_quality_figure(table))
