"""Token-level activations for SAE training, stored as shards on disk (docs/methods.md §4).

One forward pass per batch feeds every SAE layer, and the rows go to disk in shards, so a corpus of any size
streams through a fixed amount of RAM; :class:`TokenCache` reads them back one buffer at a time. The cache is
a folder with a format of its own (like a dataset), so writing and reading it live together here, beside the
SAE code that uses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.activations.extraction import check_finite, chosen_layers, right_padded, site_hooks, tokenize
from probes.io import read_json, write_json

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer


# What the cache holds beside the SAE site at each SAE layer: the MLP's input and output (a transcoder's
# training pairs) and its neurons (their max-activating contexts), of block l-1 for layer l.
MLP_STREAMS = ("mlp_in", "mlp_out", "mlp_post")


@dataclass(frozen=True)
class TokenCacheSettings:
    """How a corpus becomes token rows. Documents, not tokens, are split into train and held-out sets,
    so held-out metrics never see text the SAE was trained on."""

    context: int = 128
    heldout_fraction: float = 0.1
    max_tokens: int | None = None
    shard_tokens: int = 8192
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.context < 2 or self.shard_tokens < 1 or self.batch_size < 1:
            raise ValueError("context must be >= 2, shard_tokens and batch_size >= 1")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or null, got {self.max_tokens}")


def split_documents(
    token_lists: Sequence[torch.Tensor], settings: TokenCacheSettings, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded train / held-out document indices; ``max_tokens`` caps the train set in that order."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(token_lists)).tolist()
    n_heldout = max(1, round(settings.heldout_fraction * len(order)))
    if len(order) - n_heldout < 1:
        raise ValueError(f"a corpus of {len(order)} documents cannot be split into train and held-out documents")
    heldout, train = sorted(order[:n_heldout]), order[n_heldout:]
    if settings.max_tokens is not None:
        kept, total = [], 0
        for index in train:
            if total >= settings.max_tokens:
                break
            kept.append(index)
            total += len(token_lists[index])
        train = kept
    return sorted(train), heldout


def tokenised_corpus(
    model: HookedTransformer, texts: Sequence[str], settings: TokenCacheSettings, seed: int
) -> tuple[list[torch.Tensor], list[int], list[int], int]:
    """The corpus tokenised and split as the cache holds it: token lists, train and held-out document
    indices into them, and how many documents were truncated to ``context``. Other analyses of held-out
    text (depth usage) call it to read exactly the documents no SAE was trained on."""
    skip_first = int(bool(model.cfg.default_prepend_bos))
    token_lists, n_truncated = tokenize(model, texts, settings.context)
    token_lists = [tokens for tokens in token_lists if len(tokens) > skip_first]
    train, heldout = split_documents(token_lists, settings, seed)
    return token_lists, train, heldout, n_truncated


class _ShardWriter:
    """Collect rows per folder (``layer_{l}`` or ``{stream}/layer_{l}``) and write a shard of each whenever
    ``shard_tokens`` rows are waiting, so every folder's shard ``i`` holds the same tokens."""

    def __init__(self, root: Path, split: str, folders: Sequence[str], shard_tokens: int) -> None:
        self.root, self.split, self.folders, self.shard_tokens = root, split, list(folders), shard_tokens
        self.pending: dict[str, list[torch.Tensor]] = {folder: [] for folder in self.folders}
        self.n_pending = 0
        self.shards: list[int] = []

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        for folder in self.folders:
            self.pending[folder].append(rows[folder])
        self.n_pending += len(rows[self.folders[0]])
        while self.n_pending >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> None:
        if self.n_pending:
            self._flush(self.n_pending)

    def _flush(self, n: int) -> None:
        import torch
        from safetensors.torch import save_file

        for folder in self.folders:
            rows = torch.cat(self.pending[folder])
            directory = self.root / folder
            directory.mkdir(parents=True, exist_ok=True)
            save_file(
                {"activations": rows[:n].contiguous()},
                str(directory / f"{self.split}_{len(self.shards):05d}.safetensors"),
            )
            self.pending[folder] = [rows[n:]]
        self.shards.append(n)
        self.n_pending -= n


def _folder(layer: int, stream: str = "") -> str:
    return f"{stream}/layer_{layer}" if stream else f"layer_{layer}"


