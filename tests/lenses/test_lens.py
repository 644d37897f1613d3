"""Token sets for any tokenizer, the logit lens against the model and against Hugging Face, the tuned lens."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import REPO, byte_level_bpe
from probes.activations.extraction import ExtractionSettings, pooled_activations
from probes.datasets.wordlists import build_prompts, filled_cloze, load_word_list
from probes.depth_usage.contributions import least_squares_maps
from probes.lenses.curves import curve_intervals, language_curves, summarise_curves
from probes.lenses.tuned import (
    TunedLensSettings,
    fit_tuned_lens,
    heldout_kl,
    least_squares_lens,
    lens_logits,
    load_tuned_lens,
    new_tuned_lens,
    save_tuned_lens,
    token_residuals,
    unembed_of,
)
from probes.lenses.vocabulary import (
    LENS_TEXT_ROLES,
    Vocabulary,
    detect_token_scheme,
    first_tokens,
    lens_concepts,
    lens_text_split,
    select_concepts,
)

DATA = REPO / "data" / "latent_language"


@pytest.fixture(scope="module")
def everyday():
    return load_word_list("everyday", DATA / "everyday_words.csv", DATA / "everyday_cloze.csv", DATA / "languages.csv")


@pytest.fixture(scope="module")
def word_list_tokenizer(everyday):
    """A byte-level BPE trained on the word list's own sentences: every word has a non-empty token set."""
    texts = filled_cloze(everyday)["text"].tolist()
    return byte_level_bpe(texts, 600, ["<unk>", "<pad>"], unk_token="<unk>", pad_token="<pad>")


@pytest.fixture(scope="module")
def gemma_tokenizer(gemma_manifest):
    from transformers import AutoTokenizer

    from probes.models.loading import read_manifest

    return AutoTokenizer.from_pretrained(read_manifest(gemma_manifest)["hf_dir"])


