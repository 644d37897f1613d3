"""The SAE, sparse-probing and neuron-probing figures drawn from small synthetic tables: measurements at a few SAE
layers stay points, and every series of an axis looks different from the others."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import legibility_problems, named_lines
from probes.plotting import dictionaries as figures

N_LAYERS = 30
SAE_LAYERS = (10, 20)


def sae_metrics_table(n_models: int) -> pd.DataFrame:
    rows = []
    for m in range(n_models):
        for kind in ("sae", "transcoder"):
            for layer in SAE_LAYERS:
                recovered = 0.9 - 0.01 * m
                rows.append(
                    {
                        "model": f"model{m:02d}",
                        "kind": kind,
                        "layer": layer,
                        "relative_depth": layer / N_LAYERS,
                        "fvu": 0.2,
                        "l0": 32.0,
                        "loss_recovered": recovered,
                        "loss_recovered_lo": recovered - 0.02,
                        "loss_recovered_hi": min(recovered + 0.02, 1.0),
                        "ce_loss_score": recovered - 0.05,
                        "ce_loss_score_lo": recovered - 0.08,
                        "ce_loss_score_hi": recovered - 0.02,
                        "dead_fraction": 0.0,  # a run's usual value: on the edge of the axis's natural range
                        "dense_fraction": 0.01,
                        "n_loss_documents": 1,
                        "architecture": "topk",
                        "d_sae": 2048,
                        "training_tokens": 100_000,
                    }
                )
    return pd.DataFrame(rows)


def sparse_tables(transcoders: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The sparse-probing summary at the SAE layers, the dense probe and the neuron probes at every layer."""
    layers = np.arange(N_LAYERS + 1)
    rows = []
    for layer in SAE_LAYERS:
        for k in (1, 4, 16):
            row = {"model": "smollm2-135m", "dataset": "cities", "level": "factual", "n_layers": N_LAYERS}
            row |= {"layer": layer, "k": k, "n_examples": 1, "n_groups": np.nan}
            for features, value in (("sae", 0.8), ("transcoder", 0.75), ("residual", 0.7))[: 3 if transcoders else 2]:
                accuracy = min(value + 0.01 * k, 1.0)
                row |= {f"{features}_topk_accuracy{end}": accuracy + shift for end, shift in PAD.items()}
            rows.append(row)
    value = 0.5 + 0.45 / (1 + np.exp(-(layers - 8)))
    dense = pd.DataFrame({"metric": "accuracy", "layer": layers, "value": value})
    dense = dense.assign(accuracy_lo=value - 0.03, accuracy_hi=value + 0.03)
    neurons = pd.concat(
        [
            pd.DataFrame({"k": k, "layer": layers, "accuracy": value - 0.1 / k}).assign(
                accuracy_lo=lambda f: f["accuracy"] - 0.03, accuracy_hi=lambda f: f["accuracy"] + 0.03
            )
            for k in (1, 4, 16)
        ],
        ignore_index=True,
    )
    return pd.DataFrame(rows), dense, neurons


PAD = {"": 0.0, "_lo": -0.04, "_hi": 0.04}


def neuron_summary() -> pd.DataFrame:
    layers = np.arange(1, N_LAYERS + 1)
    frames = []
    for criterion in ("mean_difference", "f_statistic"):
        for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048):
            accuracy = 0.5 + 0.4 / (1 + np.exp(-(layers - 10))) * (1 - 1 / (k + 1))
            frames.append(
                pd.DataFrame(
                    {"model": "smollm2-135m", "dataset": "cities", "n_layers": N_LAYERS, "criterion": criterion}
                    | {"k": k, "layer": layers, "accuracy": accuracy, "n_examples": 1}
                ).assign(
                    accuracy_lo=accuracy - 0.03,
                    accuracy_hi=accuracy + 0.03,
                    dense_accuracy=0.95,
                    dense_accuracy_lo=0.93,
                    dense_accuracy_hi=0.97,
                )
            )
    return pd.concat(frames, ignore_index=True)


def drawn(fig, tmp_path, name: str):
    fig.savefig(tmp_path / f"{name}.png", dpi=60)
    return [ax for ax in fig.axes if ax.get_visible()]


@pytest.mark.parametrize("n_models", [1, 12])
def test_sae_metrics_are_points_at_their_layers_never_lines(tmp_path, n_models):
    fig = figures.sae_metrics_figure(sae_metrics_table(n_models))
    axes = drawn(fig, tmp_path, f"sae_metrics_{n_models}")
    assert not legibility_problems(fig)
    for ax in axes:
        series = [line for line in ax.lines if id(line) in named_lines(ax)]
        assert len(series) == 2 * n_models * (2 if ax is axes[-1] else 1)  # dead and dense in the last panel
        assert all(line.get_linestyle() == "None" for line in series)
    assert "1 held-out document," in fig._suptitle.get_text()


@pytest.mark.parametrize("transcoders", [False, True])
def test_sparse_probes_at_the_sae_layers_are_points_beside_the_dense_curve(tmp_path, transcoders):
    summary, dense, neurons = sparse_tables(transcoders)
    fig = figures.sparse_probing_figure(summary, dense, neurons=neurons)
    axes = drawn(fig, tmp_path, "sparse")
    assert not legibility_problems(fig)
    sparse_colours = {style["color"] for style in figures._SPARSE_STYLES.values()}
    for ax in axes:
        points = [line for line in ax.lines if line.get_color() in sparse_colours and line.get_marker() != "_"]
        assert len(points) == (3 if transcoders else 2)
        assert all(line.get_linestyle() == "None" and len(line.get_xdata()) == len(SAE_LAYERS) for line in points)
        dense_curve = next(line for line in ax.lines if line.get_color() == "#555555")
        assert len(dense_curve.get_xdata()) == N_LAYERS + 1  # measured at every layer: a line
    assert "over the 1 example" in fig._suptitle.get_text()


def test_neuron_probing_gives_every_k_its_own_colour(tmp_path):
    fig = figures.neuron_probing_figure(neuron_summary())
    drawn(fig, tmp_path, "neurons")
    assert not legibility_problems(fig)
    assert "(1 example)" in fig._suptitle.get_text()
