"""How a model uses its depth (docs/methods.md §6): sublayer contributions, layer skipping, linear shortcuts.

All three read one set of held-out corpus windows (the first ``context`` tokens of a held-out document,
after its BOS), run once through the model with the residual stream kept at every layer. Skipping a
block restarts the later blocks from that cached clean residual instead of rerunning the prefix. Every
per-token quantity is averaged within a window first, so intervals resample documents, never tokens.

Layers follow the activations' numbering: residual layer ``l`` (0..L) is the input of block ``l``
(``blocks.{l}.hook_resid_pre``, layer L the last block's output); a block's own quantities (its
sublayers, its skipping) carry the number of the residual it writes, 1..L.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probes.resampling import percentile_interval, resampled_means

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer
    from tuned_lens.nn.lenses import TunedLens
    from tuned_lens.nn.unembed import Unembed

SHORTCUT_LENSES = ("logit", "linear", "tuned")


@dataclass(frozen=True)
class DepthUsageSettings:
    """Budgets of the depth-usage analyses; the defaults fit the 2-core CPU budget (docs/methods.md §6)."""

    documents: int = 32
    context: int = 64
    positions: int = 3
    skip_documents: int = 12
    skip_context: int = 32
    train_tokens: int = 2048
    ridge: float = 1e-6
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        sizes = (self.documents, self.positions, self.skip_documents, self.train_tokens, self.batch_size)
        if min(sizes) < 1 or min(self.context, self.skip_context) < 3:
            raise ValueError(
                "documents, positions, skipping.documents, shortcuts.train_tokens and batch_size must be >= 1, "
                "context and skipping.context >= 3"
            )
        if self.positions > min(self.context, self.skip_context):
            raise ValueError(
                f"positions ({self.positions}) cannot exceed the tokens of a window "
                f"(context {self.context}, skipping.context {self.skip_context})"
            )
        if self.skip_documents > self.documents or self.skip_context > self.context:
            raise ValueError(
                "layer skipping runs on a prefix of the windows: its documents and context cannot exceed theirs"
            )
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")


def corpus_windows(
    token_lists: Sequence[torch.Tensor], documents: Sequence[int], length: int, limit: int
) -> tuple[torch.Tensor, list[int]]:
    """The first ``length`` tokens of the first ``limit`` of ``documents`` that are that long: (n, length).

    Windows of one length need no padding, so every position of every window is a real token.
    """
    import torch

    chosen = [index for index in documents if len(token_lists[index]) >= length][:limit]
    if not chosen:
        raise ValueError(f"no document among {len(documents)} holds {length} tokens; lower depth_usage.context")
    return torch.stack([token_lists[index][:length] for index in chosen]), chosen


def window_residuals(
    model: HookedTransformer, windows: torch.Tensor, batch_size: int, progress: bool = True, mids: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Residual stream of every window at every layer, (n, T, L+1, d), and between the sublayers, (n, T, L, d)."""
    import torch
    from tqdm.auto import tqdm

    from probes.activations.extraction import check_finite

    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    mid_names = [f"blocks.{l}.hook_resid_mid" for l in range(n_layers)] if mids else []
    resid, mid = [], []
    batches = range(0, len(windows), batch_size)
    with torch.inference_mode():
        for start in tqdm(batches, desc="depth-usage windows", unit="batch", disable=not progress):
            _, cache = model.run_with_cache(
                windows[start : start + batch_size].to(model.cfg.device),
                names_filter=names + mid_names,
                stop_at_layer=n_layers,  # no unembedding: Gemma's 262k-token one costs more than its blocks
            )
            for name in names + mid_names:
                check_finite(model, cache[name], name, "resid")
            resid.append(torch.stack([cache[name] for name in names], 2).float().cpu())
            if mids:
                mid.append(torch.stack([cache[name] for name in mid_names], 2).float().cpu())
    return torch.cat(resid), torch.cat(mid) if mids else None