@pytest.fixture(scope="module")
def literal_space_tokenizer():
    """A third shape: BPE without pre-tokenisation, so vocabulary strings hold plain leading spaces."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["a flower in a field", "a b c", "the dog and the fleur", "flowers flow", "fl fly flu"] * 20
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<pad>"]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>")


def _word_start_tokens(tokenizer, word: str) -> set[int]:
    """The first token of the word's own tokenisation, bare and after a space.

    A lone space token (SmolLM2 spells " рыба" as "Ġ", "ÑĢ", ...) belongs to no language and is skipped.
    """
    starts = set()
    for form in (word, " " + word):
        ids = tokenizer.encode(form, add_special_tokens=False)
        starts.add(next(i for i in ids if tokenizer.decode([i]).strip()))
    return starts


def _check_token_sets(tokenizer, words) -> None:
    vocabulary = Vocabulary(tokenizer)
    for word in words:
        ids = vocabulary.token_set(word)
        assert _word_start_tokens(tokenizer, word) <= set(ids), word
        for token_id in ids:
            text = tokenizer.decode([token_id])
            if "\ufffd" in text:  # a byte that starts a multi-byte character
                continue
            assert text.strip() and (word.startswith(text) or (" " + word).startswith(text)), (word, text)


@pytest.mark.slow
def test_byte_level_bpe_token_sets(smollm2, everyday):
    tokenizer = smollm2.tokenizer
    scheme = detect_token_scheme(tokenizer)
    assert scheme.byte_level and scheme.marker == "Ġ" and not scheme.byte_fallback
    vocabulary = Vocabulary(tokenizer)
    flower = set(tokenizer.convert_ids_to_tokens(vocabulary.token_set("flower")))
    assert {"f", "fl", "flower", "Ġf", "Ġfl", "Ġflower"} <= flower and "Ġ" not in flower
    # 花 is three bytes; the tokens for its first byte (bare and after a space) start it
    assert {"è", "Ġè"} <= set(tokenizer.convert_ids_to_tokens(vocabulary.token_set("花")))
    _check_token_sets(tokenizer, everyday.words.to_numpy().ravel())


@pytest.mark.slow
def test_sentencepiece_token_sets(gemma_tokenizer, everyday):
    scheme = detect_token_scheme(gemma_tokenizer)
    assert not scheme.byte_level and scheme.marker == "▁" and scheme.byte_fallback
    vocabulary = Vocabulary(gemma_tokenizer)
    assert set(gemma_tokenizer.convert_ids_to_tokens(vocabulary.token_set("花"))) == {"花", "▁花", "<0xE8>"}
    assert {"▁flower", "flower", "▁f", "f", "<0x66>"} <= set(
        gemma_tokenizer.convert_ids_to_tokens(vocabulary.token_set("flower"))
    )
    _check_token_sets(gemma_tokenizer, everyday.words.to_numpy().ravel())


def test_literal_space_token_sets(literal_space_tokenizer):
    scheme = detect_token_scheme(literal_space_tokenizer)
    assert not scheme.byte_level and scheme.marker == " " and not scheme.byte_fallback
    vocabulary = Vocabulary(literal_space_tokenizer)
    # brute force over the vocabulary: tokens spelling a prefix of the word, with or without its space
    expected = {
        token_id
        for token, token_id in literal_space_tokenizer.get_vocab().items()
        if token.strip()
        and token not in ("<unk>", "<pad>")
        and ("flower".startswith(token) or " flower".startswith(token))
    }
    assert any(token.startswith(" ") for token in literal_space_tokenizer.convert_ids_to_tokens(sorted(expected)))
    assert set(vocabulary.token_set("flower")) == expected
    _check_token_sets(literal_space_tokenizer, ["flower", "fleur", "dog"])


@pytest.mark.slow
def test_overlapping_or_empty_token_sets_are_dropped_and_counted(gemma_tokenizer, everyday):
    vocabulary = Vocabulary(gemma_tokenizer)
    selection = select_concepts(everyday, vocabulary, "translation", "es", "fr")
    assert selection.contrast == "en"
    assert selection.dropped["overlap"] > 0  # fleur / flower share "f", "fl"
    assert len(selection.concepts) + sum(selection.dropped.values()) == len(everyday.words)
    for i, _ in enumerate(selection.concepts):
        assert not set(selection.token_sets["fr"][i]) & set(selection.token_sets["en"][i])
    # English as the target: the source is what must not overlap
    assert select_concepts(everyday, vocabulary, "translation", "fr", "en").contrast == "fr"
    sampled = select_concepts(everyday, vocabulary, "translation", "fr", "zh", max_concepts=40, seed=0)
    assert sampled.source_checked and sampled.dropped["source_overlap"] > 0  # French words sharing English starts
    assert len(sampled.concepts) == 40 and sum(sampled.dropped.values()) == len(everyday.words) - 40
    assert sampled.concepts == select_concepts(everyday, vocabulary, "translation", "fr", "zh", 40, 0).concepts


def _prompt_residuals(model, everyday, n=12):
    selection = select_concepts(everyday, Vocabulary(model.tokenizer), "translation", "fr", "zh", max_concepts=n)
    prompts = build_prompts(everyday, "translation", "fr", "zh", selection.concepts, shots=3, seed=0)
    pooled, _ = pooled_activations(
        model, [p.text for p in prompts], ExtractionSettings(poolings=("last",)), progress=False
    )
    return prompts, selection, pooled["last"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_logit_lens_at_the_last_layer_is_the_models_output(name, request, everyday):
    from probes.models.cache import load_model

    model = (
        request.getfixturevalue("smollm2")
        if name == "smollm2"
        else load_model(request.getfixturevalue("gemma_manifest"))
    )
    prompts, _, residuals = _prompt_residuals(model, everyday, n=6)
    unembed = unembed_of(model)
    with torch.inference_mode():
        lens = torch.softmax(
            lens_logits(model, unembed, None, residuals[:, model.cfg.n_layers], model.cfg.n_layers), -1
        )
        own = torch.stack([torch.softmax(model(p.text)[0, -1], -1) for p in prompts])
    assert (lens - own).abs().max() <= 1e-5


@pytest.mark.slow
def test_logit_lens_matches_an_independent_hugging_face_computation(smollm2, smollm2_manifest, everyday):
    """P(language) per layer from HF hidden states through HF's own final norm and lm_head."""
    from probes.models.loading import load_hf_model

    hf_model, tokenizer = load_hf_model(smollm2_manifest)
    prompts, selection, residuals = _prompt_residuals(smollm2, everyday)
    ours = language_curves(smollm2, unembed_of(smollm2), None, residuals, selection.token_sets)
    ours = ours.set_index(["item", "layer", "language"])["prob"]
    n_layers = smollm2.cfg.n_layers
    with torch.inference_mode():
        for item, prompt in enumerate(prompts):
            ids = smollm2.to_tokens(prompt.text)  # same BOS handling as the pipeline
            hidden = hf_model(ids, output_hidden_states=True).hidden_states
            for layer in range(n_layers):  # HF's last hidden state already has the final norm applied
                probs = torch.softmax(hf_model.lm_head(hf_model.model.norm(hidden[layer][0, -1])), -1)
                for language, sets in selection.token_sets.items():
                    theirs = probs[sets[item]].sum().item()
                    # measured max |difference| over all items, layers and languages: 1.8e-6 to 3.5e-6 (float32, CPU)
                    assert ours[item, layer, language] == pytest.approx(theirs, abs=5e-5), (item, layer, language)


def _lens_from_least_squares(model, unembed, residuals, n_validation):
    maps, bias, _ = least_squares_maps([residuals[:-n_validation]], TunedLensSettings().ridge)
    return least_squares_lens(model, unembed, maps, bias)


@pytest.mark.slow
def test_tuned_lens_beats_both_other_lenses_on_held_out_text(smollm2, everyday, tmp_path):
    from probes.datasets.wordlists import filled_cloze

    texts = filled_cloze(everyday)
    train = token_residuals(smollm2, texts[texts["concept"].isin(everyday.words.index[:40])]["text"].tolist(), 16)
    heldout = token_residuals(smollm2, texts[texts["concept"].isin(everyday.words.index[-3:])]["text"].tolist(), 16)
    unembed = unembed_of(smollm2)
    linear = _lens_from_least_squares(smollm2, unembed, train, 256)
    settings = TunedLensSettings(steps=25, batch_tokens=128, sampled_vocab=1024)
    tuned, history, kept = fit_tuned_lens(smollm2, unembed, linear, train, 256, settings, seed=0, progress=False)
    assert len(history) == settings.steps and max(kept) > 0  # the sampled loss is noisy: read the held-out KL
    lenses = {"logit": None, "linear": linear, "tuned": tuned}
    kl = heldout_kl(smollm2, unembed, lenses, heldout[:64]).pivot(index="layer", columns="lens", values="kl_bits")
    middle = kl.loc[5:25]
    assert (middle["tuned"] < middle["logit"]).all() and (middle["linear"] < middle["logit"]).all()
    assert (middle["tuned"] < middle["linear"]).mean() >= 0.75 and middle["tuned"].mean() < middle["linear"].mean()
    assert kl.loc[smollm2.cfg.n_layers].abs().max() == 0
    # same seed, same translators; a saved lens reloads exactly
    again, _, _ = fit_tuned_lens(smollm2, unembed, linear, train, 256, settings, seed=0, progress=False)
    for a, b in zip(tuned.parameters(), again.parameters()):
        assert torch.equal(a, b)
    save_tuned_lens(tuned, tmp_path / "lens.safetensors")
    loaded = load_tuned_lens(tmp_path / "lens.safetensors", unembed)
    for a, b in zip(tuned.parameters(), loaded.parameters()):
        assert torch.equal(a, b)


def test_tuned_lens_full_vocabulary_path_and_unembedding_check(tiny_model, tmp_path):
    texts = ["The city of Lyon is in France.", "I loved the film, the acting was wonderful."] * 4
    residuals = token_residuals(tiny_model, texts, 4, progress=False)
    unembed = unembed_of(tiny_model)
    settings = TunedLensSettings(steps=10, batch_tokens=32, sampled_vocab=None)
    start = new_tuned_lens(tiny_model, unembed)
    tuned, history, _ = fit_tuned_lens(tiny_model, unembed, start, residuals, 8, settings, seed=0, progress=False)
    assert history[-1] < history[0]
    save_tuned_lens(tuned, tmp_path / "lens.safetensors")
    other = unembed_of(tiny_model)
    other.unembedding.weight.data += 1.0
    with pytest.raises(ValueError, match="different unembedding"):
        load_tuned_lens(tmp_path / "lens.safetensors", other)


def _affine_residuals(model, n: int, seed: int) -> torch.Tensor:
    """Rows (n, L+1, d) where every layer is an invertible affine map of layer 0, so the last layer is an exact
    affine map of each layer (random: far from the identity, which the logit lens assumes)."""
    generator = torch.Generator().manual_seed(seed)
    d, n_layers = model.cfg.d_model, model.cfg.n_layers
    first = torch.randn(n, d, generator=generator)
    layers = [first]
    for _ in range(n_layers):
        mixing = torch.eye(d) + 0.5 * torch.randn(d, d, generator=generator) / d**0.5
        layers.append(first @ mixing + torch.randn(d, generator=generator))
    return torch.stack(layers, 1) * 3


def test_least_squares_start_reads_an_exact_affine_relation_with_no_kl_and_training_keeps_it(tiny_model):
    unembed = unembed_of(tiny_model)
    rows = _affine_residuals(tiny_model, 800, seed=0)
    rows, heldout = rows[:600], rows[600:]  # the same maps, other rows
    maps, bias, n = least_squares_maps(rows.split(128), ridge=1e-9)
    assert n == 600
    linear = least_squares_lens(tiny_model, unembed, maps, bias)
    settings = TunedLensSettings(steps=20, batch_tokens=64, sampled_vocab=None)
    tuned, _, _ = fit_tuned_lens(tiny_model, unembed, linear, rows, 60, settings, seed=0, progress=False)
    kl = heldout_kl(tiny_model, unembed, {"logit": None, "linear": linear, "tuned": tuned}, heldout, n_boot=50)
    below = kl.pivot(index="layer", columns="lens", values="kl_bits").loc[: tiny_model.cfg.n_layers - 1]
    assert (below["logit"] > 0.05).all()
    assert (below["linear"] < 1e-4).all() and (below["tuned"] < 1e-3).all()


