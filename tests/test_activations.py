"""Activation extraction: the right hooks, padding that changes nothing, and no forward pass wasted."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from probes.activations import ExtractionSettings, extract_activations, extract_stage, site_hooks

TEXTS = [
    "The city of Lyon is in France.",
    "A coin is heads up. Alice flips the coin. Bob does not flip the coin. Is the coin still heads up?",
    "I loved it.",
    "Short",
    "The Nile is longer than the Thames, and everyone knows that.",
    "Every bloop is a razzie.",
]


def assert_batched_equals_single(model, site: str) -> None:
    batched, _ = extract_activations(model, TEXTS, ExtractionSettings(site=site, batch_size=len(TEXTS)), progress=False)
    single, _ = extract_activations(model, TEXTS, ExtractionSettings(site=site, batch_size=1), progress=False)
    for pooling in ("last", "mean"):
        # The residual stream carries components of several hundred, where one float32 ulp is ~6e-5, so the
        # tolerance is 1e-4 relative to each vector's largest component.
        scale = single[pooling].abs().amax(-1, keepdim=True).clamp_min(1.0)
        assert ((batched[pooling] - single[pooling]).abs() / scale).max() <= 1e-4, pooling


@pytest.mark.parametrize("site", ["resid", "ln2.hook_normalized", "attn_out", "mlp_out"])
def test_batched_equals_one_at_a_time_tiny(tiny_model, site):
    assert_batched_equals_single(tiny_model, site)


@pytest.mark.slow
def test_batched_equals_one_at_a_time_smollm2(smollm2):
    assert_batched_equals_single(smollm2, "resid")


def test_layers_follow_the_residual_convention(tiny_model):
    pooled, details = extract_activations(tiny_model, TEXTS[:2], ExtractionSettings(), progress=False)
    assert details["layers"] == [0, 1, 2, 3]
    assert details["hook_names"][0] == "blocks.0.hook_resid_pre"
    assert details["hook_names"][-1] == "blocks.2.hook_resid_post"
    tokens = tiny_model.to_tokens(TEXTS[0])
    _, cache = tiny_model.run_with_cache(tokens)
    for layer, name in enumerate(details["hook_names"]):
        torch.testing.assert_close(pooled["last"][0, layer], cache[name][0, -1], rtol=1e-5, atol=1e-5)
        bos_free_mean = cache[name][0, 1:].mean(0)
        torch.testing.assert_close(pooled["mean"][0, layer], bos_free_mean, rtol=1e-5, atol=1e-5)


def test_site_hooks_inside_blocks_are_indexed_from_one():
    assert site_hooks("mlp_out", 2) == {1: "blocks.0.hook_mlp_out", 2: "blocks.1.hook_mlp_out"}
    assert site_hooks("ln2.hook_normalized", 1) == {1: "blocks.0.ln2.hook_normalized"}


def test_forward_pass_stops_before_the_unembedding(tiny_model):
    called = []
    for name in ("ln_final.hook_normalized", "unembed.hook_out"):
        tiny_model.add_hook(name, lambda activation, hook: called.append(hook.name))
    try:
        extract_activations(tiny_model, TEXTS[:2], ExtractionSettings(site="attn_out"), progress=False)
    finally:
        tiny_model.reset_hooks()
    assert called == []


def test_settings_reject_unknown_site_and_pooling():
    with pytest.raises(ValueError, match="site"):
        ExtractionSettings(site="resid_mid")
    with pytest.raises(ValueError, match="poolings"):
        ExtractionSettings(poolings=("max",))


@pytest.mark.slow
def test_extract_stage_writes_safetensors_and_provenance(smollm2_manifest, tmp_path):
    dataset = tmp_path / "tiny.csv"
    dataset.write_text("sentence,truth\n" + "".join(f'"{t}",{i % 2}\n' for i, t in enumerate(TEXTS)))
    tensors, meta = tmp_path / "out" / "resid.safetensors", tmp_path / "out" / "resid.meta.json"
    extract_stage(smollm2_manifest, dataset, tensors, meta, ExtractionSettings(batch_size=4), "sentence", "truth")
    stored = load_file(tensors)
    assert set(stored) == {"last", "mean", "labels"}
    assert stored["labels"].tolist() == [i % 2 for i in range(len(TEXTS))]
    assert stored["last"].shape == (len(TEXTS), 31, 576) and stored["last"].dtype == torch.float32
    info = json.loads(meta.read_text())
    assert info["model"] == "smollm2-135m" and len(info["model_weights_sha256"]) == 64
    assert len(info["dataset_sha256"]) == 64 and info["site"] == "resid" and info["seed"] == 0
    assert info["versions"]["torch"].startswith("2.")


def test_extract_stage_rejects_a_bad_dataset_before_writing_anything(tmp_path):
    from probes.datasets import DatasetError

    dataset = tmp_path / "one_class.csv"
    dataset.write_text("text,label\n" + "".join(f"sentence {i},1\n" for i in range(10)))
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="one_class.csv.*single class"):
        extract_stage(tmp_path / "never-read.json", dataset, out / "a.safetensors", out / "a.json", ExtractionSettings())
    assert not out.exists() or not any(out.iterdir())
