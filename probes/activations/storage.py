"""The pipeline's activation files: one safetensors file per model x dataset x site with every pooling, the mean input
embeddings and the labels, groups and types, so the probes need not read the dataset."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.activations.extraction import INPUT_EMBEDDING, Activations
from probes.io import atomic_path, read_json

_ROW_ARRAYS = ("labels", "groups", "types", INPUT_EMBEDDING)


def save_activations(
    path: str | os.PathLike,
    activations: Activations,
    labels: Sequence[int],
    groups: Sequence[int] | None = None,
    types: Sequence[int] | None = None,
) -> None:
    """Write ``activations``' poolings, input embeddings and the per-row integer arrays, atomically."""
    import torch
    from safetensors.torch import save_file

    stored = {pooling: torch.from_numpy(vectors).contiguous() for pooling, vectors in activations.vectors.items()}
    stored[INPUT_EMBEDDING] = torch.from_numpy(activations.input_embeddings).contiguous()
    for name, values in (("labels", labels), ("groups", groups), ("types", types)):
        if values is not None:
            stored[name] = torch.tensor(values, dtype=torch.int64)
    with atomic_path(path) as tmp:
        save_file(stored, str(tmp))


@dataclass(frozen=True)
class StoredActivations:
    """One pooling of an ``extract_activations`` file: vectors (n, layers, d), per-row int arrays, the mean input
    embeddings (n, d) of the shortcut audit, and, from the ``.meta.json`` beside the file, the layer numbers of
    the vectors' columns and the model's depth L (None without it)."""

    vectors: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None
    types: np.ndarray | None
    input_embeddings: np.ndarray
    layers: tuple[int, ...] | None = None
    n_layers: int | None = None


def load_activations(path: str | os.PathLike, pooling: str) -> StoredActivations:
    """One pooling's vectors with the labels, groups and types (None when the dataset declares none), as the
    pipeline stored them under ``results/activations/``; :func:`probes.probe_layers` takes the result as it is."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    if pooling not in tensors:
        poolings = sorted(set(tensors) - set(_ROW_ARRAYS))
        raise KeyError(f"{path} holds poolings {poolings}, not {pooling!r}; add it to activations.poolings")
    if INPUT_EMBEDDING not in tensors:
        raise KeyError(f"{path} predates the shortcut audit (no {INPUT_EMBEDDING}); delete it to re-extract")
    meta = Path(path).with_suffix(".meta.json")
    layers, n_layers = None, None
    if meta.is_file():
        described = read_json(meta)
        layers, n_layers = tuple(described["layers"]), int(described["n_layers"])
    return StoredActivations(
        tensors[pooling],
        tensors["labels"],
        tensors.get("groups"),
        tensors.get("types"),
        tensors[INPUT_EMBEDDING],
        layers,
        n_layers,
    )
