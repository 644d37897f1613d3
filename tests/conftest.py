"""Shared fixtures: a tiny random-weight model for fast tests and the real embedded models, converted once.

Shared functions and constants are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import REPO, byte_level_bpe, embedded_manifest, snakemake, write_config

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOKENIZER_CORPUS = [
    "The city of Lyon is in France.",
    "A coin is heads up. Alice flips the coin. Is the coin still heads up?",
    "I loved the film, the acting was wonderful.",
]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def smollm2_manifest() -> Path:
    return embedded_manifest("smollm2-135m")


@pytest.fixture(scope="session")
def gemma_manifest() -> Path:
    return embedded_manifest("gemma3-270m")


@pytest.fixture(scope="session")
def smollm2(smollm2_manifest):
    from probes.models.cache import load_model

    return load_model(smollm2_manifest)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 3-layer random-weight HookedTransformer with a byte-level BPE tokenizer trained here."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    tokenizer_dir = tmp_path_factory.mktemp("tiny_tokenizer")
    specials = ["<pad>", "<bos>", "<unk>"]
    named = {"bos_token": "<bos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    byte_level_bpe(TOKENIZER_CORPUS * 5, 300, specials, **named).save_pretrained(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = HookedTransformerConfig(
        n_layers=3,
        d_model=32,
        n_ctx=128,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=tokenizer.vocab_size,
        act_fn="gelu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        seed=0,
        default_prepend_bos=True,
    )
    torch.manual_seed(0)
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


@pytest.fixture(scope="session")
def run(tmp_path_factory, smollm2_manifest) -> Path:
    """The test config, run locally through the real DAG once per session."""
    work = tmp_path_factory.mktemp("workflow")
    write_config(work, "test.yaml")
    snakemake(work)
    return work
