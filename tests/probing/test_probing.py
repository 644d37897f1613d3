"""The batched probe solver against scikit-learn, the CV protocol, and the concept-depth summaries."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from probes.probing.depth import summarise_predictions
from probes.probing.protocol import METRICS, control_labels, cv_splits, null_labels, probe_layers, type_dependence
from probes.probing.settings import ProbeSettings
from probes.probing.solver import fit_probes

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
    fit = fit_probes(X, labels, train, settings.solver)
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


def test_weighted_fit_matches_sklearn_sample_weight() -> None:
    """Row weights (a bootstrap resample's multiplicities, zero for rows left out) are scikit-learn's sample_weight,
    in the scaler as in the regression."""
    X, y = activations(120, 2, 10, signal=0.3)
    weights = np.random.default_rng(2).multinomial(120, np.full(120, 1 / 120))[None].astype(np.float64)
    fit = fit_probes(X, y[None], weights, TIGHT.solver)
    assert fit.converged.all()
    for layer in range(2):
        X64 = X[:, layer].astype(np.float64)
        scaler = StandardScaler().fit(X64, sample_weight=weights[0])
        model = LogisticRegression(C=TIGHT.C, tol=1e-10, max_iter=10000)
        model.fit(scaler.transform(X64), y, sample_weight=weights[0])
        np.testing.assert_allclose(fit.coef[layer, 0], model.coef_[0], atol=1e-6)
        np.testing.assert_allclose(fit.decision[layer, 0], model.decision_function(scaler.transform(X64)), atol=1e-5)


def test_probe_layers_reproduces_the_sklearn_protocol() -> None:
    """Same folds, control labels and metrics as a plain scikit-learn loop (converged to the same optimum)."""
    X, y = activations(90, 2, 15, signal=0.15)
    types = np.arange(90) % 9
    settings = ProbeSettings(folds=3, seeds=(0, 4), C=0.5, tol=1e-10, max_iter=5000, dtype="float64", control="type")
    result = probe_layers(X, y, settings, types=types)
    assert len(result.metrics) == 2 * 2 * 3 * len(METRICS)
    got = result.metrics.set_index(["layer", "seed", "fold", "metric"])["value"]
    oof = result.predictions.set_index(["layer", "seed", "example"])
    for seed in settings.seeds:
        splits = StratifiedKFold(3, shuffle=True, random_state=seed).split(np.zeros((len(y), 1)), y)
        for fold, (train, test) in enumerate(splits):
            for layer in range(2):
                for prefix, target in (("", y), ("control_", control_labels(y, seed, types))):
                    scaler, model = sklearn_fit(X[train, layer], target[train], settings.C)
                    scores = model.decision_function(scaler.transform(X[test, layer].astype(np.float64)))
                    pred = (scores > 0).astype(int)
                    expected = {
                        "accuracy": np.mean(pred == target[test]),
                        "f1": f1_score(target[test], pred),
                        "roc_auc": roc_auc_score(target[test], scores),
                    }
                    for metric, value in expected.items():
                        if prefix and metric != "accuracy":
                            continue
                        assert got[(layer, seed, fold, prefix + metric)] == pytest.approx(value, abs=1e-12)
                    column = "control_decision" if prefix else "decision"
                    kept = oof.loc[[(layer, seed, i) for i in test], column].to_numpy()
                    np.testing.assert_allclose(kept, scores, atol=1e-5)  # the out-of-fold predictions
            selectivity = got[(layer, seed, fold, "accuracy")] - got[(layer, seed, fold, "control_accuracy")]
            assert got[(layer, seed, fold, "selectivity")] == pytest.approx(selectivity)


def test_accuracy_tracks_signal() -> None:
    X, y = activations(200, 3, 30, signal=0.0)
    X[:, 2, 0] += 6.0 * (2 * y - 1)  # layer 2 separable, layers 0-1 carry no signal
    settings = ProbeSettings(seeds=(0, 1, 2), mdl=False, refits=0)
    tidy = probe_layers(X, y, settings, progress=True).metrics
    means = tidy.groupby(["metric", "layer"])["value"].mean()
    assert means[("accuracy", 2)] > 0.97
    assert means[("roc_auc", 2)] > 0.99
    assert abs(means[("accuracy", 0)] - 0.5) < 0.1


def test_random_labels_give_chance_accuracy() -> None:
    X, _ = activations(200, 2, 30, signal=0.0)
    y = np.random.default_rng(5).permutation(np.arange(200) % 2)
    tidy = probe_layers(X, y, ProbeSettings(seeds=(0,))).metrics
    accuracy = tidy[tidy["metric"] == "accuracy"]["value"].mean()
    assert abs(accuracy - 0.5) < 0.1


def test_layer_chunks_give_the_same_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A memory budget of one layer per chunk (as for large models) must not change any number."""
    import probes.probing.solver

    X, y = activations(80, 3, 20, signal=0.2)
    labels, train = np.stack([y, 1 - y]), np.stack([np.arange(80) % 4 != 0] * 2)
    whole = fit_probes(X, labels, train, TIGHT.solver)
    monkeypatch.setattr(probes.probing.solver, "_MEMORY_BUDGET", 1)
    chunked = fit_probes(X, labels, train, TIGHT.solver)
    np.testing.assert_allclose(chunked.coef, whole.coef, atol=1e-9)
    np.testing.assert_allclose(chunked.decision, whole.decision, atol=1e-9)


def test_problems_at_their_own_C_and_tolerance_share_one_solve() -> None:
    """A grid of C and mixed tolerances in one call equal scikit-learn at each problem's C, although the
    loosely converged and the heavily regularised problems leave the batch long before the rest."""
    X, y = activations(120, 3, 25, signal=0.3)
    rng = np.random.default_rng(2)
    grid = np.array([0.001, 0.01, 0.1, 1.0, 10.0])
    labels = np.stack([y] * len(grid) + [rng.permutation(y)])
    train = rng.random(labels.shape) < 0.75
    C = np.append(grid, 1.0)
    tol = np.array([1e-10] * len(grid) + [1e-3])
    fit = fit_probes(X, labels, train, TIGHT.solver, C=C, tol=tol)
    assert fit.converged.all() and (fit.n_iter[:, -1] < fit.n_iter[:, len(grid) - 1]).all()
    for layer in range(3):
        for p, c in enumerate(grid):
            tr = train[p]
            scaler, model = sklearn_fit(X[tr, layer], labels[p, tr], c)
            scale = max(1.0, np.abs(model.coef_).max())
            np.testing.assert_allclose(fit.coef[layer, p], model.coef_[0], atol=1e-6 * scale)
            reference = model.decision_function(scaler.transform(X[:, layer].astype(np.float64)))
            np.testing.assert_allclose(fit.decision[layer, p], reference, atol=1e-5 * scale)
    alone = fit_probes(X, labels[:1], train[:1], TIGHT.solver, C=C[:1])
    np.testing.assert_allclose(fit.decision[:, :1], alone.decision, atol=1e-7)
    with pytest.raises(ValueError, match="C must hold one positive number per problem"):
        fit_probes(X, labels, train, TIGHT.solver, C=np.zeros(len(C)))


def test_deterministic() -> None:
    X, y = activations(80, 2, 20, signal=0.2)
    types = np.arange(80) % 8
    settings = ProbeSettings(folds=4, seeds=(0, 1), control="type", refits=3)
    first, second = (probe_layers(X, y, settings, types=types) for _ in range(2))
    for name in ("metrics", "predictions", "null", "refits"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name), check_exact=True)
    assert list(first.metrics.columns) == ["layer", "seed", "fold", "metric", "value"]
    assert set(first.metrics["metric"]) == set(METRICS)
    assert len(first.predictions) == 2 * 2 * 80 and len(first.null) == 2 * settings.null_permutations


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
    with pytest.raises(ValueError, match="null_permutations"):
        ProbeSettings(null_permutations=-1)
    X, y = activations(40, 1, 4, signal=0.3)
    with pytest.raises(ValueError, match="needs a dataset type column"):
        probe_layers(X, y, ProbeSettings(control="type"))


