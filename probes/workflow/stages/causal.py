"""Stage functions of workflow/rules/causal.smk: is what a probe finds used? (docs/methods.md §8)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from probes.io import write_parquet
from probes.workflow.stages import save_figure, shared_model, write_table

log = logging.getLogger(__name__)


@dataclass
class _Task:
    """One task's rows: the split, the stored read-position vectors, and (where extracted) its MLP neurons."""

    name: str
    texts: list[str]
    y: np.ndarray
    groups: np.ndarray | None
    vectors: np.ndarray  # (n, stored layers, d)
    layers: list[int]
    selection: np.ndarray
    evaluation: np.ndarray
    neurons: np.ndarray | None  # (n, L, d_mlp)
    readout: Any

    def at(self, layer: int, rows: np.ndarray) -> np.ndarray:
        return self.vectors[rows, self.layers.index(layer)]

    def eval_groups(self) -> np.ndarray | None:
        return None if self.groups is None else self.groups[self.evaluation]


def evaluation_rows(y: np.ndarray, groups: np.ndarray | None, n_eval: int, seed: int) -> np.ndarray:
    """The rows that go through the model: about ``n_eval`` of them (at most half), whole groups, classes balanced."""
    from probes.interventions.readout import threshold_folds

    parts = max(2, round(len(y) / n_eval))
    return np.flatnonzero(threshold_folds(y, groups, parts, seed) == 0)


def _load_task(name, dataset, columns, tensors, mlp, pooling, settings, configured_readout, seed) -> _Task:
    from probes.activations.storage import load_activations
    from probes.datasets.concepts import load_dataset
    from probes.dictionaries.neurons import load_mlp_activations
    from probes.interventions.readout import task_readout

    stored = load_activations(tensors, pooling)
    texts = load_dataset(dataset, **columns).texts
    if len(texts) != len(stored.labels):
        raise ValueError(f"{tensors}: {len(stored.labels)} rows, but {dataset} has {len(texts)}; re-extract it")
    if not np.isfinite(stored.vectors).all():
        raise ValueError(f"{tensors}: non-finite activations; the causal checks cannot fit on them")
    evaluation = evaluation_rows(stored.labels, stored.groups, settings.n_eval, seed)
    selection = np.setdiff1d(np.arange(len(texts)), evaluation)
    neurons = load_mlp_activations(mlp, "mlp_post", pooling) if mlp else None
    return _Task(
        name,
        list(texts),
        stored.labels,
        stored.groups,
        stored.vectors,
        list(stored.layers),
        selection,
        evaluation,
        neurons,
        task_readout(name, configured_readout),
    )


def _probe_layers(task_layers: list[int], layer: int, n: int) -> list[int]:
    """``n`` stored layers from ``layer`` to the last, evenly spaced, both ends kept."""
    later = [candidate for candidate in task_layers if candidate >= layer]
    picks = np.unique(np.linspace(0, len(later) - 1, min(n, len(later))).round().astype(int))
    return [later[i] for i in picks]


def _probe_correct(
    task: _Task, layers: list[int], variants: list[np.ndarray], fold_of, solver
) -> dict[str, np.ndarray]:
    """Per evaluation row, whether probes are right after each variant of the vectors (each (n_eval, J, d)):
    ``transfer``, the clean probe fitted on the selection rows, and ``relearnt``, a probe cross-fitted within
    the evaluation rows on the variant itself. Returns (variants, J, n_eval) 0/1 arrays."""
    from probes.probing.solver import fit_probes

    n_sel, n_eval, n_layers = len(task.selection), len(task.evaluation), len(layers)
    clean_selection = task.vectors[task.selection][:, [task.layers.index(layer) for layer in layers]]
    stacked = np.concatenate(
        [np.concatenate([clean_selection, variant], 0) for variant in variants], 1
    )  # (n_sel + n_eval, V*J, d)
    labels = np.concatenate([task.y[task.selection], task.y[task.evaluation]])[None]
    train = (np.arange(n_sel + n_eval) < n_sel)[None].astype(float)
    fit = fit_probes(stacked, labels, train, solver)
    y_eval = task.y[task.evaluation]
    transfer = ((fit.decision[:, 0, n_sel:] > 0) == (y_eval == 1)).astype(float)
    within = np.concatenate(variants, 1)  # (n_eval, V*J, d)
    folds = np.unique(fold_of)
    masks = np.stack([fold_of != fold for fold in folds]).astype(float)
    fit = fit_probes(within, np.repeat(y_eval[None], len(folds), 0), masks, solver)
    relearnt = np.empty((within.shape[1], n_eval))
    for p, fold in enumerate(folds):
        held = fold_of == fold
        relearnt[:, held] = (fit.decision[:, p, held] > 0) == (y_eval[held] == 1)
    shape = (len(variants), n_layers, n_eval)
    return {"transfer": transfer.reshape(shape), "relearnt": relearnt.reshape(shape)}


