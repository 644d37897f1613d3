"""The batched probe solver against scikit-learn, the CV protocol, and the concept-depth summaries."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from probes.probing import (
    METRICS,
    ProbeSettings,
    control_labels,
    mdl_boundaries,
    online_codelength,
    probe_layers,
    summarise_concept_depth,
    summarise_curve,
)
from probes.solver import fit_probes

TIGHT = ProbeSettings(C=0.5, tol=1e-10, max_iter=5000, dtype="float64")


def activations(n: int, n_layers: int, d: int, signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated features with a large offset (like real residual streams) and a label signal per layer."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    X = np.empty((n, n_layers, d), dtype=np.float32)
    for layer in range(n_layers):
        h = rng.standard_normal((n, d)) @ mixing * 2 + 50.0 * rng.standard_normal(d)
        h[:, 0] += signal * (layer + 1) * (2 * y - 1)
        X[:, layer] = h
    return X, y


def sklearn_fit(X_train: np.ndarray, y_train: np.ndarray, C: float) -> tuple[StandardScaler, LogisticRegression]:
    """The reference: StandardScaler + LogisticRegression in float64, converged far below our tolerance."""
    X_train = X_train.astype(np.float64)
    scaler = StandardScaler().fit(X_train)
    model = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(scaler.transform(X_train), y_train)
    return scaler, model


@pytest.mark.parametrize(("n", "d"), [(60, 80), (200, 12)], ids=["n<d", "n>d"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fit_matches_sklearn(n: int, d: int, dtype: str) -> None:
    X, y = activations(n, 2, d, signal=0.3)
    X[:, :, 1] = 7.0  # constant everywhere
    rng = np.random.default_rng(1)
    labels = np.stack([y, rng.permutation(y)])
    train = np.stack([rng.random(n) < 0.8, rng.random(n) < 0.7])
    X[train[0], :, 2] = -3.0  # constant on problem 0's training rows only: StandardScaler keeps scale 1
    settings = ProbeSettings(C=TIGHT.C, tol=TIGHT.tol if dtype == "float64" else 1e-6, max_iter=5000, dtype=dtype)
    fit = fit_probes(X, labels, train, settings)
    assert fit.converged.all()
    atol = 1e-6 if dtype == "float64" else 1e-3
    for layer in range(2):
        for p in range(2):
            tr = train[p]
            scaler, model = sklearn_fit(X[tr, layer], labels[p, tr], settings.C)
            scale = max(1.0, np.abs(model.coef_).max())
            np.testing.assert_allclose(fit.coef[layer, p], model.coef_[0], atol=atol * scale)
            np.testing.assert_allclose(fit.intercept[layer, p], model.intercept_[0], atol=atol * scale)
            reference = model.decision_function(scaler.transform(X[:, layer].astype(np.float64)))
            np.testing.assert_allclose(fit.decision[layer, p], reference, atol=atol * 10 * scale)
            assert np.array_equal(fit.decision[layer, p][~tr] > 0, reference[~tr] > 0)


def test_probe_layers_reproduces_the_sklearn_protocol() -> None:
    """Same folds, control labels and metrics as a plain scikit-learn loop (converged to the same optimum)."""
    X, y = activations(90, 2, 15, signal=0.15)
    settings = ProbeSettings(folds=3, seeds=(0, 4), C=0.5, tol=1e-10, max_iter=5000, dtype="float64")
    tidy = probe_layers(X, y, settings)
    assert len(tidy) == 2 * 2 * 3 * len(METRICS)
    got = tidy.set_index(["layer", "seed", "fold", "metric"])["value"]
    for seed in settings.seeds:
        splits = StratifiedKFold(3, shuffle=True, random_state=seed).split(np.zeros((len(y), 1)), y)
        for fold, (train, test) in enumerate(splits):
            for layer in range(2):
                for prefix, target in (("", y), ("control_", control_labels(y, seed))):
                    scaler, model = sklearn_fit(X[train, layer], target[train], settings.C)
                    scores = model.decision_function(scaler.transform(X[test, layer].astype(np.float64)))
                    pred = (scores > 0).astype(int)
                    expected = {
                        "accuracy": np.mean(pred == target[test]),
                        "f1": f1_score(target[test], pred),
                        "roc_auc": roc_auc_score(target[test], scores),
                    }
                    for metric, value in expected.items():
                        assert got[(layer, seed, fold, prefix + metric)] == pytest.approx(value, abs=1e-12)
            selectivity = got[(layer, seed, fold, "accuracy")] - got[(layer, seed, fold, "control_accuracy")]
            assert got[(layer, seed, fold, "selectivity")] == pytest.approx(selectivity)


def test_accuracy_tracks_signal_and_control_stays_near_chance() -> None:
    X, y = activations(200, 3, 30, signal=0.0)
    X[:, 2, 0] += 6.0 * (2 * y - 1)  # layer 2 separable, layers 0-1 carry no signal
    tidy = probe_layers(X, y, ProbeSettings(), progress=True)
    means = tidy.groupby(["metric", "layer"])["value"].mean()
    assert means[("accuracy", 2)] > 0.97
    assert means[("roc_auc", 2)] > 0.99
    assert abs(means[("accuracy", 0)] - 0.5) < 0.1
    assert abs(means[("control_accuracy", 2)] - 0.5) < 0.1
    assert means[("selectivity", 2)] > 0.35


def test_random_labels_give_chance_accuracy() -> None:
    X, _ = activations(200, 2, 30, signal=0.0)
    y = np.random.default_rng(5).permutation(np.arange(200) % 2)
    tidy = probe_layers(X, y, ProbeSettings(seeds=(0,)))
    accuracy = tidy[tidy["metric"] == "accuracy"]["value"].mean()
    assert abs(accuracy - 0.5) < 0.1


def test_layer_chunks_give_the_same_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A memory budget of one layer per chunk (as for large models) must not change any number."""
    import probes.solver

    X, y = activations(80, 3, 20, signal=0.2)
    labels, train = np.stack([y, 1 - y]), np.stack([np.arange(80) % 4 != 0] * 2)
    whole = fit_probes(X, labels, train, TIGHT)
    monkeypatch.setattr(probes.solver, "_MEMORY_BUDGET", 1)
    chunked = fit_probes(X, labels, train, TIGHT)
    np.testing.assert_allclose(chunked.coef, whole.coef, atol=1e-9)
    np.testing.assert_allclose(chunked.decision, whole.decision, atol=1e-9)


