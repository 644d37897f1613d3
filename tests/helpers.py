"""Test code shared by several test modules: paths, the embedded models' cache, and driving Snakemake."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# The same cache the default pipeline uses, so converting the embedded models happens once per checkout.
MODEL_CACHE = Path(os.environ.get("PROBES_TEST_MODEL_CACHE", REPO / "results" / "models"))


def embedded_manifest(name: str) -> Path:
    from probes.workflow.stages.models import convert_model

    manifest = MODEL_CACHE / name / "manifest.json"
    if not manifest.is_file():
        convert_model(name, name, manifest)
    return manifest


def snakemake(
    work: Path, *args: str, configfiles: tuple[str, ...] = ("test.yaml",), check: bool = True, env: dict | None = None
):
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--cores",
        "2",
        *args,
        "--configfile",
        *(str(work / name) for name in configfiles),  # it eats what follows
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=work, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def write_config(work: Path, name: str, **changes) -> None:
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["model_cache"] = str(MODEL_CACHE)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config.setdefault(section, {})[key] = value
    (work / name).write_text(yaml.safe_dump(config))


def copy_of_run(run: Path, target: Path) -> Path:
    """A private copy of a finished run, so a test may change its config without touching other tests' run.

    Results are hard links (stages replace files, never write into them) and Snakemake's own records are
    copied with their times, so the copy is as complete and up to date as the original.
    """
    shutil.copytree(run / "results", target / "results", copy_function=os.link)
    shutil.copytree(run / ".snakemake", target / ".snakemake", symlinks=True, ignore=shutil.ignore_patterns("locks"))
    for path in run.iterdir():
        if path.is_file():
            shutil.copy2(path, target / path.name)
    if (run / "logs").is_dir():
        shutil.copytree(run / "logs", target / "logs")
    return target


def byte_level_bpe(texts: list[str], vocab_size: int, special_tokens: list[str], **named: str):
    """A byte-level BPE tokenizer trained here on ``texts``, as a Hugging Face fast tokenizer; ``named`` are its
    special-token roles (``pad_token="<pad>"``, ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **named)


WORDS = [
    "the",
    "city",
    "of",
    "lyon",
    "is",
    "in",
    "france",
    "a",
    "coin",
    "heads",
    "up",
    "alice",
    "flips",
    "loved",
    "film",
    "acting",
    "was",
    "wonderful",
]


def corpus(n: int = 80, seed: int = 0) -> list[str]:
    """Random sentences over a small vocabulary: a corpus for token caches of the tiny model."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def exact_sae(d: int):
    """A standard SAE with W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x, a perfect reconstruction."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae
