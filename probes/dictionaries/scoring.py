"""Loading a trained SAE or transcoder and scoring it on any texts with the evaluation's own measures:
FVU, L0, dead and dense latents, and loss recovered with document-bootstrap intervals (docs/methods.md §4)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from probes.activations.extraction import check_finite, right_padded, tokenize
from probes.dictionaries.sae import document_losses, loss_recovered, reconstruction_metrics

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


def load_sae(path: str | os.PathLike, device: str = "cpu") -> SAE:
    """An SAE or transcoder the pipeline trained (``results/sae/...``), as SAELens's own ``SAE`` or ``Transcoder``."""
    from sae_lens import SAE

    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "cfg.json"))):
        raise FileNotFoundError(f"{path}: not an SAE folder (no cfg.json); the pipeline writes them under results/sae/")
    return SAE.load_from_disk(str(path), device=device)


def dictionary_hooks(sae: SAE) -> tuple[str, str]:
    """(hook it reads, hook it writes): the same hook for an SAE; the MLP's input and output for a transcoder."""
    read = sae.cfg.metadata.hook_name
    return read, getattr(sae.cfg.metadata, "hook_name_out", None) or read


def score_sae(
    model: HookedTransformer,
    sae: SAE,
    texts: Sequence[str],
    *,
    max_tokens: int = 128,
    batch_size: int = 8,
    dense_threshold: float = 0.1,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """How well ``sae`` (or a transcoder) reconstructs ``model`` on ``texts``, each text one document.

    Every real token after a prepended BOS is a row, as in training: ``fvu``, ``l0``, ``dead_fraction`` and
    ``dense_fraction`` and ``explained_variance`` over those rows (a transcoder's target is its MLP's output), then
    the mean losses with the reconstruction spliced in and with the hook zero-ablated, SAELens's ``ce_loss_score``
    and ``kl_div_score`` (the ablation zeroes every position) and ``loss_recovered`` (the BOS kept clean), each
    with a percentile interval over documents (``*_lo``, ``*_hi``) when ``n_boot`` > 0.
    """
    read, written = dictionary_hooks(sae)
    token_lists, _ = tokenize(model, texts, max_tokens)
    rows, targets = _token_rows(model, token_lists, (read, written), batch_size)
    scores = reconstruction_metrics(sae, rows, dense_threshold, targets=None if written == read else targets)
    losses = document_losses(model, {written: sae}, token_lists, batch_size, {written: read})
    means = loss_recovered(losses, n_boot=n_boot, ci=ci, seed=seed).iloc[0].to_dict()
    return {"hook_name": written, "hook_name_in": read, "n_rows": len(rows)} | scores | means


def _token_rows(
    model: HookedTransformer, token_lists: Sequence[torch.Tensor], hooks: tuple[str, str], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The activations at both hooks of every real token after the BOS, float32, in document order."""
    import torch

    skip_first = int(bool(model.cfg.default_prepend_bos))
    blocks = [int(hook.split(".")[1]) for hook in hooks if hook.startswith("blocks.")]
    stop_at = max(blocks) + 1 if blocks else None  # a hook outside the blocks (hook_embed) needs no block at all
    captured: dict[str, list[torch.Tensor]] = {hook: [] for hook in set(hooks)}
    for first in range(0, len(token_lists), batch_size):
        tokens, mask = right_padded(model, token_lists[first : first + batch_size])
        keep = mask.clone()
        keep[:, :skip_first] = False

        def capture(activation: torch.Tensor, hook: Any, keep: torch.Tensor = keep) -> None:
            check_finite(model, activation, hook.name, hook.name)
            captured[hook.name].append(activation[keep.to(activation.device)].float().cpu())

        with torch.inference_mode():
            model.run_with_hooks(
                tokens.to(model.cfg.device),
                attention_mask=mask.long().to(model.cfg.device),
                stop_at_layer=stop_at,
                fwd_hooks=[(hook, capture) for hook in set(hooks)],
            )
    return torch.cat(captured[hooks[0]]), torch.cat(captured[hooks[1]])
