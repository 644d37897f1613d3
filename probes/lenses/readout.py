"""Reading the logit or tuned lens on prompts: every chosen layer's next-token distribution at the last position,
computed as the latent-language experiments compute theirs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from probes.activations.extraction import ExtractionSettings, pooled_activations
from probes.lenses.tuned import lens_log_probs, unembed_of

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer
    from tuned_lens.nn.lenses import TunedLens


@dataclass(frozen=True)
class LensReadout:
    """``log_probs`` (n_prompts, len(layers), vocabulary) of the next token after each prompt, per layer."""

    prompts: list[str]
    layers: list[int]
    lens: str
    log_probs: torch.Tensor
    tokenizer: Any

    def top_tokens(self, k: int = 5) -> pd.DataFrame:
        """The ``k`` most probable next tokens of every prompt and layer: prompt, layer, rank, token, prob."""
        values, ids = self.log_probs.topk(k, dim=-1)
        n, n_layers = values.shape[:2]
        return pd.DataFrame(
            {
                "prompt": np.repeat(self.prompts, n_layers * k),
                "layer": np.tile(np.repeat(self.layers, k), n),
                "rank": np.tile(np.arange(1, k + 1), n * n_layers),
                "token": [self.tokenizer.decode([token]) for token in ids.reshape(-1).tolist()],
                "prob": values.exp().reshape(-1).numpy(),
            }
        )


def read_lens(
    model: HookedTransformer,
    prompts: Sequence[str],
    tuned: TunedLens | None = None,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    max_tokens: int = 256,
) -> LensReadout:
    """Each layer's next-token distribution after each prompt, through ``tuned`` (a tuned lens, e.g. from
    :func:`probes.lenses.tuned.load_tuned_lens`) or the logit lens when it is None.

    Layers are residual-stream layers 0..L (default all); layer L is the model's own output under either lens.
    """
    import torch

    settings = ExtractionSettings(
        poolings=("last",), batch_size=batch_size, max_tokens=max_tokens, device=str(model.cfg.device)
    )
    pooled, details = pooled_activations(model, list(prompts), settings, progress=False, layers=layers)
    unembed = unembed_of(model)
    with torch.inference_mode():
        per_layer = [
            log_probs.float().cpu()
            for _, log_probs in lens_log_probs(model, unembed, tuned, pooled["last"], details["layers"])
        ]
    return LensReadout(
        prompts=list(prompts),
        layers=details["layers"],
        lens="logit" if tuned is None else "tuned",
        log_probs=torch.stack(per_layer, dim=1),
        tokenizer=model.tokenizer,
    )
