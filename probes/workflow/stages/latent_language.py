"""Stages of ``workflow/rules/latent_language.smk``: tuned lenses, latent-language curves, summary and figures."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
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


def _held_out_lists(word_lists, words, cloze, languages, word_list: str, train_concepts: int, seed: int):
    """Every word list by name, and the concepts of ``word_list`` that belong to the tuned lens (the same split as
    ``train_tuned_lens``, whether or not a tuned lens runs), which the curve stages leave out."""
    from probes.lenses import vocabulary as lens_vocabulary

    lists = {w.name: w for w in _word_lists(word_lists, words, cloze, languages)}
    split = lens_vocabulary.lens_text_split(list(lists.values()), train_concepts, seed)
    return lists, lens_vocabulary.lens_concepts(split, word_list)


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


@functools.cache
def _energy_gram(manifest: str, stamp: int) -> tuple[np.ndarray, int]:
    """The model's energy Gram matrix and vocabulary size, read once per conversion (``stamp``: its mtime)."""
    from probes.lenses.energy import hf_unembedding, unembedding_gram
    from probes.models.loading import load_hf_model

    unembedding, gain = hf_unembedding(load_hf_model(manifest)[0])
    return unembedding_gram(unembedding, gain), unembedding.shape[0]


def energy_gram(manifest: str | os.PathLike) -> tuple[np.ndarray, int]:
    """:func:`probes.lenses.energy.unembedding_gram` of a converted model and its vocabulary size, computed once
    per process (Snakemake runs the jobs in one) and again only after a new conversion."""
    path = Path(manifest).resolve()
    return _energy_gram(str(path), path.stat().st_mtime_ns)


def _run_curves(
    hooked,
    lenses: tuple[Any, Any],
    vocabulary,
    words_table,
    task: str,
    src: str,
    tgt: str,
    gram: tuple[np.ndarray, int],
    *,
    settings,
    shots: int | None,
    max_concepts: int | None,
    seed: int,
    exclude: Sequence[str],
    languages: Sequence[str] | None = None,
    extra: Sequence[str] = (),
):
    """One run's concepts, prompts, last-position residuals and tidy curves (exclusive and full token sets,
    top-1, entropy and energy); ``languages`` narrows the curves to those languages (and the shared tokens)."""
    from probes.activations.extraction import pooled_activations
    from probes.datasets.wordlists import build_prompts
    from probes.lenses import curves as lens_curves
    from probes.lenses import energy as lens_energy
    from probes.lenses import vocabulary as lens_vocabulary

    selection = lens_vocabulary.select_concepts(
        words_table, vocabulary, task, src, tgt, max_concepts, seed, exclude=exclude, extra=extra
    )
    log.info("%s %s->%s: %d concepts kept, dropped %s", task, src, tgt, len(selection.concepts), selection.dropped)
    built = build_prompts(words_table, task, src, tgt, selection.concepts, shots, seed)
    pooled, details = pooled_activations(hooked, [p.text for p in built], settings)
    residuals = pooled["last"]
    full = {language: selection.token_sets[language] for language in (languages or selection.token_sets)}
    exclusive = lens_vocabulary.exclusive_token_sets(full, selection.compared)
    tidy = lens_curves.language_curves(hooked, *lenses, residuals, exclusive, full)
    energy = lens_energy.token_energy(residuals, *gram)
    items = tidy.pop("item").to_numpy()
    tidy = tidy.assign(
        word_list=words_table.name,
        task=task,
        src=src,
        tgt=tgt,
        concept=np.asarray(selection.concepts)[items],
        depth=tidy["layer"] / hooked.cfg.n_layers,
        energy=energy[items, tidy["layer"].to_numpy()],
    )
    table = pd.DataFrame(
        {"concept": selection.concepts, "prompt": [p.text for p in built], "answer": [p.answer for p in built]}
    ).assign(task=task, src=src, tgt=tgt)
    for language, sets in exclusive.items():
        table[f"tokens_{language}"] = sets
    for language, sets in full.items():
        table[f"full_tokens_{language}"] = sets
    meta = {
        "word_list": words_table.name,
        "task": task,
        "src": src,
        "tgt": tgt,
        "contrast": selection.contrast,
        "compared": selection.compared,
        "source_checked": selection.source_checked,
        "n_concepts": len(words_table.words),
        "dropped": selection.dropped,
    }
    return tidy, table, meta, residuals, details


