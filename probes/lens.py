"""Latent-language curves: which language each layer decodes to, by logit lens and tuned lens (docs/methods.md §3).

Both lenses are the ``tuned-lens`` package's modules: its ``Unembed`` takes a HookedTransformer's final
norm (weights folded into the unembedding by TransformerLens, so the norm itself is weightless) and its
unembedding. Its trainer only drives Hugging Face models through their own layer lists, so the
translators are trained here with the published objective (KL to the final-layer distribution).

Layers follow the residual convention of :mod:`probes.activations`: 0 is the embedding output and ``l``
is the output of block ``l-1``, so layer ``L`` is what the model itself decodes.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from probes.io import atomic_path

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer
    from tuned_lens.nn.lenses import TunedLens
    from tuned_lens.nn.unembed import Unembed

    from probes.wordlists import WordList

LENSES = ("logit", "tuned")
CURVE_COLUMNS = [
    "model",
    "word_list",
    "task",
    "src",
    "tgt",
    "concept",
    "layer",
    "depth",
    "lens",
    "language",
    "prob",
    "entropy_bits",
]
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


# --- token sets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenScheme:
    """How a tokenizer spells text in its vocabulary, detected from the tokenizer rather than its family."""

    byte_level: bool  # vocabulary strings spell UTF-8 bytes in GPT-2's printable byte alphabet
    marker: str  # what a space before a word becomes inside a vocabulary string ("" if spaces vanish)
    byte_fallback: bool  # the vocabulary has <0xNN> tokens for raw bytes


def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _vocabulary_strings(tokenizer: Any, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))


def detect_token_scheme(tokenizer: Any) -> TokenScheme:
    decoder = _byte_decoder()
    probe = "a b é 花"
    joined = "".join(_vocabulary_strings(tokenizer, probe))
    byte_level = all(c in decoder for c in joined) and bytes(decoder[c] for c in joined) == probe.encode()
    # "a b" spells as a<marker>b; a tokenizer that adds a dummy prefix spells <marker>a<marker>b.
    spelled = "".join(_vocabulary_strings(tokenizer, "a b"))
    start = spelled.index("a") if "a" in spelled else 0
    marker = spelled[start + 1 : -1] if spelled.endswith("b") else ""
    vocabulary = tokenizer.get_vocab()
    byte_fallback = all(f"<0x{byte:02X}>" in vocabulary for byte in range(256))
    return TokenScheme(byte_level=byte_level, marker=marker, byte_fallback=byte_fallback)


class Vocabulary:
    """Every token's text as bytes, indexed so that a word's token set is a few dictionary lookups."""

    def __init__(self, tokenizer: Any) -> None:
        self.scheme = detect_token_scheme(tokenizer)
        decoder = _byte_decoder() if self.scheme.byte_level else {}
        special = set(tokenizer.all_special_ids)
        self.by_text: dict[bytes, list[int]] = {}
        for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
            if token is None or token_id in special:
                continue
            text = self._text(token, decoder)
            if text:
                self.by_text.setdefault(text, []).append(token_id)

    def _text(self, token: str, decoder: Mapping[str, int]) -> bytes | None:
        if self.scheme.byte_fallback and (match := _BYTE_TOKEN.fullmatch(token)):
            return bytes([int(match.group(1), 16)])
        if self.scheme.byte_level:
            return bytes(decoder[c] for c in token) if all(c in decoder for c in token) else None
        if self.scheme.marker not in ("", " "):
            token = token.replace(self.scheme.marker, " ")
        return token.encode()

    def token_set(self, word: str) -> list[int]:
        """Tokens whose text starts the word, bare or after a word-start space (docs/methods.md §3).

        Working in bytes covers byte-level BPE and byte fallback alike: the token for a character's
        first UTF-8 byte is a prefix of every word that starts with that character.
        """
        ids: set[int] = set()
        for form in (word, " " + word):
            data = form.encode()
            for end in range(1, len(data) + 1):
                if data[:end].strip():
                    ids.update(self.by_text.get(data[:end], ()))
        return sorted(ids)


@dataclass(frozen=True)
class ConceptSelection:
    concepts: list[str]
    token_sets: dict[str, list[list[int]]]  # language -> one token set per kept concept
    contrast: str | None  # the language whose token set must not overlap the target's
    dropped: dict[str, int] = field(default_factory=dict)


def contrast_language(src: str, tgt: str) -> str | None:
    """English, the candidate latent language; when English is the target, the source instead."""
    if tgt != "en":
        return "en"
    return src if src != tgt else None


def select_concepts(
    word_list: WordList,
    vocabulary: Vocabulary,
    task: str,
    src: str,
    tgt: str,
    max_concepts: int | None = None,
    seed: int = 0,
) -> ConceptSelection:
    """Keep concepts whose target and contrast token sets are non-empty and disjoint; count the rest.

    With ``max_concepts``, a seeded sample of the usable concepts is kept (in list order) and the
    others are counted as ``not_sampled``.
    """
    contrast = contrast_language(src, tgt)
    dropped = {"no_cloze": 0, "empty": 0, "overlap": 0, "not_sampled": 0}
    kept: list[str] = []
    sets: dict[str, list[list[int]]] = {language: [] for language in word_list.languages}
    for concept, words in word_list.words.iterrows():
        if task == "cloze" and not isinstance(word_list.cloze.at[concept, src], str):
            dropped["no_cloze"] += 1
            continue
        row = {language: vocabulary.token_set(word) for language, word in words.items()}
        checked = [row[tgt]] + ([row[contrast]] if contrast else [])
        if not all(checked):
            dropped["empty"] += 1
        elif contrast and set(row[tgt]) & set(row[contrast]):
            dropped["overlap"] += 1
        else:
            kept.append(str(concept))
            for language in sets:
                sets[language].append(row[language])
    if max_concepts is not None and len(kept) > max_concepts:
        chosen = np.sort(np.random.default_rng(seed).choice(len(kept), max_concepts, replace=False))
        dropped["not_sampled"] = len(kept) - max_concepts
        kept = [kept[i] for i in chosen]
        sets = {language: [ids[i] for i in chosen] for language, ids in sets.items()}
    return ConceptSelection(kept, sets, contrast, dropped)


# --- lenses -------------------------------------------------------------------------------------------


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


def lens_logits(
    model: HookedTransformer, unembed: Unembed, tuned: TunedLens | None, hidden: torch.Tensor, layer: int
) -> torch.Tensor:
    """Logits of one layer's residual; the tuned lens has no translator at the last layer (it is the output)."""
    if tuned is not None and layer < model.cfg.n_layers:
        hidden = tuned.transform_hidden(hidden, layer)
    return decode(model, unembed, hidden)


