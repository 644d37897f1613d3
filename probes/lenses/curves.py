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
    "prob_full",
    "top1",
    "energy",
]


def _set_index(token_sets: Mapping[str, Sequence[Sequence[int]]], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, languages, width) token ids and their 0/1 mask, padding each set to the longest."""
    import torch

    width = max(1, max(len(ids) for sets in token_sets.values() for ids in sets))
    index = torch.zeros(n, len(token_sets), width, dtype=torch.long)
    mask = torch.zeros(n, len(token_sets), width, dtype=torch.bool)
    for j, sets in enumerate(token_sets.values()):
        for i, ids in enumerate(sets):
            index[i, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, j, : len(ids)] = True
    return index, mask


def _set_mass(probs: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n, n_languages, width = index.shape
    gathered = probs.gather(1, index.view(n, -1).to(probs.device)).view(n, n_languages, width)
    return (gathered * mask.to(probs.device)).sum(-1).cpu()


def language_curves(
    model: HookedTransformer,
    unembed: Unembed,
    tuned: TunedLens | None,
    residuals: torch.Tensor,
    token_sets: Mapping[str, Sequence[Sequence[int]]],
    full_sets: Mapping[str, Sequence[Sequence[int]]] | None = None,
) -> pd.DataFrame:
    """P(language) = summed probability of its token set, and entropy in bits, per prompt, layer and lens.

    ``residuals`` is (prompts, L+1, d_model) at the last position. ``token_sets`` are the sets counted
    (:func:`probes.lenses.vocabulary.exclusive_token_sets`); ``prob_full`` sums ``full_sets`` instead, each
    word's whole set as Wendler et al. count it (a language it lacks, such as the shared tokens, keeps
    ``prob``). ``top1`` says whether the layer's most probable token is in the set. Returns a tidy frame with
    columns (item, layer, lens, language, prob, prob_full, top1, entropy_bits), ``item`` indexing the prompts.
    """
    import torch

    n, n_layers_plus_one, _ = residuals.shape
    languages = list(token_sets)
    full = {language: (full_sets or token_sets).get(language, token_sets[language]) for language in languages}
    index, mask = _set_index(token_sets, n)
    full_index, full_mask = _set_index(full, n)
    lenses = {"logit": None} | ({"tuned": tuned} if tuned is not None else {})
    frames = []
    with torch.inference_mode():
        for name, lens in lenses.items():
            for layer, log_probs in lens_log_probs(model, unembed, lens, residuals, range(n_layers_plus_one)):
                probs = log_probs.exp()
                entropy = -(probs * log_probs).sum(-1) / math.log(2)
                top = probs.argmax(-1).cpu()
                frames.append(
                    pd.DataFrame(
                        {
                            "item": np.repeat(np.arange(n), len(languages)),
                            "layer": layer,
                            "lens": name,
                            "language": np.tile(languages, n),
                            "prob": _set_mass(probs, index, mask).float().numpy().ravel(),
                            "prob_full": _set_mass(probs, full_index, full_mask).float().numpy().ravel(),
                            "top1": ((index == top[:, None, None]) & mask).any(-1).numpy().ravel(),
                            "entropy_bits": np.repeat(entropy.float().cpu().numpy(), len(languages)),
                        }
                    )
                )
    return pd.concat(frames, ignore_index=True)


RUN_KEYS = ["model", "word_list", "task", "src", "tgt"]
# each tidy column averaged over concepts, with the keys it varies over besides the concept
_MEASURES = {
    "prob": ["lens", "layer", "language"],
    "top1": ["lens", "layer", "language"],
    "entropy_bits": ["lens", "layer"],
    "energy": ["layer"],
}


def _concept_means(group: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """Concept means of every measure for one run, as points and as bootstrap resamples over concepts.

    One set of resamples serves every measure, lens, layer and language, so a statistic computed from several
    of them (a maximum over layers, a leading language, a window's mean) is resampled consistently. Returns,
    per measure, ``columns`` (a MultiIndex of its keys), ``mean`` and ``boot`` (n_boot, columns).
    """
    concepts = np.sort(group["concept"].unique())
    weights = bootstrap_weights(len(concepts), n_boot, seed)
    out: dict[str, Any] = {"n_concepts": len(concepts)}
    for measure, keys in _MEASURES.items():
        wide = group.drop_duplicates(["concept", *keys]).set_index(["concept", *keys])[measure].unstack(keys)
        wide = wide.reindex(concepts).sort_index(axis=1).astype(float)
        if wide.isna().any().any():
            raise ValueError(f"every concept needs a {measure} at every {', '.join(keys)} to be resampled")
        values = wide.to_numpy()
        out[measure] = {"columns": wide.columns, "mean": values.mean(0), "boot": resampled_means(weights, values.T)}
    return out


def curve_intervals(curves: pd.DataFrame, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Concept means per run, lens, layer and language, each with its percentile interval (``_lo``, ``_hi``):
    P(language) (``prob``), the share of prompts whose top token is the language's (``top1``), entropy and
    energy. The intervals resample concepts, what varies between prompts of one run (docs/methods.md §3.5).
    """
    frames = []
    for key, group in curves.groupby(RUN_KEYS, sort=True):
        means = _concept_means(group, n_boot, seed)
        parts = {}
        for measure in _MEASURES:
            lo, hi = percentile_interval(means[measure]["boot"], ci)
            name = "entropy" if measure == "entropy_bits" else measure
            parts[measure] = (
                means[measure]["columns"]
                .to_frame(index=False)
                .assign(**{measure: means[measure]["mean"], f"{name}_lo": lo, f"{name}_hi": hi})
            )
        frame = (
            parts["prob"].merge(parts["top1"], on=_MEASURES["top1"]).merge(parts["entropy_bits"], on=["lens", "layer"])
        )
        frame = frame.merge(parts["energy"], on="layer")
        n_layers = int(frame["layer"].max())
        frame = frame.assign(
            **dict(zip(RUN_KEYS, key)), depth=frame["layer"] / n_layers, n_concepts=means["n_concepts"]
        )
        frames.append(frame)
    columns = [*RUN_KEYS, "lens", "layer", "depth", "language", "prob", "prob_lo", "prob_hi"]
    columns += ["entropy_bits", "entropy_lo", "entropy_hi", "top1", "top1_lo", "top1_hi"]
    columns += ["energy", "energy_lo", "energy_hi", "n_concepts"]
    return pd.concat(frames, ignore_index=True)[columns].assign(ci=ci, n_boot=n_boot)


def _curve_statistics(mean: np.ndarray, languages: Sequence[str], tgt: str) -> dict[str, np.ndarray]:
    """Summary statistics of concept-mean curves ``mean`` (..., L+1 layers, languages), NaN where undefined."""
    n_layers = mean.shape[-2] - 1
    target = languages.index(tgt)
    leader = mean.argmax(-1)  # ties go to the first language, as everywhere in the summary
    not_target = leader != target
    last_not_target = np.where(not_target.any(-1), n_layers + 1 - np.argmax(not_target[..., ::-1], -1), 0)
    takeover = np.where(leader[..., n_layers] == target, last_not_target, np.nan)
    out = {"p_target_final": mean[..., n_layers, target], "target_takeover_layer": takeover}
    if "en" in languages:
        english = mean[..., 1:n_layers, languages.index("en")]
        out["p_en_max_intermediate"] = english.max(-1)
        out["p_en_argmax_layer"] = english.argmax(-1) + 1
    layers = np.arange(n_layers + 1)
    with np.errstate(invalid="ignore"):  # NaN takeover: no layer is before it
        before = (layers >= 1) & (layers < takeover[..., None])
    totals = (mean * before[..., None]).sum(-2)
    out["top_language_before_takeover"] = np.where(before.any(-1), totals.argmax(-1), np.nan)
    return out


def leader_runs(leaders: Sequence[str], layers: Sequence[int]) -> str:
    """Which language leads at which layers, as runs: ``en 0–13, fr 14–18``."""
    runs: list[list] = []
    for layer, language in zip(layers, leaders):
        if runs and runs[-1][0] == language and runs[-1][2] == layer - 1:
            runs[-1][2] = layer
        else:
            runs.append([language, layer, layer])
    return ", ".join(f"{language} {first}" + (f"–{last}" if last > first else "") for language, first, last in runs)


def _lens_block(means: dict[str, Any], measure: str, lens: str) -> tuple[pd.MultiIndex, np.ndarray, np.ndarray]:
    """One lens's columns of a measure, with its point means and resamples."""
    columns = means[measure]["columns"]
    chosen = (columns.get_level_values("lens") == lens).nonzero()[0]
    return columns[chosen], means[measure]["mean"][chosen], means[measure]["boot"][:, chosen]


def _estimate(name: str, point: float | np.ndarray, boot: np.ndarray, ci: float) -> dict[str, float]:
    lo, hi = percentile_interval(boot, ci)
    return {name: float(point), f"{name}_lo": float(lo), f"{name}_hi": float(hi)}


def summarise_curves(curves: pd.DataFrame, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per model, pair and lens: where the target takes over and what leads before it.

    Every language's P is its exclusive token set's (:data:`probes.lenses.vocabulary.SHARED` is no language:
    ``p_shared_final`` reports it). ``p_target_final``, ``p_shared_final``, ``p_en_max_intermediate`` (layers
    1..L-1) and ``target_takeover_layer`` carry percentile intervals from resampling concepts
    (``_lo``/``_hi``); a resample where the target does not lead at the last layer has no takeover layer and
    is left out of that interval. ``top_language_before_takeover`` sums layers 1 to the takeover layer - 1
    (none when the target never takes over or leads from layer 1), and ``leaders`` lists each layer's leader.
    """
    from probes.lenses.vocabulary import SHARED

    rows = []
    for key, group in curves.groupby(RUN_KEYS, sort=True):
        means = _concept_means(group, n_boot, seed)
        tgt = key[RUN_KEYS.index("tgt")]
        for lens in means["prob"]["columns"].get_level_values("lens").unique():
            columns, point_all, boot_all = _lens_block(means, "prob", lens)
            layers = list(columns.get_level_values("layer").unique())
            all_languages = list(columns.get_level_values("language").unique())
            shape = (len(layers), len(all_languages))
            point_all, boot_all = point_all.reshape(shape), boot_all.reshape(-1, *shape)
            languages = [language for language in all_languages if language != SHARED]
            keep = [all_languages.index(language) for language in languages]
            point = _curve_statistics(point_all[:, keep], languages, tgt)
            boot = _curve_statistics(boot_all[..., keep], languages, tgt)
            if SHARED in all_languages:
                point["p_shared_final"] = point_all[-1, all_languages.index(SHARED)]
                boot["p_shared_final"] = boot_all[:, -1, all_languages.index(SHARED)]
            takeover = point["target_takeover_layer"]
            row = dict(zip(RUN_KEYS, key)) | {"lens": lens, "n_concepts": means["n_concepts"]}
            for name in ("p_target_final", "p_shared_final", "p_en_max_intermediate", "target_takeover_layer"):
                if name in point:
                    row |= _estimate(name, point[name], boot[name], ci)
            row["p_en_argmax_layer"] = int(point["p_en_argmax_layer"]) if "en" in languages else None
            before = point["top_language_before_takeover"]
            row["top_language_before_takeover"] = None if np.isnan(before) else languages[int(before)]
            row["target_takeover_layer"] = None if np.isnan(takeover) else int(takeover)
            row["leaders"] = leader_runs([languages[i] for i in point_all[:, keep].argmax(-1)], layers)
            row |= {"n_layers": len(layers) - 1, "ci": ci, "n_boot": n_boot}
            rows.append(row)
    order = [*RUN_KEYS, "lens", "n_concepts", "p_target_final", "p_target_final_lo", "p_target_final_hi"]
    order += ["p_shared_final", "p_shared_final_lo", "p_shared_final_hi"]
    order += ["p_en_max_intermediate", "p_en_max_intermediate_lo", "p_en_max_intermediate_hi", "p_en_argmax_layer"]
    order += ["top_language_before_takeover", "target_takeover_layer", "target_takeover_layer_lo"]
    order += ["target_takeover_layer_hi", "leaders", "n_layers", "ci", "n_boot"]
    frame = pd.DataFrame(rows)
    return frame[[column for column in order if column in frame.columns]]


def dual_latent_summary(
    curves: pd.DataFrame,
    related: Mapping[str, str],
    middle: Sequence[float] = (0.4, 0.8),
    min_prob: float = 0.01,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Which latent language(s) dominate the middle layers, per model, target and lens (Zhong et al. 2024).

    For each monolingual cloze run, the candidates are English, the target and its ``related`` language
    (when it has one), each with its exclusive token set. Over the layers whose relative depth lies in
    ``middle`` (both ends included; never the embedding), each candidate's P is averaged per concept:
    ``p_en``, ``p_target``, ``p_related`` and ``p_shared`` with percentile intervals over concepts. The
    ``dominant`` language has the largest window mean, and ``dominant_share`` is the share of resamples in
    which it stays the largest. The paired differences (``en_minus_target``, ``en_minus_related``,
    ``target_minus_related``) come from the same resamples. ``latent`` names the dominant language and
    every other candidate whose difference from it has an interval reaching 0, joined by ``+`` (two
    languages: a dual latent), or ``none`` when the dominant language's mean is below ``min_prob``: a
    language that holds almost no mass is no latent language, and near-zero means are all alike.
    ``leaders`` lists the leading candidate at each window layer.
    """
    from probes.lenses.vocabulary import SHARED

    rows = []
    for key, group in curves.groupby(RUN_KEYS, sort=True):
        run = dict(zip(RUN_KEYS, key))
        names = {"en": "en", "target": run["tgt"]} | ({"related": related[run["tgt"]]} if run["tgt"] in related else {})
        means = _concept_means(group, n_boot, seed)
        for lens in means["prob"]["columns"].get_level_values("lens").unique():
            columns, point, boot = _lens_block(means, "prob", lens)
            layer, language = columns.get_level_values("layer"), columns.get_level_values("language")
            n_layers = int(layer.max())
            in_window = (layer >= 1) & (layer >= middle[0] * n_layers) & (layer <= middle[1] * n_layers)
            window = sorted(set(layer[in_window]))
            if not window:
                raise ValueError(f"middle={list(middle)} holds no layer of {run['model']} ({n_layers} layers)")
            per_layer = {role: point[in_window & (language == name)] for role, name in names.items()}
            points = {role: values.mean() for role, values in per_layer.items()}
            boots = {role: boot[:, in_window & (language == name)].mean(-1) for role, name in names.items()}
            shared = in_window & (language == SHARED)
            row = run | {"lens": lens, "related": names.get("related"), "n_concepts": means["n_concepts"]}
            row |= {"window_first": window[0], "window_last": window[-1], "n_layers": n_layers}
            for role in ("en", "target", "related"):
                row |= _estimate(f"p_{role}", points[role], boots[role], ci) if role in names else {f"p_{role}": np.nan}
            row |= _estimate("p_shared", point[shared].mean(), boot[:, shared].mean(-1), ci)
            for first, second in (("en", "target"), ("en", "related"), ("target", "related")):
                if second in names:
                    row |= _estimate(
                        f"{first}_minus_{second}", points[first] - points[second], boots[first] - boots[second], ci
                    )
            roles = list(names)
            lead = roles[int(np.argmax([points[role] for role in roles]))]
            resampled = np.argmax(np.stack([boots[role] for role in roles], -1), -1)
            tied = [
                role for role in roles if role != lead and percentile_interval(boots[lead] - boots[role], ci)[0] <= 0
            ]
            row |= {"dominant": names[lead], "dominant_share": float(np.mean(resampled == roles.index(lead)))}
            row["latent"] = "+".join(names[role] for role in [lead, *tied]) if points[lead] >= min_prob else "none"
            leaders = np.stack([per_layer[role] for role in roles], -1).argmax(-1)
            row["leaders"] = leader_runs([names[roles[i]] for i in leaders], window)
            rows.append(row | {"ci": ci, "n_boot": n_boot})
    return pd.DataFrame(rows)
