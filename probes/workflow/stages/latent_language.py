"""Stages of ``workflow/rules/latent_language.smk``: tuned lenses, latent-language curves, summary and figures."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from probes.io import atomic_path, read_json, write_json, write_parquet
from probes.workflow.stages import save_figure, shared_model, write_table

log = logging.getLogger(__name__)


def _word_lists(
    word_lists: Sequence[str], words: Sequence[str | os.PathLike], cloze: Sequence[str | os.PathLike], languages
) -> list:
    from probes.datasets.wordlists import load_word_list

    return [load_word_list(*paths, languages) for paths in zip(word_lists, words, cloze, strict=True)]


def train_tuned_lens(
    manifest: str | os.PathLike,
    languages: str | os.PathLike,
    words: Sequence[str | os.PathLike],
    cloze: Sequence[str | os.PathLike],
    corpus: Sequence[str | os.PathLike],
    datasets: Sequence[str | os.PathLike],
    lens: str | os.PathLike,
    start: str | os.PathLike,
    kl: str | os.PathLike,
    text: str | os.PathLike,
    model: str,
    word_lists: Sequence[str],
    dataset_columns: Sequence[dict],
    settings: dict,
    corpus_settings: dict,
    hf_dataset: dict | None = None,
    seed: int = 0,
    ci: float = 0.95,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """The ``train_tuned_lens`` rule: least-squares maps from every layer to the last, then KL training from
    them, on the corpus's training documents plus the lens concepts' cloze sentences; the KL of the logit
    lens, the least-squares maps and the tuned lens on held-out corpus documents.

    The corpus is the SAE corpus, tokenised and split as the token cache and depth usage split it
    (:func:`probes.activations.token_cache.tokenised_corpus`): windows of ``context`` tokens after any BOS,
    one per document, ``train_tokens`` of training documents (the last tenth of the windows validates the
    training), ``heldout_tokens`` of held-out ones. The cloze split into lens and held-out concepts comes
    from the word lists alone (:func:`probes.lenses.vocabulary.lens_text_split`); the first ``cloze_tokens``
    tokens of the lens sentences (seeded order) join the training rows, so the translators see every
    language of the curves. ``start`` is the least-squares lens, saved as the tuned lens is, so both
    reload as the ``tuned_lens`` package's lenses; ``text`` records every text's role, token count and whether
    it was used.
    """
    import torch

    from probes.activations.token_cache import TokenCacheSettings, tokenised_corpus
    from probes.depth_usage.contributions import corpus_windows, least_squares_maps
    from probes.lenses import tuned as lens_tuned
    from probes.lenses import vocabulary as lens_vocabulary
    from probes.workflow.stages.sae import corpus_texts

    settings = lens_tuned.TunedLensSettings(**settings)
    split = lens_vocabulary.lens_text_split(
        _word_lists(word_lists, words, cloze, languages), settings.train_concepts, seed
    )
    torch.manual_seed(seed)
    hooked = shared_model(manifest, device=settings.device, dtype=settings.dtype)
    skip = int(bool(hooked.cfg.default_prepend_bos))
    split["n_tokens"] = [hooked.to_tokens(t, move_to_device=False).shape[1] - skip for t in split["text"]]
    lens_rows = split.index[split["role"] == "train"]
    lens_rows = lens_rows[: lens_vocabulary.first_tokens(split.loc[lens_rows, "n_tokens"], settings.cloze_tokens)]
    lens_rows = lens_rows if settings.cloze_tokens else lens_rows[:0]
    split["used"] = split.index.isin(lens_rows)
    split = split.assign(source="cloze", document=-1)

    token_lists, train_documents, heldout_documents, _ = tokenised_corpus(
        hooked, corpus_texts(corpus, datasets, dataset_columns, hf_dataset), TokenCacheSettings(**corpus_settings), seed
    )
    length = skip + settings.context
    windows, documents, roles = [], [], []
    for role, candidates, budget in (
        ("train", train_documents, settings.train_tokens),
        ("heldout", heldout_documents, settings.heldout_tokens),
    ):
        wanted = math.ceil(budget / settings.context)
        tokens, chosen = corpus_windows(token_lists, candidates, length, wanted)
        if len(chosen) < wanted:
            log.warning(
                "%d %s documents hold %d tokens, fewer than the %d windows asked for (tuned_lens.%s_tokens)",
                len(chosen),
                role,
                length,
                wanted,
                role,
            )
        n_validation = max(1, len(chosen) // 10) if role == "train" else 0
        windows += list(tokens)
        documents += chosen
        roles += [role] * (len(chosen) - n_validation) + ["validation"] * n_validation
    corpus_table = pd.DataFrame(
        {
            "source": "corpus",
            "document": documents,
            "text": [hooked.tokenizer.decode(window[skip:]) for window in windows],
            "role": roles,
            "n_tokens": settings.context,
            "used": True,
        }
    )
    residuals, owner = lens_tuned.token_residuals(hooked, windows, settings.batch_size, with_text=True)
    role_of = np.asarray(roles)[owner]
    heldout = np.flatnonzero(role_of == "heldout")[: settings.heldout_tokens]
    heldout_residuals, heldout_documents = residuals[heldout], np.asarray(documents)[owner[heldout]]
    cloze_residuals = (
        lens_tuned.token_residuals(hooked, split.loc[lens_rows, "text"].tolist(), settings.batch_size)
        if len(lens_rows)
        else residuals[:0]
    )
    n_validation = int((role_of == "validation").sum())
    rows = torch.cat(
        [
            residuals[role_of == "train"],
            cloze_residuals[: settings.cloze_tokens],
            residuals[role_of == "validation"],
        ]
    )
    del residuals, cloze_residuals
    maps, bias, n_train = least_squares_maps(rows[:-n_validation].split(1024), settings.ridge)
    unembed = lens_tuned.unembed_of(hooked)
    linear = lens_tuned.least_squares_lens(hooked, unembed, maps, bias)
    tuned, history, kept = lens_tuned.fit_tuned_lens(hooked, unembed, linear, rows, n_validation, settings, seed)
    del rows
    table = lens_tuned.heldout_kl(
        hooked,
        unembed,
        {"logit": None, "linear": linear, "tuned": tuned},
        heldout_residuals,
        heldout_documents,
        ci,
        n_boot,
        seed,
    )
    texts = corpus_table.loc[corpus_table["role"] == "heldout", "text"]
    table.insert(0, "model", model)
    table["bytes_per_token"] = texts.str.encode("utf-8").str.len().sum() / (len(texts) * settings.context)
    log.info("held-out KL (bits per token):\n%s", table.pivot(index="layer", columns="lens", values="kl_bits").round(3))
    lens_tuned.save_tuned_lens(tuned, lens)
    lens_tuned.save_tuned_lens(linear, start)
    write_parquet(kl, table)
    write_parquet(text, pd.concat([split, corpus_table], ignore_index=True))
    counts = split.groupby("role")["concept"].size().to_dict()
    return {
        "n_lens_concepts": settings.train_concepts,
        "n_sentences": {role: int(counts.get(role, 0)) for role in lens_vocabulary.LENS_TEXT_ROLES},
        "n_train_tokens": n_train,
        "n_cloze_tokens": n_train - int((role_of == "train").sum()),
        "n_validation_tokens": n_validation,
        "n_heldout_documents": int(len(np.unique(heldout_documents))),
        "n_heldout_tokens": len(heldout),
        "loss_first": history[0],
        "loss_last": history[-1],
        "kept_step": kept,
    }


def latent_language(
    manifest: str | os.PathLike,
    languages: str | os.PathLike,
    words: Sequence[str | os.PathLike],
    cloze: Sequence[str | os.PathLike],
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
    word_lists: Sequence[str],
    train_concepts: int,
    max_concepts: int | None = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``latent_language`` rule: prompts and token sets, last-position residuals, then both lenses.

    One job per model and pair, so the model is loaded once; the residuals are kept for reuse outside
    the pipeline, and the tidy curves hold P(language) and entropy per concept, layer and lens. Only
    concepts held out from the tuned lens are used (queries and solved examples alike), from the same
    split as ``train_tuned_lens`` (``words``, ``cloze``: every word list, as there), whether or not a tuned
    lens runs.
    """
    import torch
    from safetensors.torch import save_file

    from probes.activations.extraction import ExtractionSettings, pooled_activations
    from probes.datasets.wordlists import build_prompts, check_task
    from probes.lenses import curves as lens_curves
    from probes.lenses import tuned as lens_tuned
    from probes.lenses import vocabulary as lens_vocabulary

    settings = ExtractionSettings(**{**settings, "site": "resid", "poolings": ("last",)})
    lists = {w.name: w for w in _word_lists(word_lists, words, cloze, languages)}
    words_table = lists[word_list]
    check_task(words_table, task, src, tgt)
    lens_concepts = lens_vocabulary.lens_concepts(
        lens_vocabulary.lens_text_split(list(lists.values()), train_concepts, seed), word_list
    )
    torch.manual_seed(seed)
    hooked = shared_model(manifest, device=settings.device, dtype=settings.dtype)
    vocabulary = lens_vocabulary.Vocabulary(hooked.tokenizer)
    selection = lens_vocabulary.select_concepts(
        words_table, vocabulary, task, src, tgt, max_concepts, seed, exclude=lens_concepts
    )
    log.info("%s %s->%s: %d concepts kept, dropped %s", task, src, tgt, len(selection.concepts), selection.dropped)
    built = build_prompts(words_table, task, src, tgt, selection.concepts, shots, seed)
    pooled, details = pooled_activations(hooked, [p.text for p in built], settings)
    residuals = pooled["last"]

    unembed = lens_tuned.unembed_of(hooked)
    tuned = lens_tuned.load_tuned_lens(tuned_lens, unembed) if tuned_lens else None
    tidy = lens_curves.language_curves(hooked, unembed, tuned, residuals, selection.token_sets)
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
    write_parquet(curves, tidy[lens_curves.CURVE_COLUMNS])
    write_json(
        meta,
        {
            "model": model,
            "word_list": word_list,
            "task": task,
            "src": src,
            "tgt": tgt,
            "contrast": selection.contrast,
            "source_checked": selection.source_checked,
            "n_concepts": len(words_table.words),
            "dropped": selection.dropped,
            "lens_concepts": lens_concepts,
        },
    )
    return details | {"n_kept": len(selection.concepts), "token_scheme": asdict(vocabulary.scheme)}