def cache_token_activations(
    model: HookedTransformer,
    texts: Sequence[str],
    layers: Sequence[int],
    site: str,
    out_dir: str | os.PathLike,
    settings: TokenCacheSettings,
    seed: int = 0,
    progress: bool = True,
    streams: Sequence[str] = (),
) -> dict[str, Any]:
    """Write token rows of ``texts`` at ``layers`` under ``out_dir``; return (and write to meta.json) what it holds.

    ``streams`` are further sites read at the same layers and tokens (``mlp_in``, ``mlp_out`` and
    ``mlp_post`` of block ``l-1`` for layer ``l``: what a transcoder reads and writes, and the neurons),
    stored as ``{stream}/layer_{l}``.

    Every real token after a prepended BOS becomes a row: the BOS residual is an attention sink with a
    norm far above the rest and is excluded, as SAE training usually does. Train rows are sharded as
    ``layer_{l}/train_{i}.safetensors``; held-out rows as ``layer_{l}/heldout_{i}.safetensors``, with
    their token ids, positions and documents in ``heldout_tokens.safetensors`` so that loss recovered and
    max-activating contexts can be computed later without re-tokenising.
    """
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    hooks = chosen_layers(site_hooks(site, model.cfg.n_layers), layers, site)
    layers = sorted(hooks)
    folder_of = {hook: [_folder(layer)] for layer, hook in hooks.items()}
    stream_hooks = {stream: site_hooks(stream, model.cfg.n_layers) for stream in streams}
    for stream, by_layer in stream_hooks.items():
        missing = sorted(set(layers) - set(by_layer))
        if missing:
            raise ValueError(f"stream {stream} has no layers {missing}: its layers are {sorted(by_layer)}")
        for layer in layers:
            folder_of.setdefault(by_layer[layer], []).append(_folder(layer, stream))
    stop_at = max(int(hook.split(".")[1]) for hook in folder_of) + 1
    skip_first = int(bool(model.cfg.default_prepend_bos))
    token_lists, train, heldout, n_truncated = tokenised_corpus(model, texts, settings, seed)
    root = Path(out_dir)
    details: dict[str, Any] = {}
    for split, documents in (("train", train), ("heldout", heldout)):
        writer = _ShardWriter(
            root, split, [f for folders in folder_of.values() for f in folders], settings.shard_tokens
        )
        token_rows: list[torch.Tensor] = []
        # Longest first, so a memory problem shows in the first batch rather than after minutes.
        documents = sorted(documents, key=lambda index: -len(token_lists[index]))
        batches = [documents[i : i + settings.batch_size] for i in range(0, len(documents), settings.batch_size)]
        for batch in tqdm(batches, desc=f"caching {split} tokens", unit="batch", disable=not progress):
            tokens, mask = right_padded(model, [token_lists[index] for index in batch])
            keep = mask.clone()
            keep[:, :skip_first] = False
            captured: dict[str, torch.Tensor] = {}

            def capture(activation: torch.Tensor, hook: Any) -> None:
                check_finite(model, activation, f"{hook.name} ({', '.join(folder_of[hook.name])})", site)
                rows = activation[keep.to(activation.device)].float().cpu()
                for folder in folder_of[hook.name]:
                    captured[folder] = rows

            with torch.inference_mode():
                model.run_with_hooks(
                    tokens.to(settings.device),
                    attention_mask=mask.long().to(settings.device),
                    stop_at_layer=stop_at,
                    fwd_hooks=[(hook, capture) for hook in folder_of],
                )
            writer.add(captured)
            if split == "heldout":
                rows, positions = keep.nonzero(as_tuple=True)
                documents_of_rows = torch.tensor(batch)[rows]
                token_rows.append(torch.stack([documents_of_rows, positions, tokens[rows, positions]], 1))
        writer.close()
        details[f"{split}_shards"] = writer.shards
        details[f"n_{split}_tokens"] = sum(writer.shards)
        details[f"n_{split}_documents"] = len(documents)
    rows = torch.cat(token_rows)
    save_file(
        {
            "document": rows[:, 0].contiguous(),
            "position": rows[:, 1].contiguous(),
            "token": rows[:, 2].contiguous(),
            "sequence_documents": torch.tensor(heldout),
            "sequence_lengths": torch.tensor([len(token_lists[index]) for index in heldout]),
            "sequence_tokens": torch.cat([token_lists[index] for index in heldout]),
        },
        str(root / "heldout_tokens.safetensors"),
    )
    heldout_texts = {str(index): model.to_str_tokens(token_lists[index]) for index in heldout}
    write_json(root / "heldout_documents.json", heldout_texts)
    meta = (
        details
        | asdict(settings)
        | {
            "layers": layers,
            "hook_names": [hooks[layer] for layer in layers],
            "site": site,
            "streams": {stream: [by_layer[layer] for layer in layers] for stream, by_layer in stream_hooks.items()},
            "n_layers": model.cfg.n_layers,
            "d_model": model.cfg.d_model,
            "n_documents": len(token_lists),
            "n_truncated": n_truncated,
            "bos_excluded": bool(skip_first),
            "seed": seed,
        }
    )
    write_json(root / "meta.json", meta)
    return meta