def test_training_beats_the_least_squares_start_where_the_output_is_noisy(tiny_model):
    """A planted case: the last layer is an affine map of each layer plus independent noise. Least squares
    recovers the map, so its lens decodes the mean residual, sharper than the noisy output's average
    distribution; KL training on the full vocabulary can flatten it, and must, on held-out rows at every
    layer. A sampled normaliser of 64 of the 300 entries is biased: training on it raised the held-out KL
    at layers 1 and 2 (0.164 to 0.179 and 0.188 bits) while a sampled validation kept it; the exact
    validation keeps the start instead."""
    generator = torch.Generator().manual_seed(2)  # not the rows' seed, whose first draws make layer 0
    rows = _affine_residuals(tiny_model, 1200, seed=1)
    rows[:, -1] += 3 * torch.randn(rows[:, -1].shape, generator=generator)
    rows, heldout = rows[:900], rows[900:]
    unembed = unembed_of(tiny_model)
    linear = _lens_from_least_squares(tiny_model, unembed, rows, 100)
    kl = {}
    for sampled_vocab in (None, 64):
        settings = TunedLensSettings(steps=40, batch_tokens=64, sampled_vocab=sampled_vocab)
        tuned, _, kept = fit_tuned_lens(tiny_model, unembed, linear, rows, 100, settings, seed=0, progress=False)
        table = heldout_kl(tiny_model, unembed, {"linear": linear, "tuned": tuned}, heldout, n_boot=200)
        kl[sampled_vocab] = table[(table["lens"] == "linear") & (table["layer"] < tiny_model.cfg.n_layers)]
        if sampled_vocab is None:
            assert min(kept) > 0
    assert (kl[None]["kl_minus_tuned_lo"] > 0).all(), kl[None]
    assert (kl[64]["kl_minus_tuned"] >= -1e-4).all(), kl[64]


def test_training_never_leaves_a_layer_above_its_least_squares_start_on_the_validation_rows(tiny_model):
    texts = ["The city of Lyon is in France.", "I loved the film, the acting was wonderful.", "Alice flips the coin."]
    residuals = token_residuals(tiny_model, texts * 4, 4, progress=False)
    unembed = unembed_of(tiny_model)
    n_validation = len(residuals) // 3
    linear = _lens_from_least_squares(tiny_model, unembed, residuals, n_validation)

    def validation_kl(lr: float) -> tuple[pd.DataFrame, list[int]]:  # lr: the package's scale, default 1
        settings = TunedLensSettings(steps=20, batch_tokens=32, sampled_vocab=None, lr=lr)
        tuned, _, kept = fit_tuned_lens(
            tiny_model, unembed, linear, residuals, n_validation, settings, seed=0, progress=False
        )
        lenses = {"linear": linear, "tuned": tuned}
        kl = heldout_kl(tiny_model, unembed, lenses, residuals[-n_validation:], n_boot=50)
        return kl.pivot(index="layer", columns="lens", values="kl_bits").loc[: tiny_model.cfg.n_layers - 1], kept

    # a learning rate far too large, where training makes layers worse: those keep their start
    wild, kept = validation_kl(1000.0)
    assert (wild["tuned"] <= wild["linear"] + 1e-6).all() and min(kept) == 0
    gentle, kept = validation_kl(TunedLensSettings().lr)
    assert (gentle["tuned"] <= gentle["linear"] + 1e-6).all() and (gentle["tuned"] < gentle["linear"]).any()
    assert max(kept) > 0
    with pytest.raises(ValueError, match="validation rows"):
        fit_tuned_lens(tiny_model, unembed, linear, residuals, 0, TunedLensSettings(), seed=0, progress=False)


# --- leakage-free lens text, held-out KL with its interval, intervals over concepts ---------------------


def _mentions(text: str, word: str) -> bool:
    """An independent reading of "the text contains the word": any substring for kana/CJK, else a word token
    equal to the word or the word plus at most two letters (the rule of docs/methods.md §3.6)."""
    if re.search(r"[\u3040-\u30ff\u3400-\u9fff]", word):
        return word in text
    word = word.casefold()
    return any(t.startswith(word) and len(t) - len(word) <= 2 for t in re.findall(r"\w+", text.casefold()))