def save_tuned_lens(lens: TunedLens, path: str | os.PathLike) -> None:
    """One safetensors file (translators plus config), so the cache entry appears atomically."""
    import json

    from safetensors.torch import save_file

    state = {name: tensor.contiguous() for name, tensor in lens.layer_translators.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"config": json.dumps(lens.config.to_dict())})


def load_tuned_lens(path: str | os.PathLike, unembed: Unembed) -> TunedLens:
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file
    from tuned_lens.nn.lenses import TunedLens, TunedLensConfig

    with safe_open(str(path), "pt") as handle:
        config = TunedLensConfig.from_dict(json.loads(handle.metadata()["config"]))
    trained_for = config.unembed_hash
    lens = TunedLens(unembed, config)  # hashes this unembedding into config.unembed_hash
    if trained_for != lens.config.unembed_hash:
        raise ValueError(f"{path}: tuned lens was trained for a different unembedding; rerun train_tuned_lens")
    lens.layer_translators.load_state_dict(load_file(str(path)))
    lens.requires_grad_(False)
    return lens


def language_curves(
    model: HookedTransformer,
    unembed: Unembed,
    tuned: TunedLens | None,
    residuals: torch.Tensor,
    token_sets: Mapping[str, Sequence[Sequence[int]]],
) -> pd.DataFrame:
    """P(language) = summed probability of its token set, and entropy in bits, per prompt, layer and lens.

    ``residuals`` is (prompts, L+1, d_model) at the last position; returns a tidy frame with columns
    (item, layer, lens, language, prob, entropy_bits), ``item`` indexing the prompts.
    """
    import torch

    n, n_layers_plus_one, _ = residuals.shape
    languages = list(token_sets)
    width = max(1, max(len(ids) for sets in token_sets.values() for ids in sets))
    index = torch.zeros(n, len(languages), width, dtype=torch.long)
    mask = torch.zeros(n, len(languages), width)
    for j, language in enumerate(languages):
        for i, ids in enumerate(token_sets[language]):
            index[i, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, j, : len(ids)] = 1.0
    lenses = {"logit": None} | ({"tuned": tuned} if tuned is not None else {})
    frames = []
    with torch.inference_mode():
        for name, lens in lenses.items():
            for layer in range(n_layers_plus_one):
                logits = lens_logits(model, unembed, lens, residuals[:, layer].to(unembed.unembedding.weight), layer)
                log_probs = torch.log_softmax(logits, dim=-1)
                probs = log_probs.exp()
                entropy = -(probs * log_probs).sum(-1) / math.log(2)
                gathered = probs.gather(1, index.view(n, -1).to(probs.device)).view(n, len(languages), width)
                mass = (gathered * mask.to(probs.device)).sum(-1).cpu()
                frames.append(
                    pd.DataFrame(
                        {
                            "item": np.repeat(np.arange(n), len(languages)),
                            "layer": layer,
                            "lens": name,
                            "language": np.tile(languages, n),
                            "prob": mass.float().numpy().ravel(),
                            "entropy_bits": np.repeat(entropy.float().cpu().numpy(), len(languages)),
                        }
                    )
                )
    return pd.concat(frames, ignore_index=True)


