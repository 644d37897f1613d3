"""Neuron deactivation (docs/methods.md §8.4, after Liu et al. 2025): the neuron family's top-k neurons of a
layer, set to zero or to their mean, against k random neurons of the same layer with matched activations.

Neurons of one layer differ by orders of magnitude in how much they vary, and a random set of near-dead neurons
is a control that cannot fail; so each selected neuron gets a random partner of like activation mean and std, the
statistics that set how much an ablation removes.
"""

from __future__ import annotations

import numpy as np

from probes.interventions.erasure import concept_inputs

ABLATIONS = ("zero", "mean")

_MATCH_STREAM = 0xAB1A  # mixed with the caller's seed, apart from the CV, null and bootstrap streams


def top_neurons(acts: np.ndarray, y: np.ndarray, k: int, criterion: str) -> np.ndarray:
    """The k neurons (indices into acts (n, d_mlp)) that best separate the classes on all rows, best first,
    ranked as the neuron-probing family ranks them (:func:`probes.dictionaries.neurons.neuron_scores`)."""
    from probes.dictionaries.neurons import neuron_scores, ranked_neurons

    acts, y = concept_inputs(acts, y)
    if not 1 <= k <= acts.shape[1]:
        raise ValueError(f"k must be between 1 and the layer's {acts.shape[1]} neurons, got {k}")
    scores = neuron_scores(acts[:, None, :], y, np.ones(len(y), dtype=bool), criterion)[0]
    return ranked_neurons(scores)[:k]


def _statistics(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or not np.isfinite(acts).all():
        raise ValueError(f"acts must be a finite (n_examples, d_mlp) array, got shape {acts.shape}")
    return acts.mean(0), acts.std(0)


def matched_random_neurons(
    acts: np.ndarray,
    selected: np.ndarray,
    n_draws: int,
    seed: int,
    exclude: np.ndarray | None = None,
    nearest: int = 8,
) -> np.ndarray:
    """(n_draws, k) random neurons of the layer, never ``selected`` nor ``exclude``, matched one to one.

    A neuron is its activations' size (log std over the rows of acts (n, d_mlp)) and shape (mean / std), each
    in units of its median absolute deviation over the layer, so heavy tails and dead neurons do not flatten the
    rest. In each draw the selected neurons, largest first, each take at random one of the ``nearest`` free
    candidates to a target: the neuron's own std and |mean| plus what the draw still owes the selected set.
    That carry keeps the totals matched when the layer's largest neuron has no equal; a selected set with no
    equals at all (every big neuron selected or excluded) cannot be matched, so record :func:`activation_match`.
    """
    mean, std = _statistics(acts)
    selected = np.asarray(selected, dtype=np.int64)
    width, k = len(mean), len(selected)
    if selected.ndim != 1 or not k or np.unique(selected).size != k:
        raise ValueError(f"selected must be distinct neuron indices, got {selected.tolist()}")
    if n_draws < 1 or nearest < 1:
        raise ValueError(f"need n_draws >= 1 and nearest >= 1, got n_draws={n_draws}, nearest={nearest}")
    barred = np.zeros(width, dtype=bool)
    barred[selected] = True
    if exclude is not None:
        barred[np.asarray(exclude, dtype=np.int64)] = True
    candidates = np.flatnonzero(~barred)
    if len(candidates) < k:
        raise ValueError(f"only {len(candidates)} neurons are left to match {k} selected ones")

    positive = std[std > 0]
    floor = positive.min() / 2 if positive.size else 1.0  # a dead neuron sits below the least active live one
    std = np.maximum(std, floor)
    shape = mean / std  # how far the mean sits from 0: the firing pattern, apart from the size
    size_spread, shape_spread = (np.median(np.abs(v - np.median(v))) or 1.0 for v in (np.log(std), shape))

    rng = np.random.default_rng([seed, _MATCH_STREAM])
    draws = np.empty((n_draws, k), dtype=np.int64)
    for draw in range(n_draws):
        free = np.ones(len(candidates), dtype=bool)
        owed_std = owed_mean = 0.0  # what the draw still lacks against the selected neurons matched so far
        for i in np.argsort(-std[selected], kind="stable"):
            n = selected[i]
            target_std = max(std[n] + owed_std, floor)
            target_shape = np.sign(mean[n]) * max(abs(mean[n]) + owed_mean, 0.0) / target_std
            pool = candidates[free]
            distance = np.hypot(
                np.log(std[pool] / target_std) / size_spread, (shape[pool] - target_shape) / shape_spread
            )
            pick = rng.choice(np.flatnonzero(free)[np.argsort(distance, kind="stable")[:nearest]])
            free[pick] = False
            draws[draw, i] = candidates[pick]
            owed_std += std[n] - std[candidates[pick]]
            owed_mean += abs(mean[n]) - abs(mean[candidates[pick]])
    return draws


def activation_match(acts: np.ndarray, selected: np.ndarray, random: np.ndarray) -> dict:
    """How well random neurons match the selected ones: ratios (random / selected) of mean |mean| and mean std."""
    mean, std = _statistics(acts)
    selected, random = np.asarray(selected), np.asarray(random)
    return {
        "abs_mean_ratio": float(np.abs(mean[random]).mean() / np.abs(mean[selected]).mean()),
        "std_ratio": float(std[random].mean() / std[selected].mean()),
    }


def ablation_values(acts: np.ndarray, neurons: np.ndarray, kind: str) -> np.ndarray:
    """(k,) float32 values the neurons are set to: 'zero', or 'mean' (their mean activation over the rows)."""
    if kind not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {kind!r}")
    neurons = np.asarray(neurons, dtype=np.int64)
    if kind == "zero":
        return np.zeros(len(neurons), dtype=np.float32)
    return _statistics(acts)[0][neurons].astype(np.float32)
