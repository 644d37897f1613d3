"""Making a model loadable offline: an embedded GGUF dequantised once into Hugging Face weights, and every model's
TransformerLens state saved beside its manifest, so later loads take seconds."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.io import atomic_path, sha256_file, write_json
from probes.models.loading import (
    MANIFEST_PATHS,
    build_hooked,
    dequantised_gguf,
    directory_fingerprint,
    gguf_path,
    resolve_source,
)
from probes.versions import package_versions

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)


def convert_model(model: str, source: str, manifest: str | os.PathLike, tl_name: str | None = None) -> dict[str, Any]:
    """Make a model loadable offline and describe it in the manifest :func:`probes.models.cache.load_model` reads.

    Embedded models are dequantised into ``<manifest dir>/<gguf sha256>/``; other sources are checked for
    offline availability (by :func:`probes.models.loading.resolve_source`) and only described, since their
    weights already sit on disk. The model cache is shared between working directories, so the manifest (with
    package versions) is this job's record; its paths into the cache are relative, so the cache may move.
    """
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
            hf_dir=str(hf_dir),
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
        record.update(weights_sha256=None)
    record["versions"] = package_versions()
    if "hf_dir" in record:
        hooked = cache_dir / "hooked_transformer.safetensors"
        _save_hooked(build_hooked(record, "cpu", "float32"), hooked)
        record.update(hooked_state=str(hooked), hooked_state_sha256=sha256_file(hooked))
    record = _relative_paths(record, cache_dir)
    write_json(manifest, record)
    return record


def _relative_paths(record: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Paths inside ``folder`` relative to it, the others absolute: they do not move with the cache."""
    folder = folder.resolve()
    paths = {key: Path(record[key]).resolve() for key in MANIFEST_PATHS if key in record}
    return record | {
        key: str(path.relative_to(folder) if path.is_relative_to(folder) else path) for key, path in paths.items()
    }


def _save_hooked(model: HookedTransformer, path: Path) -> None:
    from safetensors.torch import save_file

    config = model.cfg.to_dict() | {"dtype": str(model.cfg.dtype).removeprefix("torch."), "device": None}
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"config": json.dumps(config)})
