"""Layer maps on known answers: a model onto itself, two depths of one computation, noise, a planted leak."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from probes.depth_usage.layer_maps import fit_layer_maps, summarise_layer_maps


@pytest.fixture(autouse=True)
def one_blas_thread():
    """The test machine's 2 cores are shared: BLAS threads waiting for a busy core make small fits 50x slower."""
    with threadpool_limits(1, user_api="blas"):
        yield


def random_walk(n: int = 120, slots: int = 5, d: int = 8, seed: int = 0) -> np.ndarray:
    """Layers that each add noise to the last, so every layer predicts its neighbours, none as well as itself."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((n, slots, d))
    steps[:, 1:] *= 0.5
    return np.cumsum(steps, axis=1).astype(np.float32)


def trajectory_models(slots: tuple[int, int], dims: tuple[int, int], n: int = 200, seed: int = 0) -> dict:
    """Two models computing one latent trajectory at their own depths: component m peaks at relative depth
    m / 5, a layer reads the components near its depth through its model's random basis, plus noise."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 6, 2))
    centres = np.linspace(0, 1, 6)
    models = {}
    for name, count, d in zip(("shallow", "deep"), slots, dims):
        basis = rng.standard_normal((latent[0].size, d))
        layers = []
        for depth in np.linspace(0, 1, count):
            weight = np.exp(-((depth - centres) ** 2) / (2 * 0.15**2))
            layers.append((latent * weight[:, None]).reshape(n, -1) @ basis + 0.3 * rng.standard_normal((n, d)))
        models[name] = np.stack(layers, 1).astype(np.float32)
    return models


def between(r2: pd.DataFrame, source: str, target: str) -> pd.DataFrame:
    return r2[(r2["source_model"] == source) & (r2["target_model"] == target)]


def test_a_model_mapped_onto_itself_is_best_predicted_by_the_same_layer() -> None:
    walk = random_walk()
    walk[:, :, 0] = 3.0  # a constant dimension is dropped by the standardisation, not blown up
    r2, best, diagonal = summarise_layer_maps(fit_layer_maps({"m": walk}, np.arange(120), progress=False), n_boot=200)
    same = r2["source_layer"] == r2["target_layer"]
    assert (r2.loc[same, "r2"] > 0.99).all()
    assert (r2.loc[~same, "r2"] < 0.97).all() and (r2.loc[~same, "r2"] > 0.3).all()
    np.testing.assert_array_equal(best["best_layer"], best["source_layer"])
    assert (best["offset"] == 0).all() and (best["offset_lo"] == 0).all() and (best["offset_hi"] == 0).all()
    assert diagonal.empty  # the offset summary compares different models only


def test_models_of_different_depths_map_best_at_the_same_relative_depth() -> None:
    models = trajectory_models((7, 13), (12, 16))
    r2, best, diagonal = summarise_layer_maps(fit_layer_maps(models, np.arange(200), progress=False), n_boot=300)
    assert len(r2) == 20 * 20 and set(diagonal["source_model"]) == {"shallow", "deep"}
    for row in diagonal.itertuples():
        depth = np.linspace(0, 1, row.n_layers)
        assert row.chance_abs_offset == pytest.approx(np.mean((depth**2 + (1 - depth) ** 2) / 2))
        assert row.lo <= row.mean_abs_offset <= row.hi < 0.1 < row.chance_abs_offset / 3
    across = best[best["source_model"] != best["target_model"]]
    assert (across["offset"].abs() <= 0.17).all() and (across["best_r2"] > 0.8).all()
    assert across["best_depth"].between(across["best_depth_lo"], across["best_depth_hi"]).all()
    np.testing.assert_allclose(across["offset"], across["best_depth"] - across["source_depth"])


def test_unrelated_targets_are_not_predicted() -> None:
    rng = np.random.default_rng(1)
    vectors = {"a": rng.standard_normal((200, 3, 10)), "b": rng.standard_normal((200, 3, 6))}
    r2, _, _ = summarise_layer_maps(fit_layer_maps(vectors, np.arange(200), progress=False), n_boot=300)
    across = r2[r2["source_model"] != r2["target_model"]]
    # a little below 0: the held-out texts are scored against the training mean, itself an estimate
    assert (across["r2"].abs() < 0.03).all() and (across["r2_lo"] < 0).all()
    assert (across["alpha"] >= 10).all()  # GCV shrinks a map from noise hard


def test_a_constant_layer_predicts_nothing_and_is_never_the_best_target() -> None:
    walk = random_walk(n=60, slots=4, d=5)
    walk[:, 2] = 1.5
    r2, best, _ = summarise_layer_maps(fit_layer_maps({"m": walk}, np.arange(60), progress=False), n_boot=100)
    assert r2.loc[r2["target_layer"] == 2, "r2"].isna().all()  # no variance to explain
    from_constant = r2[(r2["source_layer"] == 2) & (r2["target_layer"] != 2)]
    assert np.isfinite(from_constant["r2"]).all() and (from_constant["r2"] <= 0).all()
    assert (best.loc[best["source_layer"] != 2, "best_layer"] != 2).all()


