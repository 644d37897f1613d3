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
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from probes.io import atomic_path
from probes.resampling import bootstrap_weights, percentile_interval, resampled_means

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
DROP_REASONS = ("lens_training", "no_cloze", "empty", "overlap", "source_overlap", "not_sampled")
LENS_TEXT_ROLES = (
    "train",
    "excluded",
    "heldout",
)  # a lens concept's sentence, one mentioning a held-out word, or held out
_LENS_SPLIT_STREAM = 0x1E45  # mixed with the configured seed, apart from the concept sample and the bootstrap


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
    source_checked: bool = False  # whether the source's token set was also kept apart from English's


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
    exclude: Collection[str] = (),
) -> ConceptSelection:
    """Keep concepts whose target and contrast token sets are non-empty and disjoint; count the rest.

    The source's token set is held to the same rule against English when it is a third language
    (translation or cloze from neither English nor the target): P(source) and P(English) then never
    share a token either. ``exclude`` names concepts that may not be used at all (the tuned lens's
    training concepts), counted as ``lens_training``. With ``max_concepts``, a seeded sample of the
    usable concepts is kept (in list order) and the others are counted as ``not_sampled``.
    """
    contrast = contrast_language(src, tgt)
    source_checked = contrast == "en" and src not in ("en", tgt)
    dropped = dict.fromkeys(DROP_REASONS, 0)
    excluded = set(exclude)
    kept: list[str] = []
    sets: dict[str, list[list[int]]] = {language: [] for language in word_list.languages}
    for concept, words in word_list.words.iterrows():
        if concept in excluded:
            dropped["lens_training"] += 1
            continue
        if task == "cloze" and not isinstance(word_list.cloze.at[concept, src], str):
            dropped["no_cloze"] += 1
            continue
        row = {language: vocabulary.token_set(word) for language, word in words.items()}
        checked = [row[tgt]] + ([row[contrast]] if contrast else []) + ([row[src]] if source_checked else [])
        if not all(checked):
            dropped["empty"] += 1
        elif contrast and set(row[tgt]) & set(row[contrast]):
            dropped["overlap"] += 1
        elif source_checked and set(row[src]) & set(row["en"]):
            dropped["source_overlap"] += 1
        else:
            kept.append(str(concept))
            for language in sets:
                sets[language].append(row[language])
    if max_concepts is not None and len(kept) > max_concepts:
        chosen = np.sort(np.random.default_rng(seed).choice(len(kept), max_concepts, replace=False))
        dropped["not_sampled"] = len(kept) - max_concepts
        kept = [kept[i] for i in chosen]
        sets = {language: [ids[i] for i in chosen] for language, ids in sets.items()}
    return ConceptSelection(kept, sets, contrast, dropped, source_checked)


# --- the tuned lens's text ----------------------------------------------------------------------------


def lens_text_split(word_lists: Sequence[WordList], train_concepts: int, seed: int) -> pd.DataFrame:
    """Which filled-in cloze sentences the tuned lens may train on, decided from the word lists alone.

    A seeded sample of ``train_concepts`` concepts, over all lists, belongs to the lens; every other
    concept is held out, and only held-out concepts enter the latent-language curves and the held-out KL.
    A lens concept's sentence is trained on only if it mentions no held-out concept's word in any
    language (:func:`probes.wordlists.mention_pattern`), so the lens never reads a word the curves
    ask about; the others are ``excluded``. No model is involved, so every model and every
    experiment sees the same split. Returns one row per sentence, in a seeded order (the order in which
    token budgets are filled): ``word_list, concept, language, text, role``.
    """
    from probes.wordlists import filled_cloze, mention_pattern

    texts = pd.concat(
        [filled_cloze(word_list).assign(word_list=word_list.name) for word_list in word_lists], ignore_index=True
    )
    keys = sorted({(w.name, str(c)) for w in word_lists for c in w.words.index})
    if not 1 <= train_concepts < len(keys):
        raise ValueError(
            f"tuned_lens.train_concepts={train_concepts} must be at least 1 and fewer than the {len(keys)} concepts "
            "of the word lists, which must also leave concepts for the curves"
        )
    rng = np.random.default_rng([seed, _LENS_SPLIT_STREAM])
    lens_keys = {keys[i] for i in rng.choice(len(keys), train_concepts, replace=False)}
    heldout_words = [
        word
        for word_list in word_lists
        for concept, words in word_list.words.iterrows()
        if (word_list.name, str(concept)) not in lens_keys
        for word in words
    ]
    pattern = mention_pattern(heldout_words)
    is_lens = np.array([(w, str(c)) in lens_keys for w, c in zip(texts["word_list"], texts["concept"])])
    mentions = texts["text"].map(lambda text: pattern.search(text) is not None).to_numpy()
    texts["role"] = np.where(~is_lens, "heldout", np.where(mentions, "excluded", "train"))
    texts = texts.iloc[rng.permutation(len(texts))].reset_index(drop=True)
    return texts[["word_list", "concept", "language", "text", "role"]]


