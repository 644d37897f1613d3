"""Latent-language curves: the probability each layer's lens gives each language's spelling of a concept, and
their summaries with intervals over concepts (docs/methods.md §3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from probes.lenses.tuned import lens_log_probs
from probes.resampling import bootstrap_weights, percentile_interval, resampled_means

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer
    from tuned_lens.nn.lenses import TunedLens
    from tuned_lens.nn.unembed import Unembed


CURVE_COLUMNS = [
    "model",
    "word_list",
    "task",
    "src",
    "tgt",
    "concept",
    "layer",
    "depth",
    "lens",
    "language",
    "prob",
    "entropy_bits",
]


def language_curves(
    model: HookedTransformer,
    unembed: Unembed,
    tuned: TunedLens | None,
    residuals: torch.Tensor,
    token_sets: Mapping[str, Sequence[Sequence[int]]],
) -> pd.DataFrame:
    """P(language) = summed probability of its token set, and entropy in bits, per prompt, layer and lens.

    ``residuals`` is (prompts, L+1, d_model) at the last position; returns a tidy frame with columns
    (item, layer, lens, language, prob, entropy_bits), ``item`` indexing the prompts.
    """
    import torch

    n, n_layers_plus_one, _ = residuals.shape
    languages = list(token_sets)
    width = max(1, max(len(ids) for sets in token_sets.values() for ids in sets))
    index = torch.zeros(n, len(languages), width, dtype=torch.long)
    mask = torch.zeros(n, len(languages), width)
    for j, language in enumerate(languages):
        for i, ids in enumerate(token_sets[language]):
            index[i, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, j, : len(ids)] = 1.0
    lenses = {"logit": None} | ({"tuned": tuned} if tuned is not None else {})
    frames = []
    with torch.inference_mode():
        for name, lens in lenses.items():
            for layer, log_probs in lens_log_probs(model, unembed, lens, residuals, range(n_layers_plus_one)):
                probs = log_probs.exp()
                entropy = -(probs * log_probs).sum(-1) / math.log(2)
                gathered = probs.gather(1, index.view(n, -1).to(probs.device)).view(n, len(languages), width)
                mass = (gathered * mask.to(probs.device)).sum(-1).cpu()
                frames.append(
                    pd.DataFrame(
                        {
                            "item": np.repeat(np.arange(n), len(languages)),
                            "layer": layer,
                            "lens": name,
                            "language": np.tile(languages, n),
                            "prob": mass.float().numpy().ravel(),
                            "entropy_bits": np.repeat(entropy.float().cpu().numpy(), len(languages)),
                        }
                    )
                )
    return pd.concat(frames, ignore_index=True)


RUN_KEYS = ["model", "word_list", "task", "src", "tgt"]


def _concept_means(group: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """Concept-mean P(language) and entropy for one run, as points and as bootstrap resamples over concepts.

    One set of resamples serves every lens, layer and language, so a statistic computed from several of
    them (a maximum over layers, a leading language) is resampled consistently.
    """
    prob = group.set_index(["concept", "lens", "layer", "language"])["prob"].unstack(["lens", "layer", "language"])
    prob = prob.sort_index(axis=0).sort_index(axis=1)
    entropy = group.drop_duplicates(["concept", "lens", "layer"]).set_index(["concept", "lens", "layer"])
    entropy = entropy["entropy_bits"].unstack(["lens", "layer"]).reindex(prob.index).sort_index(axis=1)
    if prob.isna().any().any() or entropy.isna().any().any():
        raise ValueError("every concept needs a value at every lens, layer and language to be resampled")
    weights = bootstrap_weights(len(prob), n_boot, seed)
    return {
        "n_concepts": len(prob),
        "prob_columns": prob.columns,
        "prob": prob.to_numpy().mean(0),
        "prob_boot": resampled_means(weights, prob.to_numpy().T),
        "entropy_columns": entropy.columns,
        "entropy": entropy.to_numpy().mean(0),
        "entropy_boot": resampled_means(weights, entropy.to_numpy().T),
    }


def curve_intervals(curves: pd.DataFrame, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean P(language) and entropy over concepts per run, lens, layer and language, with percentile intervals.

    The intervals resample concepts, what varies between prompts of one run (docs/methods.md §3.5).
    """
    frames = []
    for key, group in curves.groupby(RUN_KEYS, sort=True):
        means = _concept_means(group, n_boot, seed)
        lo, hi = percentile_interval(means["prob_boot"], ci)
        frame = means["prob_columns"].to_frame(index=False)
        frame = frame.assign(prob=means["prob"], prob_lo=lo, prob_hi=hi)
        lo, hi = percentile_interval(means["entropy_boot"], ci)
        entropy = means["entropy_columns"].to_frame(index=False)
        entropy = entropy.assign(entropy_bits=means["entropy"], entropy_lo=lo, entropy_hi=hi)
        frame = frame.merge(entropy, on=["lens", "layer"])
        n_layers = int(frame["layer"].max())
        frame = frame.assign(
            **dict(zip(RUN_KEYS, key)), depth=frame["layer"] / n_layers, n_concepts=means["n_concepts"]
        )
        frames.append(frame)
    columns = [*RUN_KEYS, "lens", "layer", "depth", "language", "prob", "prob_lo", "prob_hi"]
    columns += ["entropy_bits", "entropy_lo", "entropy_hi", "n_concepts"]
    return pd.concat(frames, ignore_index=True)[columns].assign(ci=ci, n_boot=n_boot)


