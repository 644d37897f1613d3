"""Latent language as Wendler et al. measure it: exclusive token sets, planted lens readings, their energy metric,
and the dual-latent summary (Zhong et al. 2024), each against a known answer or an independent computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import REPO
from probes.activations.extraction import ExtractionSettings, pooled_activations
from probes.datasets.wordlists import load_word_list
from probes.lenses.curves import dual_latent_summary, language_curves, leader_runs
from probes.lenses.energy import hf_unembedding, token_energy, unembedding_gram
from probes.lenses.tuned import unembed_of
from probes.lenses.vocabulary import SHARED, Vocabulary, compared_languages, exclusive_token_sets, select_concepts

DATA = REPO / "data" / "latent_language"


def test_exclusive_token_sets_count_no_token_twice():
    full = {"fr": [[1, 2, 3]], "es": [[1, 2, 4]], "en": [[5]], "de": [[2, 6]]}
    sets = exclusive_token_sets(full, ["fr", "en", "es"])
    # the source's tokens (1, 2) are shared, not the target's; de, not compared, loses every compared token
    assert sets == {"fr": [[3]], "es": [[4]], "en": [[5]], "de": [[6]], SHARED: [[1, 2]]}
    assert compared_languages("es", "fr") == ["fr", "en", "es"]
    assert compared_languages("fr", "en") == ["en", "fr"]  # English as the target: the source is the contrast
    assert compared_languages("fr", "fr", ["es"]) == ["fr", "en", "es"]


def test_identical_words_of_compared_languages_are_dropped_and_the_rest_made_exclusive(tmp_path):
    from helpers import byte_level_bpe

    words = pd.DataFrame(
        {
            "concept": ["honey", "bread", "dog", "cat"],
            "en": ["honey", "bread", "dog", "cat"],
            "fr": ["miel", "pain", "chien", "chat"],
            "es": ["miel", "pan", "perro", "gato"],
        }
    )
    words.to_csv(tmp_path / "words.csv", index=False)
    (tmp_path / "cloze.csv").write_text("concept,language,sentence\ndog,en,The ___ barks.\n")
    mine = load_word_list("mine", tmp_path / "words.csv", tmp_path / "cloze.csv", DATA / "languages.csv")
    texts = [" ".join(words[language]) for language in ("en", "fr", "es")] * 20
    vocabulary = Vocabulary(byte_level_bpe(texts, 300, ["<unk>"], unk_token="<unk>"))
    selection = select_concepts(mine, vocabulary, "translation", "es", "fr")
    assert selection.compared == ["fr", "en", "es"] and "honey" not in selection.concepts
    assert selection.dropped["shared_only"] >= 1  # miel and miel: no token of their own
    sets = exclusive_token_sets(selection.token_sets, selection.compared)
    for i, _ in enumerate(selection.concepts):
        compared = [set(sets[language][i]) for language in selection.compared]
        assert all(compared) and not set.intersection(*compared[:2]) and not compared[0] & compared[2]
        full = set().union(*(selection.token_sets[language][i] for language in selection.compared))
        assert set().union(*compared, sets[SHARED][i]) == full


@pytest.fixture(scope="module")
def tiny_residuals(tiny_model):
    prompts = ["The city of Lyon is in", "Alice flips the coin. Is the coin", "I loved the film, the"]
    pooled, _ = pooled_activations(tiny_model, prompts, ExtractionSettings(poolings=("last",)), progress=False)
    return pooled["last"]


def test_language_curves_count_a_planted_shared_token_once(tiny_model, tiny_residuals):
    """The top token at the output is planted in two languages' sets: it moves to the shared tokens, each
    language keeps its own token, and an independent logit lens gives every number."""
    n_layers = tiny_model.cfg.n_layers
    with torch.inference_mode():
        probs = [
            torch.softmax(tiny_model.unembed(tiny_model.ln_final(tiny_residuals[:, layer][:, None])), -1)[:, 0]
            for layer in range(n_layers + 1)
        ]
    top = probs[-1].argmax(-1).tolist()
    own = {"fr": [(t + 1) % 300 for t in top], "es": [(t + 2) % 300 for t in top]}
    full = {language: [[t, o] for t, o in zip(top, own[language])] for language in own}
    sets = exclusive_token_sets(full, ["fr", "es"])
    assert sets[SHARED] == [[t] for t in top]
    curves = language_curves(tiny_model, unembed_of(tiny_model), None, tiny_residuals, sets, full)
    curves = curves.set_index(["item", "layer", "language"])
    for item, token in enumerate(top):
        for layer in range(n_layers + 1):
            p = probs[layer][item]
            for language in ("fr", "es"):
                row = curves.loc[(item, layer, language)]
                assert row["prob"] == pytest.approx(p[own[language][item]].item(), abs=1e-6)
                assert row["prob_full"] == pytest.approx((p[token] + p[own[language][item]]).item(), abs=1e-6)
                assert row["top1"] == (p.argmax().item() == own[language][item])
            shared = curves.loc[(item, layer, SHARED)]
            assert shared["prob"] == pytest.approx(p[token].item(), abs=1e-6) == shared["prob_full"]
        assert curves.loc[(item, n_layers, SHARED), "top1"] and not curves.loc[(item, n_layers, "fr"), "top1"]


def _reference_energy(unembedding, gain, latents):
    """Wendler et al.'s Cloze.ipynb cells 5 and 13, step by step, in float32 torch."""
    u = torch.as_tensor(unembedding, dtype=torch.float32)
    u_weighted = u.clone() * torch.as_tensor(gain, dtype=torch.float32).unsqueeze(0)
    u_normalized = u_weighted / ((u_weighted**2).sum(dim=1, keepdim=True)) ** 0.5
    v = u.shape[0]
    avg_uu = (((u_normalized.T @ u_normalized) ** 2).sum() / v**2) ** 0.5
    latents = torch.as_tensor(latents, dtype=torch.float32)
    latents = latents / (((latents**2).mean(dim=-1, keepdim=True)) ** 0.5)
    latents /= latents.norm(dim=-1, keepdim=True)
    norm = ((u_normalized @ latents.T) ** 2).mean(dim=0) ** 0.5
    return (norm / avg_uu).numpy()