def lens_concepts(split: pd.DataFrame, word_list: str) -> list[str]:
    """The concepts of one list that belong to the tuned lens (trained on, or excluded with them)."""
    mine = split[(split["word_list"] == word_list) & (split["role"] != "heldout")]
    return sorted(mine["concept"].astype(str).unique())


def first_tokens(token_counts: Sequence[int], budget: int) -> int:
    """How many texts, in order, it takes to reach ``budget`` tokens (all of them if they hold fewer)."""
    reached = np.cumsum(np.asarray(token_counts, dtype=np.int64)) >= budget
    return int(np.argmax(reached)) + 1 if reached.any() else len(token_counts)


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
    train_concepts: int = 50
    train_tokens: int = 2048
    heldout_tokens: int = 1024
    steps: int = 60
    batch_tokens: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    sampled_vocab: int | None = 2048
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        sizes = (self.train_concepts, self.train_tokens, self.heldout_tokens, self.steps, self.batch_tokens)
        if min(*sizes, self.batch_size) < 1:
            raise ValueError(
                "train_concepts, train_tokens, heldout_tokens, steps, batch_tokens and batch_size must be >= 1"
            )
        if self.sampled_vocab is not None and self.sampled_vocab < 2:
            raise ValueError("sampled_vocab must be >= 2 or null (the full vocabulary)")