def test_lens_text_split_keeps_every_curve_concept_out_of_the_lens_text(everyday, word_list_tokenizer):
    n_train = TunedLensSettings().train_concepts
    split = lens_text_split([everyday], n_train, seed=0)
    assert set(split["role"]) == set(LENS_TEXT_ROLES) and len(split) == everyday.cloze.size
    lens = set(lens_concepts(split, "everyday"))
    heldout = set(split.loc[split["role"] == "heldout", "concept"])
    assert len(lens) == n_train and not lens & heldout and lens | heldout == set(everyday.words.index)
    # no sentence the lens may train on contains a held-out concept's word, in any language
    train_text = split.loc[split["role"] == "train", "text"].tolist()
    assert set(split.loc[split["role"] == "train", "concept"]) <= lens
    for concept in heldout:
        for word in everyday.words.loc[concept]:
            assert not any(_mentions(text, word) for text in train_text), (concept, word)
    # the excluded sentences are exactly the lens sentences that do mention one
    excluded = split[split["role"] == "excluded"]
    words = [w for c in heldout for w in everyday.words.loc[c]]
    assert all(any(_mentions(text, w) for w in words) for text in excluded["text"])
    # the curves use held-out concepts only, for the queries and for their solved examples
    vocabulary = Vocabulary(word_list_tokenizer)
    selection = select_concepts(everyday, vocabulary, "translation", "fr", "zh", 40, 0, exclude=lens)
    assert selection.dropped["lens_training"] == n_train and not set(selection.concepts) & lens
    prompts = build_prompts(everyday, "translation", "fr", "zh", selection.concepts, shots=5, seed=0)
    shown = {c for p in prompts for c in everyday.words.index if f'"{everyday.words.at[c, "fr"]}"' in p.text}
    assert shown and not shown & lens
    # seeded: the same seed gives the same split, another seed another one
    assert lens_text_split([everyday], n_train, seed=0).equals(split)
    assert set(lens_concepts(lens_text_split([everyday], n_train, seed=1), "everyday")) != lens
    with pytest.raises(ValueError, match="train_concepts"):
        lens_text_split([everyday], len(everyday.words), seed=0)


def test_first_tokens_fills_a_budget_with_whole_texts():
    assert first_tokens([5, 5, 5], 7) == 2 and first_tokens([5, 5, 5], 10) == 2 and first_tokens([5, 5], 11) == 2


def test_source_language_overlap_with_english_is_dropped_and_counted(tmp_path, word_list_tokenizer):
    words = "concept,en,fr,de\nflower,flower,fleur,Blume\ndog,dog,chien,Hund\ncat,cat,chat,Katze\nmoon,moon,lune,Mond\n"
    (tmp_path / "words.csv").write_text(words)
    (tmp_path / "cloze.csv").write_text("concept,language,sentence\ndog,en,The ___ barks.\n")
    mine = load_word_list("mine", tmp_path / "words.csv", tmp_path / "cloze.csv", DATA / "languages.csv")
    vocabulary = Vocabulary(word_list_tokenizer)
    # fr -> de: the target Blume/Hund/Katze/Mond never shares a token with English, but the French source
    # fleur and chat share "f" and "c" with flower and cat: dropped like an overlapping target
    selection = select_concepts(mine, vocabulary, "translation", "fr", "de")
    assert selection.source_checked and selection.contrast == "en"
    assert selection.dropped["source_overlap"] == 2 and selection.dropped["overlap"] == 0
    assert selection.concepts == ["dog", "moon"]
    for i in range(len(selection.concepts)):
        assert not set(selection.token_sets["fr"][i]) & set(selection.token_sets["en"][i])
    # a planted overlap: "moon" in French spelled like the English word is dropped too
    planted = mine.words.copy()
    planted.loc["moon", "fr"] = "moonlune"
    planted_list = dataclasses.replace(mine, words=planted)
    assert select_concepts(planted_list, vocabulary, "translation", "fr", "de").concepts == ["dog"]
    # English as the target: the source is the contrast already, nothing more to check
    to_english = select_concepts(mine, vocabulary, "translation", "fr", "en")
    assert to_english.contrast == "fr" and not to_english.source_checked
    assert to_english.dropped["overlap"] == 2 and to_english.dropped["source_overlap"] == 0


def _perturbed_lens(model, unembed):
    tuned = new_tuned_lens(model, unembed)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for translator in tuned.layer_translators:
            translator.weight.add_(0.05 * torch.randn(translator.weight.shape, generator=generator))
    return tuned.requires_grad_(False)


