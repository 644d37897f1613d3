"""Transcoders on the tiny model: the token cache's MLP streams, training, SAELens loading, FVU and L0."""

from __future__ import annotations

import pytest
import torch

from helpers import corpus
from probes.activations.extraction import site_hooks
from probes.activations.token_cache import TokenCache, TokenCacheSettings, cache_token_activations
from probes.dictionaries.sae import reconstruction_metrics
from probes.dictionaries.transcoders import TranscoderSettings, train_transcoder

STREAMS = ("mlp_in", "mlp_out", "mlp_post")


@pytest.fixture(scope="module")
def mlp_cache(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("mlp_cache")
    settings = TokenCacheSettings(context=32, heldout_fraction=0.2, shard_tokens=128, batch_size=8)
    cache_token_activations(
        tiny_model, corpus(120), [1, 2], "resid", path, settings, seed=0, progress=False, streams=STREAMS
    )
    return TokenCache(path)


def test_streams_hold_the_same_tokens_mlp_input_output_and_neurons(tiny_model, mlp_cache):
    assert mlp_cache.meta["streams"]["mlp_out"] == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    tokens = mlp_cache.heldout_tokens()
    sequence = mlp_cache.heldout_sequences()[0]
    document = int(tokens["sequence_documents"][0])
    rows = (tokens["document"] == document).nonzero()[:, 0]
    positions = tokens["position"][rows]
    _, cache = tiny_model.run_with_cache(sequence[None])
    for stream, hook in (("mlp_in", "ln2.hook_normalized"), ("mlp_out", "hook_mlp_out"), ("mlp_post", "mlp.hook_post")):
        stored = mlp_cache.load(2, "heldout", stream)[rows]
        torch.testing.assert_close(stored, cache[f"blocks.1.{hook}"][0, positions], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        mlp_cache.load(2, "heldout")[rows], cache[site_hooks("resid", 3)[2]][0, positions], rtol=1e-4, atol=1e-4
    )
    paired = next(mlp_cache.batches(2, 16, seed=0, streams=("mlp_in", "mlp_out")))
    assert paired.shape == (16, 64)
    with pytest.raises(KeyError, match="streams"):
        mlp_cache.load(2, "heldout", "attn_out")
    with pytest.raises(ValueError, match="no layers"):
        cache_token_activations(
            tiny_model, corpus(10), [0], "resid", mlp_cache.path / "x", TokenCacheSettings(), streams=STREAMS
        )


def test_transcoder_trains_saves_and_loads_with_saelens_alone_with_the_same_fvu(mlp_cache, tmp_path):
    from sae_lens import SAE, Transcoder

    settings = TranscoderSettings(expansion=2, k=8, training_tokens=64 * 300, batch_size=64, lr=1e-2)
    transcoder, details = train_transcoder(mlp_cache, 2, settings, "tiny", seed=0)
    transcoder.save_model(tmp_path / "transcoder")
    loaded = SAE.load_from_disk(tmp_path / "transcoder")
    assert isinstance(loaded, Transcoder) and type(loaded).__name__ == "JumpReLUTranscoder"
    assert loaded.cfg.metadata.hook_name == "blocks.1.ln2.hook_normalized"
    assert loaded.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    inputs, targets = mlp_cache.load(2, "heldout", "mlp_in"), mlp_cache.load(2, "heldout", "mlp_out")
    metrics = reconstruction_metrics(loaded, inputs, targets=targets)
    with torch.no_grad():
        latents = loaded.encode(inputs)
        output = loaded.decode(latents).double()
    t = targets.double()
    assert metrics["fvu"] == pytest.approx(float(((t - output) ** 2).sum() / ((t - t.mean(0)) ** 2).sum()), rel=1e-6)
    assert metrics["fvu"] < 0.5, metrics
    assert 1 <= metrics["l0"] <= 3 * settings.k, metrics  # BatchTopK: k per token on average, not per token
    again, _ = train_transcoder(mlp_cache, 2, settings, "tiny", seed=0)
    torch.testing.assert_close(again.W_enc, transcoder.W_enc, rtol=0, atol=0)
    assert details["threshold"] > 0


def test_loss_with_the_mlp_replaced_feeds_the_transcoder_the_mlp_input(tiny_model, mlp_cache, tmp_path):
    """document_losses with ``inputs`` equals splicing transcoder(ln2 input) into hook_mlp_out by hand."""
    from probes.dictionaries.sae import document_losses

    settings = TranscoderSettings(expansion=2, k=8, training_tokens=64 * 20, batch_size=64)
    transcoder, _ = train_transcoder(mlp_cache, 2, settings, "tiny", seed=0)
    sequences = mlp_cache.heldout_sequences()[:3]
    hook_in, hook_out = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    frame = document_losses(tiny_model, {hook_out: transcoder}, sequences, batch_size=2, inputs={hook_out: hook_in})
    for index, sequence in enumerate(sequences):
        read = {}

        def capture(activation, hook):  # noqa: ARG001
            read["x"] = activation

        def replace(activation, hook):  # noqa: ARG001
            out = activation.clone()
            with torch.no_grad():
                out[0, 1:] = transcoder.decode(transcoder.encode(read["x"][0, 1:]))
            return out

        with torch.no_grad():
            logits = tiny_model.run_with_hooks(sequence[None], fwd_hooks=[(hook_in, capture), (hook_out, replace)])
        log_probs = logits[0, 1:-1].log_softmax(-1)
        expected = -log_probs.gather(1, sequence[2:, None]).sum()
        row = frame.iloc[index]
        assert row["ce_sae"] == pytest.approx(float(expected), rel=1e-4)
        assert abs(row["ce_sae"] - row["ce_zero"]) > 1e-2  # the splice changed something
