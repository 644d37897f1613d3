"""The logit and tuned lenses: decoding a layer's residual through the model's own unembedding (docs/methods.md §3).

Both lenses are the ``tuned-lens`` package's modules: its ``Unembed`` takes a HookedTransformer's final
norm (weights folded into the unembedding by TransformerLens, so the norm itself is weightless) and its
unembedding. Its trainer only drives Hugging Face models through their own layer lists, so the
translators are trained here with the published objective (KL to the final-layer distribution), starting
from the closed-form least-squares map of each layer to the last (the package starts from the identity).

Layers follow the residual convention of :mod:`probes.activations.extraction`: 0 is the embedding output and
``l`` is the output of block ``l-1``, so layer ``L`` is what the model itself decodes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probes.io import atomic_path
from probes.resampling import bootstrap_weights, percentile_interval, resampled_means

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer
    from tuned_lens.nn.lenses import TunedLens
    from tuned_lens.nn.unembed import Unembed


MOMENTUM = 0.9  # the tuned_lens package's SGD momentum
LENSES = ("logit", "linear", "tuned")  # the identity, the least-squares map, the trained translator
# The exact validation loss reads the full vocabulary (Gemma: about 0.8 TFLOP for 128 rows), so it reads
# few rows, at the start and CHECKPOINTS times during training.
VALIDATION_TOKENS = 128
CHECKPOINTS = 4


def unembed_of(model: HookedTransformer) -> Unembed:
    from tuned_lens.nn.unembed import Unembed

    unembed = Unembed(model)
    # The package copies W_U as a transposed view; a contiguous copy makes every decode ~2.5x faster.
    unembed.unembedding.weight.data = unembed.unembedding.weight.data.contiguous()
    return unembed


def decode(model: HookedTransformer, unembed: Unembed, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm, unembedding and the model's own logit soft-capping, exactly as its forward pass does."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    return apply_softcap(unembed(hidden), model.cfg.output_logits_soft_cap)


def new_tuned_lens(model: HookedTransformer, unembed: Unembed) -> TunedLens:
    from tuned_lens.nn.lenses import TunedLens, TunedLensConfig

    config = TunedLensConfig(
        base_model_name_or_path=model.cfg.model_name, d_model=model.cfg.d_model, num_hidden_layers=model.cfg.n_layers
    )
    return TunedLens(unembed, config)


def least_squares_lens(model: HookedTransformer, unembed: Unembed, maps: torch.Tensor, bias: torch.Tensor) -> TunedLens:
    """The package's lens whose translators apply the least-squares maps ``h @ A[l] + b[l]`` of
    :func:`probes.depth_usage.contributions.least_squares_maps`: the translator adds ``h (A - I) + b`` to ``h``,
    so its weight is ``A^T - I`` (``nn.Linear`` multiplies by the transpose)."""
    import torch

    lens = new_tuned_lens(model, unembed).to(unembed.unembedding.weight.device)
    eye = torch.eye(model.cfg.d_model)
    with torch.no_grad():
        for layer, translator in enumerate(lens.layer_translators):
            translator.weight.copy_(maps[layer].T - eye)
            translator.bias.copy_(bias[layer])
    return lens.requires_grad_(False)


def lens_logits(
    model: HookedTransformer, unembed: Unembed, tuned: TunedLens | None, hidden: torch.Tensor, layer: int
) -> torch.Tensor:
    """Logits of one layer's residual; the tuned lens has no translator at the last layer (it is the output)."""
    if tuned is not None and layer < model.cfg.n_layers:
        hidden = tuned.transform_hidden(hidden, layer)
    return decode(model, unembed, hidden)