def _curve_statistics(mean: np.ndarray, languages: Sequence[str], tgt: str) -> dict[str, np.ndarray]:
    """Summary statistics of concept-mean curves ``mean`` (..., L+1 layers, languages), NaN where undefined."""
    n_layers = mean.shape[-2] - 1
    target = languages.index(tgt)
    intermediate = mean[..., 1:n_layers, :]
    leader = mean.argmax(-1)  # ties go to the first language, as everywhere in the summary
    not_target = leader != target
    last_not_target = np.where(not_target.any(-1), n_layers + 1 - np.argmax(not_target[..., ::-1], -1), 0)
    takeover = np.where(leader[..., n_layers] == target, last_not_target, np.nan)
    out = {"p_target_final": mean[..., n_layers, target], "target_takeover_layer": takeover}
    if "en" in languages:
        english = intermediate[..., languages.index("en")]
        out["p_en_max_intermediate"] = english.max(-1)
        out["p_en_argmax_layer"] = english.argmax(-1) + 1
    out["top_intermediate_language"] = intermediate.sum(-2).argmax(-1)
    return out


def summarise_curves(curves: pd.DataFrame, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per model, pair and lens: where the target takes over and what dominates before it.

    ``p_target_final``, ``p_en_max_intermediate`` and ``target_takeover_layer`` carry percentile
    intervals from resampling concepts (``_lo``/``_hi``); a resample where the target does not lead at
    the last layer has no takeover layer and is left out of that interval.
    """
    rows = []
    for key, group in curves.groupby(RUN_KEYS, sort=True):
        means = _concept_means(group, n_boot, seed)
        columns = means["prob_columns"]
        tgt = key[RUN_KEYS.index("tgt")]
        for lens in columns.get_level_values("lens").unique():
            in_lens = (columns.get_level_values("lens") == lens).nonzero()[0]
            layers = columns[in_lens].get_level_values("layer").unique()
            languages = list(columns[in_lens].get_level_values("language").unique())
            shape = (len(layers), len(languages))
            point = _curve_statistics(means["prob"][in_lens].reshape(shape), languages, tgt)
            boot = _curve_statistics(means["prob_boot"][:, in_lens].reshape(-1, *shape), languages, tgt)
            takeover = point["target_takeover_layer"]
            row = dict(zip(RUN_KEYS, key)) | {"lens": lens, "n_concepts": means["n_concepts"]}
            row["p_target_final"] = float(point["p_target_final"])
            for name in ("p_en_max_intermediate", "p_target_final", "target_takeover_layer"):
                if name in point:
                    lo, hi = percentile_interval(boot[name], ci)
                    row |= {f"{name}_lo": float(lo), f"{name}_hi": float(hi)}
            row["p_en_max_intermediate"] = float(point["p_en_max_intermediate"]) if "en" in languages else np.nan
            row["p_en_argmax_layer"] = int(point["p_en_argmax_layer"]) if "en" in languages else None
            row["top_intermediate_language"] = languages[int(point["top_intermediate_language"])]
            row["target_takeover_layer"] = None if np.isnan(takeover) else int(takeover)
            row |= {"n_layers": len(layers) - 1, "ci": ci, "n_boot": n_boot}
            rows.append(row)
    order = [*RUN_KEYS, "lens", "n_concepts", "p_target_final", "p_target_final_lo", "p_target_final_hi"]
    order += ["p_en_max_intermediate", "p_en_max_intermediate_lo", "p_en_max_intermediate_hi", "p_en_argmax_layer"]
    order += ["top_intermediate_language", "target_takeover_layer", "target_takeover_layer_lo"]
    order += ["target_takeover_layer_hi", "n_layers", "ci", "n_boot"]
    frame = pd.DataFrame(rows)
    return frame[[column for column in order if column in frame.columns]]
