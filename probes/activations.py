"""Per-layer activations of a dataset, pooled per example and cached as safetensors.

Layers follow METHODS.md §1: for the residual stream, layer 0 is ``blocks.0.hook_resid_pre`` and layer
``l`` (1..L) is ``blocks.{l-1}.hook_resid_post``. Other sites live inside block ``l-1`` and are indexed
1..L. The forward pass stops after the last block it needs and never computes the unembedding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.io import atomic_path, read_json, stage, write_json
from probes.provenance import package_versions

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer

    from probes.perturbations import InputNoise

log = logging.getLogger(__name__)

SITES = ("resid", "ln2.hook_normalized", "attn_out", "mlp_out")
POOLINGS = ("last", "mean")


@dataclass(frozen=True)
class ExtractionSettings:
    site: str = "resid"
    poolings: tuple[str, ...] = POOLINGS
    batch_size: int = 16
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


def site_hooks(site: str, n_layers: int) -> dict[int, str]:
    """Map layer index -> TransformerLens hook name, so stored files name what they hold."""
    if site == "resid":
        return {0: "blocks.0.hook_resid_pre"} | {l: f"blocks.{l - 1}.hook_resid_post" for l in range(1, n_layers + 1)}
    hook = site if site.startswith("ln") else f"hook_{site}"
    return {l: f"blocks.{l - 1}.{hook}" for l in range(1, n_layers + 1)}


def tokenize(
    model: HookedTransformer, texts: Sequence[str], max_tokens: int, noise: InputNoise | None = None, seed: int = 0
) -> tuple[list[torch.Tensor], int]:
    """Tokenise one text at a time, so padding can never leak into what a text's tokens are.

    ``noise`` perturbs the characters before tokenising or the tokens after (before truncation), seeded by
    ``seed`` and each text's index.
    """
    from probes.perturbations import ordinary_token_ids

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


def extract_activations(
    model: HookedTransformer,
    texts: Sequence[str],
    settings: ExtractionSettings,
    progress: bool = True,
    noise: InputNoise | None = None,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pooled activations, ``{pooling: float32 tensor (n_texts, n_site_layers, d_model)}``, plus details.

    Texts are batched in order of length with right padding: under causal attention the real tokens
    never see the pads, so batched vectors equal one-at-a-time vectors. ``noise`` perturbs the inputs
    (see :func:`tokenize`).
    """
    import torch
    from tqdm.auto import tqdm

    hooks = site_hooks(settings.site, model.cfg.n_layers)
    layer_of = {name: layer for layer, name in hooks.items()}
    token_lists, n_truncated = tokenize(model, texts, settings.max_tokens, noise, seed)
    # Mean pooling skips a prepended BOS: its huge norm (an attention sink) would swamp the average.
    skip_first = int(bool(model.cfg.default_prepend_bos))
    lengths = torch.tensor([len(tokens) for tokens in token_lists])
    order = torch.argsort(lengths, stable=True)
    n, n_site_layers = len(texts), len(hooks)
    out = {p: torch.zeros(n, n_site_layers, model.cfg.d_model, dtype=torch.float32) for p in settings.poolings}
    columns = {layer: column for column, layer in enumerate(sorted(hooks))}
    stop_at = max(int(name.split(".")[1]) for name in hooks.values()) + 1

    batches = [order[i : i + settings.batch_size] for i in range(0, n, settings.batch_size)]
    for batch in tqdm(batches, desc="extracting", unit="batch", disable=not progress):
        batch_lengths = lengths[batch]
        tokens, mask = right_padded(model, [token_lists[index] for index in batch.tolist()])
        width = tokens.shape[1]
        positions = torch.arange(width)
        mask = mask.to(settings.device)
        mean_mask = (mask & (positions[None, :].to(settings.device) >= min(skip_first, width - 1))).float()
        last_index = (batch_lengths - 1).to(settings.device)

        def pool(activation: torch.Tensor, hook: Any) -> None:
            column = columns[layer_of[hook.name]]
            activation = activation.float()
            if "last" in out:
                out["last"][batch, column] = activation[torch.arange(len(batch)), last_index].cpu()
            if "mean" in out:
                summed = (activation * mean_mask[:, :, None]).sum(1) / mean_mask.sum(1, keepdim=True)
                out["mean"][batch, column] = summed.cpu()

        with torch.inference_mode():
            model.run_with_hooks(
                tokens.to(settings.device),
                attention_mask=mask.long(),
                stop_at_layer=stop_at,
                fwd_hooks=[(name, pool) for name in hooks.values()],
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
    return out, details


@stage
def extract_stage(
    manifest: str | os.PathLike,
    dataset: str | os.PathLike,
    tensors: str | os.PathLike,
    meta: str | os.PathLike,
    settings: ExtractionSettings | dict,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 0,
    weights: str | None = None,
    noise: str = "clean",
) -> None:
    """The ``extract_activations`` rule: validate the data first, then load the model and write both files.

    ``weights`` and ``noise`` name a perturbation (:mod:`probes.perturbations`); the defaults are none.
    """
    import torch
    from safetensors.torch import save_file

    from probes.datasets import load_dataset
    from probes.models import load_model
    from probes.perturbations import InputNoise, format_name

    settings = settings if isinstance(settings, ExtractionSettings) else ExtractionSettings(**settings)
    data = load_dataset(dataset, text_column, label_column)
    torch.manual_seed(seed)
    model_record = read_json(manifest)
    model = load_model(manifest, device=settings.device, dtype=settings.dtype, weights=weights)
    pooled, details = extract_activations(model, data.texts, settings, noise=InputNoise.parse(noise), seed=seed)
    with atomic_path(tensors) as tmp:
        stored = {p: t.contiguous() for p, t in pooled.items()}
        save_file(stored | {"labels": torch.tensor(data.labels, dtype=torch.int64)}, str(tmp))
    write_json(
        meta,
        {
            "model": model_record["model"],
            "model_source": model_record["source"],
            "model_weights_sha256": model_record.get("weights_sha256"),
            "dataset": str(dataset),
            "dataset_sha256": data.checksum,
            "text_column": text_column,
            "label_column": label_column,
            "classes": data.classes,
            "n_examples": len(data.texts),
            "seed": seed,
            "weights": weights or format_name(settings.dtype),
            **asdict(settings),
            **details,
            "versions": package_versions(),
        },
    )


def load_activations(path: str | os.PathLike, pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled vectors (n, layers, d) and labels (n,) as written by :func:`extract_stage`."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if pooling not in tensors:
        poolings = sorted(set(tensors) - {"labels"})
        raise KeyError(f"{path} holds poolings {poolings}, not {pooling!r}; add it to activations.poolings")
    return tensors[pooling], tensors["labels"]


# ---------------------------------------------------------------------------------------------------
# Token-level activations for SAE training: one forward pass per batch feeds every selected layer,
# and the rows go to disk in shards, so a corpus of any size streams through a fixed amount of RAM.


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


def split_documents(token_lists: Sequence[torch.Tensor], settings: TokenCacheSettings, seed: int) -> tuple[list[int], list[int]]:
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


class _ShardWriter:
    """Collect rows per layer and write a shard per layer whenever ``shard_tokens`` rows are waiting."""

    def __init__(self, root: Path, split: str, layers: Sequence[int], shard_tokens: int) -> None:
        self.root, self.split, self.layers, self.shard_tokens = root, split, list(layers), shard_tokens
        self.pending: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self.n_pending = 0
        self.shards: list[int] = []

    def add(self, rows: dict[int, torch.Tensor]) -> None:
        for layer in self.layers:
            self.pending[layer].append(rows[layer])
        self.n_pending += len(rows[self.layers[0]])
        while self.n_pending >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> None:
        if self.n_pending:
            self._flush(self.n_pending)

    def _flush(self, n: int) -> None:
        import torch
        from safetensors.torch import save_file

        for layer in self.layers:
            rows = torch.cat(self.pending[layer])
            directory = self.root / f"layer_{layer}"
            directory.mkdir(parents=True, exist_ok=True)
            save_file({"activations": rows[:n].contiguous()}, str(directory / f"{self.split}_{len(self.shards):05d}.safetensors"))
            self.pending[layer] = [rows[n:]]
        self.shards.append(n)
        self.n_pending -= n


def cache_token_activations(
    model: HookedTransformer,
    texts: Sequence[str],
    layers: Sequence[int],
    site: str,
    out_dir: str | os.PathLike,
    settings: TokenCacheSettings,
    seed: int = 0,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write token rows of ``texts`` at ``layers`` under ``out_dir``; return (and write to meta.json) what it holds.

    Every real token after a prepended BOS becomes a row: the BOS residual is an attention sink with a
    norm far above the rest and is excluded, as SAE training usually does. Train rows are sharded as
    ``layer_{l}/train_{i}.safetensors``; held-out rows as ``layer_{l}/heldout_{i}.safetensors``, with
    their token ids, positions and documents in ``heldout_tokens.safetensors`` so that loss recovered and
    max-activating contexts can be computed later without re-tokenising.
    """
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    hooks = site_hooks(site, model.cfg.n_layers)
    unknown = sorted(set(layers) - set(hooks))
    if unknown or not layers:
        raise ValueError(f"layers {list(layers)} must be a non-empty subset of the {site} layers {sorted(hooks)}")
    layers = sorted(set(layers))
    layer_of = {hooks[layer]: layer for layer in layers}
    stop_at = max(int(hooks[layer].split(".")[1]) for layer in layers) + 1
    skip_first = int(bool(model.cfg.default_prepend_bos))
    token_lists, n_truncated = tokenize(model, texts, settings.context)
    token_lists = [tokens for tokens in token_lists if len(tokens) > skip_first]
    train, heldout = split_documents(token_lists, settings, seed)
    root = Path(out_dir)
    details: dict[str, Any] = {}
    for split, documents in (("train", train), ("heldout", heldout)):
        writer = _ShardWriter(root, split, layers, settings.shard_tokens)
        token_rows: list[torch.Tensor] = []
        # Longest first, so a memory problem shows in the first batch rather than after minutes.
        documents = sorted(documents, key=lambda index: -len(token_lists[index]))
        batches = [documents[i : i + settings.batch_size] for i in range(0, len(documents), settings.batch_size)]
        for batch in tqdm(batches, desc=f"caching {split} tokens", unit="batch", disable=not progress):
            tokens, mask = right_padded(model, [token_lists[index] for index in batch])
            keep = mask.clone()
            keep[:, :skip_first] = False
            captured: dict[int, torch.Tensor] = {}

            def capture(activation: torch.Tensor, hook: Any) -> None:
                captured[layer_of[hook.name]] = activation[keep.to(activation.device)].float().cpu()

            with torch.inference_mode():
                model.run_with_hooks(
                    tokens.to(settings.device),
                    attention_mask=mask.long().to(settings.device),
                    stop_at_layer=stop_at,
                    fwd_hooks=[(hooks[layer], capture) for layer in layers],
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
    meta = details | asdict(settings) | (provenance or {}) | {
        "layers": layers,
        "hook_names": [hooks[layer] for layer in layers],
        "site": site,
        "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "n_documents": len(token_lists),
        "n_truncated": n_truncated,
        "bos_excluded": bool(skip_first),
        "seed": seed,
    }
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

    def shards(self, layer: int, split: str = "train") -> list[Path]:
        if layer not in self.layers:
            raise KeyError(f"{self.path} holds layers {self.layers}, not {layer}")
        return [self.path / f"layer_{layer}" / f"{split}_{i:05d}.safetensors" for i in range(len(self.meta[f"{split}_shards"]))]

    def load(self, layer: int, split: str = "heldout") -> torch.Tensor:
        """Every row of one split at once: meant for the (small) held-out split."""
        import torch

        return torch.cat([_shard_rows(shard) for shard in self.shards(layer, split)])

    def heldout_tokens(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path / "heldout_tokens.safetensors"))

    def heldout_sequences(self) -> list[torch.Tensor]:
        """Held-out documents as token ids, BOS included, for passes through the model."""
        tokens = self.heldout_tokens()
        return list(tokens["sequence_tokens"].split(tokens["sequence_lengths"].tolist()))

    def heldout_str_tokens(self) -> dict[int, list[str]]:
        return {int(document): tokens for document, tokens in read_json(self.path / "heldout_documents.json").items()}

    def mean_and_norm(self, layer: int) -> tuple[torch.Tensor, float]:
        """Mean row and mean row norm of the train split, in one streaming pass."""
        import torch

        total = torch.zeros(self.meta["d_model"], dtype=torch.float64)
        norms, n = 0.0, 0
        for shard in self.shards(layer):
            rows = _shard_rows(shard).double()
            total += rows.sum(0)
            norms += float(rows.norm(dim=1).sum())
            n += len(rows)
        return (total / n).float(), norms / n

    def batches(self, layer: int, batch_size: int, seed: int, buffer_shards: int = 4) -> Iterator[torch.Tensor]:
        """Endless shuffled train batches of exactly ``batch_size`` rows, as SAELens's trainer expects.

        Each epoch visits the shards in a new seeded order and shuffles rows within a buffer of
        ``buffer_shards`` shards; rows left over at the end of a buffer carry into the next one.
        """
        import torch

        shards = self.shards(layer)
        if sum(self.meta["train_shards"]) < batch_size:
            raise ValueError(f"{self.path}: {sum(self.meta['train_shards'])} train tokens cannot fill a batch of {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        carry = torch.empty(0, self.meta["d_model"])
        while True:
            order = torch.randperm(len(shards), generator=generator).tolist()
            for start in range(0, len(order), buffer_shards):
                group = [_shard_rows(shards[index]) for index in order[start : start + buffer_shards]]
                buffer = torch.cat([carry, *group])
                buffer = buffer[torch.randperm(len(buffer), generator=generator)]
                n_full = len(buffer) // batch_size * batch_size
                yield from buffer[:n_full].split(batch_size)
                carry = buffer[n_full:]
