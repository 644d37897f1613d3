"""Perturbations of concept depth (docs/methods.md §2): noisy inputs and other numeric formats of the weights.

Both are axes of the DAG: every extraction is named by a weight format (``fp32``, ``bf16``, ``fp16``,
``int8``) and an input-noise condition (``clean`` or e.g. ``characters-insert-0.1``), and cached per value.

TransformerLens keeps its weights as plain parameters used in einsums, not ``nn.Linear`` modules, so
torch's dynamic int8 quantisation has nothing to act on. ``int8`` is therefore weight-only round-to-int8
with one scale per output channel, computed with the dequantised values, as weight-only int8 schemes do
(the arithmetic stays in the run's float format; no int8 kernel is involved).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from transformer_lens import HookedTransformer

# weight format -> torch dtype the model is loaded in (int8 is dequantised into the run's own dtype)
FLOAT_FORMATS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
WEIGHT_FORMATS = (*FLOAT_FORMATS, "int8")
CLEAN = "clean"
NOISE_KINDS = ("characters", "tokens")
NOISE_POSITIONS = ("insert", "prepend")
# printable ASCII without whitespace, so character noise never splits or joins words by itself
NOISE_ALPHABET = string.ascii_letters + string.digits + string.punctuation
_NOISE_STREAM = 0x4E  # mixed into every noise seed, so noise never reuses another stream of the same seed
# TransformerLens block weights of the linear maps, and the axes each contracts with its input
_CONTRACTED_AXES = {
    "W_Q": (1,),
    "W_K": (1,),
    "W_V": (1,),
    "_W_K": (1,),
    "_W_V": (1,),
    "W_O": (0, 1),
    "W_in": (0,),
    "W_gate": (0,),
    "W_out": (0,),
}


def unperturbed(frame: pd.DataFrame, weights: str) -> pd.Series:
    """Which rows of a table with ``weights`` and ``noise`` columns are the run's own weights on clean inputs."""
    return (frame["weights"] == weights) & (frame["noise"] == CLEAN)


def format_name(dtype: str) -> str:
    """The weight-format name of a float dtype (``float32`` -> ``fp32``), as used in paths and tables."""
    return {torch_dtype: name for name, torch_dtype in FLOAT_FORMATS.items()}[dtype]


@dataclass(frozen=True)
class InputNoise:
    """Seeded random characters or tokens, inserted among a text's own or prepended to it.

    ``rate`` is the number of noise units per unit of the text (characters per character, tokens per
    token), at least one. Inserted noise never goes after the last character or token, so the position
    a ``last``-token probe reads stays the text's own.
    """

    kind: str
    position: str
    rate: float

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS or self.position not in NOISE_POSITIONS or not 0 < self.rate <= 10:
            raise ValueError(
                f"input noise needs kind in {NOISE_KINDS}, position in {NOISE_POSITIONS} and 0 < rate <= 10; "
                f"got {self.kind!r}, {self.position!r}, {self.rate!r}"
            )

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.position}-{self.rate:g}"

    @classmethod
    def parse(cls, name: str) -> InputNoise | None:
        """The noise a condition name stands for; ``None`` for ``clean``."""
        if name == CLEAN:
            return None
        match = re.fullmatch(rf"({'|'.join(NOISE_KINDS)})-({'|'.join(NOISE_POSITIONS)})-([0-9.e+-]+)", name)
        if not match:
            raise ValueError(f"{name!r} is not a noise condition: use 'clean' or e.g. 'characters-insert-0.1'")
        return cls(match[1], match[2], float(match[3]))

    def count(self, length: int) -> int:
        return max(1, round(self.rate * length))

    def _rng(self, seed: int, index: int) -> np.random.Generator:
        return np.random.default_rng([seed, index, _NOISE_STREAM])

    def apply_to_texts(self, texts: Sequence[str], seed: int) -> list[str]:
        """Character noise; text ``i`` gets the same noise for the same seed in every run."""
        noisy = []
        for index, text in enumerate(texts):
            rng = self._rng(seed, index)
            characters = rng.choice(list(NOISE_ALPHABET), size=self.count(len(text)))
            if self.position == "prepend":
                noisy.append("".join(characters) + " " + text)
                continue
            pieces = list(text)
            for character in characters:  # before the last character, so the text still ends as it did
                pieces.insert(int(rng.integers(0, max(len(pieces) - 1, 0) + 1)), str(character))
            noisy.append("".join(pieces))
        return noisy

    def apply_to_tokens(
        self, token_lists: Sequence[torch.Tensor], vocabulary: np.ndarray, skip_first: int, seed: int
    ) -> list[torch.Tensor]:
        """Token noise drawn from ``vocabulary`` (the ids of ordinary tokens); a leading BOS stays first."""
        import torch

        noisy = []
        for index, tokens in enumerate(token_lists):
            rng = self._rng(seed, index)
            ids = tokens.tolist()
            head, body = ids[:skip_first], ids[skip_first:]
            noise = rng.choice(vocabulary, size=self.count(len(body))).tolist()
            if self.position == "prepend":
                body = noise + body
            else:
                for token in noise:
                    body.insert(int(rng.integers(0, max(len(body) - 1, 0) + 1)), token)
            noisy.append(torch.tensor(head + body, dtype=tokens.dtype))
        return noisy


def ordinary_token_ids(model: HookedTransformer) -> np.ndarray:
    """Vocabulary ids a tokenizer can emit for text: every id but the special tokens."""
    special = set(model.tokenizer.all_special_ids)
    n_ids = min(model.cfg.d_vocab, len(model.tokenizer))  # once: len() of a fast tokenizer rebuilds its vocabulary
    return np.array([i for i in range(n_ids) if i not in special])


def quantise_int8_(weight: torch.Tensor, contracted: tuple[int, ...]) -> torch.Tensor:
    """Round ``weight`` in place to int8 levels with one symmetric scale per output channel.

    The output channels are the axes not contracted with the input; each gets scale max|w| / 127, and the
    weight becomes round(w / scale) * scale, clipped to [-127, 127] levels.
    """
    import torch

    with torch.no_grad():
        scale = weight.abs().amax(dim=contracted, keepdim=True).float() / 127
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        levels = (weight.float() / scale).round_().clamp_(-127, 127)
        weight.copy_((levels * scale).to(weight.dtype))
    return weight


def quantise_model_int8(model: HookedTransformer) -> HookedTransformer:
    """Round every linear map of every block (attention Q, K, V, O and the MLP) to int8 per output channel;
    embeddings, unembedding, norms and biases stay as they are."""
    quantised = 0
    for name, parameter in model.named_parameters():
        short = name.rsplit(".", 1)[-1]
        if name.startswith("blocks.") and short in _CONTRACTED_AXES:
            quantise_int8_(parameter.data, _CONTRACTED_AXES[short])
            quantised += 1
    if quantised < 4 * model.cfg.n_layers:  # at least Q, K, V, O per block; an unknown layout must not pass silently
        raise ValueError(
            f"found only {quantised} block weight matrices to quantise in a {model.cfg.n_layers}-layer model"
        )
    return model