def _shard_rows(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["activations"]


class TokenCache:
    """Read side of :func:`cache_token_activations`: shards stream from disk, one buffer at a time."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a token-activation cache (no meta.json)")
        self.meta = read_json(meta_path)
        self.layers: list[int] = self.meta["layers"]
        self.hook_names = dict(zip(self.layers, self.meta["hook_names"]))

    def shards(self, layer: int, split: str = "train", stream: str = "") -> list[Path]:
        if layer not in self.layers:
            raise KeyError(f"{self.path} holds layers {self.layers}, not {layer}")
        if stream and stream not in self.meta.get("streams", {}):
            raise KeyError(f"{self.path} holds streams {sorted(self.meta.get('streams', {}))}, not {stream!r}")
        return [
            self.path / _folder(layer, stream) / f"{split}_{i:05d}.safetensors"
            for i in range(len(self.meta[f"{split}_shards"]))
        ]

    def load(self, layer: int, split: str = "heldout", stream: str = "") -> torch.Tensor:
        """Every row of one split at once: meant for the (small) held-out split."""
        import torch

        return torch.cat([_shard_rows(shard) for shard in self.shards(layer, split, stream)])

    def heldout_tokens(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path / "heldout_tokens.safetensors"))

    def heldout_sequences(self) -> list[torch.Tensor]:
        """Held-out documents as token ids, BOS included, for passes through the model."""
        tokens = self.heldout_tokens()
        return list(tokens["sequence_tokens"].split(tokens["sequence_lengths"].tolist()))

    def heldout_str_tokens(self) -> dict[int, list[str]]:
        return {int(document): tokens for document, tokens in read_json(self.path / "heldout_documents.json").items()}

    def mean_and_norm(self, layer: int, stream: str = "") -> tuple[torch.Tensor, float]:
        """Mean row and mean row norm of the train split, in one streaming pass."""

        total, norms, n = 0.0, 0.0, 0
        for shard in self.shards(layer, "train", stream):
            rows = _shard_rows(shard).double()
            total += rows.sum(0)
            norms += float(rows.norm(dim=1).sum())
            n += len(rows)
        return (total / n).float(), norms / n

    def batches(
        self, layer: int, batch_size: int, seed: int, buffer_shards: int = 4, streams: Sequence[str] = ("",)
    ) -> Iterator[torch.Tensor]:
        """Endless shuffled train batches of exactly ``batch_size`` rows, as SAELens's trainer expects.

        Each epoch visits the shards in a new seeded order and shuffles rows within a buffer of
        ``buffer_shards`` shards; rows left over at the end of a buffer carry into the next one. With
        several ``streams`` a row is the same token's rows of each, side by side.
        """
        import torch

        by_stream = [self.shards(layer, "train", stream) for stream in streams]
        shards = list(zip(*by_stream))
        if sum(self.meta["train_shards"]) < batch_size:
            raise ValueError(
                f"{self.path}: {sum(self.meta['train_shards'])} train tokens cannot fill a batch of {batch_size}"
            )
        generator = torch.Generator().manual_seed(seed)
        carry = None
        while True:
            order = torch.randperm(len(shards), generator=generator).tolist()
            for start in range(0, len(order), buffer_shards):
                group = [
                    torch.cat([_shard_rows(path) for path in shards[index]], 1)
                    for index in order[start : start + buffer_shards]
                ]
                buffer = torch.cat(group if carry is None else [carry, *group])
                buffer = buffer[torch.randperm(len(buffer), generator=generator)]
                n_full = len(buffer) // batch_size * batch_size
                yield from buffer[:n_full].split(batch_size)
                carry = buffer[n_full:]
