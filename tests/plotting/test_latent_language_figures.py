"""The latent-language and tuned-lens figures drawn from small synthetic tables, with one run and with many."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import legibility_problems
from probes.plotting import latent_language as figures

LANGUAGES = ("en", "fr", "de", "zh", "ko", "shared")  # ko: no fixed colour; shared: the shared tokens


def curve_table(runs: list[tuple[str, str, str]], n_layers: int = 30, n_concepts: int = 1) -> pd.DataFrame:
    """Concept-mean curves with intervals for each (model, src, tgt) run, under both lenses."""
    layers = np.arange(n_layers + 1)
    frames = []
    for model, src, tgt in runs:
        for lens in ("logit", "tuned"):
            for i, language in enumerate(LANGUAGES):
                prob = 0.6 / (1 + np.exp(-(layers - 25))) if language == tgt else 0.05 + 0.02 * i
                frames.append(
                    pd.DataFrame(
                        {"model": model, "word_list": "everyday", "task": "translation", "src": src, "tgt": tgt}
                        | {"lens": lens, "layer": layers, "depth": layers / n_layers, "language": language}
                        | {"prob": prob, "prob_lo": prob * 0.8, "prob_hi": prob * 1.2}
                        | {"entropy_bits": 8 - 6 * layers / n_layers, "n_concepts": n_concepts, "ci": 0.95}
                        | {"energy": 1 + layers / n_layers, "top1": prob > 0.3}
                    ).assign(
                        entropy_lo=lambda f: f["entropy_bits"] - 0.5,
                        entropy_hi=lambda f: f["entropy_bits"] + 0.5,
                        energy_lo=lambda f: f["energy"] - 0.1,
                        energy_hi=lambda f: f["energy"] + 0.1,
                    )
                )
    return pd.concat(frames, ignore_index=True)


def kl_table(models: list[str], n_layers: int = 30) -> pd.DataFrame:
    layers = np.arange(n_layers + 1)
    frames = []
    for model in models:
        for lens, scale in (("logit", 8.0), ("linear", 3.0), ("tuned", 2.0)):
            kl = scale * (1 - layers / n_layers) + 0.01
            frames.append(
                pd.DataFrame({"model": model, "lens": lens, "layer": layers, "kl_bits": kl}).assign(
                    kl_lo=kl * 0.9, kl_hi=kl * 1.1, n_tokens=1, n_texts=1, ci=0.95
                )
            )
    return pd.concat(frames, ignore_index=True)


RUNS = [(f"model{m}", src, tgt) for m in range(4) for src, tgt in (("fr", "zh"), ("de", "en"), ("zh", "ko"))]


def test_pair_figure_tells_every_language_apart_and_counts_one_concept(tmp_path):
    fig = figures.latent_language_figure(curve_table(RUNS[:1]), "model0", "everyday", "translation", "fr", "zh")
    fig.savefig(tmp_path / "pair.png", dpi=60)
    assert not legibility_problems(fig)
    assert "1 concept (everyday)" in fig._suptitle.get_text()


@pytest.mark.parametrize("n_runs", [1, len(RUNS)])
def test_relative_figure_is_legible_with_one_run_or_many(tmp_path, n_runs):
    fig = figures.latent_language_relative_figure(curve_table(RUNS[:n_runs]))
    fig.savefig(tmp_path / f"relative_{n_runs}.png", dpi=60)
    assert not legibility_problems(fig)


def dual_tables(models: list[str], targets: list[str], related: dict[str, str]):
    """Curve intervals and the dual-latent summary of monolingual clozes, both lenses, on an 18-layer model."""
    runs = [(model, tgt, tgt) for model in models for tgt in targets]
    curves = curve_table(runs, n_layers=18, n_concepts=30).assign(task="cloze")
    rows = [
        {"model": model, "tgt": tgt, "lens": lens, "related": related.get(tgt), "n_layers": 18}
        | {"window_first": 8, "window_last": 14, "latent": "en+" + related[tgt] if tgt in related else "en"}
        for model in models
        for tgt in targets
        for lens in ("logit", "tuned")
    ]
    return curves, pd.DataFrame(rows)


@pytest.mark.parametrize(("n_models", "targets"), [(1, ["fr"]), (2, ["fr", "de", "es", "zh", "ja", "ru"])])
def test_dual_latent_figure_is_legible(tmp_path, n_models, targets):
    curves, summary = dual_tables([f"model{m}" for m in range(n_models)], targets, {"fr": "es", "zh": "ja"})
    fig = figures.dual_latent_figure(curves, summary)
    fig.savefig(tmp_path / "dual.png", dpi=60)
    assert not legibility_problems(fig)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "fr: latent en+es" in titles


@pytest.mark.parametrize("n_models", [1, 12])
def test_tuned_lens_kl_figure_is_legible(tmp_path, n_models):
    fig = figures.tuned_lens_kl_figure(kl_table([f"model{m:02d}" for m in range(n_models)]))
    fig.savefig(tmp_path / f"kl_{n_models}.png", dpi=60)
    assert not legibility_problems(fig)
