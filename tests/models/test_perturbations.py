"""Input noise and weight formats: seeded, named, and the perturbed models still working models."""

from __future__ import annotations

import pytest
import torch

from probes.activations.extraction import ExtractionSettings, pooled_activations
from probes.models.cache import load_model
from probes.models.perturbations import CLEAN, InputNoise, ordinary_token_ids, quantise_int8_, quantise_model_int8

TEXTS = ["The city of Lyon is in France.", "I loved the film.", "A coin is heads up. Alice flips the coin."]


def is_subsequence(short: str, long: str) -> bool:
    characters = iter(long)
    return all(character in characters for character in short)


def test_noise_names_round_trip_and_bad_names_are_clear_errors():
    noise = InputNoise("tokens", "prepend", 0.25)
    assert noise.name == "tokens-prepend-0.25" and InputNoise.parse(noise.name) == noise
    assert InputNoise.parse(CLEAN) is None
    with pytest.raises(ValueError, match="not a noise condition"):
        InputNoise.parse("words-insert-0.1")
    with pytest.raises(ValueError, match="0 < rate"):
        InputNoise("characters", "insert", 0.0)


def test_character_noise_is_seeded_keeps_the_text_in_order_and_its_last_character():
    noise = InputNoise("characters", "insert", 0.2)
    noisy = noise.apply_to_texts(TEXTS, seed=0)
    assert noisy == noise.apply_to_texts(TEXTS, seed=0) and noisy != noise.apply_to_texts(TEXTS, seed=1)
    for text, changed in zip(TEXTS, noisy):
        assert len(changed) == len(text) + round(0.2 * len(text))
        assert is_subsequence(text, changed) and changed[-1] == text[-1]
    prepended = InputNoise("characters", "prepend", 0.1).apply_to_texts(TEXTS, seed=0)
    assert all(
        changed.endswith(" " + text) and len(changed) == len(text) + 1 + max(1, round(0.1 * len(text)))
        for text, changed in zip(TEXTS, prepended)
    )


def test_token_noise_keeps_bos_first_and_the_last_token_last(tiny_model):
    vocabulary = ordinary_token_ids(tiny_model)
    assert not set(vocabulary) & set(tiny_model.tokenizer.all_special_ids)
    tokens = [tiny_model.to_tokens(text, move_to_device=False)[0] for text in TEXTS]
    noise = InputNoise("tokens", "insert", 0.5)
    for clean, noisy in zip(tokens, noise.apply_to_tokens(tokens, vocabulary, skip_first=1, seed=3)):
        assert noisy[0] == clean[0] and noisy[-1] == clean[-1]
        assert len(noisy) == len(clean) + max(1, round(0.5 * (len(clean) - 1)))
    prepended = InputNoise("tokens", "prepend", 0.5).apply_to_tokens(tokens, vocabulary, skip_first=1, seed=3)
    assert all(torch.equal(noisy[-(len(clean) - 1) :], clean[1:]) for clean, noisy in zip(tokens, prepended))


def test_int8_rounding_is_per_output_channel():
    weight = torch.randn(4, 16, 8) * torch.logspace(-2, 1, 8)  # output channels of very different scales
    original = weight.clone()
    quantise_int8_(weight, (1,))
    scale = original.abs().amax(dim=1, keepdim=True) / 127
    levels = weight / scale
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3
    assert ((weight - original).abs() <= scale / 2 + 1e-6).all()
    assert torch.allclose(weight.abs().amax(dim=1), original.abs().amax(dim=1))  # each channel's extreme is a level


