"""Stages of ``workflow/rules/models.smk``: models made loadable offline, and per-layer activations of each task."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from probes.activations import INPUT_EMBEDDING
from probes.io import atomic_path, sha256_file, write_json
from probes.stages import shared_model

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)


def convert_model(model: str, source: str, manifest: str | os.PathLike, tl_name: str | None = None) -> dict[str, Any]:
    """The ``convert_model`` rule: make a model loadable offline and describe it in a manifest later stages read.

    Embedded models are dequantised into ``<manifest dir>/<gguf sha256>/``; other sources are checked for
    offline availability and only described, since their weights already sit on disk. The model cache is
    shared between working directories, so the manifest (with package versions) is this job's record.
    """
    from probes.models import (
        build_hooked,
        dequantised_gguf,
        directory_fingerprint,
        gguf_path,
        require_offline_weights,
        resolve_source,
    )
    from probes.provenance import package_versions

    resolved = resolve_source(source, tl_name)
    record: dict[str, Any] = {"model": model, "source": source, "kind": resolved.kind, "tl_name": resolved.tl_name}
    cache_dir = Path(manifest).parent
    if resolved.kind == "embedded":
        gguf = gguf_path(source, cache_dir / "gguf")
        digest = sha256_file(gguf)
        hf_dir = cache_dir / digest[:16]
        if not (hf_dir / "config.json").is_file():
            log.info("dequantising %s into %s (once; later loads reuse it)", gguf, hf_dir)
            tmp_dir = cache_dir / f".{digest[:16]}.partial"
            hf_model, tokenizer = dequantised_gguf(gguf)
            hf_model.save_pretrained(tmp_dir)
            tokenizer.save_pretrained(tmp_dir)
            os.replace(tmp_dir, hf_dir)
        record.update(
            hf_dir=str(hf_dir.resolve()),
            gguf_file=gguf.name,
            gguf_sha256=digest,
            weights_sha256=sha256_file(hf_dir / "model.safetensors"),
            note="weights are dequantised from a 4-bit GGUF quantisation of the original model",
        )
        if source == "gemma3-270m":
            gguf.unlink()  # 250 MB of scratch; the package can assemble it again
    elif resolved.kind == "local":
        record.update(hf_dir=resolved.location, weights_sha256=directory_fingerprint(Path(resolved.location)))
    else:
        require_offline_weights(resolved.location)
        record.update(weights_sha256=None)
    record["versions"] = package_versions()
    if "hf_dir" in record:
        hooked = cache_dir / "hooked_transformer.safetensors"
        _save_hooked(build_hooked(record, "cpu", "float32"), hooked)
        record.update(hooked_state=str(hooked.resolve()), hooked_state_sha256=sha256_file(hooked))
    write_json(manifest, record)
    return record


def _save_hooked(model: HookedTransformer, path: Path) -> None:
    from safetensors.torch import save_file

    config = model.cfg.to_dict() | {"dtype": str(model.cfg.dtype).removeprefix("torch."), "device": None}
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"config": json.dumps(config)})


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
) -> dict[str, Any]:
    """The ``extract_activations`` rule: validate the data first, then load the model and write the files.

    ``columns`` are :func:`probes.datasets.load_dataset`'s column arguments; ``weights`` and ``noise`` name a
    perturbation (:mod:`probes.perturbations`); the defaults are none. The tensors file carries the labels
    and, when the dataset declares them, its groups and types, so the probes need not read the dataset.
    ``mlp`` gets ``mlp_sites`` (the MLP neurons and inputs, :data:`probes.activations.MLP_SITES`) of every
    layer from the same pass, stored in ``mlp_dtype`` (:func:`probes.neurons.store_mlp_activations`); it holds
    no tensor where the run reads none (a model without neuron probes or SAEs, a perturbed run). The meta
    file holds what later stages read: the layers, their hook names, the site and the class names.
    """
    import torch
    from safetensors.torch import save_file

    from probes import activations
    from probes.datasets import load_dataset
    from probes.perturbations import InputNoise, format_name

    settings = activations.ExtractionSettings(**settings)
    data = load_dataset(dataset, **(columns or {}))
    torch.manual_seed(seed)
    weights = weights or format_name(settings.dtype)
    model = shared_model(manifest, device=settings.device, dtype=settings.dtype, weights=weights)
    pooled, details = activations.extract_activations(
        model, data.texts, settings, noise=InputNoise.parse(noise), seed=seed, mlp_sites=tuple(mlp_sites)
    )
    if mlp is not None:
        from probes.neurons import store_mlp_activations

        mlp_tensors = {key: pooled.pop(key) for key in [key for key in pooled if "/" in key]}
        details["mlp_rounding"] = store_mlp_activations(mlp, mlp_tensors, mlp_dtype)
    with atomic_path(tensors) as tmp:
        stored = {p: t.contiguous() for p, t in pooled.items()}
        for name in ("labels", "groups", "types"):
            if getattr(data, name) is not None:
                stored[name] = torch.tensor(getattr(data, name), dtype=torch.int64)
        save_file(stored, str(tmp))
    details["mlp_sites"] = list(mlp_sites)
    kept = ("layers", "hook_names", "n_layers", "mlp_sites", "mlp_hook_names", "d_mlp", "mlp_rounding")
    write_json(
        meta,
        {key: details[key] for key in kept if key in details} | {"site": settings.site, "classes": data.classes},
    )
    return {key: value for key, value in details.items() if key not in kept} | {"n_examples": len(data.texts)}


@dataclass(frozen=True)
class StoredActivations:
    """One pooling of :func:`extract_activations`'s file: vectors (n, layers, d), per-row int arrays, and the
    mean input embeddings (n, d) of the shortcut audit."""

    vectors: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None
    types: np.ndarray | None
    input_embeddings: np.ndarray


_ROW_ARRAYS = ("labels", "groups", "types", INPUT_EMBEDDING)


def load_activations(path: str | os.PathLike, pooling: str) -> StoredActivations:
    """One pooling's vectors with the labels, groups and types (None when the dataset declares none)."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    if pooling not in tensors:
        poolings = sorted(set(tensors) - set(_ROW_ARRAYS))
        raise KeyError(f"{path} holds poolings {poolings}, not {pooling!r}; add it to activations.poolings")
    if INPUT_EMBEDDING not in tensors:
        raise KeyError(f"{path} predates the shortcut audit (no {INPUT_EMBEDDING}); delete it to re-extract")
    return StoredActivations(
        tensors[pooling], tensors["labels"], tensors.get("groups"), tensors.get("types"), tensors[INPUT_EMBEDDING]
    )
