"""The intervention fits without a model: LEACE against its closed form, the size-matched random control,
steering directions, matched random neurons and the paired effect interval's coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.interventions.deactivation import (
    ablation_values,
    activation_match,
    matched_random_neurons,
    top_neurons,
)
from probes.interventions.effects import paired_effect
from probes.interventions.erasure import LEACE_SETTINGS, fit_eraser, random_eraser
from probes.interventions.steering import mean_difference, probe_direction, random_directions, residual_norm
from probes.probing.solver import SolverSettings
from probes.resampling import bootstrap_weights


def planted_shift(
    n: int, d: int, seed: int, shift: float = 3.0, anisotropy: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian rows of log-normal axis scales whose class 1 is moved along a random unit direction, returned too."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(0, anisotropy, d))
    mixing = np.linalg.qr(rng.standard_normal((d, d)))[0] * scales
    y = np.arange(n) % 2
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    X = rng.standard_normal((n, d)) @ mixing.T + 5.0 + shift * np.median(scales) * y[:, None] * direction
    return X, y, direction


def closed_form_leace(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x' = mu + P (x - mu), P = I - W+ P_(W Sigma_xz) W, W = Sigma^(-1/2), from Bessel-corrected moments."""
    mu = X.mean(0)
    centred = X - mu
    sigma = centred.T @ centred / (len(X) - 1)
    sigma_xz = centred.T @ (y - y.mean()) / (len(X) - 1)
    values, vectors = np.linalg.eigh(sigma)
    W = vectors @ np.diag(values**-0.5) @ vectors.T
    W_pinv = vectors @ np.diag(values**0.5) @ vectors.T
    m = W @ sigma_xz
    P = np.eye(len(mu)) - W_pinv @ np.outer(m, m) / (m @ m) @ W
    return mu + centred @ P.T


def test_leace_matches_its_closed_form_and_guards_the_fitting_rows():
    from concept_erasure import LeaceFitter
    from sklearn.linear_model import LogisticRegression

    X, y, _ = planted_shift(400, 16, seed=0)
    x = torch.as_tensor(X)
    exact = LeaceFitter.fit(x, torch.as_tensor(y, dtype=torch.float64), **{**LEACE_SETTINGS, "shrinkage": False})
    np.testing.assert_allclose(exact.eraser(x).numpy(), closed_form_leace(X, y), atol=1e-6, rtol=0)

    eraser = fit_eraser(X, y)
    erased = eraser(x).numpy()
    assert eraser.rank == 1 and eraser.eraser.proj_left.dtype == torch.float32
    gap = np.linalg.norm(erased[y == 1].mean(0) - erased[y == 0].mean(0))
    assert gap < 1e-5 * np.linalg.norm(X[y == 1].mean(0) - X[y == 0].mean(0))
    assert eraser.edit_size == pytest.approx(np.linalg.norm(X - erased, axis=1).mean(), rel=1e-5)
    clean = LogisticRegression(max_iter=5000).fit(X, y).score(X, y)
    after = LogisticRegression(max_iter=5000).fit(erased, y).score(erased, y)
    assert clean >= 0.95 and after <= 0.6


def test_eraser_keeps_the_dtype_and_shape_of_what_it_edits():
    X, y, _ = planted_shift(200, 16, seed=1)
    eraser = fit_eraser(X, y)
    x = torch.as_tensor(X[:12], dtype=torch.float32).reshape(3, 4, 16)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        out = eraser(x.to(dtype))
        assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_allclose(eraser(x).reshape(12, 16).numpy(), eraser(torch.as_tensor(X[:12])).numpy(), atol=1e-4)


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.ones((6, 3)), np.zeros(6), "both binary classes"),
        (np.full((6, 3), np.nan), np.arange(6) % 2, "NaN"),
        (np.ones((6, 3)), np.arange(5) % 2, "6 examples but y has 5"),
        (np.ones((6, 3, 2)), np.arange(6) % 2, r"\(n_examples, d\)"),
    ],
)
def test_erasure_refuses_unusable_inputs_saying_why(X, y, message):
    with pytest.raises(ValueError, match=message):
        fit_eraser(X, y)


def test_random_control_has_the_real_rank_and_size_but_another_direction():
    X, y, _ = planted_shift(400, 64, seed=2, shift=2.0, anisotropy=0.3)
    real = fit_eraser(X, y)
    cosines = []
    for target in (real.edit_size, real.edit_size / 2):  # the second is a size a random direction rarely has
        for seed in range(3):
            control, ratio = random_eraser(X, target, seed=seed)
            assert control.rank == 1 and 1 / 1.25 <= ratio <= 1.25
            assert control.edit_size / target == pytest.approx(ratio)
            edits = real.eraser.proj_left[:, 0], control.eraser.proj_left[:, 0]
            cosines.append(abs(float(torch.nn.functional.cosine_similarity(*edits, dim=0))))
    again, ratio_again = random_eraser(X, target, seed=2)
    assert ratio_again == ratio and torch.equal(again.eraser.proj_right, control.eraser.proj_right)
    assert np.mean(cosines) < 0.35  # about 1/sqrt(64) for a random direction; 1 for the real one


