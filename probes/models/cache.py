"""The model cache: any model by name or path, converted on first use exactly as the pipeline's ``convert_model``
rule does, then loaded from the cache in seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from probes.io import read_json
from probes.models.conversion import convert_model
from probes.models.loading import directory_fingerprint, load_converted, resolve_source

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

MANIFEST = "manifest.json"
DEFAULT_CACHE = "results/models"


def load_model(
    model: str | os.PathLike,
    device: str = "cpu",
    dtype: str = "float32",
    weights: str | None = None,
    *,
    tl_name: str | None = None,
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
) -> HookedTransformer:
    """A TransformerLens ``HookedTransformer`` in eval mode, offline.

    ``model`` is an embedded model id (``smollm2-135m``, ``gemma3-270m``), a local Hugging Face checkpoint
    directory, a TransformerLens model name whose weights are in the local Hugging Face cache, or a
    ``manifest.json`` the pipeline wrote (or its folder). Models are converted once into ``cache_dir/<name>/``:
    with the pipeline's ``model_cache``, an embedded model or TransformerLens name shares the pipeline's
    conversion; a local checkpoint is cached under its folder's name (the pipeline's under the config's id, so
    pass that manifest to share it). ``tl_name`` names the TransformerLens architecture of a local fine-tune.
    ``weights`` is a weight format of :mod:`probes.models.perturbations` (``fp32``, ``bf16``, ``fp16``,
    ``int8``) that replaces ``dtype``.
    """
    path = Path(model).expanduser()
    manifest = path / MANIFEST if (path / MANIFEST).is_file() else path
    if not (manifest.suffix == ".json" and manifest.is_file()):
        manifest = _cached_manifest(str(model), tl_name, Path(cache_dir))
    return load_converted(manifest, device, dtype, weights)


def _cached_manifest(model: str, tl_name: str | None, cache_dir: Path) -> Path:
    """The cache's manifest of ``model``, converting it first when it is missing or its local weights changed."""
    resolved = resolve_source(model, tl_name)
    name = Path(resolved.location).name if resolved.kind == "local" else model.replace("/", "--")
    manifest = cache_dir / name / MANIFEST
    if manifest.is_file():
        record = read_json(manifest)
        same = record.get("kind") == resolved.kind and record.get("tl_name") == resolved.tl_name
        if resolved.kind == "local":
            location = Path(resolved.location)
            same = (
                same
                and record.get("hf_dir") == str(location)
                and record["weights_sha256"] == directory_fingerprint(location)
            )
        else:
            same = same and record.get("source") == model
        if same:
            return manifest
    convert_model(name, model, manifest, tl_name)
    return manifest