def test_unconverged_fits_warn() -> None:
    X, y = activations(60, 1, 10, signal=0.3)
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        probe_layers(X, y, ProbeSettings(max_iter=1))


def test_no_warnings_on_a_normal_run() -> None:
    X, y = activations(100, 2, 20, signal=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe_layers(X, y, ProbeSettings(seeds=(0,)))


def memorisable_types(n: int = 240, n_types: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's type written into its activations (one direction per type), labels independent of the types."""
    rng = np.random.default_rng(seed)
    types = np.arange(n) % n_types
    y = rng.permutation(np.arange(n) % 2)
    X = rng.standard_normal((n, 2, n_types)).astype(np.float32)
    X[:, 1] += 8.0 * np.eye(n_types, dtype=np.float32)[types]  # layer 1 spells out the type; layer 0 does not
    return X, y, types


def test_the_type_control_rises_where_types_can_be_memorised() -> None:
    """Hewitt & Liang: a probe that can read the type scores above chance on held-out rows of seen types, so the
    control can fail."""
    X, y, types = memorisable_types()
    typed = probe_layers(X, y, ProbeSettings(seeds=(0,), null_permutations=0, control="type"), types=types)
    assert typed.control == "type" and typed.type_dependence < 0.05

    def mean(result, metric, layer):
        rows = result.metrics
        return rows[(rows["metric"] == metric) & (rows["layer"] == layer)]["value"].mean()

    assert mean(typed, "control_accuracy", 1) > 0.9  # memorised types generalise to held-out rows
    assert abs(mean(typed, "control_accuracy", 0) - 0.5) < 0.12  # nothing to memorise at layer 0
    assert mean(typed, "control_train_accuracy", 1) > 0.95
    assert mean(typed, "selectivity", 1) < -0.3  # the task is at chance: memorising types is not reading labels
    with pytest.warns(RuntimeWarning, match="every type sits in a single group"):
        probe_layers(X, y, ProbeSettings(seeds=(0,), null_permutations=0, control="type"), groups=types, types=types)
    labels = control_labels(y, 0, types)
    assert all(np.unique(labels[types == t]).size == 1 for t in range(24))  # one label per type
    assert labels.mean() == 0.5  # half the (equal-sized) types each class


def test_auto_picks_the_control_that_fits_the_design() -> None:
    """The type control where the labels follow the types (memorising a type could solve the task), the shortcut
    baselines where every type holds both labels; the type control's classes are balanced on rows."""
    X, y, types = memorisable_types()
    balanced = probe_layers(X, y, ProbeSettings(seeds=(0,), null_permutations=0, refits=0), types=types)
    assert balanced.control == "shortcut" and "control_decision" not in balanced.predictions
    assert set(balanced.metrics["metric"]) == {"accuracy", "f1", "roc_auc"} and balanced.control_chance is None
    following = (types % 2 == 0).astype(np.int64)
    following[:12] = 1 - following[:12]  # mostly a function of the type
    typed = probe_layers(X, following, ProbeSettings(seeds=(0,), null_permutations=0, refits=0), types=types)
    assert typed.control == "type" and 0.5 < typed.type_dependence < 1
    sizes = np.repeat(np.arange(6), [90, 50, 40, 30, 20, 10])  # unequal types: balance rows, not types
    labels = control_labels(np.zeros(240), 3, sizes)
    assert abs(labels.mean() - 0.5) <= 10 / 240
    assert type_dependence(np.tile([0, 1], 12), np.repeat(np.arange(12), 2)) == 0
    assert type_dependence(np.repeat([0, 1], 12), np.repeat(np.arange(12), 2)) == 1


def test_grouped_folds_keep_groups_together_and_the_null_keeps_each_groups_label_mix() -> None:
    y = np.tile([0, 1], 30)  # 30 minimal pairs: one of each label
    groups = np.repeat(np.arange(30), 2)
    for _, _, train in cv_splits(y, ProbeSettings(seeds=(0, 1)), groups):
        assert not set(groups[train]) & set(groups[~train])
    permuted = null_labels(y, 3, 0, groups)
    assert (np.bincount(groups, weights=permuted) == 1).all() and not np.array_equal(permuted, y)
    constant = np.repeat(np.arange(30) % 2, 2)  # a label constant within each group stays constant
    moved = null_labels(constant, 3, 0, groups)
    assert all(np.unique(moved[groups == g]).size == 1 for g in range(30))
    with pytest.raises(ValueError, match="3 groups cannot fill 5"):
        cv_splits(y[:6], ProbeSettings(), groups[:6])


def test_the_permutation_null_calls_signal_decodable_and_noise_not() -> None:
    X, y = activations(160, 4, 12, signal=0.0)
    flat = probe_layers(X, y, ProbeSettings(seeds=(0,)))
    X[:, 3, 0] += 3.0 * (2 * y - 1)
    signal = probe_layers(X, y, ProbeSettings(seeds=(0,)))
    chance = 0.5
    verdicts = [summarise_predictions(r.predictions, r.null, chance, depth=3, n_boot=100).row for r in (flat, signal)]
    assert not verdicts[0]["decodable"] and verdicts[0]["half_rise_layer"] is None
    assert verdicts[0]["undecodable_reason"].startswith("best accuracy")
    assert verdicts[1]["decodable"] and verdicts[1]["null_p_value"] == pytest.approx(1 / 20)


def test_online_codes_send_the_task_row_by_row_in_every_order_beside_its_groups_and_the_type_control() -> None:
    from probes.probing.mdl import online_code
    from probes.probing.protocol import control_labels, online_codes

    X, y = activations(120, 2, 6, signal=0.4)
    groups, types = np.arange(120) // 2, np.arange(120) % 12
    settings = ProbeSettings(seeds=(3, 4), null_permutations=0, mdl=True, mdl_orders=3)
    result = probe_layers(X, y, settings, groups=groups)
    assert set(result.mdl["code"]) == {"task", "task_grouped"}  # no types: no control code
    codes = online_codes(X, y, settings, groups, types)
    assert codes.groupby("code")["order"].nunique().to_dict() == {"control": 3, "task": 3, "task_grouped": 1}
    task = codes[codes["code"] == "task"].pivot_table("bits", ["layer", "example"], "order")
    expected = online_code(X, y, ProbeSettings(seeds=(3, 4, 5)), groups=groups, whole_groups=False)  # orders 3, 4, 5
    np.testing.assert_allclose(task.to_numpy().reshape(2, 120, 3), expected.bits.transpose(0, 2, 1))
    grouped = online_code(X, y, ProbeSettings(seeds=(3,)), groups=groups).bits[:, 0]
    np.testing.assert_allclose(codes[codes["code"] == "task_grouped"]["bits"].to_numpy().reshape(2, 120), grouped)
    control = online_code(
        X, control_labels(y, 3, types), ProbeSettings(seeds=(3, 4, 5)), groups=groups, whole_groups=False
    )
    np.testing.assert_allclose(
        codes[codes["code"] == "control"].pivot_table("bits", ["layer", "example"], "order").to_numpy(),
        control.bits.transpose(0, 2, 1).reshape(240, 3),
    )
    assert probe_layers(X, y, replace(settings, mdl=False)).mdl is None


def test_refits_draw_rows_and_fit_them_again_on_folds_of_their_own() -> None:
    X, y = activations(120, 2, 6, signal=0.4)
    settings = ProbeSettings(null_permutations=0, mdl=False, refits=3)
    result = probe_layers(X, y, settings)
    refits = result.refits
    assert set(refits["replicate"]) == {0, 1, 2} and set(refits["layer"]) == {0, 1}
    drawn = refits[refits["layer"] == 0].groupby("replicate")["weight"]
    assert (drawn.sum() == 120).all() and (drawn.count() < 100).all()  # n draws, with repeats
    merged = refits.merge(result.predictions, on=["layer", "example"], suffixes=("", "_full"))
    assert not np.allclose(merged["decision"], merged["decision_full"], atol=1e-3)  # new fits, not the full ones
    again = probe_layers(X, y, settings).refits
    pd.testing.assert_frame_equal(refits, again)
    assert probe_layers(X, y, replace(settings, refits=0)).refits.empty


def test_refitting_widens_the_bands_at_chance_as_much_as_cross_validation_varies_there() -> None:
    """At chance, cross-validated accuracy varies from sample to sample about 1.4 times as much as its examples
    alone say (benchmarks/validate_intervals.py: SD 0.035 against 0.025 at n = 400): refitting must widen the
    fixed-probe bands by about that, neither leave them nor double them."""
    X, y = activations(200, 6, 16, signal=0.0)
    result = probe_layers(X, y, ProbeSettings(null_permutations=0, mdl=False, refits=20))
    summary = summarise_predictions(result.predictions, result.null, 0.5, depth=5, refits=result.refits, n_boot=400)
    fixed = summarise_predictions(result.predictions, result.null, 0.5, depth=5, n_boot=400)
    curves = (summary.curves, fixed.curves)
    widened, held = (frame.query("metric == 'accuracy'").eval("hi - lo").to_numpy() for frame in curves)
    assert 1.15 < (widened / held).mean() < 1.6, widened / held
    assert summary.row["refits"] == 20 and fixed.row["refits"] == 0 and fixed.row["fitting_inflation"] == 1
    X[:, 5, 0] += 1.1 * (2 * y - 1)  # accuracy 0.99 next to chance layers: widened, its band would pass 1
    near = probe_layers(X, y, ProbeSettings(null_permutations=0, mdl=False, refits=20))
    bands = summarise_predictions(near.predictions, near.null, 0.5, 5, near.refits, n_boot=400).curves
    assert bands.query("metric == 'accuracy' and layer == 5")["hi"].item() == 1.0
    assert bands.query("metric in ('accuracy', 'f1', 'roc_auc')")[["lo", "hi"]].stack().between(0, 1).all()
