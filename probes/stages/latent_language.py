"""Stages of ``workflow/rules/latent_language.smk``: tuned lenses, latent-language curves, summary and figures."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from probes.io import atomic_path, read_json, write_json, write_parquet
from probes.stages import save_figure, write_table

log = logging.getLogger(__name__)


def train_tuned_lens(
    manifest: str | os.PathLike,
    languages: str | os.PathLike,
    words: Sequence[str | os.PathLike],
    cloze: Sequence[str | os.PathLike],
    word_lists: Sequence[str],
    lens: str | os.PathLike,
    kl: str | os.PathLike,
    model: str,
    settings: dict,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``train_tuned_lens`` rule: corpus = every word list's cloze sentences, filled in, all languages."""
    import torch

    from probes import lens as lenses
    from probes.models import load_model
    from probes.wordlists import filled_cloze, load_word_list

    settings = lenses.TunedLensSettings(**settings)
    lists = [load_word_list(*paths, languages) for paths in zip(word_lists, words, cloze, strict=True)]
    corpus = pd.concat([filled_cloze(word_list).assign(list=word_list.name) for word_list in lists])
    corpus["concept"] = corpus["list"] + ":" + corpus["concept"]
    torch.manual_seed(seed)
    hooked = load_model(manifest, device=settings.device, dtype=settings.dtype)
    skip = int(bool(hooked.cfg.default_prepend_bos))
    counts = [hooked.to_tokens(text, move_to_device=False).shape[1] - skip for text in corpus["text"]]
    heldout_texts, train_texts = lenses.split_corpus(corpus, counts, settings, seed)
    unembed = lenses.unembed_of(hooked)
    train = lenses.token_residuals(hooked, train_texts, settings.batch_size)
    tuned, history = lenses.fit_tuned_lens(hooked, unembed, train, settings, seed)
    del train
    heldout = lenses.token_residuals(hooked, heldout_texts, settings.batch_size)
    # Whole concepts are held out, then a seeded sample of their tokens keeps the full-vocabulary KL cheap.
    generator = torch.Generator().manual_seed(seed)
    heldout = heldout[torch.randperm(len(heldout), generator=generator)[: settings.heldout_tokens].sort().values]
    table = lenses.heldout_kl(hooked, unembed, tuned, heldout)
    table.insert(0, "model", model)
    log.info("held-out KL (bits):\n%s", table.pivot(index="layer", columns="lens", values="kl_bits").round(3))
    lenses.save_tuned_lens(tuned, lens)
    write_parquet(kl, table)
    return {
        "n_train_texts": len(train_texts),
        "n_heldout_texts": len(heldout_texts),
        "loss_first": history[0],
        "loss_last": history[-1],
    }


