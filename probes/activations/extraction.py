"""Per-layer activations of a dataset, pooled per example.

Layers follow docs/methods.md §1: for the residual stream, layer 0 is ``blocks.0.hook_resid_pre`` and layer
``l`` (1..L) is ``blocks.{l-1}.hook_resid_post``. Other sites live inside block ``l-1`` and are indexed
1..L. The forward pass stops after the last block it needs and never computes the unembedding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer

    from probes.models.perturbations import InputNoise

log = logging.getLogger(__name__)

SITES = ("resid", "ln2.hook_normalized", "attn_out", "mlp_out")
POOLINGS = ("last", "mean")
# What the MLP of block l-1 reads and its neurons, stored beside every extraction for neuron probing and
# transcoder latents (docs/methods.md §7): the MLP's input is the transcoder's input.
MLP_SITES = {"mlp_post": "mlp.hook_post", "mlp_in": "ln2.hook_normalized"}


@dataclass(frozen=True)
class ExtractionSettings:
    """How activations are read: the ``site`` (one of :data:`SITES`: the residual stream, the MLP input, attention
    or MLP output), the ``poolings`` over a text's tokens (the last token, the mean over tokens after a prepended
    BOS), texts per forward pass (``batch_size``), the tokens kept per text (``max_tokens``, the rest truncated with
    a warning) and the model's ``device`` and ``dtype``. One site per extraction: extract once per site."""

    site: str = "resid"
    poolings: tuple[str, ...] = POOLINGS
    batch_size: int = 64
    max_tokens: int = 256
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(f"site {self.site!r} is not one of {SITES}")
        unknown = set(self.poolings) - set(POOLINGS)
        if unknown or not self.poolings:
            raise ValueError(f"poolings {list(self.poolings)} must be a non-empty subset of {POOLINGS}")
        if self.batch_size < 1 or self.max_tokens < 2:
            raise ValueError("batch_size must be >= 1 and max_tokens >= 2")


class NonFiniteActivations(ValueError):
    """A forward pass produced NaN or inf: usually a float format too narrow for the model (fp16)."""


def check_finite(model: HookedTransformer, activation: torch.Tensor, hook_name: str, site: str) -> None:
    """Refuse NaN or inf where it arises, naming the model, its format and the first hook that holds it.

    Hooks fire in the order of depth, so the first failing hook is the first bad layer. The largest absolute
    value is finite exactly when every value is (NaN propagates through the maximum), at a third of the cost
    of an element-wise test; padding is included, as it is finite wherever the real tokens are.
    """
    import torch

    if not bool(torch.isfinite(activation.abs().amax())):
        from probes.models.perturbations import FLOAT_FORMATS

        dtype = str(model.cfg.dtype).removeprefix("torch.")
        name = {torch_dtype: fmt for fmt, torch_dtype in FLOAT_FORMATS.items()}.get(dtype, dtype)
        raise NonFiniteActivations(
            f"{model.cfg.model_name} in {name} ({dtype}): non-finite activations (NaN or inf) at {hook_name} "
            f"(site {site}); the model overflows in this format. Run it in bf16 (weights: bf16, or dtype: bfloat16), "
            "which has float32's range, or in fp32"
        )


EMBEDDING_HOOK = "blocks.0.hook_resid_pre"
INPUT_EMBEDDING = "input_embedding_mean"


def site_hooks(site: str, n_layers: int) -> dict[int, str]:
    """Map layer index -> TransformerLens hook name, so stored files name what they hold."""
    if site == "resid":
        return {0: EMBEDDING_HOOK} | {l: f"blocks.{l - 1}.hook_resid_post" for l in range(1, n_layers + 1)}
    hook = MLP_SITES.get(site, site if site.startswith("ln") else f"hook_{site}")
    return {l: f"blocks.{l - 1}.{hook}" for l in range(1, n_layers + 1)}


def chosen_layers(hooks: dict[int, str], layers: Sequence[int] | None, site: str) -> dict[int, str]:
    """The hooks of ``layers`` (all when None), refusing layers the site does not have."""
    if layers is None:
        return hooks
    layers = sorted({int(layer) for layer in layers})
    missing = [layer for layer in layers if layer not in hooks]
    if missing or not layers:
        raise ValueError(
            f"layers {missing or layers} are not layers of site {site!r}, which has {min(hooks)}..{max(hooks)}"
        )
    return {layer: hooks[layer] for layer in layers}