def causal_checks(
    manifest: str | os.PathLike,
    tensors: Sequence[str | os.PathLike],
    mlp: Sequence[str | os.PathLike],
    datasets: Sequence[str | os.PathLike],
    corpus: Sequence[str | os.PathLike],
    corpus_datasets: Sequence[str | os.PathLike],
    readout: str | os.PathLike,
    effects: str | os.PathLike,
    probes: str | os.PathLike,
    fits: str | os.PathLike,
    rows: str | os.PathLike,
    model: str,
    tasks: Sequence[str],
    dataset_columns: Sequence[dict],
    corpus_columns: Sequence[dict],
    readouts: Sequence[dict | None],
    settings: dict,
    probe_settings: dict,
    corpus_settings: dict,
    pooling: str = "last",
    max_tokens: int = 512,
    hf_dataset: dict | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``causal_checks`` rule: behavioural readout, LEACE erasure, steering and neuron deactivation of one
    model on every task, each against its control, with paired bootstrap intervals (docs/methods.md §8)."""
    import torch
    from tqdm.auto import tqdm

    from probes.activations.token_cache import TokenCacheSettings, tokenised_corpus
    from probes.depth_usage.contributions import corpus_windows, measured_positions
    from probes.interventions import deactivation as neurons
    from probes.interventions import steering
    from probes.interventions.editing import CorpusCost, Edit, neuron_hook
    from probes.interventions.effects import paired_effect
    from probes.interventions.erasure import LEACE_SETTINGS, fit_eraser, random_eraser
    from probes.interventions.readout import (
        crossfit_correct,
        readout_skill,
        threshold_folds,
    )
    from probes.interventions.settings import CausalSettings
    from probes.probing.settings import ProbeSettings
    from probes.resampling import bootstrap_weights
    from probes.workflow.stages.sae import corpus_texts

    settings = CausalSettings(**{key: tuple(v) if isinstance(v, list) else v for key, v in settings.items()})
    solver = ProbeSettings(**probe_settings).solver
    torch.manual_seed(seed)
    hooked = shared_model(manifest, device=settings.device, dtype=settings.dtype)
    n_layers = hooked.cfg.n_layers
    layers = settings.layers(n_layers)
    neuron_layers = settings.layers(n_layers, settings.deactivation_depths)
    loaded = [
        _load_task(name, dataset, columns, tensor, mlp[i] if mlp else None, pooling, settings, configured, seed)
        for i, (name, dataset, columns, tensor, configured) in enumerate(
            zip(tasks, datasets, dataset_columns, tensors, readouts, strict=True)
        )
    ]
    for task in loaded:
        missing = sorted(set(layers) - set(task.layers))
        if missing:
            raise ValueError(f"{task.name}: layers {missing} were not extracted; add them to activations.layers")

    # Corpus windows for the cost of each edit: the held-out documents the token cache keeps out of training.
    skip_first = int(bool(hooked.cfg.default_prepend_bos))
    texts = corpus_texts(corpus, corpus_datasets, corpus_columns, hf_dataset)
    token_lists, _, heldout, _ = tokenised_corpus(hooked, texts, TokenCacheSettings(**corpus_settings), seed)
    windows, documents = corpus_windows(token_lists, heldout, skip_first + settings.kl_context, settings.kl_documents)
    starts = sorted(set(layers) | {layer - 1 for layer in neuron_layers})
    cost = CorpusCost(hooked, windows, starts, measured_positions(windows.shape[1], skip_first, settings.kl_positions))
    doc_weights = bootstrap_weights(len(documents), n_boot, seed)

    # Every choice of neurons is made on the selection rows of its own task, before any pass.
    chosen: dict[tuple[str, int], dict] = {}
    fit_rows: list[dict] = []
    for task in loaded:
        if task.neurons is None:
            continue
        for layer in neuron_layers:
            acts = task.neurons[task.selection, layer - 1]
            top = neurons.top_neurons(acts, task.y[task.selection], settings.k, settings.criterion)
            excluded = neurons.top_neurons(
                acts, task.y[task.selection], min(4 * settings.k, acts.shape[1] // 2), settings.criterion
            )
            random = neurons.matched_random_neurons(acts, top, settings.deactivation_controls, seed, exclude=excluded)
            chosen[task.name, layer] = {
                "top": top,
                "random": random,
                "values": {kind: neurons.ablation_values(acts, top, kind) for kind in settings.ablations},
                "random_values": {
                    kind: [neurons.ablation_values(acts, draw, kind) for draw in random] for kind in settings.ablations
                },
            }
            match = neurons.activation_match(acts, top, random)
            fit_rows.append(
                {
                    "task": task.name,
                    "layer": layer,
                    "intervention": "deactivation",
                    "setting": "neurons",
                    "neurons": top.tolist(),
                    **match,
                }
            )

    def set_neurons(indices, values):
        index = torch.as_tensor(indices)

        def edit(activation):
            activation = activation.clone()
            activation[..., index.to(activation.device)] = torch.as_tensor(
                values, dtype=activation.dtype, device=activation.device
            )
            return activation

        return edit

    readout_rows, effect_rows, probe_rows, row_records = [], [], [], []
    kl_cache: dict[tuple, np.ndarray] = {}

    def kl(key, edit):
        if key not in kl_cache:
            kl_cache[key] = cost.kl_bits(edit)
        return kl_cache[key]

    keys = {"model": model, "n_layers": n_layers}
    # The clean readout of every task first: which tasks the model can do decides what is measured below.
    passes_of, skill_of = {}, {}
    for task in tqdm(loaded, desc="readout passes", unit="task"):
        y_eval, groups_eval = task.y[task.evaluation], task.eval_groups()
        passes_of[task.name] = _readout_passes(hooked, task, starts, layers, settings.batch_size, max_tokens)
        if task.readout is None:
            log.info(
                "%s has no readout (datasets.%s.readout): only its probes are read after erasure", *[task.name] * 2
            )
            readout_rows.append(
                {**keys, "task": task.name, "n_eval": len(y_eval), "can_do": False, "status": "no readout"}
            )
            continue
        weights = bootstrap_weights(len(task.evaluation), n_boot, seed, groups_eval)
        fold_of = threshold_folds(y_eval, groups_eval, settings.folds, seed)
        clean = passes_of[task.name].clean_logodds
        skill_of[task.name] = skill = readout_skill(clean, y_eval, groups_eval, fold_of, weights, ci, settings.min_auc)
        readout_rows.append(
            {
                **keys,
                "task": task.name,
                "n_eval": len(y_eval),
                **vars(skill),
                "verbaliser_mass": float(np.median(passes_of[task.name].mass)),
                "status": "can do" if skill.can_do else "cannot do",
            }
        )
    doable = {name for name, skill in skill_of.items() if skill.can_do}
    log.info("the model can do %s of %d tasks behaviourally: %s", len(doable), len(loaded), sorted(doable) or "none")

    for task in tqdm(loaded, desc="causal checks", unit="task"):
        y_eval = task.y[task.evaluation]
        groups_eval = task.eval_groups()
        weights = bootstrap_weights(len(task.evaluation), n_boot, seed, groups_eval)
        fold_of = threshold_folds(y_eval, groups_eval, settings.folds, seed)
        signs = 2.0 * y_eval - 1
        passes = passes_of.pop(task.name)
        behaviour = task.name in doable
        clean_correct = crossfit_correct(passes.clean_logodds, y_eval, fold_of)

        def record(intervention, setting, layer, metric, real, control, unit="examples", target=task.name, **extra):
            row_weights = weights if unit == "examples" else doc_weights
            effect_rows.append(
                {
                    **keys,
                    "task": extra.get("source", task.name),
                    "layer": layer,
                    "relative_depth": layer / n_layers,
                    "intervention": intervention,
                    "setting": setting,
                    "strength": extra.get("strength", np.nan),
                    "k": extra.get("k", 0),
                    "target_task": target,
                    "metric": metric,
                    **paired_effect(real, control, row_weights, ci),
                    "unit": unit,
                    "status": "measured",
                }
            )

        def skipped(intervention, setting, layer, metric, target=task.name, **extra):
            effect_rows.append(
                {
                    **keys,
                    "task": extra.get("source", task.name),
                    "layer": layer,
                    "relative_depth": layer / n_layers,
                    "intervention": intervention,
                    "setting": setting,
                    "strength": extra.get("strength", np.nan),
                    "k": extra.get("k", 0),
                    "target_task": target,
                    "metric": metric,
                    "unit": "examples",
                    "status": "skipped: cannot do",
                }
            )

        def behavioural(intervention, setting, layer, real_logodds, control_logodds, target=task.name, **extra):
            """Margin lost and cross-fitted accuracy lost by the edit, real against control."""
            real_margin = -signs * (real_logodds - passes.clean_logodds)
            control_margin = -signs * (np.stack(control_logodds) - passes.clean_logodds)
            record(intervention, setting, layer, "margin_lost", real_margin, control_margin, target=target, **extra)
            reference = passes.clean_logodds
            real_drop = clean_correct - crossfit_correct(real_logodds, y_eval, fold_of, reference)
            control_drop = clean_correct - np.stack(
                [crossfit_correct(c, y_eval, fold_of, reference) for c in control_logodds]
            )
            record(intervention, setting, layer, "accuracy_drop", real_drop, control_drop, target=target, **extra)

        def logged(intervention, setting, layer, kind, draw, values, source=task.name, strength=np.nan):
            row_records.append(
                pd.DataFrame(
                    {
                        "task": task.name,
                        "example": task.evaluation,
                        "label": y_eval,
                        "intervention": intervention,
                        "setting": setting,
                        "layer": layer,
                        "strength": strength,
                        "source_task": source,
                        "kind": kind,
                        "draw": draw,
                        "logodds": values,
                    }
                )
            )

        if task.readout is not None:
            logged("none", "clean", 0, "real", 0, passes.clean_logodds)

        for layer in layers:
            X_sel, y_sel = task.at(layer, task.selection), task.y[task.selection]

            # Erasure: LEACE against LEACE of a random linear concept, of the same rank and about the same edit size.
            eraser = fit_eraser(X_sel, y_sel)
            controls = [
                random_eraser(X_sel, eraser.edit_size, seed + draw, settings.size_band)
                for draw in range(settings.erasure_controls)
            ]
            fit_rows.append(
                {
                    "task": task.name,
                    "layer": layer,
                    "intervention": "erasure",
                    "setting": "leace",
                    "rank": eraser.rank,
                    "edit_size": eraser.edit_size,
                    "control_ranks": [c.rank for c, _ in controls],
                    "control_size_ratios": [ratio for _, ratio in controls],
                    **{f"leace_{k}": str(v) for k, v in LEACE_SETTINGS.items()},
                }
            )
            probe_layers = _probe_layers(task.layers, layer, settings.probe_layers)
            later = [j for j in probe_layers if j > layer]
            clean_eval = task.vectors[task.evaluation][:, [task.layers.index(j) for j in probe_layers]]
            variants, edited_logodds = [clean_eval], []
            for eraser_i in [eraser] + [c for c, _ in controls]:
                erased_here = eraser_i(torch.as_tensor(task.at(layer, task.evaluation))).numpy()
                logodds, read = passes.run(Edit(layer, eraser_i), later)
                edited_logodds.append(logodds)
                variants.append(np.stack([erased_here, *(read[j] for j in later)], 1))
            probe_layers_used = probe_layers
            correct = _probe_correct(task, probe_layers_used, variants, fold_of, solver)
            for probe, values in correct.items():
                for j_index, later_layer in enumerate(probe_layers_used):
                    clean_j, real_j, control_j = values[0, j_index], values[1, j_index], values[2:, j_index]
                    effect = paired_effect(real_j, control_j, weights, ci)
                    probe_rows.append(
                        {
                            **keys,
                            "task": task.name,
                            "layer": layer,
                            "relative_depth": layer / n_layers,
                            "later_layer": later_layer,
                            "later_depth": later_layer / n_layers,
                            "probe": probe,
                            "clean": float(clean_j.mean()),
                            "erased": effect["real"],
                            "control": effect["control"],
                            "effect": effect["effect"],
                            "effect_lo": effect["effect_lo"],
                            "effect_hi": effect["effect_hi"],
                            "n": effect["n"],
                        }
                    )
            real_kl = kl(("erasure", task.name, layer, 0), Edit(layer, eraser))
            control_kl = np.stack(
                [kl(("erasure", task.name, layer, draw + 1), Edit(layer, c)) for draw, (c, _) in enumerate(controls)]
            )
            record("erasure", "leace", layer, "kl_bits", real_kl, control_kl, unit="documents")
            if behaviour:
                logged("erasure", "leace", layer, "real", 0, edited_logodds[0])
                for draw, values in enumerate(edited_logodds[1:]):
                    logged("erasure", "leace", layer, "control", draw, values)
                behavioural("erasure", "leace", layer, edited_logodds[0], edited_logodds[1:])
            else:
                skipped("erasure", "leace", layer, "margin_lost")

            # Steering: towards the other class along the probe's normal, against random directions of that size.
            direction = (
                steering.probe_direction(X_sel, y_sel, solver)
                if settings.steering_vector == "probe"
                else steering.mean_difference(X_sel, y_sel)
            )
            scale = steering.residual_norm(X_sel)
            randoms = steering.random_directions(direction.shape[0], settings.steering_controls, seed + layer)
            fit_rows.append(
                {
                    "task": task.name,
                    "layer": layer,
                    "intervention": "steering",
                    "setting": settings.steering_vector,
                    "residual_norm": scale,
                    "cosine_with_mean_difference": float(direction @ steering.mean_difference(X_sel, y_sel)),
                }
            )
            for strength in settings.strengths:
                vectors = [direction] + list(randoms)
                if behaviour:
                    shifted = []
                    for vector in vectors:
                        steer = Edit(
                            layer,
                            _adding(strength * scale * vector),
                            from_read=settings.steering_positions == "from_read",
                            row_scale=-signs,  # each row towards the other class
                        )
                        shifted.append(-signs * (passes.run(steer)[0] - passes.clean_logodds))
                    logged("steering", settings.steering_vector, layer, "real", 0, shifted[0], strength=strength)
                    record(
                        "steering",
                        settings.steering_vector,
                        layer,
                        "steering_shift",
                        shifted[0],
                        np.stack(shifted[1:]),
                        strength=strength,
                    )
                else:
                    skipped("steering", settings.steering_vector, layer, "steering_shift", strength=strength)
                push_kl = [
                    kl(("steering", task.name, layer, strength, i), Edit(layer, _adding(strength * scale * vector)))
                    for i, vector in enumerate(vectors)
                ]
                record(
                    "steering",
                    settings.steering_vector,
                    layer,
                    "kl_bits",
                    push_kl[0],
                    np.stack(push_kl[1:]),
                    unit="documents",
                    strength=strength,
                )

        # Deactivation: every task's top neurons, read on this task (its own: the effect; others: specificity).
        for (source, layer), choice in chosen.items():
            if source not in doable:  # neurons of a task the model cannot do have no effect to be specific about
                continue
            for kind in settings.ablations:
                real_edit = Edit(
                    layer - 1,
                    set_neurons(choice["top"], choice["values"][kind]),
                    neuron_hook(layer),
                    settings.deactivation_positions == "from_read",
                )
                control_edits = [
                    Edit(
                        layer - 1,
                        set_neurons(draw, values),
                        neuron_hook(layer),
                        settings.deactivation_positions == "from_read",
                    )
                    for draw, values in zip(choice["random"], choice["random_values"][kind], strict=True)
                ]
                if behaviour:
                    real = passes.run(real_edit)[0]
                    control = [passes.run(edit)[0] for edit in control_edits]
                    logged("deactivation", kind, layer, "real", 0, real, source=source)
                    behavioural("deactivation", kind, layer, real, control, source=source, k=settings.k)
                else:
                    skipped("deactivation", kind, layer, "margin_lost", source=source, k=settings.k)
                if source == task.name:
                    real_kl = kl(("deactivation", source, layer, kind, 0), real_edit)
                    control_kl = np.stack(
                        [kl(("deactivation", source, layer, kind, i + 1), e) for i, e in enumerate(control_edits)]
                    )
                    record("deactivation", kind, layer, "kl_bits", real_kl, control_kl, unit="documents", k=settings.k)

    write_parquet(readout, pd.DataFrame(readout_rows))
    write_parquet(effects, pd.DataFrame(effect_rows))
    write_parquet(probes, pd.DataFrame(probe_rows))
    write_parquet(
        fits,
        pd.DataFrame([{**keys, **row} for row in fit_rows]).astype(
            {"neurons": str, "control_ranks": str, "control_size_ratios": str}, errors="ignore"
        ),
    )
    write_parquet(rows, pd.concat(row_records, ignore_index=True).assign(**keys))
    return {"layers": layers, "neuron_layers": neuron_layers, "n_documents": len(documents)}


def _adding(vector: np.ndarray):
    """An edit that adds ``vector`` to the residual."""
    import torch

    push = torch.as_tensor(vector, dtype=torch.float32)
    return lambda x: x + push.to(x.device, x.dtype)


def _readout_passes(hooked, task: _Task, starts: list[int], layers: list[int], batch_size: int, max_tokens: int):
    """The task's readout passes on its evaluation rows, checked to hold the stored vectors at the read position."""
    import torch

    from probes.activations.extraction import tokenize
    from probes.interventions.editing import ReadoutPasses
    from probes.interventions.readout import suffix_ids, verbaliser_ids

    positive, negative = verbaliser_ids(hooked, task.readout) if task.readout is not None else ([], [])
    question = suffix_ids(hooked, task.readout) if task.readout is not None else torch.zeros(0, dtype=torch.long)
    token_lists, _ = tokenize(hooked, [task.texts[row] for row in task.evaluation], max_tokens)
    passes = ReadoutPasses(hooked, token_lists, question, positive, negative, starts, batch_size)
    for layer in layers:
        stored = task.at(layer, task.evaluation)
        computed = np.empty_like(stored)
        for chunk in passes.chunks:
            computed[chunk.rows] = chunk.clean[layer][:, 0].float().cpu().numpy()
        gap = np.abs(computed - stored).max() / np.abs(stored).max()
        if gap > 1e-3:
            raise ValueError(
                f"{task.name}: the readout pass's layer-{layer} vectors differ from the stored ones "
                f"(relative gap {gap:.2g}); were they extracted with other settings?"
            )
    return passes


# The columns each table page opens with (estimates with their intervals); every column stays one click below.
READOUT_LEAD = {
    "model": "model",
    "task": "task",
    "status": "readout",
    "auc": "pair-ordering AUC",
    "accuracy": "accuracy",
    "verbaliser_mass": "verbaliser mass",
    "n_eval": "examples",
}
EFFECTS_LEAD = {
    "model": "model",
    "task": "task",
    "layer": "layer",
    "intervention": "intervention",
    "setting": "setting",
    "strength": "α",
    "k": "k",
    "target_task": "readout of",
    "metric": "metric",
    "real": "real",
    "control": "control",
    "effect": "real − control",
    "status": "status",
}
PROBES_LEAD = {
    "model": "model",
    "task": "task",
    "layer": "erased at",
    "later_layer": "probed at",
    "probe": "probe",
    "clean": "clean",
    "erased": "erased",
    "control": "control",
    "effect": "erased − control",
}
FITS_LEAD = {"model": "model", "task": "task", "layer": "layer", "intervention": "intervention", "setting": "setting"}
# A headline's value columns: its name plus these suffixes (``interval`` and the pages read ``_lo`` / ``_hi``).
EFFECT_COLUMNS = {"effect": "", "effect_lo": "_lo", "effect_hi": "_hi", "real": "_real", "control": "_control"}
PROBE_COLUMNS = {
    "effect": "",
    "effect_lo": "_lo",
    "effect_hi": "_hi",
    "clean": "_clean",
    "erased": "_erased",
    "control": "_control",
}


def _depth_index(rows: pd.DataFrame) -> pd.Series:
    """1 for a model's shallowest layer of an intervention, 2 for the next...: the same configured depth is the
    same column for models of different depth."""
    return rows.groupby(["model", "intervention"])["layer"].rank(method="dense").astype(int)


def _wide(rows: pd.DataFrame, name: str, columns: Mapping[str, str]) -> pd.DataFrame:
    """Rows (model, task, depth index d) as one row per model × task: ``{name}_d{d}{suffix}`` per value column."""
    wide = rows.set_index(["model", "task", "d"])[list(columns)].unstack("d")
    wide = wide[[(column, d) for d in sorted(rows["d"].unique()) for column in columns]]
    wide.columns = [f"{name}_d{d}{columns[column]}" for column, d in wide.columns]
    return wide


def _per_model(summary: pd.DataFrame, values: pd.DataFrame) -> pd.DataFrame:
    """Values indexed by model, repeated on each of its tasks' rows."""
    return summary[[]].join(values, on="model")


def _metric_name(intervention: str, metric: str) -> str:
    return metric if metric.startswith(intervention) else f"{intervention}_{metric}"


def causal_summary(readout: pd.DataFrame, effects: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """One row per model × task: can the model do it, and at each depth (d1, d2, ...: its layers in order) what the
    headline setting of each intervention does to its own readout and costs on other text (real − control, with
    the real and control values), what probes read after erasure at the deepest layer probed, and how many other
    tasks deactivating its neurons moves. Behavioural numbers are empty where the model cannot do the task."""
    from probes.plotting.interventions import headline_effects, skipped

    keys = ["model", "task"]
    readout_columns = ["n_layers", "n_eval", "status", "can_do", "auc", "auc_lo", "auc_hi"]
    readout_columns += ["accuracy", "accuracy_lo", "accuracy_hi"]
    summary = readout.reindex(columns=keys + readout_columns)  # a run whose tasks have no readout lacks the AUCs
    summary["behaviour"] = np.where(summary["status"] == "can do", "measured", "skipped (" + summary["status"] + ")")
    summary = summary.set_index(keys)
    chosen = headline_effects(effects)
    chosen = chosen.assign(d=_depth_index(chosen))
    own = chosen[chosen["target_task"] == chosen["task"]]
    parts = []
    for intervention, rows in own.groupby("intervention", sort=False):
        per_model = rows.groupby("model").agg(
            setting=("setting", "first"), strength=("strength", "max"), k=("k", "max")
        )
        wanted = {"steering": ["setting", "strength"], "deactivation": ["setting", "k"]}.get(intervention, ["setting"])
        parts.append(_per_model(summary, per_model[wanted].add_prefix(f"{intervention}_")))
        depths = rows.groupby(["model", "d"])[["layer", "relative_depth"]].first().unstack("d")
        depths.columns = [
            f"{intervention}_{'layer' if column == 'layer' else 'depth'}_d{d}" for column, d in depths.columns
        ]
        parts.append(_per_model(summary, depths))
        for metric, measured in rows.groupby("metric", sort=False):
            parts.append(_wide(measured, _metric_name(intervention, metric), EFFECT_COLUMNS))
    others = chosen[
        (chosen["intervention"] == "deactivation")
        & (chosen["target_task"] != chosen["task"])
        & (chosen["metric"] == "margin_lost")
        & ~skipped(chosen)
    ]
    if len(others):
        moved = (others["effect_lo"] > 0) | (others["effect_hi"] < 0)
        grouped = others.assign(moved=moved).groupby(["model", "task", "d"])
        off = pd.DataFrame({"mean": grouped["effect"].mean(), "moved": grouped["moved"].sum(), "n": grouped.size()})
        parts.append(_wide(off.reset_index(), "deactivation_off_target", {"mean": "", "moved": "_moved", "n": "_n"}))
    probes = probes.assign(intervention="erasure")
    probes = probes.assign(d=_depth_index(probes))
    deepest = probes[
        probes["later_layer"] == probes.groupby(["model", "task", "layer"])["later_layer"].transform("max")
    ]
    for probe, rows in deepest.groupby("probe", sort=True):
        parts.append(_wide(rows, f"erasure_{probe}_last", PROBE_COLUMNS))
    return summary.join(parts).reset_index()


def _summary_lead(summary: pd.DataFrame) -> dict[str, str]:
    """The summary page's first columns: the readout, then each headline effect at each depth."""
    lead = {"model": "model", "task": "task", "behaviour": "behavioural effects", "auc": "readout AUC"}
    headers = {
        "erasure_margin_lost": "erasure: margin lost − control",
        "erasure_relearnt_last": "erasure: re-learnt probe at L, erased − control",
        "steering_shift": "steering: shift − control",
        "deactivation_margin_lost": "deactivation: own-task margin lost − control",
    }
    for name, header in headers.items():
        for column in summary.columns:
            found = re.fullmatch(rf"{name}_d(\d+)", column)
            if found:
                lead[column] = f"{header} (d{found.group(1)})"
    return lead


def summarise_causal(
    readout: Sequence[str | os.PathLike],
    effects: Sequence[str | os.PathLike],
    probes: Sequence[str | os.PathLike],
    fits: Sequence[str | os.PathLike],
    readout_table: str | os.PathLike,
    readout_csv: str | os.PathLike,
    readout_html: str | os.PathLike,
    effects_table: str | os.PathLike,
    effects_csv: str | os.PathLike,
    effects_html: str | os.PathLike,
    probes_table: str | os.PathLike,
    probes_csv: str | os.PathLike,
    probes_html: str | os.PathLike,
    fits_table: str | os.PathLike,
    fits_csv: str | os.PathLike,
    fits_html: str | os.PathLike,
    summary_table: str | os.PathLike,
    summary_csv: str | os.PathLike,
    summary_html: str | os.PathLike,
    ci: float = 0.95,
) -> None:
    """The ``summarise_causal`` rule: every model's causal-check tables in one, and the headline per model × task.

    The intervals are the per-model tables' own (paired bootstraps of real − control over examples, their groups,
    or documents); nothing is resampled here.
    """
    interval = f"{ci:.0%} paired bootstrap intervals of real − control over examples (groups), or documents for KL"
    tables = {
        "readout": (
            readout,
            readout_table,
            readout_csv,
            readout_html,
            "Causal checks: the model's own readout per task (verbalised answer log-odds)",
            f"Pair-ordering AUC and cross-fitted accuracy with {ci:.0%} bootstrap intervals over examples (groups); "
            "a task the model cannot do is skipped for the behavioural effects.",
            READOUT_LEAD,
        ),
        "effects": (
            effects,
            effects_table,
            effects_csv,
            effects_html,
            "Causal checks: each edit's effect beside an equal-size random edit",
            f"Readout metrics in nats (accuracy_drop: a fraction), KL in bits; {interval}.",
            EFFECTS_LEAD,
        ),
        "probes": (
            probes,
            probes_table,
            probes_csv,
            probes_html,
            "Causal checks: probe accuracy after LEACE erasure at a layer, at that layer and later ones",
            f"relearnt: 5-fold CV probe on the edited rows; transfer: the clean probe applied; {interval}.",
            PROBES_LEAD,
        ),
        "fits": (
            fits,
            fits_table,
            fits_csv,
            fits_html,
            "Causal checks: what was fitted per task, layer and intervention",
            "Ranks, edit sizes and the size of each random control against its real edit.",
            FITS_LEAD,
        ),
    }
    frames = {}
    for name, (paths, table, csv, html, title, note, lead) in tables.items():
        frames[name] = pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)
        write_parquet(table, frames[name])
        write_table(frames[name], csv, html, title, note, lead=lead)
    summary = causal_summary(frames["readout"], frames["effects"], frames["probes"])
    write_parquet(summary_table, summary)
    write_table(
        summary,
        summary_csv,
        summary_html,
        "Causal checks: one row per model and task",
        f"d1, d2, ...: each model's intervention layers in order (the configured depths); {interval}.",
        lead=_summary_lead(summary),
    )


def plot_causal_effects(
    effects: str | os.PathLike,
    readout: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_causal_effects`` rule: every model's effects beyond their controls on relative depth."""
    from probes.plotting.interventions import causal_effects_figure

    save_figure(causal_effects_figure(pd.read_parquet(effects), pd.read_parquet(readout), ci), figures, dpi)


def plot_causal_model(
    probes: str | os.PathLike,
    effects: str | os.PathLike,
    readout: str | os.PathLike,
    erasure_figures: Sequence[str | os.PathLike],
    steering_figures: Sequence[str | os.PathLike],
    model: str,
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_causal_model`` rule: one model's probes after erasure and its steering dose-response."""
    from probes.plotting.interventions import erasure_probes_figure, steering_figure

    readout_rows = pd.read_parquet(readout)
    save_figure(erasure_probes_figure(pd.read_parquet(probes), readout_rows, model, ci), erasure_figures, dpi)
    save_figure(steering_figure(pd.read_parquet(effects), readout_rows, model, ci), steering_figures, dpi)


def plot_causal_specificity(
    effects: str | os.PathLike,
    readout: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    model: str,
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_causal_specificity`` rule: one model's deactivation of each task's neurons read on every task."""
    from probes.plotting.interventions import specificity_figure

    save_figure(specificity_figure(pd.read_parquet(effects), pd.read_parquet(readout), model, ci), figures, dpi)