def test_energy_is_the_reference_formula():
    rng = np.random.default_rng(0)
    unembedding, gain = rng.normal(size=(300, 16)), rng.uniform(0.2, 3.0, size=16)
    latents = rng.normal(size=(7, 16)) * rng.uniform(0.1, 50, size=(7, 1))
    ours = token_energy(latents, unembedding_gram(unembedding, gain), 300)
    assert np.allclose(ours, _reference_energy(unembedding, gain, latents), rtol=1e-5)
    # residuals of several layers at once, as the stage passes them
    stacked = token_energy(latents.reshape(7, 1, 16).repeat(3, 1), unembedding_gram(unembedding, gain), 300)
    assert stacked.shape == (7, 3) and np.allclose(stacked, ours[:, None])


def test_energy_known_answers():
    # orthonormal rows: every direction is decoded equally, energy 1
    assert np.allclose(token_energy(np.random.default_rng(1).normal(size=(5, 6)), unembedding_gram(np.eye(6), 1), 6), 1)
    # identical rows: energy is |cos(h, row)|, 1 along it and 0 across it
    rows = np.tile([1.0, 2.0, 0.0], (4, 1))
    gram = unembedding_gram(rows, np.ones(3))
    assert token_energy(np.array([[2.0, 4.0, 0.0], [0.0, 0.0, 3.0]]), gram, 4) == pytest.approx([1.0, 0.0])


def test_hf_unembedding_reads_the_uncentred_rows_and_each_norms_gain():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    small = {"vocab_size": 40, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    small |= {"num_attention_heads": 2, "num_key_value_heads": 1}
    llama = LlamaForCausalLM(LlamaConfig(**small)).eval()
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(**small, head_dim=8)).eval()
    for model, effective in ((llama, lambda w: w), (gemma, lambda w: 1 + w)):
        norm = model.base_model.norm
        with torch.no_grad():
            norm.weight.copy_(torch.rand(16) + 0.5)
        unembedding, gain = hf_unembedding(model)
        assert torch.equal(unembedding, model.get_output_embeddings().weight.detach())
        expected = effective(norm.weight.detach())
        assert torch.allclose(gain / gain[0], expected / expected[0], rtol=1e-5), type(model).__name__


def _dual_curves(
    means: dict[int, dict[str, float]], tgt: str, n_concepts: int = 30, seed: int = 0, noise: float = 0.02
) -> pd.DataFrame:
    """Monolingual cloze curves with per-layer means ``means[layer][language]`` and a little noise per concept."""
    rng = np.random.default_rng(seed)
    n_layers = max(means)
    rows = [
        {"model": "m", "word_list": "w", "task": "cloze", "src": tgt, "tgt": tgt, "concept": f"c{concept}"}
        | {"layer": layer, "depth": layer / n_layers, "lens": "logit", "language": language}
        | {"prob": (prob := float(np.clip(mean + rng.normal(0, noise), 0, 1))), "prob_full": prob, "top1": False}
        | {"entropy_bits": 1.0, "energy": 1.0}
        for concept in range(n_concepts)
        for layer, values in means.items()
        for language, mean in values.items()
    ]
    return pd.DataFrame(rows)


