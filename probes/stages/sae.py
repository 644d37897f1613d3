"""Stages of ``workflow/rules/sae.smk``: token cache, SAE training and evaluation, sparse probing, summary, plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from probes.io import atomic_directory, read_json, write_json, write_parquet
from probes.sae import SPARSE_KS
from probes.stages import save_figure, write_table, write_text


def cache_token_activations(
    manifest: str | os.PathLike,
    corpus: Sequence[str | os.PathLike],
    datasets: Sequence[str | os.PathLike],
    cache: str | os.PathLike,
    dataset_columns: Sequence[dict],
    layers: Sequence[int],
    site: str,
    settings: dict,
    hf_dataset: dict | None = None,
    seed: int = 0,
) -> None:
    """The ``cache_token_activations`` rule: corpus (+ concept texts) -> sharded token rows at the SAE layers."""
    import torch

    from probes.corpus import load_corpus
    from probes.datasets import load_dataset
    from probes.models import load_model
    from probes.token_cache import TokenCacheSettings, cache_token_activations

    settings = TokenCacheSettings(**settings)
    concept_texts = [
        text
        for path, columns in zip(datasets, dataset_columns, strict=True)
        for text in load_dataset(path, columns["text_column"], columns["label_column"]).texts
    ]
    texts = load_corpus(corpus, concept_texts, hf_dataset)
    torch.manual_seed(seed)
    model = load_model(manifest, device=settings.device, dtype=settings.dtype)
    with atomic_directory(cache) as tmp:
        cache_token_activations(model, texts, layers, site, tmp, settings, seed)


def train_sae(
    cache: str | os.PathLike,
    sae: str | os.PathLike,
    meta: str | os.PathLike,
    model: str,
    layer: int | str,
    settings: dict,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``train_sae`` rule: one SAE for one cached layer, saved in SAELens's inference format."""
    from probes import sae as saes
    from probes.token_cache import TokenCache

    settings = saes.SAESettings(**settings)
    token_cache = TokenCache(cache)
    trained, details = saes.train_sae(token_cache, int(layer), settings, model, seed)
    with atomic_directory(sae) as tmp:
        trained.save_inference_model(tmp)
        write_json(tmp / "cfg.json", read_json(tmp / "cfg.json"))  # SAELens's key order varies between processes
    write_json(meta, {"architecture": settings.architecture, "training_tokens": details["training_tokens"]})
    return details


def evaluate_sae(
    manifest: str | os.PathLike,
    cache: str | os.PathLike,
    sae: str | os.PathLike,
    sae_meta: str | os.PathLike,
    metrics: str | os.PathLike,
    model: str,
    layer: int | str,
    settings: dict,
    dtype: str = "float32",
) -> None:
    """The ``evaluate_sae`` rule: held-out reconstruction metrics and loss recovered, one JSON per SAE."""
    from sae_lens import SAE

    from probes import sae as saes
    from probes.models import load_model
    from probes.token_cache import TokenCache

    settings = saes.SAEEvalSettings(**settings)
    layer = int(layer)
    token_cache = TokenCache(cache)
    loaded = SAE.load_from_disk(sae, device=settings.device)
    scores = saes.reconstruction_metrics(loaded, token_cache.load(layer, "heldout"), settings.dense_threshold)
    language_model = load_model(manifest, device=settings.device, dtype=dtype)
    sequences = token_cache.heldout_sequences()[: settings.loss_documents]
    hook_name = token_cache.hook_names[layer]
    scores |= saes.loss_recovered(language_model, loaded, sequences, hook_name, settings.batch_size)
    training = read_json(sae_meta)
    write_json(
        metrics,
        scores
        | {
            "model": model,
            "layer": layer,
            "n_layers": token_cache.meta["n_layers"],
            "hook_name": hook_name,
            "architecture": training["architecture"],
            "d_sae": loaded.cfg.d_sae,
            "training_tokens": training["training_tokens"],
        },
    )


