"""The embedded models load offline into TransformerLens and agree with their Hugging Face twins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from probes.models.cache import load_model
from probes.models.loading import ModelError, ModelSource, load_hf_model, model_depth, resolve_source
from probes.workflow.stages.models import convert_model

PROMPTS = [
    "The capital of France is",
    "A coin is heads up. Alice flips the coin. Is the coin still heads up? Answer:",
    'Français: "fleur" - English: "',
]


def next_token_probabilities(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(tokens)[0, -1].softmax(-1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_transformer_lens_matches_hugging_face(name, request):
    manifest = request.getfixturevalue("smollm2_manifest" if name.startswith("smollm2") else "gemma_manifest")
    tl_model = load_model(manifest)
    hf_model, _ = load_hf_model(manifest)
    for prompt in PROMPTS:
        tokens = tl_model.to_tokens(prompt)
        tl_probs = next_token_probabilities(tl_model, tokens)
        with torch.inference_mode():
            hf_probs = hf_model(tokens).logits[0, -1].softmax(-1)
        assert (tl_probs - hf_probs).abs().max().item() <= 1e-4, prompt
    assert tl_model.cfg.n_layers == {"smollm2-135m": 30, "gemma3-270m": 18}[name] == model_depth(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_the_final_norm_gives_hugging_faces_last_hidden_state_and_the_other_layers_agree(name, request):
    """What representation quality reads: layers 0..L-1 as TransformerLens keeps them, layer L through the model's
    own final norm (Gemma's 1 + w reaches 301), all equal to Hugging Face's hidden_states."""
    from probes.depth_usage.contributions import window_residuals
    from probes.models.loading import final_norm

    manifest = request.getfixturevalue("smollm2_manifest" if name.startswith("smollm2") else "gemma_manifest")
    tl_model = load_model(manifest)
    hf_model, _ = load_hf_model(manifest)
    tokens = tl_model.to_tokens(PROMPTS[1])
    resid, _ = window_residuals(tl_model, tokens, batch_size=1, progress=False, mids=False)
    with torch.inference_mode():
        hidden = hf_model(tokens, output_hidden_states=True).hidden_states
        resid[:, :, -1] = final_norm(manifest)(resid[:, :, -1])
    for layer, expected in enumerate(hidden):
        scale = expected[0, 1:].norm(dim=-1).mean()  # the BOS aside, whose norm dwarfs the others
        error = (resid[0, 1:, layer] - expected[0, 1:]).norm(dim=-1).max()
        assert error <= 1e-4 * scale, (layer, float(error), float(scale))


@pytest.mark.slow
def test_embedded_model_predicts_sensibly(smollm2):
    """A dequantised checkpoint that got the weight layout wrong would still load; it would not know Paris."""
    probs = next_token_probabilities(smollm2, smollm2.to_tokens("The capital of France is"))
    assert smollm2.tokenizer.decode(probs.argmax()).strip() == "Paris"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_cached_transformer_lens_weights_equal_a_fresh_conversion(name, request):
    """load_model reads the processed weights convert_model cached; they must be TransformerLens's own."""
    from probes.models.loading import build_hooked, read_manifest

    manifest = request.getfixturevalue("smollm2_manifest" if name.startswith("smollm2") else "gemma_manifest")
    record = read_manifest(manifest)
    assert record["hooked_state"].endswith("hooked_transformer.safetensors")
    cached, fresh = load_model(manifest), build_hooked(record, "cpu", "float32")
    for prompt in PROMPTS:
        assert torch.equal(cached.to_tokens(prompt), fresh.to_tokens(prompt))
        assert torch.equal(
            next_token_probabilities(cached, cached.to_tokens(prompt)),
            next_token_probabilities(fresh, fresh.to_tokens(prompt)),
        )


@pytest.mark.slow
def test_manifest_records_gguf_checksum(smollm2_manifest):
    manifest = json.loads(smollm2_manifest.read_text())
    assert len(manifest["gguf_sha256"]) == 64
    assert manifest["hf_dir"].endswith(manifest["gguf_sha256"][:16])
    assert "4-bit" in manifest["note"]


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown model 'no-such-model'.*embedded model"):
        resolve_source("no-such-model")


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_source(str(tmp_path))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of this test's own. huggingface_hub reads its environment once, on import,
    and every loader (transformers, TransformerLens, our check) then takes the folder from its constants."""
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(cache.parent))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_files(hub_cache: Path, repo: str, files: dict[str, str]) -> None:
    """Put ``files`` into the cached snapshot of ``repo`` as ``hf download`` lays them out: content-addressed
    blobs, linked from ``snapshots/<commit>/``, which ``refs/main`` names."""
    import hashlib

    from huggingface_hub.file_download import repo_folder_name

    folder = hub_cache / repo_folder_name(repo_id=repo, repo_type="model")
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "blobs").mkdir(exist_ok=True)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        blob = folder / "blobs" / hashlib.sha256(text.encode()).hexdigest()
        blob.write_text(text)
        (folder / "snapshots" / commit / name).symlink_to(Path("..", "..", "blobs", blob.name))


def test_transformer_lens_name_without_cached_weights_fails_up_front_saying_how_to_provide_them(hub_cache, tmp_path):
    from transformer_lens.loading_from_pretrained import get_official_model_name

    repo = get_official_model_name("gpt2")
    for cached in ({}, {"config.json": "{}"}):  # nothing, then a config without weights
        cache_files(hub_cache, repo, cached)
        with pytest.raises(ModelError, match="not in the local Hugging Face cache") as error:
            resolve_source("gpt2")
        message = str(error.value)
        assert f"`hf download {repo}`" in message and str(hub_cache) in message and "HF_HOME" in message
    with pytest.raises(ModelError, match=f"hf download {repo}"):
        convert_model("gpt2", "gpt2", tmp_path / "gpt2" / "manifest.json")
    assert not (tmp_path / "gpt2" / "manifest.json").exists()


def test_transformer_lens_name_with_cached_weights_passes_without_loading_them(hub_cache):
    from transformer_lens.loading_from_pretrained import get_official_model_name

    repo = get_official_model_name("gpt2")
    cache_files(hub_cache, repo, {"config.json": "{}", "model.safetensors": "weights"})
    assert resolve_source("gpt2") == ModelSource("transformer_lens", repo, repo)


def test_a_sharded_checkpoint_counts_as_cached_only_with_every_shard(hub_cache):
    from transformer_lens.loading_from_pretrained import get_official_model_name

    repo = get_official_model_name("pythia-70m")
    shards = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    index = {"config.json": "{}", "model.safetensors.index.json": json.dumps(shards)}
    cache_files(hub_cache, repo, index | {"model-00001-of-00002.safetensors": "first"})
    with pytest.raises(ModelError, match=f"hf download {repo}"):
        resolve_source("pythia-70m")
    cache_files(hub_cache, repo, {"model-00002-of-00002.safetensors": "second"})
    assert resolve_source("pythia-70m").location == repo