@pytest.mark.parametrize("soft_cap", [0.0, 5.0])
def test_heldout_kl_equals_the_tuned_lens_packages_evaluation_with_intervals_over_texts(tiny_model, soft_cap):
    from transformer_lens.utilities.activation_functions import apply_softcap
    from tuned_lens.nn.lenses import LogitLens

    texts = ["The city of Lyon is in France.", "I loved the film, the acting was wonderful.", "Alice flips the coin."]
    residuals, owner = token_residuals(tiny_model, texts * 3, 4, progress=False, with_text=True)
    assert len(owner) == len(residuals) and sorted(set(owner)) == list(range(9))
    unembed = unembed_of(tiny_model)
    lenses = {
        "logit": None,
        "linear": _lens_from_least_squares(tiny_model, unembed, residuals, 1),
        "tuned": _perturbed_lens(tiny_model, unembed),
    }
    n_layers = tiny_model.cfg.n_layers
    previous, tiny_model.cfg.output_logits_soft_cap = tiny_model.cfg.output_logits_soft_cap, soft_cap
    try:
        table = heldout_kl(tiny_model, unembed, lenses, residuals, owner, ci=0.9, n_boot=300, seed=0, chunk=32)
        # the package's evaluation (scripts/eval_loop.py): sum(final_probs * (final_lps - lens_lps)) in nats per
        # token, each lens's logits from its own forward (soft-capped as the model caps its output)
        package = {"logit": LogitLens(unembed), "linear": lenses["linear"], "tuned": lenses["tuned"]}
        with torch.inference_mode():
            final = torch.log_softmax(apply_softcap(unembed(residuals[:, n_layers]), soft_cap), -1)
            for name, lens in package.items():
                for layer in range(n_layers):
                    lens_lps = torch.log_softmax(apply_softcap(lens(residuals[:, layer], idx=layer), soft_cap), -1)
                    nats = torch.sum(final.exp() * (final - lens_lps), dim=-1).mean().item()
                    row = table[(table["lens"] == name) & (table["layer"] == layer)].iloc[0]
                    assert row["kl_bits"] == pytest.approx(nats / np.log(2), rel=1e-4, abs=1e-6), (name, layer)
        # resampling texts, not tokens: the same seed gives the same interval, per-token resampling another
        again = heldout_kl(tiny_model, unembed, lenses, residuals, owner, ci=0.9, n_boot=300, seed=0)
        tokens = heldout_kl(tiny_model, unembed, lenses, residuals, None, ci=0.9, n_boot=300, seed=0)
    finally:
        tiny_model.cfg.output_logits_soft_cap = previous
    below = table[table["layer"] < n_layers]
    assert (below["kl_lo"] <= below["kl_bits"]).all() and (below["kl_bits"] <= below["kl_hi"]).all()
    assert (below["kl_lo"] < below["kl_hi"]).all()
    # each lens against the tuned lens: paired on the same resamples, undefined for the tuned lens and at L
    kl = below.pivot(index="layer", columns="lens", values="kl_bits")
    for name in ("logit", "linear"):
        rows = below[below["lens"] == name].set_index("layer")
        assert np.allclose(rows["kl_minus_tuned"], kl[name] - kl["tuned"])
        assert (rows["kl_minus_tuned_lo"] <= rows["kl_minus_tuned"]).all()
        assert (rows["kl_minus_tuned"] <= rows["kl_minus_tuned_hi"]).all()
    assert below.loc[below["lens"] == "tuned", "kl_minus_tuned"].isna().all()
    top = table[table["layer"] == n_layers]
    assert (top["kl_bits"] == 0).all() and top["kl_minus_tuned"].isna().all()
    assert (table["n_tokens"] == len(residuals)).all() and (table["n_texts"] == 9).all() and (table["ci"] == 0.9).all()
    assert np.allclose(again[["kl_lo", "kl_hi"]], table[["kl_lo", "kl_hi"]])
    assert (tokens["n_texts"] == len(residuals)).all() and not np.allclose(tokens["kl_lo"], table["kl_lo"])


def test_default_config_measures_held_out_kl_on_at_least_1000_tokens():
    from snakemake.utils import validate

    from probes.workflow.config import tuned_lens_settings

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))  # fills in the schema defaults
    settings = tuned_lens_settings(config)
    assert settings["heldout_tokens"] >= 1000 and settings["train_concepts"] >= 1
    assert config["concept_depth"]["n_boot"] >= 1000 and 0 < config["concept_depth"]["ci"] < 1


def _synthetic_curves(n_concepts=12, n_layers=6, seed=0, task="translation", src="zh", base=None) -> pd.DataFrame:
    """Curves in which the target fr takes over from en at layer 4, noisily; zh has the most mass over layers
    1..L-1 but not before the takeover (layers 1..3)."""
    rng = np.random.default_rng(seed)
    base = base or (lambda layer: {"en": 0.6 if layer < 4 else 0.1, "fr": 0.1 if layer < 4 else 0.7, "zh": 0.45})
    rows = []
    for lens in ("logit", "tuned"):
        for concept in range(n_concepts):
            for layer in range(n_layers + 1):
                entropy = rng.uniform(0, 10)
                for language, mean in base(layer).items():
                    prob = float(np.clip(mean + rng.normal(0, 0.1), 0, 1))
                    rows.append(
                        {
                            "model": "m",
                            "word_list": "w",
                            "task": task,
                            "src": src,
                            "tgt": "fr",
                            "concept": f"c{concept}",
                            "layer": layer,
                            "depth": layer / n_layers,
                            "lens": lens,
                            "language": language,
                            "prob": prob,
                            "entropy_bits": entropy,
                            "prob_full": prob,
                            "top1": prob > 0.5,
                            "energy": 1 + 0.1 * layer + 0.01 * concept,  # one value per concept and layer
                        }
                    )
    return pd.DataFrame(rows)