def _lenses_and_vocabulary(manifest, settings, tuned_lens, seed):
    """The shared model, its lenses (unembedding, tuned lens or None) and its vocabulary index."""
    import torch

    from probes.lenses import tuned as lens_tuned
    from probes.lenses import vocabulary as lens_vocabulary

    torch.manual_seed(seed)
    hooked = shared_model(manifest, device=settings.device, dtype=settings.dtype)
    unembed = lens_tuned.unembed_of(hooked)
    tuned = lens_tuned.load_tuned_lens(tuned_lens, unembed) if tuned_lens else None
    return hooked, (unembed, tuned), lens_vocabulary.Vocabulary(hooked.tokenizer)


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
    shots: int | None,
    settings: Mapping[str, Any],
    word_lists: Sequence[str],
    train_concepts: int,
    max_concepts: int | None = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``latent_language`` rule: prompts and token sets, last-position residuals, then both lenses.

    One job per model and pair, so the model is loaded once; the residuals are kept for reuse outside
    the pipeline, and the tidy curves hold P(language) and entropy per concept, layer and lens, and the
    energy per concept and layer. Only concepts held out from the tuned lens are used (queries and solved
    examples alike), from the same split as ``train_tuned_lens`` (``words``, ``cloze``: every word list, as
    there), whether or not a tuned lens runs.
    """
    from safetensors.torch import save_file

    from probes.activations.extraction import ExtractionSettings
    from probes.datasets.wordlists import check_task
    from probes.lenses import curves as lens_curves

    settings = ExtractionSettings(**{**settings, "site": "resid", "poolings": ("last",)})
    lists, lens_concepts = _held_out_lists(word_lists, words, cloze, languages, word_list, train_concepts, seed)
    check_task(lists[word_list], task, src, tgt)
    hooked, lenses, vocabulary = _lenses_and_vocabulary(manifest, settings, tuned_lens, seed)
    tidy, table, record, residuals, details = _run_curves(
        hooked,
        lenses,
        vocabulary,
        lists[word_list],
        task,
        src,
        tgt,
        energy_gram(manifest),
        settings=settings,
        shots=shots,
        max_concepts=max_concepts,
        seed=seed,
        exclude=lens_concepts,
    )
    with atomic_path(tensors) as tmp:
        save_file({"last": residuals.contiguous()}, str(tmp))
    write_parquet(prompts, table)
    write_parquet(curves, tidy.assign(model=model)[lens_curves.CURVE_COLUMNS])
    write_json(meta, {"model": model} | record | {"lens_concepts": lens_concepts})
    return details | {"n_kept": len(table), "token_scheme": asdict(vocabulary.scheme)}


def dual_latent(
    manifest: str | os.PathLike,
    languages: str | os.PathLike,
    words: Sequence[str | os.PathLike],
    cloze: Sequence[str | os.PathLike],
    curves: str | os.PathLike,
    prompts: str | os.PathLike,
    meta: str | os.PathLike,
    model: str,
    word_list: str,
    targets: Sequence[str],
    related: Mapping[str, str],
    shots: int | None,
    settings: Mapping[str, Any],
    word_lists: Sequence[str],
    train_concepts: int,
    max_concepts: int | None = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``dual_latent`` rule: the monolingual cloze in every target language, on one model in one job.

    Each run compares English, the target and the target's related language (docs/methods.md §3.9) under the
    logit lens, the lens of Wendler et al. and Zhong et al. (a tuned lens would double the decoding, the
    stage's main cost), on the concepts ``latent_language`` uses: those held out from the tuned lens.
    """
    from probes.activations.extraction import ExtractionSettings
    from probes.lenses import curves as lens_curves

    settings = ExtractionSettings(**{**settings, "site": "resid", "poolings": ("last",)})
    lists, lens_concepts = _held_out_lists(word_lists, words, cloze, languages, word_list, train_concepts, seed)
    hooked, lenses, vocabulary = _lenses_and_vocabulary(manifest, settings, None, seed)
    gram = energy_gram(manifest)
    frames, tables, records = [], [], []
    for tgt in targets:
        extra = [related[tgt]] if tgt in related else []
        tidy, table, record, _, _ = _run_curves(
            hooked,
            lenses,
            vocabulary,
            lists[word_list],
            "cloze",
            tgt,
            tgt,
            gram,
            settings=settings,
            shots=shots,
            max_concepts=max_concepts,
            seed=seed,
            exclude=lens_concepts,
            languages=["en", tgt, *extra],
            extra=extra,
        )
        frames.append(tidy.assign(model=model))
        tables.append(table)
        records.append({"model": model} | record)
    write_parquet(curves, pd.concat(frames, ignore_index=True)[lens_curves.CURVE_COLUMNS])
    write_parquet(prompts, pd.concat(tables, ignore_index=True))
    write_json(meta, {"model": model, "runs": records, "lens_concepts": lens_concepts})
    return {"n_kept": {record["tgt"]: record["n_concepts"] - sum(record["dropped"].values()) for record in records}}


