"""What a feature is (docs/methods.md §7): where it fires, how it separates a task's classes, what it writes.

One description serves every kind of feature this pipeline has: an MLP neuron (its activation; it writes
its row of ``W_out``), an SAE latent and a transcoder latent (their activations; they write their decoder
row). What a feature writes is read through the unembedding as the logit lens reads a residual: the final
norm's weights are folded into ``W_U`` by TransformerLens, a LayerNorm's centring is applied to the
direction (an RMSNorm only rescales it, which changes no ranking), and no bias is added (the feature does
not write it). Thus a neuron's logits are ``W_out[l-1][n] @ W_U`` on an RMSNorm model such as SmolLM2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer


def unembedded_directions(model: HookedTransformer, directions: torch.Tensor) -> torch.Tensor:
    """Logits (m, vocabulary) that directions (m, d_model) written into the residual stream promote."""
    import torch

    directions = directions.to(model.W_U.device, model.W_U.dtype)
    if model.cfg.normalization_type in ("LN", "LNPre"):
        directions = directions - directions.mean(-1, keepdim=True)
    with torch.no_grad():
        return directions @ model.W_U


def feature_writes(
    model: HookedTransformer, directions: torch.Tensor, n_tokens: int
) -> list[dict[str, list[tuple[str, float]]]]:
    """The ``n_tokens`` tokens each direction promotes most (``top``) and suppresses most (``bottom``)."""
    logits = unembedded_directions(model, directions).float()
    top, bottom = logits.topk(n_tokens, dim=1), (-logits).topk(n_tokens, dim=1)

    def named(ids: torch.Tensor, values: torch.Tensor) -> list[tuple[str, float]]:
        return [(model.tokenizer.decode([int(i)]), float(v)) for i, v in zip(ids, values, strict=True)]

    return [
        {"top": named(top.indices[row], top.values[row]), "bottom": named(bottom.indices[row], -bottom.values[row])}
        for row in range(len(logits))
    ]


def top_features(
    values: np.ndarray,
    y: np.ndarray,
    texts: Sequence[str],
    classes: Sequence[str],
    corpus_values: torch.Tensor | None = None,
    corpus_tokens: dict[str, torch.Tensor] | None = None,
    corpus_str_tokens: dict[int, list[str]] | None = None,
    n_top: int = 5,
    n_examples: int = 3,
    bins: int = 24,
) -> list[dict]:
    """The features that best separate the classes over all task rows, each described for a feature page.

    Features are ranked by standardised mean difference (:func:`probes.dictionaries.sae.standardised_difference_order`).
    Each gets its mean and firing rate (activation > 0) per class, its max-activating task texts (text,
    class, activation) and held-out corpus contexts (the document's tokens, position, activation), and a
    histogram of its activations on each class and on the held-out corpus tokens (densities on shared bins).
    """
    from probes.dictionaries.sae import standardised_difference_order

    values, y = np.asarray(values, dtype=np.float64), np.asarray(y)
    everything = np.ones(len(y), dtype=bool)
    rows = []
    for feature in standardised_difference_order(values, y, everything)[:n_top]:
        column = values[:, feature]
        means = [float(column[y == c].mean()) for c in (0, 1)]
        task = [
            (texts[i], classes[y[i]], float(column[i]))
            for i in np.argsort(-column, kind="stable")[:n_examples]
            if column[i] > 0
        ]
        corpus, corpus_column = [], None
        if corpus_values is not None:
            corpus_column = corpus_values[:, feature]
            for row in corpus_column.argsort(descending=True, stable=True)[:n_examples].tolist():
                if corpus_column[row] > 0:
                    document, position = int(corpus_tokens["document"][row]), int(corpus_tokens["position"][row])
                    corpus.append((corpus_str_tokens[document], position, float(corpus_column[row])))
        everything_seen = column if corpus_column is None else np.concatenate([column, corpus_column.double().numpy()])
        edges = np.histogram_bin_edges(everything_seen, bins)
        histogram = {classes[c]: np.histogram(column[y == c], edges, density=True)[0].tolist() for c in (0, 1)}
        if corpus_column is not None:
            histogram["held-out corpus"] = np.histogram(corpus_column.double().numpy(), edges, density=True)[0].tolist()
        rows.append(
            {
                "feature": int(feature),
                "favours": classes[int(means[1] > means[0])],
                "mean": means,
                "firing": [float((column[y == c] > 0).mean()) for c in (0, 1)],
                "task_examples": task,
                "corpus_examples": corpus,
                "histogram": {"edges": edges.tolist(), "densities": histogram},
            }
        )
    return rows


def writes_frame(features: Sequence[dict], keys: dict) -> pd.DataFrame:
    """The tidy table of what each described feature writes: one row per feature, end and rank."""
    rows = [
        keys
        | {"kind": entry["kind"], "layer": entry["layer"], "feature": entry["feature"]}
        | {"end": end, "rank": rank, "token": token, "logit": logit}
        for entry in features
        for end in ("top", "bottom")
        for rank, (token, logit) in enumerate(entry["writes"][end])
    ]
    return pd.DataFrame(rows)