def test_texts_sharing_a_group_never_straddle_the_folds() -> None:
    rng = np.random.default_rng(2)
    twins = {
        "a": np.repeat(rng.standard_normal((60, 2, 200)), 2, 0),
        "b": np.repeat(rng.standard_normal((60, 2, 4)), 2, 0),
    }
    pairs = np.repeat(np.arange(60), 2)
    grouped, _, _ = summarise_layer_maps(fit_layer_maps(twins, pairs, progress=False), n_boot=100)
    leaked, _, _ = summarise_layer_maps(fit_layer_maps(twins, np.arange(120), progress=False), n_boot=100)
    assert (between(grouped, "a", "b")["r2"] < 0.05).all()
    assert (between(leaked, "a", "b")["r2"] > 0.5).all()  # a twin in the training fold gives the noise away


def test_held_out_errors_are_those_of_a_direct_ridge_under_the_same_folds() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((60, 2, 5))
    b = a[:, :, :4] @ rng.standard_normal((4, 7)) + 0.5 * rng.standard_normal((60, 2, 7))
    groups, alphas = np.repeat(np.arange(30), 2), (0.01, 0.1, 1.0, 10.0)
    maps = fit_layer_maps({"a": a, "b": b}, groups, folds=3, alphas=alphas, seed=4, progress=False)
    layers = [a[:, 0], a[:, 1], b[:, 0], b[:, 1]]
    expected, chosen = np.zeros((60, 16)), np.zeros((3, 16))
    for fold, (train, test) in enumerate(GroupKFold(3, shuffle=True, random_state=4).split(a, groups=groups)):
        z = [(x - x[train].mean(0)) / x[train].std(0) for x in layers]
        for source, x in enumerate(z):
            gram = x[train].T @ x[train]
            scale = np.trace(gram) / min(len(train) - 1, x.shape[1])  # the mean non-zero eigenvalue
            for target, y in enumerate(z):
                gcv = []
                for alpha in alphas:
                    hat = x[train] @ np.linalg.solve(gram + alpha * scale * np.eye(len(gram)), x[train].T)
                    residual = y[train] - hat @ y[train]
                    gcv.append((residual**2).sum() / (len(train) - 1 - np.trace(hat)) ** 2)
                alpha = alphas[int(np.argmin(gcv))]
                weights = np.linalg.solve(gram + alpha * scale * np.eye(len(gram)), x[train].T @ y[train])
                expected[test, source * 4 + target] = ((x[test] @ weights - y[test]) ** 2).sum(1)
                chosen[fold, source * 4 + target] = alpha
    np.testing.assert_allclose(maps.sse, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(maps.pairs["alpha"], np.median(chosen, 0))


def test_fit_and_summary_are_seeded() -> None:
    models = {"m": random_walk(n=60, slots=3, d=4)}
    groups = np.repeat(np.arange(30), 2)
    first, again = (fit_layer_maps(models, groups, folds=3, seed=5, progress=False) for _ in range(2))
    pd.testing.assert_frame_equal(first.pairs, again.pairs)
    np.testing.assert_array_equal(first.sse, again.sse)
    np.testing.assert_array_equal(first.sst, again.sst)
    for frame, other in zip(
        summarise_layer_maps(first, n_boot=100, seed=6), summarise_layer_maps(again, n_boot=100, seed=6)
    ):
        pd.testing.assert_frame_equal(frame, other)
    r2 = summarise_layer_maps(first, n_boot=100, seed=6)[0]
    assert list(r2.columns[-7:]) == ["r2", "r2_lo", "r2_hi", "n_texts", "n_groups", "ci", "n_boot"]
    assert (r2["n_texts"] == 60).all() and (r2["n_groups"] == 30).all()
    assert not np.array_equal(fit_layer_maps(models, groups, folds=3, seed=7, progress=False).sse, first.sse)


@pytest.mark.parametrize(
    ("vectors", "groups", "options", "message"),
    [
        ({"a": np.zeros((10, 3, 4)), "b": np.zeros((9, 3, 4))}, np.arange(10), {}, "different numbers of texts"),
        ({"a": np.zeros((10, 3, 4))}, np.arange(9), {}, "one label per text"),
        ({"a": np.zeros((10, 3, 4))}, np.repeat(np.arange(2), 5), {}, "2 groups cannot fill 5"),
        ({"a": np.zeros((1, 3, 4))}, np.arange(1), {}, "at least 2 texts"),
        ({"a": np.zeros((2, 3, 4))}, np.arange(2), {"folds": 2}, "training fold under 2 texts"),
        ({"a": np.zeros((10, 4))}, np.arange(10), {}, "n_layers"),
        ({"a": np.zeros((10, 3, 4))}, np.arange(10), {"alphas": (1.0, 0.0)}, "positive"),
    ],
)
def test_bad_inputs_are_refused_with_clear_errors(
    vectors: dict, groups: np.ndarray, options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fit_layer_maps(vectors, groups, progress=False, **options)


def test_non_finite_vectors_are_named_by_model_and_layer() -> None:
    vectors = random_walk(n=20, slots=4, d=3).astype(np.float64)
    vectors[7, 2, 1] = np.inf
    with pytest.raises(ValueError, match=r"m: non-finite vectors at layer\(s\) \[2\]"):
        fit_layer_maps({"m": vectors}, np.arange(20), progress=False)
