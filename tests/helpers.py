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


def tiny_llama_checkpoint(folder: Path, texts: list[str], special: str):
    """A tiny random-weight Llama (2 layers, width 32) and its tokenizer saved to ``folder`` as a Hugging Face
    directory, as a user's own checkpoint would be; returns the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_level_bpe(texts * 5, 300, [special], bos_token=special, eos_token=special)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


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


def dash(line) -> str:
    """What a reader sees of a line's dash pattern: none, solid, dotted, dashed or dash-dot (matplotlib names
    every custom pattern "--", a dotted one included)."""
    if line.get_linestyle() in ("None", "", " "):
        return "none"
    _, pattern = line._unscaled_dash_pattern
    if not pattern:
        return "solid"
    lengths = {"dot" if on <= 1.5 else "dash" for on in pattern[::2]}
    return {frozenset({"dot"}): "dotted", frozenset({"dash"}): "dashed"}.get(frozenset(lengths), "dash-dot")


def named_lines(ax) -> dict[int, str]:
    """The lines of an axis a legend names, by id: those with a label of their own and the data lines of
    labelled error bars (``errorbar`` gives its label to the container)."""
    from matplotlib.container import ErrorbarContainer

    names = {id(line): line.get_label() for line in ax.lines if not line.get_label().startswith("_")}
    for container in ax.containers:
        labelled = not container.get_label().startswith("_")
        if isinstance(container, ErrorbarContainer) and container[0] is not None and labelled:
            names[id(container[0])] = container.get_label()
    return names


def line_looks(ax) -> list[tuple]:
    """How a reader tells the lines of an axis apart: colour, dash, marker and marker fill of every line that is
    drawn as a line or named in a legend (a series of points drawn one errorbar at a time shares its look)."""
    from matplotlib.colors import to_hex

    named = named_lines(ax)
    looks = []
    for line in ax.lines:
        if line.get_visible() and (dash(line) != "none" or id(line) in named):
            marker = line.get_marker()
            fill = to_hex(line.get_markerfacecolor()) if marker not in ("None", "", " ", None) else None
            looks.append((to_hex(line.get_color()), dash(line), str(marker), fill))
    return looks


def shared_looks(fig) -> dict[str, list[tuple]]:
    """Per axis (by title), the line looks that more than one line has."""
    shared = {}
    for ax in fig.axes:
        looks = line_looks(ax)
        repeated = sorted({look for look in looks if looks.count(look) > 1})
        if repeated:
            shared[ax.get_title()] = repeated
    return shared


def clipped_markers(fig) -> list[tuple]:
    """Markers the axis cuts: centre outside the axis or nearer its edge than the marker's radius. Errorbar
    caps are left out (an interval may run past the limits)."""
    import numpy as np
    from matplotlib.container import ErrorbarContainer

    fig.canvas.draw()
    clipped = []
    for ax in fig.axes:
        bars = [container for container in ax.containers if isinstance(container, ErrorbarContainer)]
        caps = {id(cap) for container in bars for cap in container[1]}
        x0, y0, x1, y1 = ax.bbox.extents
        for line in ax.lines:
            if id(line) in caps or line.get_marker() in ("None", "", " ", None) or not line.get_clip_on():
                continue
            radius = line.get_markersize() * fig.dpi / 72 / 2
            points = line.get_xydata()
            points = points[np.isfinite(points).all(axis=1)]
            for x, y in line.get_transform().transform(points):
                if not (x0 + radius <= x <= x1 - radius and y0 + radius <= y <= y1 - radius):
                    clipped.append((ax.get_title(), line.get_label(), round(float(x)), round(float(y))))
    return clipped


def singular_plurals(fig) -> list[str]:
    """Texts that count one thing in the plural: "(1 tasks)"."""
    import re

    from matplotlib.text import Text

    pattern = re.compile(r"(?<![\d.,])1 (task|document|example|group|concept|sentence|token|text|prompt|layer)s\b")
    return [text.get_text() for text in fig.findobj(Text) if pattern.search(text.get_text())]


def legibility_problems(fig) -> dict[str, list]:
    """What keeps a reader from reading a figure: counts of one in the plural, lines that look alike within
    an axis, markers the axis cuts."""
    problems = {"plurals": singular_plurals(fig), "shared looks": shared_looks(fig), "clipped": clipped_markers(fig)}
    return {name: found for name, found in problems.items() if found}