# --- tuned-lens training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunedLensSettings:
    train_tokens: int = 2048
    heldout_tokens: int = 64
    steps: int = 60
    batch_tokens: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    sampled_vocab: int | None = 2048
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if min(self.train_tokens, self.heldout_tokens, self.steps, self.batch_tokens, self.batch_size) < 1:
            raise ValueError("train_tokens, heldout_tokens, steps, batch_tokens and batch_size must be >= 1")
        if self.sampled_vocab is not None and self.sampled_vocab < 2:
            raise ValueError("sampled_vocab must be >= 2 or null (the full vocabulary)")


def token_residuals(
    model: HookedTransformer, texts: Sequence[str], batch_size: int, progress: bool = True
) -> torch.Tensor:
    """Residual stream at every layer for every token but a prepended BOS: (tokens, L+1, d_model)."""
    import torch
    from tqdm.auto import tqdm

    from probes.activations import check_finite, right_padded, site_hooks, tokenize

    hooks = site_hooks("resid", model.cfg.n_layers)
    skip = int(bool(model.cfg.default_prepend_bos))
    token_lists, _ = tokenize(model, texts, model.cfg.n_ctx)
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="lens corpus", unit="batch", disable=not progress):
        tokens, mask = right_padded(model, token_lists[start : start + batch_size])
        keep = (mask & (torch.arange(tokens.shape[1])[None, :] >= skip)).to(model.cfg.device)
        _, cache = model.run_with_cache(
            tokens.to(model.cfg.device),
            attention_mask=mask.long().to(model.cfg.device),
            names_filter=list(hooks.values()),
            stop_at_layer=model.cfg.n_layers,
        )
        for layer in sorted(hooks):
            check_finite(model, cache[hooks[layer]], f"{hooks[layer]} (layer {layer})", "resid")
        chunks.append(torch.stack([cache[hooks[layer]][keep] for layer in sorted(hooks)], dim=1).float().cpu())
    return torch.cat(chunks)