def test_noisy_extraction_differs_from_clean_and_is_reproducible(tiny_model):
    settings = ExtractionSettings(batch_size=2)
    clean, clean_details = pooled_activations(tiny_model, TEXTS, settings, progress=False)
    for noise in (InputNoise("characters", "insert", 0.3), InputNoise("tokens", "prepend", 0.5)):
        first, details = pooled_activations(tiny_model, TEXTS, settings, progress=False, noise=noise, seed=0)
        again, _ = pooled_activations(tiny_model, TEXTS, settings, progress=False, noise=noise, seed=0)
        assert torch.equal(first["last"], again["last"]) and not torch.allclose(
            first["last"][:, -1], clean["last"][:, -1]
        )
        assert details["noise"] == noise.name and details["n_tokens"] > clean_details["n_tokens"]


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_perturbed_smollm2_differs_from_fp32_and_still_knows_paris(smollm2_manifest, weights):
    reference = load_model(smollm2_manifest)
    perturbed = load_model(smollm2_manifest, weights=weights)
    tokens = reference.to_tokens("The capital of France is")
    with torch.inference_mode():
        _, cache_ref = reference.run_with_cache(tokens, names_filter="blocks.14.hook_resid_post")
        logits, cache = perturbed.run_with_cache(tokens, names_filter="blocks.14.hook_resid_post")
    ours, theirs = cache["blocks.14.hook_resid_post"].float(), cache_ref["blocks.14.hook_resid_post"]
    assert not torch.equal(ours, theirs)  # a real perturbation ...
    assert torch.nn.functional.cosine_similarity(ours[0, -1], theirs[0, -1], dim=0) > 0.95  # ... of the same model
    assert perturbed.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"
    if weights == "int8":
        w = perturbed.blocks[3].mlp.W_in.detach()
        scale = w.abs().amax(dim=0, keepdim=True) / 127
        assert torch.allclose(w / scale, (w / scale).round(), atol=1e-3)  # on the int8 grid, channel by channel
        assert torch.equal(perturbed.W_E, reference.W_E)  # embeddings untouched
    else:
        assert perturbed.cfg.dtype == torch.bfloat16 and perturbed.blocks[0].attn.W_Q.dtype == torch.bfloat16


# The axes each TransformerLens block matrix contracts with its input, written out here rather than taken from
# probes.models.perturbations: W_Q, W_K, W_V [head, d_model, d_head] read d_model; W_O [head, d_head, d_model] reads
# (head, d_head); W_in, W_gate [d_model, d_mlp] read d_model; W_out [d_mlp, d_model] reads d_mlp. The other axes
# are the output channels, one int8 scale each.
INPUT_AXES = {
    "attn.W_Q": (1,),
    "attn.W_K": (1,),
    "attn.W_V": (1,),
    "attn.W_O": (0, 1),
    "mlp.W_in": (0,),
    "mlp.W_gate": (0,),
    "mlp.W_out": (0,),
}


def test_quantising_a_model_rounds_every_block_matrix_per_output_channel_and_nothing_else(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():  # biases start at 0 and norm weights at 1, values any rounding would keep: move them off
        generator = torch.Generator().manual_seed(1)
        for name, parameter in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith(("b_", "w")):
                parameter.add_(torch.randn(parameter.shape, generator=generator))
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    quantise_model_int8(model)
    after = {name: parameter.detach() for name, parameter in model.named_parameters()}

    matrices = {f"blocks.{b}.{m}" for b in range(model.cfg.n_layers) for m in INPUT_AXES} & before.keys()
    assert len(matrices) == 6 * model.cfg.n_layers  # Q, K, V, O, W_in, W_out in every block; the tiny MLP has no gate
    for name in sorted(matrices):
        w, original = after[name], before[name]
        axes = INPUT_AXES[name.split(".", 2)[2]]
        step = w.abs().amax(dim=axes, keepdim=True) / 127  # one step of the int8 grid per output channel
        levels = w / step
        assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3, name
        assert ((w - original).abs() <= step / 2 + 1e-6).all() and not torch.equal(w, original), name
    for name in sorted(before.keys() - matrices):  # embeddings, unembedding, norms and biases
        assert torch.equal(after[name], before[name]), name