def pooled_residuals(
    model: HookedTransformer, texts: Sequence[str], batch_size: int, last: torch.nn.Module | None = None
) -> np.ndarray:
    """(n, L+1, d) mean residual of each text's tokens (BOS excluded) at every layer; texts of any length.

    Texts are batched in order of length and each batch padded on the right, which causal attention never lets a
    real token see. ``last`` (e.g. the model's final norm, :func:`probes.models.loading.final_norm`) is applied
    to layer L before pooling.
    """
    import torch

    from probes.activations.extraction import right_padded

    skip_first = int(bool(model.cfg.default_prepend_bos))
    token_lists = [model.to_tokens(text, move_to_device=False, truncate=False)[0] for text in texts]
    order = np.argsort([len(tokens) for tokens in token_lists], kind="stable")
    pooled = np.empty((len(texts), model.cfg.n_layers + 1, model.cfg.d_model))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        tokens, mask = right_padded(model, [token_lists[row] for row in rows])
        resid, _ = window_residuals(model, tokens, batch_size, progress=False, mids=False)
        if last is not None:
            with torch.inference_mode():
                resid[:, :, -1] = last(resid[:, :, -1])
        mask[:, :skip_first] = False
        weights = (mask / mask.sum(1, keepdim=True)).float()
        pooled[rows] = torch.einsum("nt,ntld->nld", weights, resid).double().numpy()
    return pooled


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def sublayer_contributions(resid: torch.Tensor, mid: torch.Tensor, skip_first: int) -> dict[str, np.ndarray]:
    """Per window and block (n, L): what attention and MLP add, relative to the residual they are added to.

    A sublayer's output is read as the difference of the residuals around it, which is what it adds
    whatever the architecture does inside (Gemma's post-sublayer norms included).
    """
    pre, post, mid = resid[:, skip_first:, :-1], resid[:, skip_first:, 1:], mid[:, skip_first:]
    attn, mlp = mid - pre, post - mid
    per_token = {
        "attn_relative_norm": attn.norm(dim=-1) / pre.norm(dim=-1),
        "mlp_relative_norm": mlp.norm(dim=-1) / mid.norm(dim=-1),
        "attn_cosine": _cosine(attn, pre),
        "mlp_cosine": _cosine(mlp, mid),
    }
    return {name: values.mean(1).double().numpy() for name, values in per_token.items()}


def residual_norms(resid: torch.Tensor, skip_first: int) -> np.ndarray:
    """Mean residual norm per window and residual layer (n, L+1)."""
    return resid[:, skip_first:].norm(dim=-1).mean(1).double().numpy()


def measured_positions(length: int, skip_first: int, n: int) -> np.ndarray:
    """``n`` evenly spaced token positions of a window, BOS excluded, where output distributions are compared."""
    return np.unique(np.linspace(skip_first, length - 1, n).round().astype(int))


