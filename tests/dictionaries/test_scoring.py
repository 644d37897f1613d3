"""Scoring any SAE or transcoder on any texts (probes.score_sae) with the evaluation's own measures, checked on
known dictionaries and against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import probes
from helpers import corpus, exact_sae
from probes.dictionaries.scoring import dictionary_hooks

HOOK = "blocks.1.hook_resid_post"


def on_hook(sae, hook: str = HOOK):
    sae.cfg.metadata.hook_name = hook
    return sae


def test_an_exact_sae_recovers_all_the_loss_on_every_token_after_the_bos(tiny_model):
    texts = corpus(6, seed=3)
    scores = probes.score_sae(tiny_model, on_hook(exact_sae(32)), texts, batch_size=4, n_boot=100)
    n_tokens = sum(len(tiny_model.to_tokens(text)[0]) - 1 for text in texts)  # every token but the BOS
    assert scores["n_rows"] == n_tokens and scores["hook_name"] == scores["hook_name_in"] == HOOK
    assert scores["fvu"] == pytest.approx(0.0, abs=1e-10) and scores["loss_recovered"] == 1.0
    assert scores["loss_recovered_lo"] == scores["loss_recovered_hi"] == 1.0
    assert scores["n_loss_documents"] == len(texts)


def test_a_random_sae_scores_what_a_direct_computation_gives(tiny_model):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = on_hook(StandardSAE(StandardSAEConfig(d_in=32, d_sae=64)))
    texts = corpus(5, seed=4)
    scores = probes.score_sae(tiny_model, sae, texts, batch_size=2, n_boot=200)
    rows = []
    for text in texts:  # one text at a time, unpadded
        _, cache = tiny_model.run_with_cache(text, names_filter=[HOOK])
        rows.append(cache[HOOK][0, 1:])
    rows = torch.cat(rows)
    with torch.no_grad():
        error = ((sae(rows) - rows) ** 2).sum()
        l0 = (sae.encode(rows) > 0).float().sum(-1).mean()
    assert scores["fvu"] == pytest.approx(float(error / ((rows - rows.mean(0)) ** 2).sum()), rel=1e-4)
    assert scores["l0"] == pytest.approx(float(l0), rel=1e-6)
    assert scores["loss_recovered_lo"] <= scores["loss_recovered"] <= scores["loss_recovered_hi"]
    assert np.isfinite([scores["ce_clean"], scores["ce_sae"], scores["ce_zero"]]).all()


def test_a_transcoder_reads_the_mlp_input_and_writes_the_mlp_output(tiny_model):
    from sae_lens import JumpReLUTranscoder, JumpReLUTranscoderConfig

    config = JumpReLUTranscoderConfig(d_in=32, d_sae=64, d_out=32, apply_b_dec_to_input=False)
    transcoder = JumpReLUTranscoder(config)
    transcoder.cfg.metadata.hook_name = "blocks.1.ln2.hook_normalized"
    transcoder.cfg.metadata.hook_name_out = "blocks.1.hook_mlp_out"
    assert dictionary_hooks(transcoder) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    scores = probes.score_sae(tiny_model, transcoder, corpus(3, seed=5), n_boot=0)
    assert scores["hook_name"] == "blocks.1.hook_mlp_out" and scores["fvu"] > 0
    assert "loss_recovered_lo" not in scores