# The columns the summary page opens with (estimates with their intervals); every column stays one click below.
SUMMARY_LEAD = {
    "model": "model",
    "task": "task",
    "src": "source",
    "tgt": "target",
    "lens": "lens",
    "n_concepts": "concepts",
    "p_target_final": "P(target), last layer",
    "p_en_max_intermediate": "max P(English), intermediate layers",
    "p_en_argmax_layer": "at layer",
    "top_intermediate_language": "top intermediate language",
    "target_takeover_layer": "target leads from layer",
}


def summarise_latent_language(
    curves: Sequence[str | os.PathLike],
    metas: Sequence[str | os.PathLike],
    kl: Sequence[str | os.PathLike],
    table: str | os.PathLike,
    intervals: str | os.PathLike,
    summary_csv: str | os.PathLike,
    summary_html: str | os.PathLike,
    kl_table: str | os.PathLike,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> None:
    """The ``summarise_latent_language`` rule: the tidy table, concept-mean curves with intervals, a summary
    per pair (with intervals and drop counts), and every model's held-out KL."""
    from probes.lenses.curves import curve_intervals, summarise_curves
    from probes.lenses.vocabulary import DROP_REASONS

    combined = pd.concat([pd.read_parquet(path) for path in curves], ignore_index=True)
    summary = summarise_curves(combined, ci, n_boot, seed)
    keys = ["model", "word_list", "task", "src", "tgt"]
    dropped = pd.DataFrame(
        [
            {**{k: record[k] for k in keys}, "contrast": record["contrast"], "n_words": record["n_concepts"]}
            | {"source_checked": record["source_checked"]}
            | {f"dropped_{reason}": record["dropped"].get(reason, 0) for reason in DROP_REASONS}
            for record in map(read_json, metas)
        ]
    )
    summary = summary.merge(dropped, on=keys, how="left")
    write_parquet(table, combined)
    write_parquet(intervals, curve_intervals(combined, ci, n_boot, seed))
    write_table(
        summary,
        summary_csv,
        summary_html,
        "Latent-language summary: one row per model, language pair and lens",
        float_format="%.4g",
        lead=SUMMARY_LEAD,
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
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> None:
    """The ``plot_latent_language`` rule: the pair's curves, with the summary's intervals over concepts."""
    from probes.lenses.curves import curve_intervals
    from probes.plotting.latent_language import latent_language_figure

    intervals = curve_intervals(pd.read_parquet(curves), ci, n_boot, seed)
    save_figure(latent_language_figure(intervals, model, word_list, task, src, tgt), figures, dpi)


def plot_latent_language_relative(
    intervals: str | os.PathLike, figures: Sequence[str | os.PathLike], dpi: int = 200
) -> None:
    """The ``plot_latent_language_relative`` rule."""
    from probes.plotting.latent_language import latent_language_relative_figure

    save_figure(latent_language_relative_figure(pd.read_parquet(intervals)), figures, dpi)


def plot_tuned_lens_kl(kl_table: str | os.PathLike, figures: Sequence[str | os.PathLike], dpi: int = 200) -> None:
    """The ``plot_tuned_lens_kl`` rule."""
    from probes.plotting.latent_language import tuned_lens_kl_figure

    save_figure(tuned_lens_kl_figure(pd.read_parquet(kl_table)), figures, dpi)
