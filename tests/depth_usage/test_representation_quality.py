"""Per-layer representation quality on known answers: entropies, curvature, InfoNCE, intervals, correlations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from probes.depth_usage.representation_quality import (
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


def orthonormal(n: int, d: int, seed: int) -> np.ndarray:
    """(n, LAYERS, d): n orthonormal vectors at every layer, in another random basis at each."""
    rng = np.random.default_rng(seed)
    return np.stack([np.linalg.qr(rng.standard_normal((d, n)))[0].T for _ in range(LAYERS)], axis=1)


def random_prompts(n: int = 10, d: int = 12, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(4, 9)), LAYERS, d)).astype(np.float32) for _ in range(n)]


def test_prompt_entropy_is_zero_for_one_direction_and_one_for_orthogonal_tokens() -> None:
    rng = np.random.default_rng(0)
    direction = rng.standard_normal((1, LAYERS, 16))
    same = direction * rng.uniform(0.5, 3.0, size=(6, 1, 1))  # one direction, any lengths
    for alpha in (0.5, 1.0, 2.0):
        np.testing.assert_allclose(prompt_entropy(same, alpha), 0.0, atol=1e-12)
        np.testing.assert_allclose(prompt_entropy(3.0 * orthonormal(6, 16, seed=1), alpha), 1.0, atol=1e-12)
        np.testing.assert_allclose(prompt_entropy(orthonormal(5, 5, seed=2), alpha), 1.0, atol=1e-12)
    assert np.isnan(prompt_entropy(direction)).all()  # one token has no spread


def test_renyi_entropies_of_a_known_spectrum_match_the_closed_forms() -> None:
    # tokens e1, e1, e2, e3: Z^T Z = diag(2, 1, 1), spectrum (1/2, 1/4, 1/4) whichever Gram is used
    spectrum = np.array([0.5, 0.25, 0.25])
    closed = {
        0.5: 2 * math.log(spectrum.__pow__(0.5).sum()),
        1.0: -(spectrum * np.log(spectrum)).sum(),
        2.0: -math.log(0.375),
    }
    for d in (3, 7):  # d < n: the d x d Gram; d > n: the n x n one
        tokens = np.zeros((4, LAYERS, d))
        for row, axis in enumerate((0, 0, 1, 2)):
            tokens[row, :, axis] = 1.0 + row  # lengths do not matter after normalising
        for alpha, entropy in closed.items():
            expected = entropy / math.log(min(4, d))
            np.testing.assert_allclose(prompt_entropy(tokens, alpha), expected, rtol=1e-12)
    padded = np.array([2.0, 1.0, 1.0, 0.0, -1e-17])  # unnormalised, with a zero and round-off
    for alpha, entropy in closed.items():
        assert renyi_entropy(padded, alpha) == pytest.approx(entropy, rel=1e-12)
    assert np.isnan(renyi_entropy(np.zeros(3), 1.0))
    with pytest.raises(ValueError, match="alpha"):
        renyi_entropy(spectrum, 0.0)


def gram_entropy(rows: np.ndarray, alpha: float, scale: int) -> np.ndarray:
    """The textbook route: entropy of the trace-normalised Gram matrix of unit rows, layer by layer."""
    z = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    out = []
    for layer in range(rows.shape[1]):
        gram = z[:, layer] @ z[:, layer].T
        out.append(renyi_entropy(np.linalg.eigvalsh(gram / np.trace(gram)), alpha) / math.log(scale))
    return np.array(out)


def test_dataset_entropy_is_the_gram_entropy_and_resample_weights_act_as_duplicated_prompts() -> None:
    rng = np.random.default_rng(3)
    for n, d in ((6, 10), (12, 4)):  # the n x n route and the d x d route
        pooled = rng.standard_normal((n, LAYERS, d)) + rng.standard_normal((1, LAYERS, d))
        for alpha in (1.0, 2.0):
            np.testing.assert_allclose(dataset_entropy(pooled, alpha), gram_entropy(pooled, alpha, min(n, d)))
        weights = bootstrap_weights(n, 5, seed=4)
        resampled = dataset_entropy(pooled, 1.0, weights)
        assert resampled.shape == (5, LAYERS)
        for b in range(5):
            duplicated = np.repeat(pooled, weights[b].astype(int), axis=0)
            np.testing.assert_allclose(resampled[b], gram_entropy(duplicated, 1.0, min(n, d)), atol=1e-12)
    with pytest.raises(ValueError, match="multiplicities"):
        dataset_entropy(pooled, 1.0, -weights)


def test_curvature_of_a_straight_path_is_zero_and_of_right_angle_turns_is_half_pi() -> None:
    rng = np.random.default_rng(5)
    start, step = rng.standard_normal((2, 1, LAYERS, 8))
    straight = start + np.arange(7)[:, None, None] * step
    np.testing.assert_allclose(curvature(straight), 0.0, atol=1e-6)
    zigzag = np.cumsum(np.tile(np.eye(8)[:2], (4, 1))[:, None, :].repeat(LAYERS, 1), axis=0)  # steps e1, e2, e1, ...
    np.testing.assert_allclose(curvature(zigzag), math.pi / 2, rtol=1e-12)
    back = np.cumsum(np.array([1.0, -1.0, 1.0, -1.0])[:, None, None] * np.ones((1, LAYERS, 8)), axis=0)
    np.testing.assert_allclose(curvature(back), math.pi, rtol=1e-7)  # reversals: the largest angle
    repeated = np.insert(zigzag, 3, zigzag[2], axis=0)  # a repeated token: a step of no length, its angles dropped
    np.testing.assert_allclose(curvature(repeated), math.pi / 2, rtol=1e-12)
    assert np.isnan(curvature(straight[:2])).all()


def test_infonce_approaches_log2_n_bits_for_separated_prompts_and_falls_below_zero_for_unrelated_pairs() -> None:
    n = 8
    clean = orthonormal(n, 16, seed=6)
    bits = (math.log(n) - infonce_losses(clean, clean, 0.1).mean(0)) / math.log(2)
    np.testing.assert_allclose(bits, math.log2(n), atol=1e-3)
    shuffled = (math.log(n) - infonce_losses(clean, np.roll(clean, 1, axis=0), 0.1).mean(0)) / math.log(2)
    assert (shuffled < -10).all()
    rng = np.random.default_rng(7)
    unrelated = infonce_losses(rng.standard_normal((64, LAYERS, 256)), rng.standard_normal((64, LAYERS, 256)), 0.1)
    assert (np.abs((math.log(64) - unrelated.mean(0)) / math.log(2)) < 0.5).all()
    with pytest.raises(ValueError, match="temperature"):
        infonce_losses(clean, clean, 0.0)


def test_quality_curves_are_seeded_share_one_resample_and_their_intervals_hold_the_point() -> None:
    prompts = random_prompts()
    prompts[3] = prompts[3][:2]  # too short for curvature: skipped there
    rng = np.random.default_rng(8)
    noised = np.stack([x.mean(0) for x in prompts]) + 0.3 * rng.standard_normal((10, LAYERS, 12))
    groups = np.repeat(np.arange(5), 2)
    first = quality_curves(prompts, noised, alpha=2.0, n_boot=200, seed=3, groups=groups)
    again = quality_curves(prompts, noised, alpha=2.0, n_boot=200, seed=3, groups=groups)
    pd.testing.assert_frame_equal(first.table, again.table)
    table = first.table
    assert list(table.columns) == [
        *("layer", "metric", "value", "lo", "hi", "n_prompts", "ci", "n_boot", "alpha", "temperature")
    ]
    assert list(table["metric"].unique()) == ["prompt_entropy", "dataset_entropy", "curvature", "infonce_bits"]
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
    reseeded = quality_curves(prompts, noised, n_boot=200, seed=4)
    assert not np.array_equal(reseeded.replicates["curvature"], first.replicates["curvature"])


def test_torch_tensors_give_the_numpy_answer_and_no_noise_means_no_invariance_rows() -> None:
    prompts = random_prompts(seed=1)
    from_numpy = quality_curves(prompts, n_boot=50)
    from_torch = quality_curves([torch.from_numpy(x) for x in prompts], n_boot=50)
    pd.testing.assert_frame_equal(from_numpy.table, from_torch.table)
    assert "infonce_bits" not in set(from_numpy.table["metric"]) and "infonce_bits" not in from_numpy.replicates


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
        "noised shape": ({"prompts": prompts, "noised_pooled": pooled[:2]}, "noised_pooled must have shape"),
        "noised non-finite": ({"prompts": prompts, "noised_pooled": infinite}, "prompt 2 at layer 1"),
        "ci": ({"prompts": prompts, "ci": 1.0}, "ci must be in"),
    }


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_input_is_refused_with_a_clear_error(case: str) -> None:
    kwargs, message = bad_inputs()[case]
    with pytest.raises(ValueError, match=message):
        quality_curves(**kwargs, n_boot=10)