def test_dual_latent_summary_finds_planted_latent_languages():
    layers = range(11)

    def middle(layer, inside, outside):
        return inside if 4 <= layer <= 8 else outside

    # fr: English leads the middle layers, the target only at the end
    fr = {l: {"en": middle(l, 0.5, 0.05), "fr": 0.1 if l < 10 else 0.8, "es": 0.05, SHARED: 0.02} for l in layers}
    # ja: English and the related Chinese are planted equal in the middle: a dual latent
    ja = {l: {"en": middle(l, 0.3, 0.0), "ja": 0.05, "zh": middle(l, 0.3, 0.0), SHARED: 0.0} for l in layers}
    # de has no related language: English against the target only, and the target leads
    de = {l: {"en": 0.05, "de": middle(l, 0.4, 0.1), SHARED: 0.0} for l in layers}
    # ru: English leads, but with almost no mass: no latent language is named
    ru = {l: {"en": 0.004, "ru": 0.001, SHARED: 0.0} for l in layers}
    curves = pd.concat([_dual_curves(fr, "fr"), _dual_curves(ja, "ja", seed=1), _dual_curves(de, "de")])
    curves = pd.concat([curves, _dual_curves(ru, "ru", noise=0.0005)])
    summary = dual_latent_summary(curves, {"fr": "es", "ja": "zh"}, (0.4, 0.8), n_boot=400).set_index("tgt")
    assert (summary["window_first"] == 4).all() and (summary["window_last"] == 8).all()
    assert summary.at["fr", "latent"] == "en" and summary.at["fr", "dominant_share"] == 1.0
    assert summary.at["fr", "p_en"] == pytest.approx(0.5, abs=0.01) and summary.at["fr", "en_minus_target_lo"] > 0
    assert summary.at["fr", "related"] == "es" and summary.at["fr", "p_shared"] == pytest.approx(0.02, abs=0.01)
    assert set(summary.at["ja", "latent"].split("+")) == {"en", "zh"}
    assert summary.at["ja", "en_minus_related_lo"] < 0 < summary.at["ja", "en_minus_related_hi"]
    assert summary.at["de", "latent"] == "de" and np.isnan(summary.at["de", "p_related"])
    assert summary.at["de", "leaders"] == "de 4–8"
    assert summary.at["ru", "latent"] == "none" and summary.at["ru", "dominant"] == "en"
    for name in ("p_en", "p_target"):
        assert (summary[f"{name}_lo"] <= summary[name]).all() and (summary[name] <= summary[f"{name}_hi"]).all()
    with pytest.raises(ValueError, match="holds no layer"):
        dual_latent_summary(curves, {}, (0.91, 0.95), n_boot=10)


def test_leader_runs():
    assert leader_runs(["en", "en", "fr", "en"], [3, 4, 5, 6]) == "en 3–4, fr 5, en 6"


@pytest.mark.slow
def test_energy_of_smollm2_matches_the_reference_on_hugging_face_hidden_states(smollm2, smollm2_manifest):
    """The stage's energy (uncentred HF unembedding, TransformerLens residuals) against the reference formula on
    HF's own hidden states, lm_head and final-norm weight; layers 0..L-1 (HF's last hidden state is normed)."""
    from probes.models.loading import load_hf_model
    from probes.workflow.stages.latent_language import energy_gram

    hf_model, _ = load_hf_model(smollm2_manifest)
    prompts = ['Un "___" est utilisé pour transporter des objets. Réponse : "', "The city of Lyon is in"]
    pooled, _ = pooled_activations(smollm2, prompts, ExtractionSettings(poolings=("last",)), progress=False)
    ours = token_energy(pooled["last"], *energy_gram(smollm2_manifest))
    unembedding, gain = hf_model.lm_head.weight.detach(), hf_model.model.norm.weight.detach()
    with torch.inference_mode():
        for item, prompt in enumerate(prompts):
            hidden = hf_model(smollm2.to_tokens(prompt), output_hidden_states=True).hidden_states
            latents = torch.stack([state[0, -1] for state in hidden[:-1]])
            # two float32 implementations of the model (TransformerLens, Hugging Face): equal to 1e-3 relative
            assert np.allclose(ours[item, :-1], _reference_energy(unembedding, gain, latents), rtol=1e-3)
    assert (ours > 0).all() and ours.shape == (2, smollm2.cfg.n_layers + 1)
