"""Forward passes with one edit, cheap enough to run many edits (docs/methods.md §8.2).

Every edit of the readout pass acts at the text's last token (the read position) or after it, so the states of
the tokens before it never change. Those are computed once per text, into a frozen key/value cache, and each edit
re-runs only the read position and the question after it, from the edited layer on: for a 76-token coin-flip
text and its 3-token question that is about a twentieth of a full pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class Edit:
    """Re-run the model from residual layer ``start`` (0..L-1), with ``fn`` applied to ``hook``'s activation
    (None: to the starting residual itself) at the read position, or from it on when ``from_read``.

    ``fn`` takes and returns (..., width) tensors; on corpus text it is applied at every position. ``row_scale``
    (one number per text) scales the change ``fn`` makes to each text, e.g. -1 to steer a row the other way.
    """

    start: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    hook: str | None = None
    from_read: bool = False
    row_scale: np.ndarray | None = None


def residual_hook(layer: int) -> str:
    """The hook of residual layer ``layer`` in the project's numbering (docs/methods.md §1)."""
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def neuron_hook(layer: int) -> str:
    """The MLP neurons of layer ``layer`` (1..L), as the neuron family numbers them."""
    return f"blocks.{layer - 1}.mlp.hook_post"


def _edited(edit: Edit, activation: torch.Tensor, every_position: bool, rows: np.ndarray | None = None) -> torch.Tensor:
    """``activation`` (b, positions, width) with the edit applied at the read position (the first) or from it on."""
    import torch

    def change(x: torch.Tensor) -> torch.Tensor:
        if edit.row_scale is None or rows is None:
            return edit.fn(x)
        scale = torch.as_tensor(edit.row_scale[rows], dtype=x.dtype, device=x.device).view(-1, *[1] * (x.ndim - 1))
        return x + scale * (edit.fn(x) - x)

    if every_position or edit.from_read:
        return change(activation)
    activation = activation.clone()
    activation[:, 0] = change(activation[:, 0])
    return activation


@dataclass
class _Chunk:
    rows: np.ndarray
    cache: object
    clean: dict[int, torch.Tensor]  # start layer -> (b, continuation, d) clean residual
    mask: torch.Tensor  # (b, prefix + continuation): the prefix is padded on the left


