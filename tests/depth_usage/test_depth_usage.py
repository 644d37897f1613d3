"""Known-answer tests of the depth-usage analyses on tiny random-weight models built here."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from probes.depth_usage import contributions as usage
from probes.lenses.tuned import unembed_of

N_WINDOWS, LENGTH = 6, 12


@pytest.fixture()
def model(tiny_model):
    """A private copy of the tiny model, so a test may zero its weights."""
    return copy.deepcopy(tiny_model)


def windows(model, n: int = N_WINDOWS, length: int = LENGTH, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, model.cfg.d_vocab, (n, length), generator=generator)
    tokens[:, 0] = model.tokenizer.bos_token_id
    return tokens


def zero_block_outputs(model, block: int) -> None:
    """Attention and MLP of ``block`` write nothing: the block is the identity."""
    with torch.no_grad():
        for parameter in (model.blocks[block].attn.W_O, model.blocks[block].attn.b_O):
            parameter.zero_()
        for parameter in (model.blocks[block].mlp.W_out, model.blocks[block].mlp.b_out):
            parameter.zero_()


def test_a_block_with_zero_output_weights_skips_to_no_change(model):
    zero_block_outputs(model, 1)
    resid, _ = usage.window_residuals(model, windows(model), batch_size=4, progress=False)
    skipped = usage.skip_blocks(model, unembed_of(model), resid, usage.measured_positions(LENGTH, 1, 4), 1, False)
    np.testing.assert_allclose(skipped["relative_change"][:, 1, 1:], 0, atol=1e-6)
    np.testing.assert_allclose(skipped["kl_bits"][:, 1], 0, atol=1e-6)
    np.testing.assert_array_equal(skipped["top1_agreement"][:, 1], 1)
    assert (skipped["relative_change"][:, 0, 1:] > 1e-3).all()  # skipping a block that writes does change things
    assert np.isnan(skipped["relative_change"][:, 2, :2]).all()  # nothing is measured before the skipped block


def test_skip_kl_matches_an_independent_run_with_the_block_hooked_out(model):
    tokens = windows(model)
    positions = usage.measured_positions(LENGTH, 1, 5)
    resid, _ = usage.window_residuals(model, tokens, batch_size=4, progress=False)
    skipped = usage.skip_blocks(model, unembed_of(model), resid, positions, 1, False)
    with torch.no_grad():
        clean = torch.log_softmax(model(tokens), -1)[:, positions]
    for block in range(model.cfg.n_layers):
        pre = {}

        def keep(activation, hook):
            pre["value"] = activation

        def restore(activation, hook):
            return pre["value"]

        hooks = [(f"blocks.{block}.hook_resid_pre", keep), (f"blocks.{block}.hook_resid_post", restore)]
        with torch.no_grad():
            hooked = torch.log_softmax(model.run_with_hooks(tokens, fwd_hooks=hooks), -1)[:, positions]
        kl = (clean.exp() * (clean - hooked)).sum(-1) / math.log(2)
        np.testing.assert_allclose(skipped["kl_bits"][:, block], kl.mean(1).numpy(), rtol=1e-4, atol=1e-6)
        agreement = (clean.argmax(-1) == hooked.argmax(-1)).double().mean(1)
        np.testing.assert_allclose(skipped["top1_agreement"][:, block], agreement.numpy())


def test_the_shortcut_from_L_to_L_is_the_identity_with_precision_one(model):
    settings = usage.DepthUsageSettings(context=LENGTH - 1, positions=4, skip_context=LENGTH - 1, batch_size=8)
    maps, bias, n = usage.fit_linear_shortcuts(model, windows(model, n=40, seed=1), settings, progress=False)
    assert n == 40 * (LENGTH - 1)
    L = model.cfg.n_layers
    np.testing.assert_allclose(maps[L].numpy(), np.eye(model.cfg.d_model), atol=1e-3)
    np.testing.assert_allclose(bias[L].numpy(), 0, atol=1e-3)
    resid, _ = usage.window_residuals(model, windows(model), batch_size=4, progress=False)
    positions = usage.measured_positions(LENGTH, 1, 4)
    metrics = usage.shortcut_metrics(model, unembed_of(model), resid[:, positions], maps, bias)
    np.testing.assert_array_equal(metrics["linear"]["precision_at_1"][:, L], 1)
    np.testing.assert_allclose(metrics["linear"]["kl_bits"][:, L], 0, atol=1e-4)
    np.testing.assert_array_equal(metrics["logit"]["precision_at_1"][:, L], 1)


def test_blocks_that_write_nothing_make_every_later_shortcut_exact(model):
    for block in range(1, model.cfg.n_layers):
        zero_block_outputs(model, block)
    settings = usage.DepthUsageSettings(context=LENGTH - 1, positions=4, skip_context=LENGTH - 1, batch_size=8)
    maps, bias, _ = usage.fit_linear_shortcuts(model, windows(model, n=40, seed=1), settings, progress=False)
    resid, _ = usage.window_residuals(model, windows(model), batch_size=4, progress=False)
    metrics = usage.shortcut_metrics(
        model, unembed_of(model), resid[:, usage.measured_positions(LENGTH, 1, 4)], maps, bias
    )
    for layer in range(1, model.cfg.n_layers + 1):  # h_l = h_L from layer 1 on: the map is the identity
        np.testing.assert_allclose(maps[layer].numpy(), np.eye(model.cfg.d_model), atol=1e-3)
        np.testing.assert_array_equal(metrics["linear"]["precision_at_1"][:, layer], 1)
        np.testing.assert_array_equal(metrics["logit"]["precision_at_1"][:, layer], 1)


def test_the_shortcut_is_the_least_squares_fit_computed_independently(model):
    tokens = windows(model, n=40, seed=2)
    settings = usage.DepthUsageSettings(context=LENGTH - 1, positions=4, skip_context=LENGTH - 1, batch_size=7)
    maps, bias, _ = usage.fit_linear_shortcuts(model, tokens, settings, progress=False)
    resid, _ = usage.window_residuals(model, tokens, batch_size=40, progress=False)
    rows = resid[:, 1:].flatten(0, 1).double().numpy()
    for layer in (0, 2):
        design = np.hstack([rows[:, layer], np.ones((len(rows), 1))])
        solution = np.linalg.lstsq(design, rows[:, -1], rcond=None)[0]
        np.testing.assert_allclose(maps[layer].numpy(), solution[:-1], atol=2e-3)
        np.testing.assert_allclose(bias[layer].numpy(), solution[-1], atol=2e-3)


def test_sublayer_contributions_are_what_the_hooks_say_the_sublayers_write(model):
    tokens = windows(model)
    resid, mid = usage.window_residuals(model, tokens, batch_size=4, progress=False)
    contributions = usage.sublayer_contributions(resid, mid, 1)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for block in range(model.cfg.n_layers):
        attn, pre = cache[f"blocks.{block}.hook_attn_out"][:, 1:], cache[f"blocks.{block}.hook_resid_pre"][:, 1:]
        expected = (attn.norm(dim=-1) / pre.norm(dim=-1)).mean(1)
        np.testing.assert_allclose(contributions["attn_relative_norm"][:, block], expected.numpy(), rtol=1e-4)
        mlp, mid_ = cache[f"blocks.{block}.hook_mlp_out"][:, 1:], cache[f"blocks.{block}.hook_resid_mid"][:, 1:]
        cosine = torch.nn.functional.cosine_similarity(mlp, mid_, dim=-1).mean(1)
        np.testing.assert_allclose(contributions["mlp_cosine"][:, block], cosine.numpy(), rtol=1e-4, atol=1e-6)
    zero_block_outputs(model, 0)
    resid, mid = usage.window_residuals(model, tokens, batch_size=4, progress=False)
    np.testing.assert_allclose(usage.sublayer_contributions(resid, mid, 1)["attn_relative_norm"][:, 0], 0)


def test_document_curves_resample_windows_and_hold_the_point():
    from probes.resampling import bootstrap_weights

    rng = np.random.default_rng(0)
    values = {"metric": rng.normal(1.0, 0.1, size=(20, 4))}
    table = usage.document_curves(values, [1, 2, 3, 4], bootstrap_weights(20, 200, 0), 0.95)
    assert list(table.columns) == ["metric", "layer", "value", "lo", "hi"]
    assert ((table["lo"] <= table["value"]) & (table["value"] <= table["hi"])).all()
    np.testing.assert_allclose(table["value"], values["metric"].mean(0))
    assert ((table["hi"] - table["lo"]) < 0.2).all() and ((table["hi"] - table["lo"]) > 0.02).all()


def test_windows_need_documents_long_enough_and_settings_are_checked():
    lists = [torch.arange(5), torch.arange(20), torch.arange(30)]
    tokens, chosen = usage.corpus_windows(lists, [0, 1, 2], 10, 5)
    assert tokens.shape == (2, 10) and chosen == [1, 2]
    with pytest.raises(ValueError, match="holds 40 tokens"):
        usage.corpus_windows(lists, [0, 1, 2], 40, 5)
    with pytest.raises(ValueError, match="prefix of the windows"):
        usage.DepthUsageSettings(documents=4, skip_documents=8)
    with pytest.raises(ValueError, match="positions"):
        usage.DepthUsageSettings(context=8, skip_context=8, positions=9)


TEXTS = ["the city of lyon is in france", "alice flips the coin", "a film she loved, heads up"]


@pytest.fixture(scope="module")
def llama_with_a_norm_weight(tmp_path_factory):
    """A tiny Hugging Face Llama whose final norm has a weight far from 1, its manifest and its TransformerLens
    conversion (which folds that weight into the unembedding)."""
    import probes
    from helpers import tiny_llama_checkpoint

    folder = tmp_path_factory.mktemp("checkpoint")  # a path with "llama" in it sends TransformerLens to LLaMA-1
    hf = tiny_llama_checkpoint(folder, TEXTS, "<s>")
    with torch.no_grad():
        hf.model.norm.weight.copy_(torch.linspace(-2.0, 3.0, hf.config.hidden_size))
    hf.save_pretrained(folder)
    cache = tmp_path_factory.mktemp("cache")
    hooked = probes.load_model(folder, cache_dir=cache)
    return hf, cache / folder.name / "manifest.json", hooked


def test_the_final_norm_turns_the_last_residual_into_hugging_faces_last_hidden_state(llama_with_a_norm_weight):
    from probes.models.loading import final_norm

    hf, manifest, hooked = llama_with_a_norm_weight
    tokens = hooked.to_tokens(TEXTS[0])
    resid, _ = usage.window_residuals(hooked, tokens, batch_size=1, progress=False, mids=False)
    with torch.inference_mode():
        hidden = hf(tokens, output_hidden_states=True).hidden_states
        last = final_norm(manifest)(resid[:, :, -1])
    for layer in range(hooked.cfg.n_layers):
        torch.testing.assert_close(resid[:, :, layer], hidden[layer], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, hidden[-1], atol=1e-5, rtol=1e-5)
    assert (last - resid[:, :, -1]).abs().max() > 0.1  # the weight matters


def test_pooled_residuals_are_each_texts_own_mean_after_the_bos_whatever_the_padding(llama_with_a_norm_weight):
    from probes.models.loading import final_norm

    hf, manifest, hooked = llama_with_a_norm_weight
    pooled = usage.pooled_residuals(hooked, TEXTS, batch_size=2, last=final_norm(manifest))
    assert pooled.shape == (len(TEXTS), hooked.cfg.n_layers + 1, hooked.cfg.d_model)
    for row, text in enumerate(TEXTS):
        with torch.inference_mode():
            hidden = hf(hooked.to_tokens(text), output_hidden_states=True).hidden_states
        expected = torch.stack([h[0, 1:].mean(0) for h in hidden]).double().numpy()
        np.testing.assert_allclose(pooled[row], expected, atol=1e-5, rtol=1e-5)