def tokenize(
    model: HookedTransformer, texts: Sequence[str], max_tokens: int, noise: InputNoise | None = None, seed: int = 0
) -> tuple[list[torch.Tensor], int]:
    """Tokenise one text at a time, so padding can never leak into what a text's tokens are.

    ``noise`` perturbs the characters before tokenising or the tokens after (before truncation), seeded by
    ``seed`` and each text's index.
    """
    from probes.models.perturbations import ordinary_token_ids

    if noise is not None and noise.kind == "characters":
        texts = noise.apply_to_texts(texts, seed)
    token_lists = [model.to_tokens(text, move_to_device=False, truncate=False)[0] for text in texts]
    if noise is not None and noise.kind == "tokens":
        bos = int(bool(model.cfg.default_prepend_bos))
        token_lists = noise.apply_to_tokens(token_lists, ordinary_token_ids(model), bos, seed)
    truncated = sum(len(tokens) > max_tokens for tokens in token_lists)
    if truncated:
        log.warning("%d of %d texts exceed max_tokens=%d and are truncated", truncated, len(texts), max_tokens)
    return [tokens[:max_tokens] for tokens in token_lists], truncated


def right_padded(model: HookedTransformer, token_lists: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch as (tokens, mask), padded on the right: under causal attention real tokens never see pads."""
    import torch

    lengths = torch.tensor([len(tokens) for tokens in token_lists])
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(token_lists), int(lengths.max())), pad_id, dtype=torch.long)
    for row, ids in enumerate(token_lists):
        tokens[row, : len(ids)] = ids
    return tokens, torch.arange(tokens.shape[1])[None, :] < lengths[:, None]


def pooled_activations(
    model: HookedTransformer,
    texts: Sequence[str],
    settings: ExtractionSettings,
    progress: bool = True,
    noise: InputNoise | None = None,
    seed: int = 0,
    mlp_sites: Sequence[str] = (),
    layers: Sequence[int] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pooled activations, ``{pooling: float32 tensor (n_texts, n_site_layers, d_model)}`` and the mean input
    embeddings ``{INPUT_EMBEDDING: (n_texts, d_model)}``, plus details.

    Texts are batched in order of length with right padding: under causal attention the real tokens
    never see the pads, so batched vectors equal one-at-a-time vectors. ``noise`` perturbs the inputs
    (see :func:`tokenize`). Each of ``mlp_sites`` (keys of :data:`MLP_SITES`) is pooled from the same pass
    as ``{"{site}/{pooling}": (n_texts, n_layers, width)}``, layers 1..L. ``layers`` keeps only those layers
    of the site (default: all), and the pass stops after the last block they need.
    """
    import torch
    from tqdm.auto import tqdm

    hooks = chosen_layers(site_hooks(settings.site, model.cfg.n_layers), layers, settings.site)
    token_lists, n_truncated = tokenize(model, texts, settings.max_tokens, noise, seed)
    # Mean pooling skips a prepended BOS: its huge norm (an attention sink) would swamp the average.
    skip_first = int(bool(model.cfg.default_prepend_bos))
    lengths = torch.tensor([len(tokens) for tokens in token_lists])
    order = torch.argsort(lengths, stable=True)
    n, n_site_layers = len(texts), len(hooks)
    out = {p: torch.zeros(n, n_site_layers, model.cfg.d_model, dtype=torch.float32) for p in settings.poolings}
    # The shortcut audit's input-embedding baseline (probes.probing.shortcuts), kept whatever the site:
    # layer 0 mean-pooled.
    embedding_mean = torch.zeros(n, model.cfg.d_model, dtype=torch.float32)
    columns = {layer: column for column, layer in enumerate(sorted(hooks))}
    unknown = set(mlp_sites) - set(MLP_SITES)
    if unknown:
        raise ValueError(f"mlp_sites {sorted(unknown)} are not among {sorted(MLP_SITES)}")
    extra = {name: (site, layer) for site in mlp_sites for layer, name in site_hooks(site, model.cfg.n_layers).items()}
    widths = {"mlp_post": model.cfg.d_mlp, "mlp_in": model.cfg.d_model}
    for site in mlp_sites:
        for p in settings.poolings:
            out[f"{site}/{p}"] = torch.zeros(n, model.cfg.n_layers, widths[site], dtype=torch.float32)
    stop_at = max(int(name.split(".")[1]) for name in [*hooks.values(), *extra]) + 1

    batches = [order[i : i + settings.batch_size] for i in range(0, n, settings.batch_size)]
    for batch in tqdm(batches, desc="extracting", unit="batch", disable=not progress):
        batch_lengths = lengths[batch]
        tokens, mask = right_padded(model, [token_lists[index] for index in batch.tolist()])
        width = tokens.shape[1]
        positions = torch.arange(width)
        mask = mask.to(settings.device)
        mean_mask = (mask & (positions[None, :].to(settings.device) >= min(skip_first, width - 1))).float()
        last_index = (batch_lengths - 1).to(settings.device)

        def pooler(key: str, column: int, label: str, site: str) -> Any:
            def pool(activation: torch.Tensor, hook: Any) -> None:
                check_finite(model, activation, f"{hook.name} ({label})", site)
                activation = activation.float()
                if "last" in settings.poolings:
                    out[f"{key}last"][batch, column] = activation[torch.arange(len(batch)), last_index].cpu()
                if "mean" in settings.poolings:
                    out[f"{key}mean"][batch, column] = mean_pooled(activation)

            return pool

        def mean_pooled(activation: torch.Tensor) -> torch.Tensor:
            return ((activation.float() * mean_mask[:, :, None]).sum(1) / mean_mask.sum(1, keepdim=True)).cpu()

        def pool_embedding(activation: torch.Tensor, hook: Any) -> None:
            embedding_mean[batch] = mean_pooled(activation)

        with torch.inference_mode():
            model.run_with_hooks(
                tokens.to(settings.device),
                attention_mask=mask.long(),
                stop_at_layer=stop_at,
                fwd_hooks=[
                    (name, pooler("", columns[layer], f"layer {layer}", settings.site)) for layer, name in hooks.items()
                ]
                + [
                    (name, pooler(f"{site}/", layer - 1, f"layer {layer}", site))
                    for name, (site, layer) in extra.items()
                ]
                + [(EMBEDDING_HOOK, pool_embedding)],
            )
    details = {
        "layers": sorted(hooks),
        "hook_names": [hooks[layer] for layer in sorted(hooks)],
        "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "n_tokens": int(lengths.sum()),
        "n_truncated": n_truncated,
        "bos_prepended": bool(skip_first),
        "noise": noise.name if noise is not None else "clean",
    }
    if mlp_sites:
        details["mlp_hook_names"] = {site: list(site_hooks(site, model.cfg.n_layers).values()) for site in mlp_sites}
        details["d_mlp"] = model.cfg.d_mlp
    return out | {INPUT_EMBEDDING: embedding_mean}, details


@dataclass(frozen=True)
class Activations:
    """Pooled activations of a list of texts, in the model's layer numbers.

    ``vectors[pooling]`` is (n_texts, len(layers), d) float32; ``layers`` are the site's layer numbers (0..L for
    the residual stream, 1..L inside blocks) and ``hook_names`` their TransformerLens hooks; ``n_layers`` is the
    model's depth L, for relative depth. ``input_embeddings`` (n_texts, d_model) are the mean-pooled embeddings
    of the shortcut audit; ``mlp`` holds ``"{site}/{pooling}"`` arrays when MLP sites were asked for.
    """

    vectors: dict[str, np.ndarray]
    layers: list[int]
    hook_names: list[str]
    site: str
    n_layers: int
    input_embeddings: np.ndarray
    mlp: dict[str, np.ndarray] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def extract_activations(
    model: HookedTransformer,
    texts: Sequence[str],
    settings: ExtractionSettings | None = None,
    *,
    layers: Sequence[int] | None = None,
    site: str | None = None,
    progress: bool = True,
    noise: InputNoise | None = None,
    seed: int = 0,
    mlp_sites: Sequence[str] = (),
) -> Activations:
    """Per-layer pooled activations of ``texts`` at ``layers`` of ``site`` (default: every layer of the residual
    stream), as the pipeline's ``extract_activations`` rule stores them.

    ``settings`` default to :class:`ExtractionSettings` on the model's device; ``site`` overrides its site. Texts
    are batched by length, so the batch size moves the last float32 digits: with the run's ``activations``
    settings the vectors are the pipeline's to the bit.
    ``noise`` perturbs the inputs (:class:`probes.models.perturbations.InputNoise`); ``mlp_sites`` adds the MLP
    neurons (``mlp_post``) or inputs (``mlp_in``) of every layer from the same pass.
    """
    settings = settings or ExtractionSettings(device=str(model.cfg.device))
    if site is not None:
        settings = replace(settings, site=site)
    pooled, details = pooled_activations(model, texts, settings, progress, noise, seed, mlp_sites, layers)
    embeddings = pooled.pop(INPUT_EMBEDDING).numpy()
    mlp = {key: pooled.pop(key).numpy() for key in [key for key in pooled if "/" in key]}
    return Activations(
        vectors={pooling: tensor.numpy() for pooling, tensor in pooled.items()},
        layers=details["layers"],
        hook_names=details["hook_names"],
        site=settings.site,
        n_layers=details["n_layers"],
        input_embeddings=embeddings,
        mlp=mlp,
        details=details,
    )
