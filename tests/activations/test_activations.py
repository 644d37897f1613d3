"""Activation extraction: the right hooks, padding that changes nothing, and no forward pass wasted."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file

from probes.activations.extraction import (
    INPUT_EMBEDDING,
    ExtractionSettings,
    NonFiniteActivations,
    pooled_activations,
    site_hooks,
)
from probes.workflow.stages.models import extract_activations as extract_stage

TEXTS = [
    "The city of Lyon is in France.",
    "A coin is heads up. Alice flips the coin. Bob does not flip the coin. Is the coin still heads up?",
    "I loved it.",
    "Short",
    "The Nile is longer than the Thames, and everyone knows that.",
    "Every bloop is a razzie.",
]


def assert_batched_equals_single(model, site: str) -> None:
    batched, _ = pooled_activations(model, TEXTS, ExtractionSettings(site=site, batch_size=len(TEXTS)), progress=False)
    single, _ = pooled_activations(model, TEXTS, ExtractionSettings(site=site, batch_size=1), progress=False)
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
    pooled, details = pooled_activations(tiny_model, TEXTS[:2], ExtractionSettings(), progress=False)
    assert details["layers"] == [0, 1, 2, 3]
    assert details["hook_names"][0] == "blocks.0.hook_resid_pre"
    assert details["hook_names"][-1] == "blocks.2.hook_resid_post"
    tokens = tiny_model.to_tokens(TEXTS[0])
    _, cache = tiny_model.run_with_cache(tokens)
    for layer, name in enumerate(details["hook_names"]):
        torch.testing.assert_close(pooled["last"][0, layer], cache[name][0, -1], rtol=1e-5, atol=1e-5)
        bos_free_mean = cache[name][0, 1:].mean(0)
        torch.testing.assert_close(pooled["mean"][0, layer], bos_free_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled[INPUT_EMBEDDING], pooled["mean"][:, 0])


def test_input_embeddings_are_kept_at_every_site(tiny_model):
    """The shortcut audit's embedding baseline does not depend on which site the probes read."""
    resid, _ = pooled_activations(tiny_model, TEXTS, ExtractionSettings(), progress=False)
    inside, _ = pooled_activations(tiny_model, TEXTS, ExtractionSettings(site="mlp_out"), progress=False)
    tokens = tiny_model.to_tokens(TEXTS[1])
    expected = tiny_model.embed(tokens)[0, 1:].mean(0)  # the tiny model has no position embedding to add
    torch.testing.assert_close(inside[INPUT_EMBEDDING][1], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inside[INPUT_EMBEDDING], resid[INPUT_EMBEDDING])


def test_site_hooks_inside_blocks_are_indexed_from_one():
    assert site_hooks("mlp_out", 2) == {1: "blocks.0.hook_mlp_out", 2: "blocks.1.hook_mlp_out"}
    assert site_hooks("ln2.hook_normalized", 1) == {1: "blocks.0.ln2.hook_normalized"}


def test_forward_pass_stops_before_the_unembedding(tiny_model):
    called = []
    for name in ("ln_final.hook_normalized", "unembed.hook_out"):
        tiny_model.add_hook(name, lambda activation, hook: called.append(hook.name))
    try:
        pooled_activations(tiny_model, TEXTS[:2], ExtractionSettings(site="attn_out"), progress=False)
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
    mlp = tmp_path / "out" / "mlp.safetensors"
    details = extract_stage(
        smollm2_manifest,
        dataset,
        tensors,
        meta,
        asdict(ExtractionSettings(batch_size=4)),
        {"text_column": "sentence", "label_column": "truth"},
        mlp=mlp,
        mlp_sites=["mlp_post", "mlp_in"],
    )
    stored = load_file(tensors)
    assert set(stored) == {"last", "mean", "labels", INPUT_EMBEDDING}
    torch.testing.assert_close(stored[INPUT_EMBEDDING], stored["mean"][:, 0])
    assert stored["labels"].tolist() == [i % 2 for i in range(len(TEXTS))]
    assert stored["last"].shape == (len(TEXTS), 31, 576) and stored["last"].dtype == torch.float32
    neurons = load_file(mlp)
    assert sorted(neurons) == ["mlp_in/last", "mlp_in/mean", "mlp_post/last", "mlp_post/mean"]
    assert neurons["mlp_post/last"].shape == (len(TEXTS), 30, 1536) and neurons["mlp_post/last"].dtype == torch.float16
    info = json.loads(meta.read_text())
    rounding = info.pop("mlp_rounding")
    assert all(0 < error["relative_rms_error"] < 1e-3 for error in rounding.values()), rounding
    assert info == {
        "layers": list(range(31)),
        "hook_names": ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(30)],
        "n_layers": 30,
        "mlp_sites": ["mlp_post", "mlp_in"],
        "mlp_hook_names": {
            "mlp_post": [f"blocks.{i}.mlp.hook_post" for i in range(30)],
            "mlp_in": [f"blocks.{i}.ln2.hook_normalized" for i in range(30)],
        },
        "d_mlp": 1536,
        "site": "resid",
        "classes": ["0", "1"],
    }
    assert details["n_examples"] == len(TEXTS) and details["n_truncated"] == 0 and details["d_model"] == 576