def test_deterministic() -> None:
    X, y = activations(80, 2, 20, signal=0.2)
    settings = ProbeSettings(folds=4, seeds=(0, 1))
    first, second = probe_layers(X, y, settings), probe_layers(X, y, settings)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    assert list(first.columns) == ["layer", "seed", "fold", "metric", "value"]
    assert set(first["metric"]) == set(METRICS)


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.zeros((20, 2, 3)), np.zeros(20, dtype=int), "both binary classes"),
        (np.zeros((20, 2, 3)), np.array([0] * 17 + [1] * 3), "too few examples per class"),
        (np.zeros((20, 2, 3)), np.arange(19) % 2, "19 labels"),
        (np.full((20, 2, 3), np.nan), np.arange(20) % 2, "NaN or infinite"),
        (np.zeros((20, 3)), np.arange(20) % 2, r"\(n_examples, n_layers, d\)"),
    ],
    ids=["single-class", "few-per-class", "shape-mismatch", "non-finite", "not-3d"],
)
def test_clear_errors(X: np.ndarray, y: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        probe_layers(X, y, ProbeSettings())


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="control"):
        ProbeSettings(control="random")
    with pytest.raises(ValueError, match="folds"):
        ProbeSettings(folds=1)
    with pytest.raises(ValueError, match="C must be"):
        ProbeSettings(C=0.0)


