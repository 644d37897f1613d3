"""The model cache: any model by name or path, converted on first use exactly as the pipeline's ``convert_model``
rule does, then loaded from the cache in seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from probes.models.conversion import convert_model
from probes.models.loading import MANIFEST_PATHS, directory_fingerprint, load_converted, read_manifest, resolve_source

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

MANIFEST = "manifest.json"
DEFAULT_CACHE = "results/models"
REPOSITORY = Path(__file__).resolve().parents[2]  # the folder that holds the probes package


def model_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The model cache's folder: ``path``, else ``$PROBES_MODEL_CACHE``, else ``results/models``.

    A relative path is taken from the repository root, not the current directory, so that a notebook, a script
    and the pipeline run from anywhere share one conversion of each model.
    """
    path = Path(path or os.environ.get("PROBES_MODEL_CACHE") or DEFAULT_CACHE).expanduser()
    return path if path.is_absolute() else REPOSITORY / path


def load_model(
    model: str | os.PathLike,
    device: str = "cpu",
    dtype: str = "float32",
    weights: str | None = None,
    *,
    tl_name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> HookedTransformer:
    """A TransformerLens ``HookedTransformer`` in eval mode, offline.

    ``model`` is an embedded model id (``smollm2-135m``, ``gemma3-270m``), a local Hugging Face checkpoint
    directory, a TransformerLens model name whose weights are in the local Hugging Face cache, or a
    ``manifest.json`` the pipeline wrote (or its folder). Models are converted once into ``cache_dir/<name>/``
    (:func:`model_cache_dir`: by default ``$PROBES_MODEL_CACHE`` or the repository's ``results/models``):
    with the pipeline's ``model_cache``, an embedded model or TransformerLens name shares the pipeline's
    conversion; a local checkpoint is cached under its folder's name (the pipeline's under the config's id, so
    pass that manifest to share it). ``tl_name`` names the TransformerLens architecture of a local fine-tune.
    ``weights`` is a weight format of :mod:`probes.models.perturbations` (``fp32``, ``bf16``, ``fp16``,
    ``int8``) that replaces ``dtype``.
    """
    path = Path(model).expanduser()
    manifest = path / MANIFEST if (path / MANIFEST).is_file() else path
    if not (manifest.suffix == ".json" and manifest.is_file()):
        manifest = _cached_manifest(str(model), tl_name, model_cache_dir(cache_dir))
    return load_converted(manifest, device, dtype, weights)


def _cached_manifest(model: str, tl_name: str | None, cache_dir: Path) -> Path:
    """The cache's manifest of ``model``, converting it first when it is missing, its local weights changed or
    the files it names are gone (an old manifest's absolute paths into a cache that has since moved)."""
    resolved = resolve_source(model, tl_name)
    name = Path(resolved.location).name if resolved.kind == "local" else model.replace("/", "--")
    manifest = cache_dir / name / MANIFEST
    if manifest.is_file():
        record = read_manifest(manifest)
        same = (
            record.get("kind") == resolved.kind
            and record.get("tl_name") == resolved.tl_name
            and all(Path(record[key]).exists() for key in MANIFEST_PATHS if key in record)
        )
        if resolved.kind == "local":
            location = Path(resolved.location)
            same = (
                same
                and Path(record["hf_dir"]) == location
                and record["weights_sha256"] == directory_fingerprint(location)
            )
        else:
            same = same and record.get("source") == model
        if same:
            return manifest
    convert_model(name, model, manifest, tl_name)
    return manifest