def token_residuals(
    model: HookedTransformer, texts: Sequence[str], batch_size: int, progress: bool = True, with_text: bool = False
) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
    """Residual stream at every layer for every token but a prepended BOS: (tokens, L+1, d_model).

    Rows follow the texts in order. With ``with_text``, also which text each row comes from.
    """
    import torch
    from tqdm.auto import tqdm

    from probes.activations import check_finite, right_padded, site_hooks, tokenize

    hooks = site_hooks("resid", model.cfg.n_layers)
    skip = int(bool(model.cfg.default_prepend_bos))
    token_lists, _ = tokenize(model, texts, model.cfg.n_ctx)
    chunks, owners = [], []
    for start in tqdm(range(0, len(texts), batch_size), desc="lens corpus", unit="batch", disable=not progress):
        tokens, mask = right_padded(model, token_lists[start : start + batch_size])
        keep = mask & (torch.arange(tokens.shape[1])[None, :] >= skip)
        _, cache = model.run_with_cache(
            tokens.to(model.cfg.device),
            attention_mask=mask.long().to(model.cfg.device),
            names_filter=list(hooks.values()),
            stop_at_layer=model.cfg.n_layers,
        )
        for layer in sorted(hooks):
            check_finite(model, cache[hooks[layer]], f"{hooks[layer]} (layer {layer})", "resid")
        on_device = keep.to(model.cfg.device)
        chunks.append(torch.stack([cache[hooks[layer]][on_device] for layer in sorted(hooks)], dim=1).float().cpu())
        owners.append(np.repeat(np.arange(start, start + len(tokens)), keep.sum(1).numpy()))
    residuals = torch.cat(chunks)
    return (residuals, np.concatenate(owners)) if with_text else residuals


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
    model: HookedTransformer,
    unembed: Unembed,
    tuned: TunedLens,
    residuals: torch.Tensor,
    texts: Sequence[int] | np.ndarray | None = None,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    chunk: int = 512,
) -> pd.DataFrame:
    """KL(final || lens) in bits per layer and lens, over the full vocabulary, with a bootstrap interval.

    ``texts`` says which text each token row comes from: tokens of one text are not independent, so a
    resample draws whole texts (without it, single tokens). Every layer and both lenses see the same
    resamples, so the ratio logit/tuned per layer gets its interval too. KL = sum_v p_v log p_v
    - sum_v p_v z_v + logsumexp(z), with the middle term through the expected unembedding (W^T p) . norm(h)
    when the logits are linear in the normed residual, which leaves one matrix product and one
    logsumexp per token, layer and lens. ``chunk`` tokens share one product with the unembedding: on a 2-core
    CPU that product runs 1.5x faster at 512 tokens than at 128 (Gemma's 262k-entry vocabulary: 512 MB of
    logits per chunk).
    """
    import torch

    n_layers = model.cfg.n_layers
    weight = unembed.unembedding.weight
    bias = unembed.unembedding.bias
    linear = (model.cfg.output_logits_soft_cap or 0) <= 0
    residuals = residuals.to(weight)
    n = residuals.shape[0]
    per_token = {name: np.zeros((n_layers + 1, n)) for name in LENSES}  # layer L stays 0: both are the output
    # One logits buffer for every chunk, layer and lens: a fresh 512 MB tensor each time costs its page faults.
    buffer = torch.empty((min(chunk, n), weight.shape[0]), dtype=weight.dtype, device=weight.device)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            part = residuals[start : start + chunk]
            log_p = torch.log_softmax(decode(model, unembed, part[:, n_layers]), -1)
            p = log_p.exp()
            neg_entropy = (p * log_p).sum(-1)
            if linear:
                expected_weight = p @ weight
                expected_bias = p @ bias if bias is not None else torch.zeros(len(part)).to(weight)
            for name, lens in (("logit", None), ("tuned", tuned)):
                for layer in range(n_layers):
                    hidden = part[:, layer] if lens is None else lens.transform_hidden(part[:, layer], layer)
                    if linear:
                        normed = unembed.final_norm(hidden)
                        logits = torch.matmul(normed, weight.T, out=buffer[: len(part)])
                        if bias is not None:
                            logits.add_(bias)
                        cross = (normed * expected_weight).sum(-1) + expected_bias
                    else:
                        logits = decode(model, unembed, hidden)
                        cross = torch.linalg.vecdot(p, logits)
                    kl = (neg_entropy - cross + logsumexp_(logits)).clamp(min=0) / math.log(2)
                    per_token[name][layer, start : start + len(part)] = kl.double().cpu().numpy()
    groups = None if texts is None else np.asarray(texts)
    weights = bootstrap_weights(n, n_boot, seed, groups)
    resampled = {name: resampled_means(weights, values) for name, values in per_token.items()}  # (n_boot, L+1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = resampled["logit"] / resampled["tuned"]
        ratio_point = per_token["logit"].mean(1) / per_token["tuned"].mean(1)
    ratio[:, n_layers], ratio_point[n_layers] = np.nan, np.nan
    ratio_lo, ratio_hi = percentile_interval(ratio, ci)
    n_texts = n if groups is None else len(np.unique(groups))
    frames = []
    for name in LENSES:
        lo, hi = percentile_interval(resampled[name], ci)
        frames.append(
            pd.DataFrame(
                {
                    "lens": name,
                    "layer": np.arange(n_layers + 1),
                    "kl_bits": per_token[name].mean(1),
                    "kl_lo": lo,
                    "kl_hi": hi,
                    "logit_over_tuned": ratio_point,
                    "logit_over_tuned_lo": ratio_lo,
                    "logit_over_tuned_hi": ratio_hi,
                    "n_tokens": n,
                    "n_texts": n_texts,
                    "ci": ci,
                    "n_boot": n_boot,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp`` over the last axis, overwriting ``logits``: 2x faster on a 262k vocabulary."""
    top = logits.amax(-1, keepdim=True)
    return logits.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))


# --- intervals over concepts and the summary ----------------------------------------------------------

RUN_KEYS = ["model", "word_list", "task", "src", "tgt"]


def _concept_means(group: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """Concept-mean P(language) and entropy for one run, as points and as bootstrap resamples over concepts.

    One set of resamples serves every lens, layer and language, so a statistic computed from several of
    them (a maximum over layers, a leading language) is resampled consistently.
    """
    prob = group.set_index(["concept", "lens", "layer", "language"])["prob"].unstack(["lens", "layer", "language"])
    prob = prob.sort_index(axis=0).sort_index(axis=1)
    entropy = group.drop_duplicates(["concept", "lens", "layer"]).set_index(["concept", "lens", "layer"])
    entropy = entropy["entropy_bits"].unstack(["lens", "layer"]).reindex(prob.index).sort_index(axis=1)
    if prob.isna().any().any() or entropy.isna().any().any():
        raise ValueError("every concept needs a value at every lens, layer and language to be resampled")
    weights = bootstrap_weights(len(prob), n_boot, seed)
    return {
        "n_concepts": len(prob),
        "prob_columns": prob.columns,
        "prob": prob.to_numpy().mean(0),
        "prob_boot": resampled_means(weights, prob.to_numpy().T),
        "entropy_columns": entropy.columns,
        "entropy": entropy.to_numpy().mean(0),
        "entropy_boot": resampled_means(weights, entropy.to_numpy().T),
    }


def curve_intervals(curves: pd.DataFrame, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean P(language) and entropy over concepts per run, lens, layer and language, with percentile intervals.

    The intervals resample concepts, what varies between prompts of one run (docs/methods.md §3.5).
    """
    frames = []
    for key, group in curves.groupby(RUN_KEYS, sort=True):
        means = _concept_means(group, n_boot, seed)
        lo, hi = percentile_interval(means["prob_boot"], ci)
        frame = means["prob_columns"].to_frame(index=False)
        frame = frame.assign(prob=means["prob"], prob_lo=lo, prob_hi=hi)
        lo, hi = percentile_interval(means["entropy_boot"], ci)
        entropy = means["entropy_columns"].to_frame(index=False)
        entropy = entropy.assign(entropy_bits=means["entropy"], entropy_lo=lo, entropy_hi=hi)
        frame = frame.merge(entropy, on=["lens", "layer"])
        n_layers = int(frame["layer"].max())
        frame = frame.assign(
            **dict(zip(RUN_KEYS, key)), depth=frame["layer"] / n_layers, n_concepts=means["n_concepts"]
        )
        frames.append(frame)
    columns = [*RUN_KEYS, "lens", "layer", "depth", "language", "prob", "prob_lo", "prob_hi"]
    columns += ["entropy_bits", "entropy_lo", "entropy_hi", "n_concepts"]
    return pd.concat(frames, ignore_index=True)[columns].assign(ci=ci, n_boot=n_boot)


def _curve_statistics(mean: np.ndarray, languages: Sequence[str], tgt: str) -> dict[str, np.ndarray]:
    """Summary statistics of concept-mean curves ``mean`` (..., L+1 layers, languages), NaN where undefined."""
    n_layers = mean.shape[-2] - 1
    target = languages.index(tgt)
    intermediate = mean[..., 1:n_layers, :]
    leader = mean.argmax(-1)  # ties go to the first language, as everywhere in the summary
    not_target = leader != target
    last_not_target = np.where(not_target.any(-1), n_layers + 1 - np.argmax(not_target[..., ::-1], -1), 0)
    takeover = np.where(leader[..., n_layers] == target, last_not_target, np.nan)
    out = {"p_target_final": mean[..., n_layers, target], "target_takeover_layer": takeover}
    if "en" in languages:
        english = intermediate[..., languages.index("en")]
        out["p_en_max_intermediate"] = english.max(-1)
        out["p_en_argmax_layer"] = english.argmax(-1) + 1
    out["top_intermediate_language"] = intermediate.sum(-2).argmax(-1)
    return out


def summarise_curves(curves: pd.DataFrame, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per model, pair and lens: where the target takes over and what dominates before it.

    ``p_target_final``, ``p_en_max_intermediate`` and ``target_takeover_layer`` carry percentile
    intervals from resampling concepts (``_lo``/``_hi``); a resample where the target does not lead at
    the last layer has no takeover layer and is left out of that interval.
    """
    rows = []
    for key, group in curves.groupby(RUN_KEYS, sort=True):
        means = _concept_means(group, n_boot, seed)
        columns = means["prob_columns"]
        tgt = key[RUN_KEYS.index("tgt")]
        for lens in columns.get_level_values("lens").unique():
            in_lens = (columns.get_level_values("lens") == lens).nonzero()[0]
            layers = columns[in_lens].get_level_values("layer").unique()
            languages = list(columns[in_lens].get_level_values("language").unique())
            shape = (len(layers), len(languages))
            point = _curve_statistics(means["prob"][in_lens].reshape(shape), languages, tgt)
            boot = _curve_statistics(means["prob_boot"][:, in_lens].reshape(-1, *shape), languages, tgt)
            takeover = point["target_takeover_layer"]
            row = dict(zip(RUN_KEYS, key)) | {"lens": lens, "n_concepts": means["n_concepts"]}
            row["p_target_final"] = float(point["p_target_final"])
            for name in ("p_en_max_intermediate", "p_target_final", "target_takeover_layer"):
                if name in point:
                    lo, hi = percentile_interval(boot[name], ci)
                    row |= {f"{name}_lo": float(lo), f"{name}_hi": float(hi)}
            row["p_en_max_intermediate"] = float(point["p_en_max_intermediate"]) if "en" in languages else np.nan
            row["p_en_argmax_layer"] = int(point["p_en_argmax_layer"]) if "en" in languages else None
            row["top_intermediate_language"] = languages[int(point["top_intermediate_language"])]
            row["target_takeover_layer"] = None if np.isnan(takeover) else int(takeover)
            row |= {"n_layers": len(layers) - 1, "ci": ci, "n_boot": n_boot}
            rows.append(row)
    order = [*RUN_KEYS, "lens", "n_concepts", "p_target_final", "p_target_final_lo", "p_target_final_hi"]
    order += ["p_en_max_intermediate", "p_en_max_intermediate_lo", "p_en_max_intermediate_hi", "p_en_argmax_layer"]
    order += ["top_intermediate_language", "target_takeover_layer", "target_takeover_layer_lo"]
    order += ["target_takeover_layer_hi", "n_layers", "ci", "n_boot"]
    frame = pd.DataFrame(rows)
    return frame[[column for column in order if column in frame.columns]]