class OutputReference:
    """The model's own output distribution at some tokens, against which lenses and skipped models are read.

    KL(p || q) = sum p log p - sum p z + logsumexp(z) for logits z of q, so a comparison costs the
    unembedding, one dot product and one in-place logsumexp per row; ``rows`` rows (of every compared state
    together) share one product with the unembedding, which runs faster on large batches.
    """

    def __init__(self, model: HookedTransformer, unembed: Unembed, final: torch.Tensor, rows: int = 512) -> None:
        import torch

        from probes.lenses.tuned import decode

        self.model, self.unembed, self.rows = model, unembed, rows
        logits = decode(model, unembed, final)
        log_p = torch.log_softmax(logits, -1)
        self.p = log_p.exp()
        self.neg_entropy = (self.p * log_p).sum(-1)
        self.top = logits.argmax(-1)

    def compare(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        """(k, n, d) residuals, each row read against reference row n: KL and the surprisal of the reference's
        top-1 token in bits, and whether the top-1 token agrees, each (k, n)."""
        import torch

        from probes.lenses.tuned import decode, logsumexp_

        n = states.shape[1]
        parts: dict[str, list[torch.Tensor]] = {"kl_bits": [], "surprisal_bits": [], "top1_agreement": []}
        for start in range(0, states.shape[0], max(1, self.rows // n)):
            chunk = states[start : start + max(1, self.rows // n)]
            logits = decode(self.model, self.unembed, chunk.flatten(0, 1)).view(len(chunk), n, -1)
            cross = torch.linalg.vecdot(logits, self.p)
            top_logit = logits.gather(-1, self.top.expand(len(chunk), n)[..., None]).squeeze(-1)
            parts["top1_agreement"].append((logits.argmax(-1) == self.top).double())
            log_normaliser = logsumexp_(logits)
            parts["kl_bits"].append((self.neg_entropy - cross + log_normaliser).clamp(min=0) / math.log(2))
            parts["surprisal_bits"].append((log_normaliser - top_logit) / math.log(2))
        return {name: torch.cat(values) for name, values in parts.items()}


def skip_blocks(
    model: HookedTransformer,
    unembed: Unembed,
    resid: torch.Tensor,
    positions: np.ndarray,
    skip_first: int,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Each block replaced by the identity in turn, the rest of the model run from the clean residual.

    Returns per window: ``relative_change`` (n, L, L), the skipped block (row, writing residual l+1) by
    the residual measured (column, layers 1..L; NaN before the skipped block), ||h' - h|| / ||h|| averaged
    over tokens; ``kl_bits`` and ``top1_agreement`` (n, L) of the output distribution at ``positions``.
    """
    import torch
    from tqdm.auto import tqdm

    n_docs, n_layers = resid.shape[0], model.cfg.n_layers
    change = np.full((n_docs, n_layers, n_layers), np.nan)
    device = model.cfg.device
    outputs = []
    with torch.inference_mode():
        for block in tqdm(range(n_layers), desc="layer skipping", unit="block", disable=not progress):
            hidden = resid[:, :, block].to(device)
            for measured in range(block + 1, n_layers + 1):
                if measured > block + 1:
                    hidden = model.blocks[measured - 1](hidden)
                clean = resid[:, skip_first:, measured].to(device)
                relative = (hidden[:, skip_first:] - clean).norm(dim=-1) / clean.norm(dim=-1)
                change[:, block, measured - 1] = relative.mean(1).double().cpu().numpy()
            outputs.append(hidden[:, positions].flatten(0, 1))
        reference = OutputReference(model, unembed, resid[:, positions, n_layers].flatten(0, 1).to(device))
        compared = reference.compare(torch.stack(outputs))
    per_window = {
        name: compared[name].view(n_layers, n_docs, -1).mean(-1).T.double().cpu().numpy()
        for name in ("kl_bits", "top1_agreement")
    }
    return {"relative_change": change} | per_window


def fit_linear_shortcuts(
    model: HookedTransformer, windows: torch.Tensor, settings: DepthUsageSettings, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Least-squares maps from the residual at every layer l to the one at L (:func:`least_squares_maps`) on
    ``windows``, one batch of them in memory at a time; BOS rows are left out."""
    import torch
    from tqdm.auto import tqdm

    from probes.activations.extraction import check_finite

    n_layers = model.cfg.n_layers
    skip_first = int(bool(model.cfg.default_prepend_bos))
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]

    def batches() -> Iterator[torch.Tensor]:
        starts = range(0, len(windows), settings.batch_size)
        for start in tqdm(starts, desc="linear shortcuts", unit="batch", disable=not progress):
            with torch.inference_mode():
                _, cache = model.run_with_cache(
                    windows[start : start + settings.batch_size].to(model.cfg.device),
                    names_filter=names,
                    stop_at_layer=n_layers,
                )
                for name in names:
                    check_finite(model, cache[name], name, "resid")
                rows = torch.stack([cache[name][:, skip_first:].flatten(0, 1) for name in names], 1)
            yield rows

    return least_squares_maps(batches(), settings.ridge)


def least_squares_maps(batches: Iterable[torch.Tensor], ridge: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Least-squares maps ``h_L ≈ h_l @ A[l] + b[l]`` from every layer l to the last, on token rows (n, L+1, d).

    The normal equations (sums of x, y, x x^T, x y^T per layer) are accumulated in float64 one batch at
    a time, so the rows need never sit in memory at once; a ridge of ``ridge`` times the mean feature
    variance keeps the solve well posed when a layer's covariance is near singular. The tuned lens starts
    from these maps (:func:`probes.lenses.tuned.least_squares_lens`). Returns A (L+1, d, d), b (L+1, d) and
    the number of rows.
    """
    import torch

    n = 0
    for rows in batches:
        rows = rows.double().cpu()
        if n == 0:
            sum_x = torch.zeros(rows.shape[1:], dtype=torch.float64)
            sum_xx = torch.zeros(rows.shape[1], rows.shape[2], rows.shape[2], dtype=torch.float64)
            sum_xy = torch.zeros_like(sum_xx)
        target = rows[:, -1]
        sum_x += rows.sum(0)
        for layer in range(rows.shape[1]):
            sum_xx[layer] += rows[:, layer].T @ rows[:, layer]
            sum_xy[layer] += rows[:, layer].T @ target
        n += len(rows)
    if n == 0:
        raise ValueError("no rows to fit the least-squares maps on")
    d = sum_x.shape[1]
    mean_x = sum_x / n
    mean_y = mean_x[-1]
    covariance = sum_xx / n - mean_x[:, :, None] * mean_x[:, None, :]
    cross = sum_xy / n - mean_x[:, :, None] * mean_y[None, None, :]
    strength = ridge * covariance.diagonal(dim1=1, dim2=2).mean(1)
    factor, info = torch.linalg.cholesky_ex(covariance + strength[:, None, None] * torch.eye(d, dtype=torch.float64))
    if info.any():
        layers = info.nonzero().flatten().tolist()
        raise ValueError(
            f"the residual covariance of layers {layers} is singular: raise depth_usage.shortcuts.ridge "
            "(tuned_lens.ridge for the tuned lens)"
        )
    maps = torch.cholesky_solve(cross, factor)
    bias = mean_y[None, :] - torch.einsum("ld,lde->le", mean_x, maps)
    return maps.float(), bias.float(), n


def shortcut_metrics(
    model: HookedTransformer,
    unembed: Unembed,
    hidden: torch.Tensor,
    maps: torch.Tensor,
    bias: torch.Tensor,
    tuned: TunedLens | None = None,
    progress: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Per lens and metric, (n, L+1): each layer's residual read through the final norm and unembedding.

    ``hidden`` (n windows, P positions, L+1, d) are the residuals at the measured positions. ``logit`` reads
    the residual as it is (the identity map), ``linear`` maps it first with the fitted shortcut, ``tuned``
    with the tuned lens's translator (it has none at L, where every lens is the output itself); each is
    compared with the model's own output distribution at the same token.
    """
    import torch
    from tqdm.auto import tqdm

    n_docs, n_positions, n_layers = hidden.shape[0], hidden.shape[1], model.cfg.n_layers
    lenses = ["logit", "linear"] + (["tuned"] if tuned is not None else [])
    device = model.cfg.device
    flat = hidden.flatten(0, 1).to(device)
    metrics: dict[str, dict[str, np.ndarray]] = {
        lens: {name: np.zeros((n_docs, n_layers + 1)) for name in ("precision_at_1", "surprisal_bits", "kl_bits")}
        for lens in lenses
    }
    with torch.inference_mode():
        reference = OutputReference(model, unembed, flat[:, n_layers])
        for layer in tqdm(range(n_layers + 1), desc="shortcut lenses", unit="layer", disable=not progress):
            states = [flat[:, layer], flat[:, layer] @ maps[layer].to(device) + bias[layer].to(device)]
            if tuned is not None:
                states.append(tuned.transform_hidden(flat[:, layer], layer) if layer < n_layers else flat[:, layer])
            compared = reference.compare(torch.stack(states))
            compared["precision_at_1"] = compared.pop("top1_agreement")
            for index, lens in enumerate(lenses):
                for name, values in compared.items():
                    per_window = values[index].view(n_docs, n_positions).mean(1)
                    metrics[lens][name][:, layer] = per_window.double().cpu().numpy()
    return metrics


def document_curves(
    values: Mapping[str, np.ndarray], layers: Sequence[int], weights: np.ndarray, ci: float
) -> pd.DataFrame:
    """Tidy rows (metric, layer, value, lo, hi) of per-window values (n, layers): the mean over windows,
    its interval from the bootstrap ``weights`` (n_boot, n) over documents."""
    frames = []
    for metric, per_window in values.items():
        per_window = np.asarray(per_window, dtype=np.float64)
        lo, hi = percentile_interval(resampled_means(weights, per_window.T), ci)
        frames.append(
            pd.DataFrame({"metric": metric, "layer": list(layers), "value": per_window.mean(0), "lo": lo, "hi": hi})
        )
    return pd.concat(frames, ignore_index=True)
