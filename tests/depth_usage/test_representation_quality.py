"""Representation quality against Skean et al.'s definitions: an independent port of their formulas, hand-computed
cases, intervals and correlations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import log_softmax

from probes.depth_usage.representation_quality import (
    METRICS,
    curvature,
    curve_correlations,
    dataset_entropy,
    infonce_losses,
    prompt_entropy,
    quality_curves,
    renyi_entropy,
)
from probes.resampling import bootstrap_weights, resampled_means

LAYERS = 4


# --- The reference, ported line by line from information_flow's metric functions and repitl's matrix entropy ---
# (plain numpy, one layer at a time, nothing shared with the module under test)


def ref_normalize(rows: np.ndarray) -> np.ndarray:
    """``normalize``: subtract the mean row, divide every row by its norm."""
    rows = rows - rows.mean(axis=0)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def ref_matrix_entropy(gram: np.ndarray, alpha: float) -> float:
    """``matrixAlphaEntropy``: eigenvalues > 0, rescaled to sum 1; von Neumann at alpha = 1 (the eigenvalue route
    for every alpha, i.e. without repitl's Frobenius shortcut at alpha = 2)."""
    eigenvalues = np.linalg.eigh(gram)[0]
    p = eigenvalues[eigenvalues > 0]
    p = p / p.sum()
    if alpha == 1:
        return float(-np.sum(p * np.log(p)))
    return float(np.log(np.sum(np.exp(alpha * np.log(p)))) / (1 - alpha))


def ref_compute_entropy(hidden: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """``compute_entropy`` with the ``maxEntropy`` normalisation on (L, N, D) normalised states."""
    _, n, d = hidden.shape
    out = []
    for layer in hidden:
        cov = layer.T @ layer if n > d else layer @ layer.T
        cov = np.maximum(cov, 0)
        out.append(ref_matrix_entropy(cov / np.trace(cov), alpha) / min(math.log(n), math.log(d)))
    return np.array(out)


def ref_prompt_entropy(tokens: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """``compute_per_forward_pass``: each layer's tokens normalised, then ``compute_entropy``."""
    return ref_compute_entropy(np.stack([ref_normalize(tokens[:, l]) for l in range(tokens.shape[1])]), alpha)


def ref_dataset_entropy(pooled: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """``compute_on_concatenated_passes`` with the whole sample as one batch: pooled vectors normalised together."""
    return ref_compute_entropy(np.stack([ref_normalize(pooled[:, l]) for l in range(pooled.shape[1])]), alpha)


def ref_curvature(tokens: np.ndarray) -> np.ndarray:
    """``compute_curvature`` (``raw``) on each layer's normalised tokens."""
    out = []
    for l in range(tokens.shape[1]):
        p = ref_normalize(tokens[:, l])
        total, count = 0.0, 0
        for k in range(1, len(p) - 1):
            v_k, v_next = p[k] - p[k - 1], p[k + 1] - p[k]
            a, b = np.linalg.norm(v_next), np.linalg.norm(v_k)
            total += 0.0 if a == 0 or b == 0 else math.acos(min(max(abs(v_next @ v_k) / (a * b), -1), 1))
            count += 1
        out.append(total / count)
    return np.array(out)


def ref_infonce(view_a: np.ndarray, view_b: np.ndarray, temperature: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``compute_infonce`` on each layer's normalised pooled views: (``raw``, ``mi-lower-bound``)."""
    raw = []
    for l in range(view_a.shape[1]):
        logits = ref_normalize(view_a[:, l]) @ ref_normalize(view_b[:, l]).T
        raw.append(-np.mean(np.diag(log_softmax(logits / temperature, axis=1))))
    raw = np.array(raw)
    return raw, 1 - raw / math.log(len(view_a))


# --- helpers ---


def orthonormal(n: int, d: int, seed: int) -> np.ndarray:
    """(n, LAYERS, d): n orthonormal vectors at every layer, in another random basis at each."""
    rng = np.random.default_rng(seed)
    return np.stack([np.linalg.qr(rng.standard_normal((d, n)))[0].T for _ in range(LAYERS)], axis=1)


def in_a_plane(points: np.ndarray, d: int = 8, seed: int = 0) -> np.ndarray:
    """(n, LAYERS, d): 2-D ``points`` placed in a random plane of R^d at each layer, scaled and shifted."""
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(LAYERS):
        plane = np.linalg.qr(rng.standard_normal((d, 2)))[0].T
        layers.append(rng.uniform(0.5, 3.0) * points @ plane + rng.standard_normal(d))
    return np.stack(layers, axis=1)


def polygon(sides: int, laps: int = 1) -> np.ndarray:
    """The vertices of a regular polygon in order, ``laps`` times round: mean 0, unit norm, every turn 2 pi / sides."""
    angles = 2 * np.pi * np.arange(sides * laps) / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def random_prompts(n: int = 10, d: int = 12, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(4, 9)), LAYERS, d)).astype(np.float32) for _ in range(n)]


# --- against the reference ---


@pytest.mark.parametrize(("n", "d"), [(5, 12), (10, 6)], ids=["n<d: Z Z^T clamped", "n>d: Z^T Z clamped"])
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_prompt_and_dataset_entropy_equal_the_references_on_both_gram_branches(n, d, alpha) -> None:
    rng = np.random.default_rng(n * d)
    tokens = rng.standard_normal((n, LAYERS, d)) + rng.standard_normal((1, LAYERS, d))
    np.testing.assert_allclose(prompt_entropy(tokens, alpha), ref_prompt_entropy(tokens, alpha), atol=1e-10)
    np.testing.assert_allclose(dataset_entropy(tokens, alpha), ref_dataset_entropy(tokens, alpha), atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_dataset_entropy_resamples_equal_the_reference_on_the_duplicated_sample(seed) -> None:
    rng = np.random.default_rng(seed)
    for n, d in ((6, 10), (12, 4)):  # the n x n route (through the Gram matrix) and the d x d route
        pooled = 3 * rng.standard_normal((n, LAYERS, d)) + rng.standard_normal((1, LAYERS, d))
        weights = bootstrap_weights(n, 6, seed=seed)
        resampled = dataset_entropy(pooled, 1.0, weights)
        assert resampled.shape == (6, LAYERS)
        for b in range(6):
            duplicated = np.repeat(pooled, weights[b].astype(int), axis=0)  # centred on the resample's own mean
            np.testing.assert_allclose(resampled[b], ref_dataset_entropy(duplicated), atol=1e-9)
    with pytest.raises(ValueError, match="multiplicities"):
        dataset_entropy(pooled, 1.0, -weights)


def test_curvature_equals_the_reference_on_random_prompts() -> None:
    rng = np.random.default_rng(3)
    for n, d in ((8, 16), (9, 5)):
        tokens = rng.standard_normal((n, LAYERS, d))
        np.testing.assert_allclose(curvature(tokens), ref_curvature(tokens), atol=1e-12)
    repeated = np.repeat(rng.standard_normal((5, LAYERS, 6)), 2, axis=0)  # steps of no length count 0
    np.testing.assert_allclose(curvature(repeated), ref_curvature(repeated), atol=1e-12)


def test_infonce_equals_the_references_raw_loss_and_mi_lower_bound() -> None:
    rng = np.random.default_rng(4)
    a = rng.standard_normal((12, LAYERS, 20)) + 2.0
    b = a + 0.8 * rng.standard_normal((12, LAYERS, 20))
    raw, bound = ref_infonce(a, b, 0.1)
    losses = infonce_losses(a, b, 0.1)
    np.testing.assert_allclose(losses.mean(0), raw, atol=1e-10)
    curves = quality_curves(list(a[:, None].repeat(3, 1)), (a, b), n_boot=20)
    table = curves.table.set_index("metric").loc["infonce_mi_lower_bound"]
    np.testing.assert_allclose(table["value"], bound, atol=1e-10)


# --- hand-computed cases ---


def test_orthonormal_tokens_have_entropy_one_because_the_clamp_removes_the_centred_cosines() -> None:
    # Centred, n orthonormal tokens have cosines -1/(n-1) between them: clamped to 0, K = I / n and H = log n.
    # Without the clamp the centred Gram matrix has rank n - 1: log(n - 1) / log n.
    n = 6
    np.testing.assert_allclose(prompt_entropy(3.0 * orthonormal(n, 16, seed=1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(prompt_entropy(orthonormal(n, n, seed=2)), 1.0, atol=1e-12)
    assert math.log(n - 1) / math.log(n) < 0.9  # what an unclamped Gram matrix would give


def test_collinear_tokens_split_into_two_directions_and_have_entropy_one_half() -> None:
    # Tokens at 1, 2, 3, 4 along one direction centre to -1.5, -0.5, 0.5, 1.5: unit rows -u, -u, u, u; the
    # clamped Gram matrix is two all-ones blocks, spectrum (1/2, 1/2): log 2 / log 4.
    rng = np.random.default_rng(5)
    direction, offset = rng.standard_normal((2, 1, LAYERS, 16))
    tokens = offset + np.arange(1.0, 5.0)[:, None, None] * direction
    for alpha in (0.5, 1.0, 2.0):
        np.testing.assert_allclose(prompt_entropy(tokens, alpha), 0.5, atol=1e-12)
    assert np.isnan(prompt_entropy(np.repeat(direction, 4, axis=0))).all()  # all tokens at their mean
    assert np.isnan(prompt_entropy(direction)).all()  # one token has no spread


def test_renyi_entropies_of_a_known_spectrum_match_the_closed_forms() -> None:
    spectrum = np.array([0.5, 0.25, 0.25])
    closed = {
        0.5: 2 * math.log(np.sqrt(spectrum).sum()),
        1.0: -(spectrum * np.log(spectrum)).sum(),
        2.0: -math.log(0.375),
    }
    padded = np.array([2.0, 1.0, 1.0, 0.0, -0.3])  # unnormalised, with a zero and a negative eigenvalue
    for alpha, entropy in closed.items():
        assert renyi_entropy(padded, alpha) == pytest.approx(entropy, rel=1e-12)
    assert np.isnan(renyi_entropy(np.zeros(3), 1.0))
    with pytest.raises(ValueError, match="alpha"):
        renyi_entropy(spectrum, 0.0)


@pytest.mark.parametrize(
    ("sides", "laps", "angle"),
    [(4, 2, math.pi / 2), (6, 1, math.pi / 3), (3, 1, math.pi / 3), (3, 3, math.pi / 3)],
    ids=["square: right angles", "hexagon: 60 degrees", "triangle: 120 degrees folds to 60", "triangle thrice"],
)
def test_curvature_of_a_regular_polygon_is_its_turning_angle_folded_into_zero_to_half_pi(sides, laps, angle) -> None:
    np.testing.assert_allclose(curvature(in_a_plane(polygon(sides, laps))), angle, atol=1e-7)


def test_a_reversal_or_a_straight_path_has_curvature_zero() -> None:
    back_and_forth = in_a_plane(np.array([[1.0, 0.0], [-1.0, 0.0]] * 4))  # every step reverses the last
    np.testing.assert_allclose(curvature(back_and_forth), 0.0, atol=1e-7)
    # Normalised, a straight path collapses onto two points, -u and u (exactly, along an axis): its steps are
    # zero but one, and pairs with a zero step count 0.
    straight = np.arange(6.0)[:, None, None] * np.eye(8)[0] + np.zeros((1, LAYERS, 1))
    np.testing.assert_array_equal(curvature(straight), 0.0)
    assert np.isnan(curvature(straight[:5])).all()  # an odd count: the middle token is the mean, with no direction
    assert np.isnan(curvature(straight[:2])).all()


def test_infonce_identifies_identical_views_and_is_at_chance_for_unrelated_ones() -> None:
    n = 8
    views = 5.0 + orthonormal(n, 16, seed=7)
    bound = 1 - infonce_losses(views, views, 0.1).mean(0) / math.log(n)
    np.testing.assert_allclose(bound, 1.0, atol=1e-3)  # off-diagonal cosines -1/7: loss ~ 7 exp(-80/7)
    shuffled = 1 - infonce_losses(views, np.roll(views, 1, axis=0), 0.1).mean(0) / math.log(n)
    assert (shuffled < -3).all()
    rng = np.random.default_rng(8)
    unrelated = infonce_losses(rng.standard_normal((64, LAYERS, 256)), rng.standard_normal((64, LAYERS, 256)), 0.1)
    assert (np.abs(1 - unrelated.mean(0) / math.log(64)) < 0.15).all()
    with pytest.raises(ValueError, match="temperature"):
        infonce_losses(views, views, 0.0)


# --- intervals, correlations and input checks ---


def pooled_views(prompts: list[np.ndarray], seed: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pooled = np.stack([x.mean(0) for x in prompts])
    return tuple(pooled + 0.3 * rng.standard_normal(pooled.shape) for _ in range(2))


def test_quality_curves_are_seeded_share_one_resample_and_their_intervals_hold_the_point() -> None:
    prompts = random_prompts()
    prompts[3] = prompts[3][:2]  # too short for curvature: skipped there
    views = pooled_views(prompts)
    groups = np.repeat(np.arange(5), 2)
    first = quality_curves(prompts, views, alpha=2.0, n_boot=200, seed=3, groups=groups)
    again = quality_curves(prompts, views, alpha=2.0, n_boot=200, seed=3, groups=groups)
    pd.testing.assert_frame_equal(first.table, again.table)
    table = first.table
    assert list(table.columns) == [
        *("layer", "metric", "value", "lo", "hi", "n_prompts", "ci", "n_boot", "alpha", "temperature")
    ]
    assert tuple(table["metric"].unique()) == METRICS
    assert len(table) == 4 * LAYERS and (table["alpha"] == 2.0).all() and (table["n_boot"] == 200).all()
    counts = table.groupby("metric")["n_prompts"].unique()
    assert list(counts["curvature"]) == [9] and list(counts["prompt_entropy"]) == [10]
    for name, replicates in first.replicates.items():
        assert replicates.shape == (200, LAYERS)
        np.testing.assert_array_equal(replicates, again.replicates[name])
    assert (table["lo"] <= table["value"]).all() and (table["value"] <= table["hi"]).all()
    weights = bootstrap_weights(10, 200, 3, groups)  # every metric drawn from these resamples
    per_prompt = np.stack([prompt_entropy(x, 2.0) for x in prompts])
    np.testing.assert_allclose(first.replicates["prompt_entropy"], resampled_means(weights, per_prompt.T))
    pooled = np.stack([x.astype(np.float64).mean(0) for x in prompts])
    resampled = dataset_entropy(pooled, 2.0, weights)  # centred on the point: the resamples' low bias removed
    expected = resampled - resampled.mean(0) + dataset_entropy(pooled, 2.0)
    np.testing.assert_allclose(first.replicates["dataset_entropy"], expected)
    losses = infonce_losses(*views, 0.1)  # each loss keeps all 10 prompts as negatives
    expected = 1 - resampled_means(weights, losses.T) / math.log(10)
    np.testing.assert_allclose(first.replicates["infonce_mi_lower_bound"], expected)
    reseeded = quality_curves(prompts, views, n_boot=200, seed=4)
    assert not np.array_equal(reseeded.replicates["curvature"], first.replicates["curvature"])


def test_torch_tensors_give_the_numpy_answer_and_no_views_means_no_infonce_rows() -> None:
    prompts = random_prompts(seed=1)
    from_numpy = quality_curves(prompts, n_boot=50)
    from_torch = quality_curves([torch.from_numpy(x) for x in prompts], n_boot=50)
    pd.testing.assert_frame_equal(from_numpy.table, from_torch.table)
    assert "infonce_mi_lower_bound" not in set(from_numpy.table["metric"])
    assert "infonce_mi_lower_bound" not in from_numpy.replicates


def test_curve_correlations_are_one_for_equal_rankings_minus_one_for_reversed_and_nan_for_flat_curves() -> None:
    quality = quality_curves(random_prompts(seed=2), n_boot=100)
    point = quality.table[quality.table["metric"] == "curvature"]["value"].to_numpy()
    replicates = quality.replicates["curvature"]
    accuracy = {
        "same": (0.5 + 0.1 * np.arctan(point), 0.5 + 0.1 * np.arctan(replicates)),
        "reversed": (-point, -replicates[:60]),  # fewer replicates: the first 60 pairs
        "flat": (np.full(LAYERS, 0.5), np.full((100, LAYERS), 0.5)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = curve_correlations(quality, accuracy).set_index(["metric", "task"])
    assert list(table.columns) == ["spearman", "lo", "hi", "n_layers", "ci"]
    assert len(table) == 3 * 3 and (table["n_layers"] == LAYERS).all()
    assert tuple(table.loc[("curvature", "same"), ["spearman", "lo", "hi"]]) == pytest.approx((1.0, 1.0, 1.0))
    assert tuple(table.loc[("curvature", "reversed"), ["spearman", "lo", "hi"]]) == pytest.approx((-1.0, -1.0, -1.0))
    assert table.xs("flat", level="task")[["spearman", "lo", "hi"]].isna().all().all()
    with pytest.raises(ValueError, match="same"):
        curve_correlations(quality, {"same": (point[:-1], replicates[:, :-1])})


def bad_inputs() -> dict[str, tuple[dict, str]]:
    prompts = random_prompts(n=3)
    poisoned = [x.copy() for x in prompts]
    poisoned[1][0, 2, 5] = np.nan
    pooled = np.stack([x.mean(0) for x in prompts])
    infinite = pooled.copy()
    infinite[2, 1, 0] = np.inf
    return {
        "layers differ": ({"prompts": [prompts[0], prompts[1][:, :-1]]}, "prompt 1 has"),
        "one prompt": ({"prompts": prompts[:1]}, "at least 2 prompts"),
        "not 3-D": ({"prompts": [prompts[0], prompts[1][:, 0]]}, "prompt 1 must be"),
        "non-finite prompt": ({"prompts": poisoned}, "prompt 1 has non-finite values at layer 2"),
        "alpha": ({"prompts": prompts, "alpha": 0.0}, "alpha must be > 0"),
        "temperature": ({"prompts": prompts, "temperature": -1.0}, "temperature must be > 0"),
        "view shape": ({"prompts": prompts, "views": (pooled, pooled[:2])}, "view 1 must have shape"),
        "view non-finite": ({"prompts": prompts, "views": (infinite, pooled)}, "view 0 has .* prompt 2 at layer 1"),
        "ci": ({"prompts": prompts, "ci": 1.0}, "ci must be in"),
    }


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_input_is_refused_with_a_clear_error(case: str) -> None:
    kwargs, message = bad_inputs()[case]
    with pytest.raises(ValueError, match=message):
        quality_curves(**kwargs, n_boot=10)