def test_extract_stage_rejects_a_bad_dataset_before_writing_anything(tmp_path):
    from probes.datasets.concepts import DatasetError

    dataset = tmp_path / "one_class.csv"
    dataset.write_text("text,label\n" + "".join(f"sentence {i},1\n" for i in range(10)))
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="one_class.csv.*single class"):
        extract_stage(
            tmp_path / "never-read.json", dataset, out / "a.safetensors", out / "a.json", asdict(ExtractionSettings())
        )
    assert not out.exists() or not any(out.iterdir())


def test_non_finite_activations_are_refused_at_the_first_bad_layer(tiny_model):
    import copy

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.blocks[1].mlp.W_out.fill_(float("inf"))  # block 1 writes inf: resid layer 2 is the first bad one
    first_bad = r"in fp32 \(float32\): .* at blocks\.1\.hook_resid_post \(layer 2\)"
    with pytest.raises(NonFiniteActivations, match=first_bad):
        pooled_activations(broken, TEXTS, ExtractionSettings(batch_size=4), progress=False)
    with pytest.raises(NonFiniteActivations, match=r"at blocks\.1\.hook_mlp_out \(layer 2\) \(site mlp_out\).*bf16"):
        pooled_activations(broken, TEXTS, ExtractionSettings(site="mlp_out"), progress=False)


@pytest.mark.slow
def test_gemma_in_fp16_is_refused_naming_the_first_bad_layer_and_bf16_works(gemma_manifest, tmp_path):
    """Gemma-3 overflows float16's range: extraction stops with the layer, leaves no output, and bf16 is finite."""
    from probes.models.cache import load_model

    dataset = tmp_path / "tiny.csv"
    dataset.write_text("text,label\n" + "".join(f'"{t}",{i % 2}\n' for i, t in enumerate(TEXTS)))
    model = load_model(gemma_manifest, dtype="float16")
    _, cache = model.run_with_cache(model.to_tokens(TEXTS[0]))
    hooks = site_hooks("resid", model.cfg.n_layers)
    first_bad = next(layer for layer in sorted(hooks) if not torch.isfinite(cache[hooks[layer]]).all())
    out = tmp_path / "out"
    paths, settings = (out / "r.safetensors", out / "r.meta.json"), asdict(ExtractionSettings())
    message = rf"in fp16 \(float16\): .* at {re.escape(hooks[first_bad])} \(layer {first_bad}\).*bf16"
    with pytest.raises(NonFiniteActivations, match=message):
        extract_stage(gemma_manifest, dataset, *paths, settings, weights="fp16")
    assert not out.exists() or not any(out.iterdir())
    extract_stage(gemma_manifest, dataset, *paths, settings, weights="bf16")
    assert torch.isfinite(load_file(out / "r.safetensors")["last"]).all()


def test_mlp_sites_come_from_the_same_pass_at_every_layer(tiny_model):
    """Neurons (mlp.hook_post) and the MLP input (ln2.hook_normalized) pooled like the residual, layers 1..L."""
    settings = ExtractionSettings(batch_size=4)
    pooled, details = pooled_activations(tiny_model, TEXTS, settings, progress=False, mlp_sites=("mlp_post", "mlp_in"))
    plain, _ = pooled_activations(tiny_model, TEXTS, settings, progress=False)
    torch.testing.assert_close(pooled["last"], plain["last"])
    assert pooled["mlp_post/last"].shape == (len(TEXTS), 3, tiny_model.cfg.d_mlp)
    assert pooled["mlp_in/mean"].shape == (len(TEXTS), 3, tiny_model.cfg.d_model)
    assert details["mlp_hook_names"]["mlp_post"] == [f"blocks.{b}.mlp.hook_post" for b in range(3)]
    tokens = tiny_model.to_tokens(TEXTS[1])
    _, cache = tiny_model.run_with_cache(tokens)
    for layer in (1, 2, 3):
        neurons = cache[f"blocks.{layer - 1}.mlp.hook_post"][0]
        torch.testing.assert_close(pooled["mlp_post/last"][1, layer - 1], neurons[-1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pooled["mlp_post/mean"][1, layer - 1], neurons[1:].mean(0), rtol=1e-5, atol=1e-5)
        normalized = cache[f"blocks.{layer - 1}.ln2.hook_normalized"][0, -1]
        torch.testing.assert_close(pooled["mlp_in/last"][1, layer - 1], normalized, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mlp_sites"):
        pooled_activations(tiny_model, TEXTS, settings, progress=False, mlp_sites=("mlp_pre",))