def latent_language(
    manifest: str | os.PathLike,
    languages: str | os.PathLike,
    words: str | os.PathLike,
    cloze: str | os.PathLike,
    tuned_lens: str | os.PathLike | None,
    curves: str | os.PathLike,
    prompts: str | os.PathLike,
    tensors: str | os.PathLike,
    meta: str | os.PathLike,
    model: str,
    word_list: str,
    task: str,
    src: str,
    tgt: str,
    shots: int,
    settings: Mapping[str, Any],
    max_concepts: int | None = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``latent_language`` rule: prompts and token sets, last-position residuals, then both lenses.

    One job per model and pair, so the model is loaded once; the residuals are kept for reuse outside
    the pipeline, and the tidy curves hold P(language) and entropy per concept, layer and lens.
    """
    import torch
    from safetensors.torch import save_file

    from probes import lens as lenses
    from probes.activations import ExtractionSettings, extract_activations
    from probes.models import load_model
    from probes.wordlists import build_prompts, check_task, load_word_list

    settings = ExtractionSettings(**{**settings, "site": "resid", "poolings": ("last",)})
    words_table = load_word_list(word_list, words, cloze, languages)
    check_task(words_table, task, src, tgt)
    torch.manual_seed(seed)
    hooked = load_model(manifest, device=settings.device, dtype=settings.dtype)
    vocabulary = lenses.Vocabulary(hooked.tokenizer)
    selection = lenses.select_concepts(words_table, vocabulary, task, src, tgt, max_concepts, seed)
    log.info("%s %s->%s: %d concepts kept, dropped %s", task, src, tgt, len(selection.concepts), selection.dropped)
    built = build_prompts(words_table, task, src, tgt, selection.concepts, shots, seed)
    pooled, details = extract_activations(hooked, [p.text for p in built], settings)
    residuals = pooled["last"]

    unembed = lenses.unembed_of(hooked)
    tuned = lenses.load_tuned_lens(tuned_lens, unembed) if tuned_lens else None
    tidy = lenses.language_curves(hooked, unembed, tuned, residuals, selection.token_sets)
    concepts = np.asarray(selection.concepts)[tidy.pop("item").to_numpy()]
    tidy = tidy.assign(
        model=model,
        word_list=word_list,
        task=task,
        src=src,
        tgt=tgt,
        concept=concepts,
        depth=tidy["layer"] / hooked.cfg.n_layers,
    )
    table = pd.DataFrame(
        {"concept": selection.concepts, "prompt": [p.text for p in built], "answer": [p.answer for p in built]}
    )
    for language, sets in selection.token_sets.items():
        table[f"tokens_{language}"] = sets

    with atomic_path(tensors) as tmp:
        save_file({"last": residuals.contiguous()}, str(tmp))
    write_parquet(prompts, table)
    write_parquet(curves, tidy[lenses.CURVE_COLUMNS])
    write_json(
        meta,
        {
            "model": model,
            "word_list": word_list,
            "task": task,
            "src": src,
            "tgt": tgt,
            "contrast": selection.contrast,
            "n_concepts": len(words_table.words),
            "dropped": selection.dropped,
        },
    )
    return details | {"n_kept": len(selection.concepts), "token_scheme": asdict(vocabulary.scheme)}


def summarise_latent_language(
    curves: Sequence[str | os.PathLike],
    metas: Sequence[str | os.PathLike],
    kl: Sequence[str | os.PathLike],
    table: str | os.PathLike,
    summary_csv: str | os.PathLike,
    summary_html: str | os.PathLike,
    kl_table: str | os.PathLike,
) -> None:
    """The ``summarise_latent_language`` rule: one tidy table, a per-pair summary with drop counts, and KL."""
    from probes.lens import summarise_curves

    combined = pd.concat([pd.read_parquet(path) for path in curves], ignore_index=True)
    summary = summarise_curves(combined)
    keys = ["model", "word_list", "task", "src", "tgt"]
    dropped = pd.DataFrame(
        [
            {**{k: record[k] for k in keys}, "contrast": record["contrast"], "n_words": record["n_concepts"]}
            | {f"dropped_{reason}": n for reason, n in record["dropped"].items()}
            for record in map(read_json, metas)
        ]
    )
    summary = summary.merge(dropped, on=keys, how="left")
    write_parquet(table, combined)
    write_table(
        summary,
        summary_csv,
        summary_html,
        "Latent-language summary: one row per model, language pair and lens",
        float_format="%.4g",
    )
    kl_frames = [pd.read_parquet(path) for path in kl]
    write_parquet(kl_table, pd.concat(kl_frames, ignore_index=True) if kl_frames else pd.DataFrame())


def plot_latent_language(
    curves: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    model: str,
    word_list: str,
    task: str,
    src: str,
    tgt: str,
    dpi: int = 200,
) -> None:
    """The ``plot_latent_language`` rule."""
    from probes.figures import latent_language_figure

    save_figure(latent_language_figure(pd.read_parquet(curves), model, word_list, task, src, tgt), figures, dpi)


def plot_latent_language_relative(
    table: str | os.PathLike, figures: Sequence[str | os.PathLike], dpi: int = 200
) -> None:
    """The ``plot_latent_language_relative`` rule."""
    from probes.figures import latent_language_relative_figure

    save_figure(latent_language_relative_figure(pd.read_parquet(table)), figures, dpi)


def plot_tuned_lens_kl(kl_table: str | os.PathLike, figures: Sequence[str | os.PathLike], dpi: int = 200) -> None:
    """The ``plot_tuned_lens_kl`` rule."""
    from probes.figures import tuned_lens_kl_figure

    save_figure(tuned_lens_kl_figure(pd.read_parquet(kl_table)), figures, dpi)