class ReadoutPasses:
    """The readout passes of one task's texts: ``BOS + text + question``, answered at the last token.

    ``token_lists`` are the texts' ids as extraction tokenises them (BOS included), ``suffix`` the question's ids;
    ``starts`` are the residual layers edits will start from. Texts of similar lengths share a batch, padded on
    the left (masked), so every text's last token sits at the same position. ``clean_logodds`` and ``mass``
    (probability on the answers) are the unedited readout; a task without a readout passes no answers and an
    empty question, and its passes give only the later layers' vectors (log-odds NaN).
    """

    def __init__(
        self,
        model: HookedTransformer,
        token_lists: Sequence[torch.Tensor],
        suffix: torch.Tensor,
        positive: Sequence[int],
        negative: Sequence[int],
        starts: Sequence[int],
        batch_size: int = 32,
    ) -> None:
        import torch
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        from probes.activations.extraction import check_finite
        from probes.interventions.readout import verbaliser_mass

        self.model, self.positive, self.negative = model, list(positive), list(negative)
        self.n = len(token_lists)
        self.starts = sorted(set(starts))
        device = model.cfg.device
        lengths = np.array([len(tokens) for tokens in token_lists])
        if lengths.min() < 2:
            raise ValueError("every text needs a token before its last one (the model's BOS counts)")
        self.chunks: list[_Chunk] = []
        self.clean_logodds = np.empty(self.n)
        self.mass = np.empty(self.n)
        suffix = suffix.to(device)
        with torch.inference_mode():
            order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
            for begin in range(0, self.n, batch_size):
                rows = order[begin : begin + batch_size]
                b, width = len(rows), int(lengths[rows].max()) - 1
                prefix = torch.zeros((b, width), dtype=torch.long)  # masked out, so any id will do
                mask = torch.zeros((b, width), dtype=torch.long)
                for i, row in enumerate(rows):  # padded on the left, so every text's last token is aligned
                    prefix[i, width - lengths[row] + 1 :] = token_lists[row][:-1]
                    mask[i, width - lengths[row] + 1 :] = 1
                prefix, mask = prefix.to(device), mask.to(device)
                last = torch.stack([token_lists[row][-1:] for row in rows]).to(device)
                cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, b)
                model(prefix, past_kv_cache=cache, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
                cache.freeze()
                continuation = torch.cat([last, suffix.expand(b, -1)], 1)
                captured: dict[int, torch.Tensor] = {}

                def keep(layer: int) -> Callable:
                    def hook(activation: torch.Tensor, hook: object) -> None:
                        captured[layer] = activation.clone()

                    return hook

                final = model.run_with_hooks(
                    continuation,
                    past_kv_cache=cache,
                    attention_mask=torch.ones_like(continuation),
                    stop_at_layer=model.cfg.n_layers,
                    fwd_hooks=[(residual_hook(layer), keep(layer)) for layer in self.starts],
                )
                check_finite(model, final, "readout pass", "resid")
                full_mask = torch.cat([mask, torch.ones_like(continuation)], 1)
                self.chunks.append(_Chunk(rows, cache, captured, full_mask))
                self.clean_logodds[rows] = self._logodds(final[:, -1])
                self.mass[rows] = (
                    verbaliser_mass(model, final[:, -1], self.positive + self.negative).double().cpu().numpy()
                    if self.positive
                    else np.nan
                )

    def _logodds(self, final: torch.Tensor) -> np.ndarray:
        from probes.interventions.readout import answer_logodds

        if not self.positive:
            return np.full(len(final), np.nan)
        return answer_logodds(self.model, final, self.positive, self.negative).double().cpu().numpy()

    def run(self, edit: Edit, read_layers: Sequence[int] = ()) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Edited log-odds (n,) and the read position's residual (n, d) at each of ``read_layers`` (> start)."""
        import torch

        if edit.start not in self.starts:
            raise ValueError(f"edits start at layers {self.starts}, not {edit.start}")
        if any(layer <= edit.start for layer in read_layers):
            raise ValueError(f"read layers {list(read_layers)} must come after the edit's layer {edit.start}")
        model = self.model
        logodds = np.empty(self.n)
        read = {layer: np.empty((self.n, model.cfg.d_model), dtype=np.float32) for layer in read_layers}
        with torch.inference_mode():
            for chunk in self.chunks:
                resid = chunk.clean[edit.start]
                hooks = []
                if edit.hook is None:
                    resid = _edited(edit, resid, False, chunk.rows)
                else:
                    hooks.append(
                        (edit.hook, lambda activation, hook, rows=chunk.rows: _edited(edit, activation, False, rows))
                    )

                def reader(layer: int) -> Callable:
                    def hook(activation: torch.Tensor, hook: object) -> None:
                        read[layer][chunk.rows] = activation[:, 0].float().cpu().numpy()

                    return hook

                hooks += [(residual_hook(layer), reader(layer)) for layer in read_layers]
                final = model.run_with_hooks(
                    resid,
                    start_at_layer=edit.start,
                    past_kv_cache=chunk.cache,
                    attention_mask=chunk.mask,
                    stop_at_layer=model.cfg.n_layers,
                    fwd_hooks=hooks,
                )
                logodds[chunk.rows] = self._logodds(final[:, -1])
        return logodds, read


class CorpusCost:
    """What an edit costs on unrelated text: KL from the clean next-token distribution on corpus windows, the
    edit applied at every position but a prepended BOS, read at ``positions`` of each window.

    The BOS is left alone because its residual is an attention sink many times the others' norm: an eraser
    centred on ordinary tokens would move it far and charge the edit (and its control) for breaking the sink.
    """

    def __init__(
        self, model: HookedTransformer, windows: torch.Tensor, starts: Sequence[int], positions: np.ndarray
    ) -> None:
        import torch

        from probes.depth_usage.contributions import OutputReference
        from probes.lenses.tuned import unembed_of

        self.model, self.positions = model, positions
        self.skip_first = int(bool(model.cfg.default_prepend_bos))
        names = {residual_hook(layer): layer for layer in sorted(set(starts))}
        with torch.inference_mode():
            final, cache = model.run_with_cache(
                windows.to(model.cfg.device), names_filter=list(names), stop_at_layer=model.cfg.n_layers
            )
            self.clean = {layer: cache[name] for name, layer in names.items()}
            self.n = windows.shape[0]
            self.reference = OutputReference(model, unembed_of(model), final[:, positions].flatten(0, 1))

    def kl_bits(self, edit: Edit) -> np.ndarray:
        """Mean KL (bits) over the measured positions of each window, (n_windows,)."""
        import torch

        model = self.model
        with torch.inference_mode():
            resid = self.clean[edit.start]
            hooks = []
            if edit.hook is None:
                resid = self._edited(edit, resid)
            else:
                hooks.append((edit.hook, lambda activation, hook: self._edited(edit, activation)))
            final = model.run_with_hooks(
                resid, start_at_layer=edit.start, stop_at_layer=model.cfg.n_layers, fwd_hooks=hooks
            )
            compared = self.reference.compare(final[:, self.positions].flatten(0, 1)[None])
        return compared["kl_bits"].view(self.n, -1).mean(-1).double().cpu().numpy()

    def _edited(self, edit: Edit, activation: torch.Tensor) -> torch.Tensor:
        activation = activation.clone()
        activation[:, self.skip_first :] = _edited(edit, activation[:, self.skip_first :], every_position=True)
        return activation