def test_unconverged_fits_warn() -> None:
    X, y = activations(60, 1, 10, signal=0.3)
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        probe_layers(X, y, ProbeSettings(max_iter=1))


def test_summarise_curve_on_known_shapes() -> None:
    acc = np.array([0.50, 0.52, 0.55, 0.70, 0.792, 0.80, 0.795, 0.80])
    summary = summarise_curve(acc, chance=0.5)
    assert summary["best_accuracy"] == pytest.approx(0.80)
    assert summary["best_layer"] == 5
    assert summary["half_rise_layer"] == 3  # threshold 0.65
    assert summary["jump_layer"] == 3 and summary["jump_size"] == pytest.approx(0.15)
    assert summary["converging_layer"] == 4  # first >= 0.79

    flat = summarise_curve(np.linspace(0.5, 0.56, 7), chance=0.5)  # steps of 0.01 < jump_min
    assert flat["jump_layer"] is None
    assert flat["jump_size"] == pytest.approx(0.01)
    assert flat["converging_layer"] == 5
    assert summarise_curve(np.array([0.4, 0.45]), chance=0.5)["half_rise_layer"] is None  # never above chance


def tidy_from_runs(acc: np.ndarray, control: float = 0.5) -> pd.DataFrame:
    """A probe_layers-shaped frame from a (run, layer) accuracy matrix; runs are 2 seeds x 5 folds."""
    rows = []
    for run, curve in enumerate(acc):
        for layer, value in enumerate(curve):
            seed, fold = divmod(run, 5)
            rows += [
                (layer, seed, fold, "accuracy", value),
                (layer, seed, fold, "control_accuracy", control),
                (layer, seed, fold, "selectivity", value - control),
            ]
    return pd.DataFrame(rows, columns=["layer", "seed", "fold", "metric", "value"])


def test_concept_depth_bootstrap_is_seeded_and_covers_the_point_estimate() -> None:
    rng = np.random.default_rng(0)
    base = 0.5 + 0.4 / (1 + np.exp(-(np.arange(13) - 6.0)))
    tidy = tidy_from_runs(base + 0.02 * rng.standard_normal((10, 13)))
    summary = summarise_concept_depth(tidy, chance=0.5, depth=12, n_boot=200, seed=3)
    assert summary == summarise_concept_depth(tidy, chance=0.5, depth=12, n_boot=200, seed=3)
    for key in ("best_accuracy", "half_rise_layer", "jump_layer", "converging_layer"):
        assert summary[f"{key}_lo"] <= summary[key] <= summary[f"{key}_hi"], key
    for key in ("half_rise", "jump", "converging"):
        assert summary[f"{key}_depth"] == pytest.approx(summary[f"{key}_layer"] / 12)
        assert summary[f"{key}_depth_lo"] <= summary[f"{key}_depth"] <= summary[f"{key}_depth_hi"]
    assert summary["mean_control_accuracy"] == pytest.approx(0.5)
    assert summary["max_selectivity"] == pytest.approx(summary["best_accuracy"] - 0.5)
    assert summary["n_runs"] == 10


def test_concept_depth_rejects_incomplete_tables() -> None:
    tidy = tidy_from_runs(np.full((10, 4), 0.7))
    with pytest.raises(ValueError, match="same layers in every seed x fold run"):
        summarise_concept_depth(tidy.drop(index=tidy.index[-1]), chance=0.5, depth=3)


def test_concept_depth_reports_layers_of_sites_inside_blocks() -> None:
    """Sites such as mlp_out are numbered 1..L; summaries must speak in those numbers, not positions."""
    curve = np.array([0.5, 0.5, 0.9, 0.9])
    tidy = tidy_from_runs(np.tile(curve, (10, 1)))
    summary = summarise_concept_depth(tidy.assign(layer=tidy["layer"] + 1), chance=0.5, depth=4, n_boot=50)
    assert summary["converging_layer"] == summary["jump_layer"] == 3
    assert summary["converging_depth"] == pytest.approx(3 / 4)


