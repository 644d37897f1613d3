"""Token sets for any tokenizer, the logit lens against the model and against Hugging Face, the tuned lens."""

from __future__ import annotations

import pytest
import torch

from helpers import REPO
from probes.activations import ExtractionSettings, extract_activations
from probes.lens import (
    TunedLensSettings,
    Vocabulary,
    detect_token_scheme,
    fit_tuned_lens,
    heldout_kl,
    language_curves,
    lens_logits,
    load_tuned_lens,
    save_tuned_lens,
    select_concepts,
    token_residuals,
    unembed_of,
)
from probes.wordlists import build_prompts, load_word_list

DATA = REPO / "data" / "latent_language"


@pytest.fixture(scope="module")
def everyday():
    return load_word_list("everyday", DATA / "everyday_words.csv", DATA / "everyday_cloze.csv", DATA / "languages.csv")


@pytest.fixture(scope="module")
def gemma_tokenizer(gemma_manifest):
    from transformers import AutoTokenizer

    from probes.io import read_json

    return AutoTokenizer.from_pretrained(read_json(gemma_manifest)["hf_dir"])


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
    assert len(sampled.concepts) == 40 and sampled.dropped["not_sampled"] == len(everyday.words) - 40
    assert sampled.concepts == select_concepts(everyday, vocabulary, "translation", "fr", "zh", 40, 0).concepts


def _prompt_residuals(model, everyday, n=12):
    selection = select_concepts(everyday, Vocabulary(model.tokenizer), "translation", "fr", "zh", max_concepts=n)
    prompts = build_prompts(everyday, "translation", "fr", "zh", selection.concepts, shots=3, seed=0)
    pooled, _ = extract_activations(
        model, [p.text for p in prompts], ExtractionSettings(poolings=("last",)), progress=False
    )
    return prompts, selection, pooled["last"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_logit_lens_at_the_last_layer_is_the_models_output(name, request, everyday):
    from probes.models import load_model

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
    from probes.models import load_hf_model

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


def _corpus_residuals(model, everyday):
    from probes.wordlists import filled_cloze

    texts = filled_cloze(everyday)
    train = token_residuals(model, texts[texts["concept"].isin(everyday.words.index[:40])]["text"].tolist(), 16, False)
    heldout = token_residuals(
        model, texts[texts["concept"].isin(everyday.words.index[-3:])]["text"].tolist(), 16, False
    )
    return train, heldout


@pytest.mark.slow
def test_tuned_lens_beats_the_logit_lens_on_held_out_text(smollm2, everyday, tmp_path):
    train, heldout = _corpus_residuals(smollm2, everyday)
    unembed = unembed_of(smollm2)
    settings = TunedLensSettings(steps=25, batch_tokens=128, sampled_vocab=1024)
    tuned, history = fit_tuned_lens(smollm2, unembed, train, settings, seed=0, progress=False)
    assert history[-1] < history[0]
    kl = heldout_kl(smollm2, unembed, tuned, heldout[:64]).pivot(index="layer", columns="lens", values="kl_bits")
    middle = kl.loc[5:25]
    assert (middle["tuned"] < middle["logit"]).all()
    assert kl.loc[smollm2.cfg.n_layers].abs().max() == 0
    # same seed, same translators; a saved lens reloads exactly
    again, _ = fit_tuned_lens(smollm2, unembed, train, settings, seed=0, progress=False)
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
    settings = TunedLensSettings(steps=10, batch_tokens=32, sampled_vocab=None, lr=1e-2)
    tuned, history = fit_tuned_lens(tiny_model, unembed, residuals, settings, seed=0, progress=False)
    assert history[-1] < history[0]
    save_tuned_lens(tuned, tmp_path / "lens.safetensors")
    other = unembed_of(tiny_model)
    other.unembedding.weight.data += 1.0
    with pytest.raises(ValueError, match="different unembedding"):
        load_tuned_lens(tmp_path / "lens.safetensors", other)