def sparse_probing(
    tensors: str | os.PathLike,
    activations_meta: str | os.PathLike,
    cache: str | os.PathLike,
    saes: Sequence[str | os.PathLike],
    dataset: str | os.PathLike,
    scores: str | os.PathLike,
    top_latents_page: str | os.PathLike,
    model: str,
    task: str,
    level: str,
    layers: Sequence[int],
    pooling: str,
    probe_settings: dict,
    text_column: str = "text",
    label_column: str = "label",
    ks: Sequence[int] = SPARSE_KS,
    n_top: int = 5,
    n_examples: int = 3,
) -> None:
    """The ``sparse_probing`` rule: SAE-latent and residual top-k probes at every SAE layer of one task."""
    from sae_lens import SAE
    from tqdm.auto import tqdm

    from probes.datasets import load_dataset
    from probes.html import top_latents_page as render_top_latents
    from probes.probing import ProbeSettings
    from probes.sae import encode, sparse_probe, top_latents
    from probes.stages.models import load_activations
    from probes.token_cache import TokenCache

    settings = ProbeSettings(**probe_settings)
    vectors, labels = load_activations(tensors, pooling)
    extraction = read_json(activations_meta)
    data = load_dataset(dataset, text_column, label_column)
    y = labels.numpy()
    token_cache = TokenCache(cache)
    corpus_tokens, corpus_str_tokens = token_cache.heldout_tokens(), token_cache.heldout_str_tokens()
    frames, sections = [], {}
    for layer, path in tqdm(list(zip(layers, saes, strict=True)), desc="sparse probing", unit="layer"):
        layer = int(layer)
        loaded = SAE.load_from_disk(path, device=settings.device)
        residual = vectors[:, extraction["layers"].index(layer)]
        latents = encode(loaded, residual)
        for features, X in (("sae", latents.numpy()), ("residual", residual.numpy())):
            frame = sparse_probe(X, y, settings, ks)
            frames.append(frame.assign(layer=layer, features=features))
        sections[f"Layer {layer} ({token_cache.hook_names[layer]}, d_sae {loaded.cfg.d_sae})"] = top_latents(
            latents.numpy(),
            y,
            data.texts,
            extraction["classes"],
            encode(loaded, token_cache.load(layer, "heldout")),
            corpus_tokens,
            corpus_str_tokens,
            n_top,
            n_examples,
        )
    tidy = pd.concat(frames, ignore_index=True)
    keys = {"model": model, "dataset": task, "level": level, "pooling": pooling, "n_layers": extraction["n_layers"]}
    tidy = pd.concat([pd.DataFrame(keys, index=tidy.index), tidy], axis=1)
    write_parquet(scores, tidy[[*keys, "layer", "features", "k", "seed", "fold", "accuracy"]])
    title = f"Top SAE latents: {model}, {task} ({pooling} token)"
    write_text(top_latents_page, render_top_latents(title, extraction["classes"], sections))


def summarise_sae(
    metrics: Sequence[str | os.PathLike],
    scores: Sequence[str | os.PathLike],
    probe_metrics: Sequence[str | os.PathLike],
    metrics_csv: str | os.PathLike,
    metrics_html: str | os.PathLike,
    metrics_table: str | os.PathLike,
    sparse_table: str | os.PathLike,
    sparse_summary_csv: str | os.PathLike,
    sparse_summary_html: str | os.PathLike,
) -> None:
    """The ``summarise_sae`` rule: SAE metrics per layer, and sparse vs dense probe accuracy per layer."""
    from probes.sae import metrics_frame, sparse_summary

    metrics_rows = metrics_frame([read_json(path) for path in metrics])
    sparse = pd.concat([pd.read_parquet(path) for path in scores], ignore_index=True)
    dense = pd.concat([pd.read_parquet(path) for path in probe_metrics], ignore_index=True)
    summary = sparse_summary(sparse, dense)
    write_table(metrics_rows, metrics_csv, metrics_html, "SAE metrics per model and layer (held-out corpus tokens)")
    write_table(
        summary,
        sparse_summary_csv,
        sparse_summary_html,
        "Sparse probing: mean top-k accuracy per model, task, SAE layer and k",
    )
    write_parquet(metrics_table, metrics_rows)
    write_parquet(sparse_table, sparse)


def plot_sae_metrics(table: str | os.PathLike, figures: Sequence[str | os.PathLike], dpi: int = 200) -> None:
    """The ``plot_sae_metrics`` rule."""
    from probes.figures import sae_metrics_figure

    save_figure(sae_metrics_figure(pd.read_parquet(table)), figures, dpi)


def plot_sparse_probing(
    scores: str | os.PathLike, probe_metrics: str | os.PathLike, figures: Sequence[str | os.PathLike], dpi: int = 200
) -> None:
    """The ``plot_sparse_probing`` rule."""
    from probes.figures import sparse_probing_figure

    save_figure(sparse_probing_figure(pd.read_parquet(scores), pd.read_parquet(probe_metrics)), figures, dpi)