# The columns the summary page opens with (estimates with their intervals); every column stays one click below.
SUMMARY_LEAD = {
    "model": "model",
    "task": "task",
    "src": "source",
    "tgt": "target",
    "lens": "lens",
    "n_concepts": "concepts",
    "p_target_final": "P(target), last layer",
    "p_shared_final": "P(shared tokens), last layer",
    "p_en_max_intermediate": "max P(English), layers 1 to L-1",
    "p_en_argmax_layer": "at layer",
    "top_language_before_takeover": "top language before the takeover",
    "target_takeover_layer": "target leads from layer",
    "leaders": "leading language by layer",
}


def _drop_counts(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run's meta record: which languages it compared, and how many concepts it dropped and why."""
    from probes.lenses.curves import RUN_KEYS
    from probes.lenses.vocabulary import DROP_REASONS

    return pd.DataFrame(
        [
            {**{key: record[key] for key in RUN_KEYS}, "contrast": record["contrast"], "n_words": record["n_concepts"]}
            | {"compared": "+".join(record["compared"]), "source_checked": record["source_checked"]}
            | {f"dropped_{reason}": record["dropped"].get(reason, 0) for reason in DROP_REASONS}
            for record in records
        ]
    )


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
    from probes.lenses.curves import RUN_KEYS, curve_intervals, summarise_curves

    combined = pd.concat([pd.read_parquet(path) for path in curves], ignore_index=True)
    summary = summarise_curves(combined, ci, n_boot, seed)
    summary = summary.merge(_drop_counts(list(map(read_json, metas))), on=RUN_KEYS, how="left")
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


# The columns the dual-latent page opens with.
DUAL_LEAD = {
    "model": "model",
    "tgt": "target",
    "related": "related",
    "lens": "lens",
    "n_concepts": "concepts",
    "p_en": "P(English), middle layers",
    "p_target": "P(target), middle layers",
    "p_related": "P(related), middle layers",
    "p_shared": "P(shared tokens), middle layers",
    "latent": "latent language(s)",
    "dominant_share": "share of resamples led by the first",
    "leaders": "leader per middle layer",
}


def summarise_dual_latent(
    curves: Sequence[str | os.PathLike],
    metas: Sequence[str | os.PathLike],
    intervals: str | os.PathLike,
    summary_csv: str | os.PathLike,
    summary_html: str | os.PathLike,
    related: Mapping[str, str],
    middle: Sequence[float],
    min_prob: float,
    ci: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> None:
    """The ``summarise_dual_latent`` rule: per model, target and lens, the middle layers' latent language(s)
    with intervals over concepts and drop counts, and the concept-mean curves with intervals for the figure."""
    from probes.lenses.curves import RUN_KEYS, curve_intervals, dual_latent_summary

    combined = pd.concat([pd.read_parquet(path) for path in curves], ignore_index=True)
    summary = dual_latent_summary(combined, related, middle, min_prob, ci, n_boot, seed)
    records = [record for meta in metas for record in read_json(meta)["runs"]]
    summary = summary.merge(_drop_counts(records), on=RUN_KEYS, how="left")
    write_parquet(intervals, curve_intervals(combined, ci, n_boot, seed))
    write_table(
        summary,
        summary_csv,
        summary_html,
        "Dual latent languages: the middle layers' leading language(s) per model, target and lens",
        float_format="%.4g",
        lead=DUAL_LEAD,
    )


def plot_dual_latent(
    intervals: str | os.PathLike,
    summary: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    dpi: int = 200,
) -> None:
    """The ``plot_dual_latent`` rule."""
    from probes.plotting.latent_language import dual_latent_figure

    save_figure(dual_latent_figure(pd.read_parquet(intervals), pd.read_csv(summary)), figures, dpi)


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