def test_curve_intervals_resample_concepts_and_contain_the_means():
    curves = _synthetic_curves()
    table = curve_intervals(curves, ci=0.95, n_boot=400, seed=0)
    means = curves.groupby(["lens", "layer", "language"])["prob"].mean()
    merged = table.set_index(["lens", "layer", "language"])
    assert np.allclose(merged["prob"], means.reindex(merged.index))
    assert (table["prob_lo"] <= table["prob"]).all() and (table["prob"] <= table["prob_hi"]).all()
    assert (table["prob_lo"] < table["prob_hi"]).all() and (table["n_concepts"] == 12).all()
    entropy = curves.drop_duplicates(["concept", "lens", "layer"]).groupby(["lens", "layer"])["entropy_bits"].mean()
    assert np.allclose(merged["entropy_bits"], entropy.reindex(merged.index.droplevel("language")))
    assert (table["entropy_lo"] <= table["entropy_bits"]).all() and (table["entropy_bits"] <= table["entropy_hi"]).all()
    assert table.equals(curve_intervals(curves, ci=0.95, n_boot=400, seed=0))
    top1 = curves.groupby(["lens", "layer", "language"])["top1"].mean()
    assert np.allclose(merged["top1"], top1.reindex(merged.index))
    energy = curves.drop_duplicates(["concept", "layer"]).groupby("layer")["energy"].mean()
    assert np.allclose(merged["energy"], energy.reindex(merged.index.get_level_values("layer")))
    assert (table["energy_lo"] <= table["energy"]).all() and (table["energy"] <= table["energy_hi"]).all()
    # more concepts, narrower intervals
    wide = (table["prob_hi"] - table["prob_lo"]).mean()
    narrow = curve_intervals(_synthetic_curves(n_concepts=96), ci=0.95, n_boot=400, seed=0)
    assert (narrow["prob_hi"] - narrow["prob_lo"]).mean() < wide / 2


def test_summary_statistics_carry_intervals_over_concepts():
    curves = _synthetic_curves()
    summary = summarise_curves(curves, ci=0.95, n_boot=400, seed=0).set_index("lens")
    for lens, row in summary.iterrows():
        mean = curves[curves["lens"] == lens].groupby(["layer", "language"])["prob"].mean().unstack()
        assert row["p_target_final"] == pytest.approx(mean.loc[6, "fr"])
        assert row["p_en_max_intermediate"] == pytest.approx(mean.loc[1:5, "en"].max())
        assert row["p_en_argmax_layer"] == mean.loc[1:5, "en"].idxmax()
        leader = mean.idxmax(axis=1)
        assert row["target_takeover_layer"] == leader.index[leader != "fr"].max() + 1 == 4
        # named for what it computes: layers 1..3, before the takeover; over 1..L-1 zh would lead instead
        assert row["top_language_before_takeover"] == mean.loc[1:3].sum().idxmax() == "en"
        assert mean.loc[1:5].sum().idxmax() == "zh"
        assert row["leaders"] == "en 0–3, fr 4–6"
        for name in ("p_target_final", "p_en_max_intermediate", "target_takeover_layer"):
            assert row[f"{name}_lo"] <= row[name] <= row[f"{name}_hi"], name
        assert row["n_concepts"] == 12 and row["ci"] == 0.95
    # where the target does not lead at the last layer there is no takeover layer
    flat = curves.assign(prob=np.where(curves["language"] == "fr", 0.0, curves["prob"]))
    flat_summary = summarise_curves(flat, n_boot=50)
    assert flat_summary["target_takeover_layer"].isna().all()
    assert flat_summary["top_language_before_takeover"].isna().all()  # no takeover, nothing is before it


