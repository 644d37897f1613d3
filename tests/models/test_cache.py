"""The model cache: one folder wherever the code runs from, and a copied or moved cache loads without the old one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import REPO, tiny_llama_checkpoint
from probes.io import read_json, write_json
from probes.models import conversion
from probes.models.cache import load_model, model_cache_dir

TEXT = "The city of Lyon is in France."


def test_the_cache_folder_is_the_argument_else_the_environment_else_the_repositorys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # never the current directory
    monkeypatch.delenv("PROBES_MODEL_CACHE", raising=False)
    assert model_cache_dir() == REPO / "results" / "models"
    assert model_cache_dir("shared/models") == REPO / "shared" / "models"
    assert model_cache_dir(tmp_path / "models") == tmp_path / "models"
    assert model_cache_dir("~/models") == Path.home() / "models"
    monkeypatch.setenv("PROBES_MODEL_CACHE", str(tmp_path / "from-env"))
    assert model_cache_dir() == tmp_path / "from-env"
    assert model_cache_dir("given") == REPO / "given"
    monkeypatch.setenv("PROBES_MODEL_CACHE", "relative")
    assert model_cache_dir() == REPO / "relative"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A tiny random-weight Llama saved as a Hugging Face directory, and the model itself."""
    folder = tmp_path_factory.mktemp("checkpoint")
    model = tiny_llama_checkpoint(folder, [TEXT], "<s>")
    return folder, model


@pytest.fixture
def tiny_embedded(checkpoint, monkeypatch, tmp_path):
    """``smollm2-135m`` converted as the embedded models are, into ``<cache>/<model>/<gguf sha256>/``, with
    the tiny checkpoint standing in for the dequantised GGUF: the embedded layout in seconds, not minutes."""
    from transformers import AutoTokenizer

    folder, model = checkpoint
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"not a real GGUF")
    monkeypatch.setattr(conversion, "gguf_path", lambda name, scratch: gguf)
    monkeypatch.setattr(conversion, "dequantised_gguf", lambda path: (model, AutoTokenizer.from_pretrained(folder)))
    return "smollm2-135m"


def moved(cache: Path, target: Path) -> Path:
    shutil.move(cache, target)
    assert not cache.exists()
    return target


def logits(model, text: str = TEXT) -> torch.Tensor:
    with torch.inference_mode():
        return model(model.to_tokens(text))


def test_a_moved_cache_of_an_embedded_model_loads_from_its_new_place(tiny_embedded, tmp_path):
    before = load_model(tiny_embedded, cache_dir=tmp_path / "old")
    manifest = moved(tmp_path / "old", tmp_path / "new") / tiny_embedded / "manifest.json"
    record = read_json(manifest)
    values = [*record.values(), *record["versions"].values()]
    assert not [value for value in values if isinstance(value, str) and Path(value).is_absolute()]
    assert (manifest.parent / record["hf_dir"] / "config.json").is_file()
    assert (manifest.parent / record["hooked_state"]).is_file()
    written = manifest.stat().st_mtime_ns
    after = load_model(tiny_embedded, cache_dir=tmp_path / "new")
    assert manifest.stat().st_mtime_ns == written  # found where it is, not converted again
    assert torch.equal(logits(before), logits(after))
    assert torch.equal(logits(before), logits(load_model(manifest)))


def test_a_moved_cache_of_a_local_checkpoint_still_reads_the_checkpoint_where_it_is(checkpoint, tmp_path):
    folder, _ = checkpoint
    before = load_model(folder, cache_dir=tmp_path / "old")
    manifest = moved(tmp_path / "old", tmp_path / "new") / folder.name / "manifest.json"
    record = read_json(manifest)
    assert record["hooked_state"] == "hooked_transformer.safetensors"
    assert record["hf_dir"] == str(folder.resolve())  # outside the cache: it did not move
    written = manifest.stat().st_mtime_ns
    assert torch.equal(logits(before), logits(load_model(folder, cache_dir=tmp_path / "new")))
    assert manifest.stat().st_mtime_ns == written


def test_an_old_manifests_absolute_paths_are_read_as_they_are_and_renewed_once_they_are_gone(tiny_embedded, tmp_path):
    before = load_model(tiny_embedded, cache_dir=tmp_path / "old")
    manifest = tmp_path / "old" / tiny_embedded / "manifest.json"
    record = read_json(manifest)
    write_json(manifest, record | {key: str(manifest.parent / record[key]) for key in ("hf_dir", "hooked_state")})
    assert torch.equal(logits(before), logits(load_model(manifest)))
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    shutil.rmtree(tmp_path / "old")
    after = load_model(tiny_embedded, cache_dir=tmp_path / "new")  # the old paths are gone: described anew
    assert json.loads((tmp_path / "new" / tiny_embedded / "manifest.json").read_text())["hooked_state"] == (
        "hooked_transformer.safetensors"
    )
    assert torch.equal(logits(before), logits(after))
