"""All the causal checks of one model: the readout, erasure, steering and deactivation on every task, each
against its control, as tables (docs/methods.md §8). The ``causal_checks`` stage reads the files and calls
:func:`causal_checks`; a notebook calls it with a loaded model and its own tasks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probes.interventions.readout import TaskReadout
from probes.interventions.settings import CausalSettings
from probes.probing.settings import ProbeSettings

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer

    from probes.probing.solver import SolverSettings

log = logging.getLogger(__name__)


@dataclass
class CausalTask:
    """One task: its texts and labels (groups: rows that must stay together), the stored read-position vectors
    (n, stored layers, d) at their ``layers``, the pooled MLP neurons (n, L, d_mlp) where deactivation should
    run, and its readout (None: only the probes are read after erasure). ``evaluation`` rows go through the
    model; the others (``selection``) fit every eraser, direction and neuron choice."""

    name: str
    texts: list[str]
    y: np.ndarray
    groups: np.ndarray | None
    vectors: np.ndarray
    layers: list[int]
    evaluation: np.ndarray
    neurons: np.ndarray | None = None
    readout: TaskReadout | None = None
    selection: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.selection = np.setdiff1d(np.arange(len(self.y)), self.evaluation)
        if not np.isfinite(self.vectors).all():
            raise ValueError(f"{self.name}: non-finite activations; the causal checks cannot fit on them")

    def at(self, layer: int, rows: np.ndarray) -> np.ndarray:
        return self.vectors[rows, self.layers.index(layer)]

    def eval_groups(self) -> np.ndarray | None:
        return None if self.groups is None else self.groups[self.evaluation]


@dataclass(frozen=True)
class CausalResults:
    """The tables of :func:`causal_checks`, in the columns docs/methods.md §8 describes, and every steering
    direction (``"{task}/{layer}"``: the unit vector; the ``fits`` table gives its scale), so that a steered
    readout can be recomputed by hand."""

    readout: pd.DataFrame
    effects: pd.DataFrame
    probes: pd.DataFrame
    fits: pd.DataFrame
    rows: pd.DataFrame
    directions: dict[str, np.ndarray]


def evaluation_rows(y: np.ndarray, groups: np.ndarray | None, n_eval: int, seed: int) -> np.ndarray:
    """The rows that go through the model: about ``n_eval`` of them (at most half), whole groups, classes balanced."""
    from probes.interventions.readout import threshold_folds

    parts = max(2, round(len(y) / n_eval))
    return np.flatnonzero(threshold_folds(y, groups, parts, seed) == 0)


def _probe_layers(task_layers: list[int], layer: int, n: int) -> list[int]:
    """``n`` stored layers from ``layer`` to the last, evenly spaced, both ends kept."""
    later = [candidate for candidate in task_layers if candidate >= layer]
    picks = np.unique(np.linspace(0, len(later) - 1, min(n, len(later))).round().astype(int))
    return [later[i] for i in picks]


def _probe_correct(
    task: CausalTask, layers: list[int], variants: list[np.ndarray], fold_of, solver
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
    hooked: HookedTransformer,
    tasks: list[CausalTask],
    windows: torch.Tensor,
    settings: CausalSettings | None = None,
    solver: SolverSettings | None = None,
    model: str = "model",
    max_tokens: int = 512,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> CausalResults:
    """Every check of one model on ``tasks``, the cost of each edit read on corpus ``windows`` (n, T; BOS first
    where the model prepends one), with paired bootstrap intervals over groups and windows. ``solver`` fits the
    probes read after erasure and the steering direction (default: the probe protocol's)."""
    import torch
    from tqdm.auto import tqdm

    from probes.depth_usage.contributions import measured_positions
    from probes.interventions import deactivation as neurons
    from probes.interventions import steering
    from probes.interventions.editing import CorpusCost, Edit, neuron_hook
    from probes.interventions.effects import paired_effect
    from probes.interventions.erasure import LEACE_SETTINGS, fit_eraser, random_eraser
    from probes.interventions.readout import crossfit_correct, readout_skill, threshold_folds
    from probes.resampling import bootstrap_weights

    settings = settings or CausalSettings()
    solver = solver or ProbeSettings().solver
    torch.manual_seed(seed)
    loaded = tasks
    n_layers = hooked.cfg.n_layers
    layers = settings.layers(n_layers)
    neuron_layers = settings.layers(n_layers, settings.deactivation_depths)
    for task in loaded:
        missing = sorted(set(layers) - set(task.layers))
        if missing:
            raise ValueError(f"{task.name}: layers {missing} were not extracted; add them to activations.layers")
    skip_first = int(bool(hooked.cfg.default_prepend_bos))
    starts = sorted(set(layers) | {layer - 1 for layer in neuron_layers})
    cost = CorpusCost(hooked, windows, starts, measured_positions(windows.shape[1], skip_first, settings.kl_positions))
    doc_weights = bootstrap_weights(len(windows), n_boot, seed)

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

    readout_rows, effect_rows, probe_rows, row_records, directions = [], [], [], [], {}
    kl_cache: dict[tuple, np.ndarray] = {}

    def kl(key, edit):
        if key not in kl_cache:
            kl_cache[key] = cost.kl_bits(edit)
        return kl_cache[key]

    keys = {"model": model, "n_layers": n_layers}
    # The clean readout of every task first: which tasks the model can do decides what is measured below.
    passes_of, skill_of, design_of = {}, {}, {}
    for task in tqdm(loaded, desc="readout passes", unit="task"):
        y_eval, groups_eval = task.y[task.evaluation], task.eval_groups()
        passes_of[task.name] = _readout_passes(hooked, task, starts, layers, settings.batch_size, max_tokens)
        # the evaluation rows' bootstrap resamples and threshold folds, shared by the readout and every effect
        design_of[task.name] = weights, fold_of = (
            bootstrap_weights(len(task.evaluation), n_boot, seed, groups_eval),
            threshold_folds(y_eval, groups_eval, settings.folds, seed),
        )
        if task.readout is None:
            log.info(
                "%s has no readout (datasets.%s.readout): only its probes are read after erasure", *[task.name] * 2
            )
            readout_rows.append(
                {**keys, "task": task.name, "n_eval": len(y_eval), "can_do": False, "status": "no readout"}
            )
            continue
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
        weights, fold_of = design_of.pop(task.name)
        signs = 2.0 * y_eval - 1
        passes = passes_of.pop(task.name)
        behaviour = task.name in doable
        clean_correct = crossfit_correct(passes.clean_logodds, y_eval, fold_of)

        def effect_key(intervention, setting, layer, metric, target, extra) -> dict:
            """The key columns of one effects row; ``extra`` may name the source task, the strength or k."""
            return {
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
            }

        def record(intervention, setting, layer, metric, real, control, unit="examples", target=task.name, **extra):
            row_weights = weights if unit == "examples" else doc_weights
            key = effect_key(intervention, setting, layer, metric, target, extra)
            effect = paired_effect(real, control, row_weights, ci)
            effect_rows.append(key | effect | {"unit": unit, "status": "measured"})

        def skipped(intervention, setting, layer, metric, target=task.name, **extra):
            key = effect_key(intervention, setting, layer, metric, target, extra)
            effect_rows.append(key | {"unit": "examples", "status": "skipped: cannot do"})

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
            # each random direction with its opposite: a random push's first-order shift (the same for every row,
            # whichever class it is pushed to) cancels, so one draw is not a random offset
            randoms = steering.random_directions(direction.shape[0], settings.steering_controls, seed + layer)
            randoms = [sign * r for r in randoms for sign in (1.0, -1.0)]
            directions[f"{task.name}/{layer}"] = direction.astype(np.float32)
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

    return CausalResults(
        pd.DataFrame(readout_rows),
        pd.DataFrame(effect_rows),
        pd.DataFrame(probe_rows),
        pd.DataFrame([{**keys, **row} for row in fit_rows]).astype(
            {"neurons": str, "control_ranks": str, "control_size_ratios": str}, errors="ignore"
        ),
        pd.concat(row_records, ignore_index=True).assign(**keys),
        directions,
    )


def _adding(vector: np.ndarray):
    """An edit that adds ``vector`` to the residual."""
    import torch

    push = torch.as_tensor(vector, dtype=torch.float32)
    return lambda x: x + push.to(x.device, x.dtype)


def _readout_passes(hooked, task: CausalTask, starts: list[int], layers: list[int], batch_size: int, max_tokens: int):
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