@pytest.mark.slow
def test_lens_and_curve_stages_keep_their_concepts_apart(smollm2_manifest, everyday, tmp_path):
    """train_tuned_lens and latent_language as the rules run them: the curves use only concepts the lens never saw."""
    from probes.io import read_json
    from probes.workflow.stages.latent_language import dual_latent, latent_language, train_tuned_lens

    lists = {
        "languages": DATA / "languages.csv",
        "words": [DATA / "everyday_words.csv"],
        "cloze": [DATA / "everyday_cloze.csv"],
        "word_lists": ["everyday"],
    }
    from probes.activations.token_cache import TokenCacheSettings

    settings = TunedLensSettings(
        train_concepts=50, train_tokens=256, cloze_tokens=256, heldout_tokens=96, steps=3, batch_tokens=32
    )
    out = tmp_path
    details = train_tuned_lens(
        smollm2_manifest,
        **lists,
        corpus=[REPO / "data" / "corpus" / "smollm2_generated.jsonl"],
        datasets=[],
        lens=out / "lens.safetensors",
        start=out / "start.safetensors",
        kl=out / "kl.parquet",
        text=out / "text.parquet",
        model="smollm2-135m",
        dataset_columns=[],
        settings=settings.__dict__ | {"sampled_vocab": 512},
        corpus_settings=TokenCacheSettings().__dict__,
        seed=0,
        ci=0.95,
        n_boot=200,
    )
    text = pd.read_parquet(out / "text.parquet")
    cloze = text[text["source"] == "cloze"]
    used = cloze[cloze["used"]]
    assert set(used["role"]) == {"train"} and used["n_tokens"].sum() >= 256
    assert details["n_cloze_tokens"] == 256 and details["n_train_tokens"] == 256 - 32 + 256  # a window validates
    corpus = text[text["source"] == "corpus"]
    assert corpus.groupby("role").size().to_dict() == {"train": 7, "validation": 1, "heldout": 3}
    kl = pd.read_parquet(out / "kl.parquet")
    assert (
        set(kl["lens"]) == {"logit", "linear", "tuned"} and (kl["n_tokens"] == 96).all() and (kl["n_texts"] == 3).all()
    )
    below = kl[kl["layer"] < kl["layer"].max()]
    assert (below["kl_lo"] <= below["kl_bits"]).all() and (below["kl_bits"] <= below["kl_hi"]).all()
    latent_language(
        smollm2_manifest,
        **lists,
        tuned_lens=out / "lens.safetensors",
        curves=out / "curves.parquet",
        prompts=out / "prompts.parquet",
        tensors=out / "residuals.safetensors",
        meta=out / "meta.json",
        model="smollm2-135m",
        word_list="everyday",
        task="translation",
        src="fr",
        tgt="en",
        shots=2,
        settings=ExtractionSettings().__dict__,
        train_concepts=50,
        max_concepts=6,
        seed=0,
    )
    meta = read_json(out / "meta.json")
    assert meta["compared"] == ["en", "fr"]
    lens = set(cloze.loc[cloze["role"] != "heldout", "concept"])
    assert set(meta["lens_concepts"]) == lens and meta["dropped"]["lens_training"] == 50
    curves = pd.read_parquet(out / "curves.parquet")
    assert curves["concept"].nunique() == 6 and not set(curves["concept"]) & lens
    # no word of a curve concept, in any language, is in any sentence the lens trained on
    trained = cloze.loc[cloze["used"] & (cloze["role"] == "train"), "text"].tolist()
    for concept in set(curves["concept"]):
        for word in everyday.words.loc[concept]:
            assert not any(_mentions(sentence, word) for sentence in trained), (concept, word)
    assert curves["energy"].gt(0).all() and "shared" in set(curves["language"])
    # the dual-latent job: the monolingual cloze per target, English, the target and its related language only
    dual_latent(
        smollm2_manifest,
        **lists,
        curves=out / "dual.parquet",
        prompts=out / "dual_prompts.parquet",
        meta=out / "dual.json",
        model="smollm2-135m",
        word_list="everyday",
        targets=["es", "de"],
        related={"es": "fr"},
        shots=None,
        settings=ExtractionSettings().__dict__,
        train_concepts=50,
        max_concepts=5,
        seed=0,
    )
    dual = pd.read_parquet(out / "dual.parquet")
    assert set(dual["lens"]) == {"logit"} and set(dual["task"]) == {"cloze"} and (dual["src"] == dual["tgt"]).all()
    assert set(dual.loc[dual["tgt"] == "es", "language"]) == {"en", "es", "fr", "shared"}
    assert set(dual.loc[dual["tgt"] == "de", "language"]) == {"en", "de", "shared"}
    assert not set(dual["concept"]) & lens and dual.groupby("tgt")["concept"].nunique().eq(5).all()
    dual_prompts = pd.read_parquet(out / "dual_prompts.parquet")
    assert dual_prompts.loc[dual_prompts["tgt"] == "es", "prompt"].str.endswith('Respuesta: "').all()
    assert [run["compared"] for run in read_json(out / "dual.json")["runs"]] == [["es", "en", "fr"], ["de", "en"]]