def test_steering_directions_recover_what_was_planted_and_match_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    n, d = 2000, 8
    variances = np.geomspace(0.05, 20.0, d)
    shift = np.full(d, 0.5)
    y = np.arange(n) % 2
    X = rng.standard_normal((n, d)) * np.sqrt(variances) + y[:, None] * shift + 10.0
    discriminant = shift / variances  # the Bayes normal of two Gaussians of equal covariance

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    by_means = mean_difference(X, y)
    before = X.copy()
    by_probe = probe_direction(X, y, SolverSettings(tol=1e-8, dtype="float64"))
    np.testing.assert_array_equal(X, before)  # the solver standardises float64 input in place: not the caller's
    assert np.linalg.norm(by_means) == pytest.approx(1) and np.linalg.norm(by_probe) == pytest.approx(1)
    assert cos(by_means, shift) > 0.9 and cos(by_probe, discriminant) > 0.9
    assert cos(by_means, by_probe) < 0.8  # anisotropy makes them different directions

    scaler = StandardScaler().fit(X)
    logistic = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(scaler.transform(X), y)
    assert cos(by_probe, logistic.coef_[0] / scaler.scale_) > 0.999


def test_residual_norm_and_random_directions():
    X = np.array([[3.0, 4.0], [0.0, 1.0]])
    assert residual_norm(X) == pytest.approx(3.0)
    directions = random_directions(64, 500, seed=4)
    assert directions.shape == (500, 64)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
    np.testing.assert_array_equal(directions, random_directions(64, 500, seed=4))
    assert np.abs(directions.mean(0)).max() < 0.03  # isotropic: no preferred direction


def heavy_tailed_layer(n: int = 400, width: int = 512, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """GELU-like neurons of log-normal scale and random bias (some near dead); 32 of them also follow the label."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    scale = np.exp(rng.normal(0, 1.0, width))
    bias = rng.normal(-0.5, 1.0, width)
    signal = np.zeros(width)
    signal[rng.choice(width, 32, replace=False)] = rng.uniform(0.5, 1.5, 32)
    pre = rng.standard_normal((n, width)) + bias + y[:, None] * signal
    acts = scale * np.where(pre > 0, pre, 0.05 * pre)
    return acts, y


def test_matched_random_neurons_are_new_deterministic_and_alike():
    acts, y = heavy_tailed_layer()
    selected = top_neurons(acts, y, 16, "f_statistic")
    exclude = top_neurons(acts, y, 64, "f_statistic")
    draws = matched_random_neurons(acts, selected, n_draws=4, seed=6, exclude=exclude)
    assert draws.shape == (4, 16)
    assert not np.isin(draws, exclude).any()
    assert all(np.unique(draw).size == 16 for draw in draws)
    np.testing.assert_array_equal(draws, matched_random_neurons(acts, selected, n_draws=4, seed=6, exclude=exclude))
    assert (draws[0] != draws[1]).any()
    for draw in draws:
        match = activation_match(acts, selected, draw)
        assert 0.8 <= match["abs_mean_ratio"] <= 1.25 and 0.8 <= match["std_ratio"] <= 1.25, match
    rng, pool = np.random.default_rng(6), np.setdiff1d(np.arange(512), exclude)
    unmatched = [activation_match(acts, selected, rng.choice(pool, 16, replace=False)) for _ in range(200)]
    alike = np.mean([all(0.8 <= ratio <= 1.25 for ratio in match.values()) for match in unmatched])
    assert alike < 0.25  # what matching is for: unmatched random sets rarely write as much


def test_ablation_values_are_zero_or_the_mean():
    acts = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    np.testing.assert_array_equal(ablation_values(acts, [2, 0], "zero"), np.zeros(2, dtype=np.float32))
    assert ablation_values(acts, [2, 0], "mean").tolist() == [4.0, 2.0]
    with pytest.raises(ValueError, match="ablation"):
        ablation_values(acts, [0], "resample")


def test_paired_effect_interval_covers_the_true_difference_at_its_level():
    rng = np.random.default_rng(12)
    n, n_boot, replicates, truth = 160, 400, 400, 0.3
    row = rng.normal(0, 3.0, (replicates, n))  # shared by both sides of a row: only a paired interval is tight
    real = row + truth + rng.normal(0, 1.0, (replicates, n))
    control = row[:, None] + rng.normal(0, 1.0, (replicates, 2, n))
    covered = 0
    for i in range(replicates):
        weights = bootstrap_weights(n, n_boot, seed=i)
        result = paired_effect(real[i], control[i], weights, ci=0.95)
        assert result["effect"] == pytest.approx(real[i].mean() - control[i].mean())
        covered += result["effect_lo"] <= truth <= result["effect_hi"]
    assert result["n"] == n and result["effect"] == pytest.approx(result["real"] - result["control"])
    assert 0.92 <= covered / replicates <= 0.98