def lens_log_probs(
    model: HookedTransformer,
    unembed: Unembed,
    tuned: TunedLens | None,
    residuals: torch.Tensor,
    layers: Sequence[int],
) -> Iterator[tuple[int, torch.Tensor]]:
    """(layer, log-probabilities (n, vocabulary)) of each column of ``residuals`` (n, len(layers), d_model), read
    through the tuned lens, or the logit lens when ``tuned`` is None."""
    import torch

    for column, layer in enumerate(layers):
        hidden = residuals[:, column].to(unembed.unembedding.weight)
        yield layer, torch.log_softmax(lens_logits(model, unembed, tuned, hidden, layer), dim=-1)


def save_tuned_lens(lens: TunedLens, path: str | os.PathLike) -> None:
    """One safetensors file (translators plus config), so the cache entry appears atomically."""
    import json

    from safetensors.torch import save_file

    state = {name: tensor.contiguous() for name, tensor in lens.layer_translators.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"config": json.dumps(lens.config.to_dict())})


def load_tuned_lens(path: str | os.PathLike, model: HookedTransformer | Unembed) -> TunedLens:
    """The ``tuned_lens`` package's ``TunedLens`` that ``train_tuned_lens`` saved at ``path``, for ``model`` (or its
    ``Unembed``); refused when it was trained for another unembedding."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer
    from tuned_lens.nn.lenses import TunedLens, TunedLensConfig

    with safe_open(str(path), "pt") as handle:
        config = TunedLensConfig.from_dict(json.loads(handle.metadata()["config"]))
    trained_for = config.unembed_hash
    unembed = unembed_of(model) if isinstance(model, HookedTransformer) else model
    lens = TunedLens(unembed, config)  # hashes this unembedding into config.unembed_hash
    if trained_for != lens.config.unembed_hash:
        raise ValueError(f"{path}: tuned lens was trained for a different unembedding; rerun train_tuned_lens")
    lens.layer_translators.load_state_dict(load_file(str(path)))
    lens.requires_grad_(False)
    return lens


@dataclass(frozen=True)
class TunedLensSettings:
    """Budgets of the tuned lens; the defaults fit the 2-core CPU budget (docs/methods.md §3.6)."""

    train_concepts: int = 50
    train_tokens: int = 8192
    cloze_tokens: int = 1024
    context: int = 32
    heldout_tokens: int = 1024
    ridge: float = 1e-6
    steps: int = 60
    batch_tokens: int = 128
    lr: float = 1.0
    weight_decay: float = 1e-3
    sampled_vocab: int | None = 2048
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        sizes = (self.train_concepts, self.train_tokens, self.heldout_tokens, self.steps, self.batch_tokens)
        if min(*sizes, self.batch_size) < 1 or self.cloze_tokens < 0 or self.context < 2:
            raise ValueError(
                "train_concepts, train_tokens, heldout_tokens, steps, batch_tokens and batch_size must be >= 1, "
                "cloze_tokens >= 0 and context >= 2"
            )
        if self.sampled_vocab is not None and self.sampled_vocab < 2:
            raise ValueError("sampled_vocab must be >= 2 or null (the full vocabulary)")
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")


def token_residuals(
    model: HookedTransformer,
    texts: Sequence[str] | Sequence[torch.Tensor],
    batch_size: int,
    progress: bool = True,
    with_text: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
    """Residual stream at every layer for every token but a prepended BOS: (tokens, L+1, d_model).

    ``texts`` are strings or token lists as :func:`probes.activations.extraction.tokenize` returns them (a
    prepended BOS included). Rows follow the texts in order. With ``with_text``, also which text each row
    comes from.
    """
    import torch
    from tqdm.auto import tqdm

    from probes.activations.extraction import check_finite, right_padded, site_hooks, tokenize

    hooks = site_hooks("resid", model.cfg.n_layers)
    skip = int(bool(model.cfg.default_prepend_bos))
    token_lists = tokenize(model, texts, model.cfg.n_ctx)[0] if len(texts) and isinstance(texts[0], str) else texts
    chunks, owners = [], []
    for start in tqdm(range(0, len(texts), batch_size), desc="lens corpus", unit="batch", disable=not progress):
        tokens, mask = right_padded(model, token_lists[start : start + batch_size])
        keep = mask & (torch.arange(tokens.shape[1])[None, :] >= skip)
        _, cache = model.run_with_cache(
            tokens.to(model.cfg.device),
            attention_mask=mask.long().to(model.cfg.device),
            names_filter=list(hooks.values()),
            stop_at_layer=model.cfg.n_layers,
        )
        for layer in sorted(hooks):
            check_finite(model, cache[hooks[layer]], f"{hooks[layer]} (layer {layer})", "resid")
        on_device = keep.to(model.cfg.device)
        chunks.append(torch.stack([cache[hooks[layer]][on_device] for layer in sorted(hooks)], dim=1).float().cpu())
        owners.append(np.repeat(np.arange(start, start + len(tokens)), keep.sum(1).numpy()))
    residuals = torch.cat(chunks)
    return (residuals, np.concatenate(owners)) if with_text else residuals


def fit_tuned_lens(
    model: HookedTransformer,
    unembed: Unembed,
    start: TunedLens,
    residuals: torch.Tensor,
    n_validation: int,
    settings: TunedLensSettings,
    seed: int,
    progress: bool = True,
) -> tuple[TunedLens, list[float], list[int]]:
    """Train a copy of ``start``'s translators to minimise cross-entropy to the final-layer distribution.

    Minimising cross-entropy minimises KL, the entropy of the target being fixed. The full-vocabulary
    normaliser costs (tokens x vocabulary x d_model) per layer and step; with ``sampled_vocab`` set it is
    estimated from the tokens that carry most final-layer mass plus a fresh uniform sample of the rest,
    re-weighted (sampled softmax), while the target term stays exact: sum_v p_v z_v = (W^T p) . norm(h).
    Models that soft-cap their logits make that term non-linear and always train on the full vocabulary.

    ``residuals`` are token rows (n, L+1, d), the last ``n_validation`` of them kept for validation. Each
    layer keeps its translator from the evaluation with the lowest validation loss, ``start`` included, so
    training cannot leave a layer worse off than where it started on text like the validation rows. That
    loss is the exact one over the full vocabulary, on ``VALIDATION_TOKENS`` rows spread over the validation
    documents: the sampled one is biased low for a lens that spreads mass over the re-weighted tail, and
    training that exploits it passed a sampled validation while raising the held-out KL.
    Returns the lens, the mean loss per step and, per layer, the step whose translator was kept (0: the
    start).
    """
    import torch
    from tqdm.auto import tqdm

    n_layers = model.cfg.n_layers
    weight = unembed.unembedding.weight
    bias = unembed.unembedding.bias
    if bias is None:
        bias = torch.zeros(weight.shape[0], device=weight.device)
    vocab = weight.shape[0]
    exact = (
        settings.sampled_vocab is None or settings.sampled_vocab >= vocab or (model.cfg.output_logits_soft_cap or 0) > 0
    )
    if not 1 <= n_validation < len(residuals):
        raise ValueError(f"{n_validation} validation rows of {len(residuals)}: both sides need at least one")
    residuals = residuals.to(weight)
    n_train = len(residuals) - n_validation
    spacing = max(1, n_validation // VALIDATION_TOKENS)
    validation = torch.arange(n_train, len(residuals))[::spacing][:VALIDATION_TOKENS]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    lens = new_tuned_lens(model, unembed).to(weight.device)
    lens.layer_translators.load_state_dict(start.layer_translators.state_dict())

    if not exact:  # the target term's expected unembedding, one chunk of final distributions at a time
        parts, mass = [], torch.zeros(vocab, device=weight.device)
        with torch.no_grad():
            for chunk in residuals[:, n_layers].split(256):
                p = torch.softmax(decode(model, unembed, chunk), -1)
                parts.append((p @ weight, p @ bias))
                mass += p.sum(0)
        expected_unembedding = torch.cat([part[0] for part in parts])
        expected_bias = torch.cat([part[1] for part in parts])
        n_kept = settings.sampled_vocab // 2
        kept = torch.topk(mass, n_kept).indices
        rest = torch.ones(vocab, dtype=torch.bool, device=weight.device)
        rest[kept] = False
        rest = rest.nonzero().squeeze(1)
        n_sampled = settings.sampled_vocab - n_kept
        offset = torch.cat([torch.zeros(n_kept), torch.full((n_sampled,), math.log(len(rest) / n_sampled))])
        offset = offset.to(weight)

    def columns() -> torch.Tensor | None:
        if exact:
            return None
        sampled = rest[torch.randperm(len(rest), generator=generator)[:n_sampled].to(rest.device)]
        return torch.cat([kept, sampled]).to(weight.device)

    def layer_losses(tokens: torch.Tensor, vocabulary: torch.Tensor | None) -> torch.Tensor:
        """Mean cross-entropy per layer (0..L-1) on these tokens, over the full vocabulary without ``vocabulary``."""
        if vocabulary is None:
            with torch.no_grad():
                target = torch.softmax(decode(model, unembed, residuals[tokens, n_layers]), -1)
        else:
            sub_weight, sub_bias = weight[vocabulary], bias[vocabulary]
        losses = []
        for layer in range(n_layers):
            hidden = lens.transform_hidden(residuals[tokens, layer], layer)
            if vocabulary is None:
                logits = decode(model, unembed, hidden)
                losses.append((torch.logsumexp(logits, -1) - (target * logits).sum(-1)).mean())
            else:
                normed = unembed.final_norm(hidden)
                log_normaliser = torch.logsumexp(normed @ sub_weight.T + sub_bias + offset, -1)
                linear = (normed * expected_unembedding[tokens]).sum(-1) + expected_bias[tokens]
                losses.append((log_normaliser - linear).mean())
        return torch.stack(losses)

    best_loss = torch.full((n_layers,), math.inf)
    best_state = [None] * n_layers
    best_step = [0] * n_layers

    def keep_best(step: int) -> None:
        with torch.no_grad():
            losses = layer_losses(validation, None).cpu()
        for layer in torch.nonzero(losses < best_loss).flatten().tolist():
            best_loss[layer], best_step[layer] = losses[layer], step
            best_state[layer] = {k: v.detach().clone() for k, v in lens[layer].state_dict().items()}

    # The package's optimiser: SGD with Nesterov momentum, its learning rate scaled by 1 - momentum.
    optimiser = torch.optim.SGD(
        lens.layer_translators.parameters(),
        lr=settings.lr * (1 - MOMENTUM),
        momentum=MOMENTUM,
        nesterov=True,
        weight_decay=settings.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 - step / settings.steps)
    evaluate_every = max(1, settings.steps // CHECKPOINTS)
    history = []
    keep_best(0)
    for step in tqdm(range(1, settings.steps + 1), desc="tuned lens", unit="step", disable=not progress):
        batch = torch.randint(n_train, (min(settings.batch_tokens, n_train),), generator=generator)
        loss = layer_losses(batch, columns()).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for translator in lens.layer_translators:  # the package clips all translators together
            torch.nn.utils.clip_grad_norm_(translator.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        history.append(loss.item() / n_layers)
        if step % evaluate_every == 0 or step == settings.steps:
            keep_best(step)
    for layer, state in enumerate(best_state):
        lens[layer].load_state_dict(state)
    lens.requires_grad_(False)
    return lens, history, best_step


def heldout_kl(
    model: HookedTransformer,
    unembed: Unembed,
    lenses: Mapping[str, TunedLens | None],
    residuals: torch.Tensor,
    texts: Sequence[int] | np.ndarray | None = None,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    chunk: int = 512,
) -> pd.DataFrame:
    """KL(final || lens) in bits per token, per layer and lens (None: the logit lens), over the full
    vocabulary, with a bootstrap interval, and each lens's KL minus the one of the lens named ``tuned``,
    with its interval (positive where the tuned lens reads more of the output).

    ``texts`` says which text each token row comes from: tokens of one text are not independent, so a
    resample draws whole texts (without it, single tokens). Every layer and lens sees the same resamples,
    so the paired differences get their intervals. KL = sum_v p_v log p_v - sum_v p_v z_v + logsumexp(z),
    with the middle term through the expected unembedding (W^T p) . norm(h) when the logits are linear in
    the normed residual, which leaves one matrix product and one logsumexp per token, layer and lens.
    ``chunk`` tokens share one product with the unembedding: on a 2-core CPU that product runs 1.5x faster
    at 512 tokens than at 128 (Gemma's 262k-entry vocabulary: 512 MB of logits per chunk).
    """
    import torch

    n_layers = model.cfg.n_layers
    weight = unembed.unembedding.weight
    bias = unembed.unembedding.bias
    linear = (model.cfg.output_logits_soft_cap or 0) <= 0
    residuals = residuals.to(weight)
    n = residuals.shape[0]
    per_token = {name: np.zeros((n_layers + 1, n)) for name in lenses}  # layer L stays 0: every lens is the output
    # One logits buffer for every chunk, layer and lens: a fresh 512 MB tensor each time costs its page faults.
    buffer = torch.empty((min(chunk, n), weight.shape[0]), dtype=weight.dtype, device=weight.device)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            part = residuals[start : start + chunk]
            log_p = torch.log_softmax(decode(model, unembed, part[:, n_layers]), -1)
            p = log_p.exp()
            neg_entropy = (p * log_p).sum(-1)
            if linear:
                expected_weight = p @ weight
                expected_bias = p @ bias if bias is not None else torch.zeros(len(part)).to(weight)
            for name, lens in lenses.items():
                for layer in range(n_layers):
                    hidden = part[:, layer] if lens is None else lens.transform_hidden(part[:, layer], layer)
                    if linear:
                        normed = unembed.final_norm(hidden)
                        logits = torch.matmul(normed, weight.T, out=buffer[: len(part)])
                        if bias is not None:
                            logits.add_(bias)
                        cross = (normed * expected_weight).sum(-1) + expected_bias
                    else:
                        logits = decode(model, unembed, hidden)
                        cross = torch.linalg.vecdot(p, logits)
                    kl = (neg_entropy - cross + logsumexp_(logits)).clamp(min=0) / math.log(2)
                    per_token[name][layer, start : start + len(part)] = kl.double().cpu().numpy()
    groups = None if texts is None else np.asarray(texts)
    weights = bootstrap_weights(n, n_boot, seed, groups)
    resampled = {name: resampled_means(weights, values) for name, values in per_token.items()}  # (n_boot, L+1)
    n_texts = n if groups is None else len(np.unique(groups))
    frames = []
    for name in lenses:
        lo, hi = percentile_interval(resampled[name], ci)
        difference_lo, difference_hi = percentile_interval(resampled[name] - resampled["tuned"], ci)
        difference = per_token[name].mean(1) - per_token["tuned"].mean(1)
        # undefined for the tuned lens itself, and at L, where every lens is the output
        difference[n_layers if name != "tuned" else slice(None)] = np.nan
        frames.append(
            pd.DataFrame(
                {
                    "lens": name,
                    "layer": np.arange(n_layers + 1),
                    "kl_bits": per_token[name].mean(1),
                    "kl_lo": lo,
                    "kl_hi": hi,
                    "kl_minus_tuned": difference,
                    "kl_minus_tuned_lo": np.where(np.isnan(difference), np.nan, difference_lo),
                    "kl_minus_tuned_hi": np.where(np.isnan(difference), np.nan, difference_hi),
                    "n_tokens": n,
                    "n_texts": n_texts,
                    "ci": ci,
                    "n_boot": n_boot,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp`` over the last axis, overwriting ``logits``: 2x faster on a 262k vocabulary."""
    top = logits.amax(-1, keepdim=True)
    return logits.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))