def split_corpus(
    corpus: pd.DataFrame, token_counts: Sequence[int], settings: TunedLensSettings, seed: int
) -> tuple[list[str], list[str]]:
    """Held-out and training texts, split by concept so no held-out concept is seen in training."""
    rng = np.random.default_rng(seed)
    counts = corpus.assign(tokens=list(token_counts)).groupby("concept", sort=True)["tokens"].sum()
    order = counts.index[rng.permutation(len(counts))]
    heldout, train, used = [], [], 0
    for concept in order:
        if used < settings.heldout_tokens:
            heldout.append(concept)
        elif used < settings.heldout_tokens + settings.train_tokens:
            train.append(concept)
        else:
            break
        used += counts[concept]
    if not train:
        raise ValueError(f"the corpus has {counts.sum()} tokens, too few for held-out and training sets")
    texts = corpus.set_index("concept")["text"]
    return texts.loc[heldout].tolist(), texts.loc[train].tolist()


def fit_tuned_lens(
    model: HookedTransformer,
    unembed: Unembed,
    residuals: torch.Tensor,
    settings: TunedLensSettings,
    seed: int,
    progress: bool = True,
) -> tuple[TunedLens, list[float]]:
    """Train one affine translator per layer to minimise cross-entropy to the final-layer distribution.

    Minimising cross-entropy minimises KL, the entropy of the target being fixed. The full-vocabulary
    normaliser costs (tokens x vocabulary x d_model) per layer and step; with ``sampled_vocab`` set it is
    estimated from the tokens that carry most final-layer mass plus a fresh uniform sample of the rest,
    re-weighted (sampled softmax), while the target term stays exact: sum_v p_v z_v = (W^T p) . norm(h).
    Models that soft-cap their logits make that term non-linear and always train on the full vocabulary.

    A tenth of the tokens is kept for validation: each layer keeps its translator from the evaluation
    with the lowest validation loss, the identity (the logit lens) included, so a small training budget
    cannot leave a layer worse off than the logit lens on similar text.
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
    residuals = residuals.to(weight)
    n_validation = max(1, residuals.shape[0] // 10)
    n_train = residuals.shape[0] - n_validation
    validation = torch.arange(n_train, residuals.shape[0])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    lens = new_tuned_lens(model, unembed).to(weight.device)

    with torch.no_grad():
        final = [torch.softmax(decode(model, unembed, chunk), -1) for chunk in residuals[:, n_layers].split(256)]
        if not exact:
            expected_unembedding = torch.cat([p @ weight for p in final])
            expected_bias = torch.cat([p @ bias for p in final])
            mass = torch.stack([p.sum(0) for p in final]).sum(0)
            n_kept = settings.sampled_vocab // 2
            kept = torch.topk(mass, n_kept).indices
            rest = torch.ones(vocab, dtype=torch.bool, device=weight.device)
            rest[kept] = False
            rest = rest.nonzero().squeeze(1)
            n_sampled = settings.sampled_vocab - n_kept
            offset = torch.cat([torch.zeros(n_kept), torch.full((n_sampled,), math.log(len(rest) / n_sampled))])
            offset = offset.to(weight)
        del final

    def columns() -> torch.Tensor | None:
        if exact:
            return None
        sampled = rest[torch.randperm(len(rest), generator=generator)[:n_sampled].to(rest.device)]
        return torch.cat([kept, sampled]).to(weight.device)

    def layer_losses(tokens: torch.Tensor, vocabulary: torch.Tensor | None) -> torch.Tensor:
        """Mean cross-entropy per layer (0..L-1) on these tokens."""
        if exact:
            with torch.no_grad():
                target = torch.softmax(decode(model, unembed, residuals[tokens, n_layers]), -1)
        else:
            sub_weight, sub_bias = weight[vocabulary], bias[vocabulary]
        losses = []
        for layer in range(n_layers):
            hidden = lens.transform_hidden(residuals[tokens, layer], layer)
            if exact:
                logits = decode(model, unembed, hidden)
                losses.append((torch.logsumexp(logits, -1) - (target * logits).sum(-1)).mean())
            else:
                normed = unembed.final_norm(hidden)
                log_normaliser = torch.logsumexp(normed @ sub_weight.T + sub_bias + offset, -1)
                linear = (normed * expected_unembedding[tokens]).sum(-1) + expected_bias[tokens]
                losses.append((log_normaliser - linear).mean())
        return torch.stack(losses)

    validation_columns = columns()
    best_loss = torch.full((n_layers,), math.inf)
    best_state = [None] * n_layers

    def keep_best() -> None:
        with torch.no_grad():
            losses = layer_losses(validation, validation_columns).cpu()
        for layer in torch.nonzero(losses < best_loss).flatten().tolist():
            best_loss[layer] = losses[layer]
            best_state[layer] = {k: v.detach().clone() for k, v in lens[layer].state_dict().items()}

    optimiser = torch.optim.AdamW(lens.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 - step / settings.steps)
    evaluate_every = max(1, settings.steps // 10)
    history = []
    keep_best()
    for step in tqdm(range(1, settings.steps + 1), desc="tuned lens", unit="step", disable=not progress):
        batch = torch.randint(n_train, (min(settings.batch_tokens, n_train),), generator=generator)
        loss = layer_losses(batch, columns()).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        history.append(loss.item() / n_layers)
        if step % evaluate_every == 0 or step == settings.steps:
            keep_best()
    for layer, state in enumerate(best_state):
        lens[layer].load_state_dict(state)
    lens.requires_grad_(False)
    return lens, history


def heldout_kl(
    model: HookedTransformer, unembed: Unembed, tuned: TunedLens, residuals: torch.Tensor, chunk: int = 128
) -> pd.DataFrame:
    """KL(final || lens) in bits per held-out token, layer and lens, over the full vocabulary."""
    import torch

    n_layers = model.cfg.n_layers
    residuals = residuals.to(unembed.unembedding.weight)
    rows = []
    with torch.inference_mode():
        for part in residuals.split(chunk):
            final = torch.log_softmax(decode(model, unembed, part[:, n_layers]), -1)
            probs = final.exp()
            for name, lens in (("logit", None), ("tuned", tuned)):
                for layer in range(n_layers + 1):
                    if layer == n_layers:  # both lenses are the model's own output here
                        kl = torch.zeros(len(part))
                    else:
                        approx = torch.log_softmax(lens_logits(model, unembed, lens, part[:, layer], layer), -1)
                        kl = (probs * (final - approx)).sum(-1).clamp(min=0) / math.log(2)
                    rows.append(pd.DataFrame({"layer": layer, "lens": name, "kl_bits": kl.float().cpu().numpy()}))
    per_token = pd.concat(rows, ignore_index=True)
    return (
        per_token.groupby(["lens", "layer"])["kl_bits"]
        .agg(kl_bits="mean", sd="std", n_tokens="count")
        .reset_index()
        .assign(sem=lambda f: f["sd"] / np.sqrt(f["n_tokens"]))
        .drop(columns="sd")
    )


def summarise_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per model, pair and lens: where the target takes over and what dominates before it."""
    keys = ["model", "word_list", "task", "src", "tgt", "lens"]
    rows = []
    for key, group in curves.groupby(keys, sort=True):
        mean = group.groupby(["layer", "language"])["prob"].mean().unstack("language")
        n_layers = int(mean.index.max())
        tgt = key[keys.index("tgt")]
        intermediate = mean.loc[1 : n_layers - 1]
        leader = mean.idxmax(axis=1)
        not_target = leader.index[leader != tgt]
        takeover = int(not_target.max()) + 1 if len(not_target) else 0
        row = dict(zip(keys, key))
        row |= {
            "n_concepts": group["concept"].nunique(),
            "p_target_final": float(mean.loc[n_layers, tgt]),
            "p_en_max_intermediate": float(intermediate["en"].max()) if "en" in mean else np.nan,
            "p_en_argmax_layer": int(intermediate["en"].idxmax()) if "en" in mean else None,
            "top_intermediate_language": str(intermediate.sum().idxmax()),
            "target_takeover_layer": takeover if takeover <= n_layers else None,
            "n_layers": n_layers,
        }
        rows.append(row)
    return pd.DataFrame(rows)
