"""The causal-check figures drawn from the summary tables of two models of different depth: legible, with their
intervals and controls drawn, and a task the model cannot do marked rather than dropped."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer

from helpers import REPO, legibility_problems
from probes.plotting import interventions as figures
from probes.plotting.style import NOT_DECODABLE

# The synthetic per-model tables live beside the summary test until tests/helpers.py holds them.
_spec = importlib.util.spec_from_file_location("causal_tables", REPO / "tests" / "workflow" / "test_causal_summary.py")
causal_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(causal_tables)
MODELS = causal_tables.MODELS


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return causal_tables.summarised(tmp_path_factory.mktemp("causal"))


def drawn(fig, tmp_path, name: str) -> list:
    fig.savefig(tmp_path / f"{name}.png", dpi=60)
    return [ax for ax in fig.axes if ax.get_visible()]


def grey_crosses(ax) -> int:
    return sum(
        len(line.get_xdata())
        for line in ax.lines
        if line.get_marker() == "x" and to_hex(line.get_color()) == NOT_DECODABLE
    )


def test_the_headline_reads_one_setting_the_largest_strength_and_the_largest_k(tables):
    effects = tables["effects"]
    extra = effects[effects["intervention"] == "deactivation"].assign(k=4, effect=99.0)
    chosen = figures.headline_effects(pd.concat([effects, extra], ignore_index=True))
    steering = chosen[chosen["intervention"] == "steering"]
    assert set(steering["setting"]) == {"probe"} and set(steering["strength"]) == {1.0}
    deactivation = chosen[chosen["intervention"] == "deactivation"]
    assert set(deactivation["setting"]) == {"zero"} and set(deactivation["k"]) == {16}
    assert set(chosen.loc[chosen["intervention"] == "erasure", "setting"]) == {"leace"}


def test_effects_on_relative_depth_draw_intervals_controls_and_skipped_tasks(tables, tmp_path):
    fig = figures.causal_effects_figure(tables["effects"], tables["readout"])
    axes = drawn(fig, tmp_path, "effects")
    assert not legibility_problems(fig)
    assert len(axes) == 6  # erasure, steering and deactivation: readout (top) and KL (bottom)
    erasure, steering, deactivation, erasure_kl, steering_kl, deactivation_kl = axes
    # both models × three tasks, less the one the smaller model cannot do, which sits at 0 as a grey cross
    for ax in (erasure, steering):
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 5 and grey_crosses(ax) == 2
    assert grey_crosses(deactivation) == 1 and len(deactivation.containers) == 5
    assert len([c for c in erasure_kl.containers if isinstance(c, ErrorbarContainer)]) == 6  # its cost still is
    assert len([c for c in deactivation_kl.containers if isinstance(c, ErrorbarContainer)]) == 3
    open_controls = [line for line in erasure.lines if line.get_markerfacecolor() == "white"]
    assert len(open_controls) == 5
    assert all(0 <= x <= 1 for line in erasure.lines for x in line.get_xdata())
    assert "α = 1" in steering.get_title() and "top-16" in deactivation.get_title()


@pytest.mark.parametrize("model", list(MODELS))
def test_erasure_figure_sets_erased_beside_clean_and_control_per_task(tables, tmp_path, model):
    fig = figures.erasure_probes_figure(tables["probes"], tables["readout"], model)
    axes = drawn(fig, tmp_path, f"erasure_{model}")
    assert not legibility_problems(fig)
    assert [ax.get_title().split(" ")[0] for ax in axes] == ["cities", "sentiment", "coinflip"]
    # per probe: one clean curve, and an erased and a control curve per erasure layer
    assert all(len([line for line in ax.lines if line.get_linestyle() != ":"]) == 2 * (1 + 2 * 2) for ax in axes)
    assert all(len(ax.collections) == 2 * 2 for ax in axes)  # the interval bands
    greyed = [ax.get_title() for ax in axes if to_hex(ax.title.get_color()) == NOT_DECODABLE]
    assert greyed == (["coinflip (the model cannot do it)"] if model == "gemma3-270m" else [])


@pytest.mark.parametrize("model", list(MODELS))
def test_steering_dose_response_shows_each_layer_against_its_random_direction(tables, tmp_path, model):
    fig = figures.steering_figure(tables["effects"], tables["readout"], model)
    axes = drawn(fig, tmp_path, f"steering_{model}")
    assert not legibility_problems(fig)
    n_settings = 2 if model == "smollm2-135m" else 1
    shift, kl = axes[:3], axes[3:]
    for ax in kl:
        assert len(ax.lines) == 2 * 2 * n_settings + 1  # steered and control per layer and setting, and zero
    cannot = [ax for ax in shift if any("cannot do" in text.get_text() for text in ax.texts)]
    assert len(cannot) == (1 if model == "gemma3-270m" else 0)
    assert all(not ax.lines for ax in cannot)


@pytest.mark.parametrize("model", list(MODELS))
def test_specificity_heatmap_annotates_every_cell_and_greys_what_was_not_measured(tables, tmp_path, model):
    fig = figures.specificity_figure(tables["effects"], tables["readout"], model)
    axes = drawn(fig, tmp_path, f"specificity_{model}")
    assert not legibility_problems(fig)
    panels = [ax for ax in axes if ax.get_images()]
    assert [ax.get_title().split(",")[0] for ax in panels] == ["zero ablation", "mean ablation"]
    texts = [text.get_text() for text in panels[0].texts]
    assert len(texts) == 9
    assert "0.76\n[0.66, 0.86]" in texts  # cities' own readout: 0.8 − 0.04 ± 0.1
    if model == "gemma3-270m":
        assert texts.count("skipped") == 3  # every task's neurons, read on the task it cannot do
        labels = {label.get_text(): to_hex(label.get_color()) for label in panels[0].get_xticklabels()}
        assert labels["coinflip\n(cannot do)"] == NOT_DECODABLE


def test_specificity_heatmap_says_which_neurons_were_not_deactivated(tables, tmp_path):
    effects = tables["effects"]
    fig = figures.specificity_figure(effects[effects["task"] != "sentiment"], tables["readout"], "smollm2-135m")
    texts = [text.get_text() for text in drawn(fig, tmp_path, "specificity")[0].texts]
    assert texts.count("not run") == 3 and len(texts) == 9