def test_no_warnings_on_a_normal_run() -> None:
    X, y = activations(100, 2, 20, signal=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe_layers(X, y, ProbeSettings(seeds=(0,)))


def test_mdl_compresses_a_separable_concept_and_not_random_labels() -> None:
    """Online code on known answers: ~1 bit per label when the layer carries nothing, far less when it separates."""
    X, y = activations(400, 2, 20, signal=0.0)
    X[:, 1, 0] += 8.0 * (2 * y - 1)  # layer 1 separates the classes, layer 0 carries nothing
    settings = ProbeSettings(seeds=(0, 1))
    mdl = online_codelength(X, y, settings).pivot_table(index="layer", columns="metric", values="value")
    assert mdl.loc[1, "mdl_compression"] > 5 and mdl.loc[1, "mdl_codelength"] < 400 / 5
    assert 0.8 < mdl.loc[0, "mdl_compression"] < 1.05  # no signal: no better than the uniform code
    random_labels = np.random.default_rng(3).permutation(y)
    noise = online_codelength(X, random_labels, settings)
    assert noise.loc[noise["metric"] == "mdl_compression", "value"].max() < 1.05


def test_mdl_codelength_adds_up_block_by_block() -> None:
    """The first block is sent uniformly; every other label costs -log2 p under a probe fitted on what came before."""
    X, y = activations(400, 1, 6, signal=1.0)
    settings = ProbeSettings(seeds=(7,))
    got = online_codelength(X, y, settings).set_index("metric")["value"]
    order = np.random.default_rng([7, 0x3D1]).permutation(len(y))
    # Voita & Titov's fractions 0.1%, 0.2%, 0.4%, 0.8%, 1.6%, 3.2%, 6.25%, 12.5%, 25%, 50%, 100% of n = 400 are
    # 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25, 50, 100, 200, 400 examples: rounded 0, 1, 2, 3, 6, 13, 25, ..., at least 1,
    # and the repeated 1 dropped
    ends = [1, 2, 3, 6, 13, 25, 50, 100, 200, 400]
    assert mdl_boundaries(400).tolist() == ends
    assert mdl_boundaries(120).tolist() == [1, 2, 4, 8, 15, 30, 60, 120]  # 7.5 -> 8, 0.12 .. 0.96 -> 1
    expected, uniform_blocks = 0.0, 0
    for start, end in zip([0, *ends[:-1]], ends):
        seen, block = order[:start], order[start:end]
        if np.unique(y[seen]).size < 2:
            expected += end - start  # log2(2) = 1 bit per label
            uniform_blocks += 1
            continue
        scaler, model = sklearn_fit(X[seen, 0], y[seen], settings.C)
        p = model.predict_proba(scaler.transform(X[block, 0].astype(np.float64)))[np.arange(len(block)), y[block]]
        expected += -np.log2(p).sum()
    assert 1 <= uniform_blocks < 5  # both codes are exercised: the first blocks uniform, the rest by probes
    assert got["mdl_codelength"] == pytest.approx(expected, rel=1e-3)
    assert got["mdl_compression"] == pytest.approx(len(y) / expected, rel=1e-3)


def test_mdl_rows_join_the_tidy_table_when_asked() -> None:
    X, y = activations(100, 2, 8, signal=1.0)
    tidy = probe_layers(X, y, ProbeSettings(seeds=(0,), mdl=True))
    mdl = tidy[tidy["metric"].str.startswith("mdl_")]
    assert set(mdl["metric"]) == {"mdl_codelength", "mdl_compression"} and (mdl["fold"] == -1).all()
    assert (
        len(mdl) == 2 * 2 and not probe_layers(X, y, ProbeSettings(seeds=(0,)))["metric"].str.startswith("mdl_").any()
    )
