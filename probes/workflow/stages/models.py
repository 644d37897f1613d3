"""Stages of ``workflow/rules/models.smk``: models made loadable offline, and per-layer activations of each task."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from probes.io import write_json
from probes.workflow.stages import shared_model

log = logging.getLogger(__name__)


def convert_model(model: str, source: str, manifest: str | os.PathLike, tl_name: str | None = None) -> dict[str, Any]:
    """The ``convert_model`` rule: :func:`probes.models.conversion.convert_model` into the shared model cache."""
    from probes.models.conversion import convert_model as convert

    return convert(model, source, manifest, tl_name)


def extract_activations(
    manifest: str | os.PathLike,
    dataset: str | os.PathLike,
    tensors: str | os.PathLike,
    meta: str | os.PathLike,
    settings: dict,
    columns: dict | None = None,
    seed: int = 0,
    weights: str | None = None,
    noise: str = "clean",
    mlp: str | os.PathLike | None = None,
    mlp_sites: Sequence[str] = (),
    mlp_dtype: str = "float16",
    layers: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The ``extract_activations`` rule: validate the data first, then load the model and write the files.

    ``columns`` are :func:`probes.datasets.concepts.load_dataset`'s column arguments; ``weights`` and ``noise`` name a
    perturbation (:mod:`probes.models.perturbations`); the defaults are none. The tensors file carries the labels
    and, when the dataset declares them, its groups and types, so the probes need not read the dataset.
    ``mlp`` gets ``mlp_sites`` (the MLP neurons and inputs, :data:`probes.activations.extraction.MLP_SITES`) of
    every layer from the same pass (whatever ``layers`` of the site it keeps, all by default), stored in ``mlp_dtype``
    (:func:`probes.dictionaries.neurons.store_mlp_activations`); it holds no tensor where the run reads
    none (a model without neuron probes or SAEs, a perturbed run). The meta
    file holds what later stages read: the layers, their hook names, the site and the class names.
    """
    import torch

    from probes.activations import extraction as activations
    from probes.activations.storage import save_activations
    from probes.datasets.concepts import load_dataset
    from probes.models.perturbations import InputNoise, format_name

    settings = activations.ExtractionSettings(**settings)
    data = load_dataset(dataset, **(columns or {}))
    torch.manual_seed(seed)
    weights = weights or format_name(settings.dtype)
    model = shared_model(manifest, device=settings.device, dtype=settings.dtype, weights=weights)
    extracted = activations.extract_activations(
        model, data.texts, settings, layers=layers, noise=InputNoise.parse(noise), seed=seed, mlp_sites=tuple(mlp_sites)
    )
    details = extracted.details
    if mlp is not None:
        from probes.dictionaries.neurons import store_mlp_activations

        mlp_tensors = {key: torch.from_numpy(values) for key, values in extracted.mlp.items()}
        details["mlp_rounding"] = store_mlp_activations(mlp, mlp_tensors, mlp_dtype)
    save_activations(tensors, extracted, data.labels, data.groups, data.types)
    details["mlp_sites"] = list(mlp_sites)
    kept = ("layers", "hook_names", "n_layers", "mlp_sites", "mlp_hook_names", "d_mlp", "mlp_rounding")
    write_json(
        meta,
        {key: details[key] for key in kept if key in details} | {"site": settings.site, "classes": data.classes},
    )
    return {key: value for key, value in details.items() if key not in kept} | {"n_examples": len(data.texts)}
