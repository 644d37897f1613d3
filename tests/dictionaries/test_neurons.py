"""Neuron probing: MLP activations on disk, ranking criteria, k-sparse probes and the planted neuron."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from probes.activations.extraction import ExtractionSettings, pooled_activations
from probes.dictionaries.neurons import (
    best_single_neurons,
    f1_scores,
    k_sparse_probe,
    load_mlp_activations,
    neuron_scores,
    ranked_neurons,
    store_mlp_activations,
)
from probes.dictionaries.sae import sparse_accuracy
from probes.probing.protocol import cv_splits
from probes.probing.settings import ProbeSettings

FILLER = ["the", "city", "of", "lyon", "is", "in", "france", "a", "coin", "up", "alice", "film", "was"]
PLANTED_LAYER, PLANTED_NEURON = 2, 17


def planted_model(tiny_model):
    """The tiny model with one neuron of block 1 that fires only on the token of " heads"."""
    model = copy.deepcopy(tiny_model)
    token = model.to_tokens(" heads", prepend_bos=False)[0, -1]
    generator = torch.Generator().manual_seed(3)
    direction = torch.randn(model.cfg.d_model, generator=generator)
    direction /= direction.norm()
    with torch.no_grad():
        model.W_E[token] += 50 * direction
        model.blocks[PLANTED_LAYER - 1].mlp.W_in[:, PLANTED_NEURON] = 5 * direction
        model.blocks[PLANTED_LAYER - 1].mlp.b_in[PLANTED_NEURON] = -10.0
    return model


def planted_texts(n: int = 120, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
        if i % 2:
            words.insert(rng.randrange(1, len(words)), "heads")
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, np.array(labels)


def test_planted_neuron_is_found_at_k_1_with_f1_near_one(tiny_model):
    model = planted_model(tiny_model)
    texts, y = planted_texts()
    pooled, _ = pooled_activations(
        model, texts, ExtractionSettings(batch_size=32), progress=False, mlp_sites=("mlp_post",)
    )
    X = pooled["mlp_post/mean"].numpy()
    settings = ProbeSettings(folds=5, seeds=(0,))
    predictions, chosen = k_sparse_probe(X, y, settings, ks=(1, 4))
    at_one = predictions[(predictions["k"] == 1) & (predictions["layer"] == PLANTED_LAYER)]
    f1 = f1_scores(at_one, y, n_boot=200)
    assert (f1["f1"] > 0.97).all(), f1
    best = best_single_neurons(chosen, X, y, ["no", "yes"]).set_index(["criterion", "layer"])
    for criterion in ("mean_difference", "f_statistic"):
        row = best.loc[(criterion, PLANTED_LAYER)]
        assert row["neuron"] == PLANTED_NEURON and row["fold_agreement"] == 1.0 and row["favours"] == "yes"
        assert row["mean_1"] > 0.5 > 0.05 > row["mean_0"]
    # before the planted block nothing separates the classes that well at k = 1
    first = f1_scores(predictions[(predictions["k"] == 1) & (predictions["layer"] == 1)], y, n_boot=200)
    assert (first["f1"] < f1["f1"].min()).all()


def test_criteria_rank_a_known_separator_first_and_f_statistic_standardises():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    X = rng.normal(size=(100, 1, 4))
    X[:, 0, 1] *= 100  # huge but uninformative
    X[:, 0, 2] += 0.8 * y  # informative and small
    X[:, 0, 3] = 0.0  # constant
    rows = np.ones(100, dtype=bool)
    f = neuron_scores(X, y, rows, "f_statistic")[0]
    assert ranked_neurons(f[None])[0, 0] == 2 and f[3] == 0
    # for two classes F = t^2 (pooled-variance t statistic)
    ones, zeros = X[y == 1, 0, 2], X[y == 0, 0, 2]
    pooled = ((ones.var(ddof=1) * 49 + zeros.var(ddof=1) * 49) / 98) ** 0.5
    t = (ones.mean() - zeros.mean()) / (pooled * (2 / 50) ** 0.5)
    assert f[2] == pytest.approx(t**2)
    difference = neuron_scores(X, y, rows, "mean_difference")[0]
    assert difference[2] == pytest.approx(abs(ones.mean() - zeros.mean()))
    with pytest.raises(ValueError, match="criterion"):
        neuron_scores(X, y, rows, "l1")


def test_k_sparse_probe_uses_the_dense_folds_and_predicts_every_example_once():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    X = rng.normal(size=(80, 3, 20)).astype(np.float32)
    X[:, 1, 5] += 2 * y
    groups = np.arange(80) // 2
    settings = ProbeSettings(folds=4, seeds=(0, 1))
    predictions, chosen = k_sparse_probe(X, y, settings, ks=(1, 2, 64), groups=groups)
    assert sorted(predictions["k"].unique()) == [1, 2, 20]  # k capped at the width
    counts = predictions.groupby(["criterion", "layer", "k", "seed"])["example"].agg(["nunique", "size"])
    assert (counts["nunique"] == 80).all() and (counts["size"] == 80).all()
    for seed, fold, train in cv_splits(y, settings, groups):
        rows = predictions[(predictions["seed"] == seed) & (predictions["fold"] == fold)]
        assert set(rows["example"]) == set(np.flatnonzero(~train))
        firsts = chosen[(chosen["seed"] == seed) & (chosen["fold"] == fold) & (chosen["rank"] == 0)]
        expected = ranked_neurons(neuron_scores(X, y, train, "f_statistic"))[:, 0]
        assert firsts[firsts["criterion"] == "f_statistic"].sort_values("layer")["neuron"].tolist() == expected.tolist()
    accuracy = sparse_accuracy(predictions.rename(columns={"criterion": "features"}), n_boot=200, groups=groups)
    best = accuracy.set_index(["features", "layer", "k"]).loc[("f_statistic", 2, 1)]
    assert best["accuracy"] > 0.8 and best["accuracy_lo"] <= best["accuracy"] <= best["accuracy_hi"]


def test_f1_interval_resamples_examples_and_matches_a_direct_count():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    predicted = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    frame = __import__("pandas").DataFrame(
        {"criterion": "c", "layer": 1, "k": 1, "example": np.arange(8), "predicted": predicted}
    )
    scores = f1_scores(frame, y, n_boot=500).iloc[0]
    tp, fp, fn = 3, 1, 1
    assert scores["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert scores["f1_lo"] < scores["f1"] < scores["f1_hi"]


def test_mlp_storage_rounds_within_half_precision_and_refuses_overflow(tmp_path):
    values = {"mlp_post/last": torch.linspace(-3, 3, 600).reshape(2, 3, 100)}
    rounding = store_mlp_activations(tmp_path / "mlp.safetensors", values, "float16")
    assert 0 < rounding["mlp_post/last"]["relative_rms_error"] < 2**-11
    stored = load_mlp_activations(tmp_path / "mlp.safetensors", "mlp_post", "last")
    assert stored.dtype == np.float32 and np.abs(stored - values["mlp_post/last"].numpy()).max() <= 3 * 2**-11
    with pytest.raises(KeyError, match="mlp_post/mean"):
        load_mlp_activations(tmp_path / "mlp.safetensors", "mlp_post", "mean")
    huge = {"mlp_post/last": torch.tensor([[1e5]])}
    with pytest.raises(ValueError, match="bfloat16"):
        store_mlp_activations(tmp_path / "huge.safetensors", huge, "float16")
    assert not (tmp_path / "huge.safetensors").exists()
    store_mlp_activations(tmp_path / "huge.safetensors", huge, "bfloat16")
