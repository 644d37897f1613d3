"""Wendler et al.'s token energy: how much of a latent lies in the directions the model can decode at all
(docs/methods.md §3.5).

The reference scales each unembedding row by the final norm's gain, makes it unit length (``Ũ``, V × d),
and divides the root-mean-square cosine between the latent and every row by the root-mean-square cosine
between pairs of rows. Both only need the d × d Gram matrix ``G = Ũᵀ Ũ``:
``energy(h) = sqrt(ĥᵀ G ĥ / V) / (‖G‖_F / V)`` with ``ĥ = h / ‖h‖``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def unembedding_gram(unembedding: np.ndarray | torch.Tensor, gain: np.ndarray | torch.Tensor) -> np.ndarray:
    """``G = Ũᵀ Ũ`` (d × d) of the unembedding rows (V × d) scaled by ``gain`` (d), then unit length.

    One float32 product, as the reference computes it (Gemma's 262k rows: seconds, not the float64 product's
    tens of seconds), returned in float64.
    """
    import torch

    rows = torch.as_tensor(unembedding, dtype=torch.float32) * torch.as_tensor(gain, dtype=torch.float32)
    rows = rows / rows.norm(dim=1, keepdim=True)
    return (rows.T @ rows).double().numpy()


def token_energy(residuals: np.ndarray | torch.Tensor, gram: np.ndarray, n_vocab: int) -> np.ndarray:
    """The energy of every residual (..., d): RMS cosine with the rows over RMS cosine between rows."""
    hidden = np.asarray(residuals, dtype=np.float64)
    hidden = hidden / np.linalg.norm(hidden, axis=-1, keepdims=True)
    rms_cosine = np.sqrt(np.einsum("...i,ij,...j->...", hidden, gram, hidden) / n_vocab)
    return rms_cosine / (np.linalg.norm(gram) / n_vocab)


def hf_unembedding(hf_model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The uncentred unembedding (V × d) and the final norm's effective gain (d) of a Hugging Face model.

    TransformerLens centres ``W_U`` over the vocabulary, which changes every row's direction, so the energy
    reads the checkpoint's own weights. The final norm is the base model's last norm module; its gain is
    read off its output, ``(N(s) - N(-s)) / 2s`` for the mean-zero, unit-RMS sign vector ``s``, which gives
    ``w`` for RMSNorm and LayerNorm and ``1 + w`` for Gemma's norm alike.
    """
    import torch

    unembedding = hf_model.get_output_embeddings().weight.detach().float()
    norms = [module for module in hf_model.base_model.children() if "norm" in type(module).__name__.lower()]
    if not norms:
        raise ValueError(f"{type(hf_model.base_model).__name__} has no final norm module to read the gain from")
    signs = torch.ones(unembedding.shape[1])
    signs[1::2] = -1.0
    with torch.inference_mode():
        gain = (norms[-1](signs[None]) - norms[-1](-signs[None]))[0].float() / (2 * signs)
    return unembedding, gain
