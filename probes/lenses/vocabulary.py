"""Which tokens spell a word in each language, which concepts a latent-language experiment keeps, and which
sentences train the tuned lens (docs/methods.md §3).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from probes.datasets.wordlists import WordList

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


DROP_REASONS = ("lens_training", "no_cloze", "empty", "overlap", "source_overlap", "shared_only", "not_sampled")

SHARED = "shared"  # the pseudo-language of tokens that spell the words of two or more compared languages


LENS_TEXT_ROLES = (
    "train",
    "excluded",
    "heldout",
)  # a lens concept's sentence, one mentioning a held-out word, or held out


_LENS_SPLIT_STREAM = 0x1E45  # mixed with the configured seed, apart from the concept sample and the bootstrap


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
    token_sets: dict[str, list[list[int]]]  # language -> one full token set per kept concept
    contrast: str | None  # the language whose token set must not overlap the target's
    compared: list[str]  # the languages whose token sets are made exclusive of one another
    dropped: dict[str, int] = field(default_factory=dict)
    source_checked: bool = False  # whether the source's token set was also kept apart from English's


def contrast_language(src: str, tgt: str) -> str | None:
    """English, the candidate latent language; when English is the target, the source instead."""
    if tgt != "en":
        return "en"
    return src if src != tgt else None


def compared_languages(src: str, tgt: str, extra: Sequence[str] = ()) -> list[str]:
    """The target, English (or the contrast), the source and ``extra``: the languages a run tells apart."""
    return list(dict.fromkeys([tgt, *([c] if (c := contrast_language(src, tgt)) else []), src, *extra]))


def _exclusive(sets: Mapping[str, set[int]], compared: Collection[str]) -> tuple[dict[str, list[int]], list[int]]:
    counts = Counter(token for language in compared for token in sets[language])
    shared = {token for token, n in counts.items() if n > 1}
    exclusive = {
        language: sorted(ids - (shared if language in compared else set(counts))) for language, ids in sets.items()
    }
    return exclusive, sorted(shared)


def exclusive_token_sets(
    token_sets: Mapping[str, Sequence[Sequence[int]]], compared: Collection[str]
) -> dict[str, list[list[int]]]:
    """Token sets that never count one token for two compared languages, and the shared tokens under :data:`SHARED`.

    A compared language keeps only the tokens that spell no other compared language's word, a language
    outside ``compared`` none of the compared languages' tokens, and ``SHARED`` holds the tokens of two or
    more compared languages: so copying the source (es ``pan`` for fr ``pain``: ``p``, ``pa``) counts as
    shared, not as the target (docs/methods.md §3.4).
    """
    out: dict[str, list[list[int]]] = {language: [] for language in token_sets} | {SHARED: []}
    for row in zip(*token_sets.values(), strict=True):
        exclusive, shared = _exclusive(dict(zip(token_sets, map(set, row))), compared)
        for language, ids in exclusive.items():
            out[language].append(ids)
        out[SHARED].append(shared)
    return out


def select_concepts(
    word_list: WordList,
    vocabulary: Vocabulary,
    task: str,
    src: str,
    tgt: str,
    max_concepts: int | None = None,
    seed: int = 0,
    exclude: Collection[str] = (),
    extra: Sequence[str] = (),
) -> ConceptSelection:
    """Keep concepts whose target and contrast token sets are non-empty and disjoint; count the rest.

    This is Wendler et al.'s rule (target against English). The source's token set is held to the same
    rule against English when it is a third language (translation or cross-lingual cloze from neither
    English nor the target). Every compared language (:func:`compared_languages`, ``extra`` for a related
    language) must keep a token of its own once the others' are taken out (:func:`exclusive_token_sets`),
    or the concept is dropped as ``shared_only`` (es ``miel`` and fr ``miel``, zh and ja ``猫``). ``exclude``
    names concepts that may not be used at all (the tuned lens's training concepts), counted as
    ``lens_training``. With ``max_concepts``, a seeded sample of the usable concepts is kept (in list
    order) and the others are counted as ``not_sampled``.
    """
    from probes.datasets.wordlists import CLOZE_TASKS

    contrast = contrast_language(src, tgt)
    compared = compared_languages(src, tgt, extra)
    source_checked = contrast == "en" and src not in ("en", tgt)
    dropped = dict.fromkeys(DROP_REASONS, 0)
    excluded = set(exclude)
    kept: list[str] = []
    sets: dict[str, list[list[int]]] = {language: [] for language in word_list.languages}
    for concept, words in word_list.words.iterrows():
        if concept in excluded:
            dropped["lens_training"] += 1
            continue
        if task in CLOZE_TASKS and not isinstance(word_list.cloze.at[concept, src], str):
            dropped["no_cloze"] += 1
            continue
        row = {language: vocabulary.token_set(word) for language, word in words.items()}
        if not all(row[language] for language in compared):
            dropped["empty"] += 1
        elif contrast and set(row[tgt]) & set(row[contrast]):
            dropped["overlap"] += 1
        elif source_checked and set(row[src]) & set(row["en"]):
            dropped["source_overlap"] += 1
        elif not all(_exclusive({c: set(row[c]) for c in compared}, compared)[0].values()):
            dropped["shared_only"] += 1
        else:
            kept.append(str(concept))
            for language in sets:
                sets[language].append(row[language])
    if max_concepts is not None and len(kept) > max_concepts:
        chosen = np.sort(np.random.default_rng(seed).choice(len(kept), max_concepts, replace=False))
        dropped["not_sampled"] = len(kept) - max_concepts
        kept = [kept[i] for i in chosen]
        sets = {language: [ids[i] for i in chosen] for language, ids in sets.items()}
    return ConceptSelection(kept, sets, contrast, compared, dropped, source_checked)


def lens_text_split(word_lists: Sequence[WordList], train_concepts: int, seed: int) -> pd.DataFrame:
    """Which filled-in cloze sentences the tuned lens may train on, decided from the word lists alone.

    A seeded sample of ``train_concepts`` concepts, over all lists, belongs to the lens; every other
    concept is held out, and only held-out concepts enter the latent-language curves and the held-out KL.
    A lens concept's sentence is trained on only if it mentions no held-out concept's word in any
    language (:func:`probes.datasets.wordlists.mention_pattern`), so the lens never reads a word the curves
    ask about; the others are ``excluded``. No model is involved, so every model and every
    experiment sees the same split. Returns one row per sentence, in a seeded order (the order in which
    token budgets are filled): ``word_list, concept, language, text, role``.
    """
    from probes.datasets.wordlists import filled_cloze, mention_pattern

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
