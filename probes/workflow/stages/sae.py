"""Stages of ``workflow/rules/sae.smk``: token cache, SAE training and evaluation, sparse probing, summary, plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from probes.dictionaries.sae import SPARSE_KS
from probes.io import atomic_directory, read_json, write_json, write_parquet
from probes.workflow.stages import save_figure, shared_model, write_table, write_text


def corpus_texts(
    corpus: Sequence[str | os.PathLike],
    datasets: Sequence[str | os.PathLike],
    dataset_columns: Sequence[dict],
    hf_dataset: dict | None = None,
) -> list[str]:
    """The SAE corpus's documents: its files, then the concept texts of ``datasets``, then the HF dataset's."""
    from probes.datasets.concepts import load_dataset
    from probes.datasets.corpus import load_corpus

    concept_texts = [
        text
        for path, columns in zip(datasets, dataset_columns, strict=True)
        for text in load_dataset(path, **columns).texts
    ]
    return load_corpus(corpus, concept_texts, hf_dataset)


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
    streams: Sequence[str] = (),
) -> None:
    """The ``cache_token_activations`` rule: corpus (+ concept texts) -> sharded token rows at the SAE layers,
    with the MLP's input, output and neurons there as further ``streams``."""
    import torch

    from probes.activations.token_cache import TokenCacheSettings, cache_token_activations

    settings = TokenCacheSettings(**settings)
    texts = corpus_texts(corpus, datasets, dataset_columns, hf_dataset)
    torch.manual_seed(seed)
    model = shared_model(manifest, device=settings.device, dtype=settings.dtype)
    with atomic_directory(cache) as tmp:
        cache_token_activations(model, texts, layers, site, tmp, settings, seed, streams=streams)


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
    from probes.activations.token_cache import TokenCache
    from probes.dictionaries import sae as saes

    settings = saes.SAESettings(**settings)
    token_cache = TokenCache(cache)
    trained, details = saes.train_sae(token_cache, int(layer), settings, model, seed)
    with atomic_directory(sae) as tmp:
        trained.save_inference_model(tmp)
        write_json(tmp / "cfg.json", read_json(tmp / "cfg.json"))  # SAELens's key order varies between processes
    write_json(meta, {"architecture": settings.architecture, "training_tokens": details["training_tokens"]})
    return details


def train_transcoder(
    cache: str | os.PathLike,
    transcoder: str | os.PathLike,
    meta: str | os.PathLike,
    model: str,
    layer: int | str,
    settings: dict,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``train_transcoder`` rule: one transcoder for one cached layer's MLP, saved for ``SAE.load_from_disk``."""
    from probes.activations.token_cache import TokenCache
    from probes.dictionaries import transcoders as transcoders

    settings = transcoders.TranscoderSettings(**settings)
    trained, details = transcoders.train_transcoder(TokenCache(cache), int(layer), settings, model, seed)
    with atomic_directory(transcoder) as tmp:
        trained.save_model(tmp)
        write_json(tmp / "cfg.json", read_json(tmp / "cfg.json"))
    write_json(
        meta,
        {"architecture": "batchtopk transcoder", "training_tokens": details["training_tokens"]}
        | {key: details[key] for key in ("threshold", "scale_in", "scale_out")},
    )
    return details


def evaluate_sae(
    manifest: str | os.PathLike,
    cache: str | os.PathLike,
    saes: Sequence[str | os.PathLike],
    sae_metas: Sequence[str | os.PathLike],
    metrics: str | os.PathLike,
    documents: str | os.PathLike,
    model: str,
    layers: Sequence[int],
    settings: dict,
    transcoders: Sequence[str | os.PathLike] = (),
    transcoder_metas: Sequence[str | os.PathLike] = (),
    dtype: str = "float32",
) -> dict[str, Any]:
    """The ``evaluate_sae`` rule: every SAE and transcoder of one model on held-out text, from one clean pass
    per batch.

    Writes the held-out reconstruction metrics and mean losses of each (``metrics``, a JSON list, one record
    per kind and layer) and the per-document loss sums behind them (``documents``), which the summary
    resamples for the intervals. A transcoder's target is its layer's MLP output (FVU), and its loss is the
    model's with that MLP replaced by it, at the same documents and positions as the SAEs'.
    """
    from probes.activations.token_cache import TokenCache
    from probes.dictionaries import sae as sae_lib
    from probes.dictionaries.scoring import dictionary_hooks, load_sae

    settings = sae_lib.SAEEvalSettings(**settings)
    layers = [int(layer) for layer in layers]
    token_cache = TokenCache(cache)
    sequences = token_cache.heldout_sequences()
    if len(sequences) < settings.loss_documents:
        raise ValueError(
            f"{cache} holds {len(sequences)} held-out documents, fewer than sae.eval.loss_documents = "
            f"{settings.loss_documents}: raise sae.corpus.heldout_fraction, add documents, or lower loss_documents"
        )
    sequences = sequences[: settings.loss_documents]
    document_ids = token_cache.heldout_tokens()["sequence_documents"][: settings.loss_documents].tolist()
    # (kind, layer) -> (dictionary, training record, hook it writes, hook it reads)
    evaluated = {}
    for kind, paths, metas in (("sae", saes, sae_metas), ("transcoder", transcoders, transcoder_metas)):
        for layer, path, meta in zip(layers if paths else [], paths, metas, strict=True):
            loaded = load_sae(path, device=settings.device)
            # an SAE sits at its layer's hook of the token cache; a transcoder names the MLP's input and output
            read, written = (token_cache.hook_names[layer],) * 2 if kind == "sae" else dictionary_hooks(loaded)
            evaluated[kind, layer] = (loaded, read_json(meta), written, read)
    written_hooks = [written for _, _, written, _ in evaluated.values()]
    if len(set(written_hooks)) < len(written_hooks):
        raise ValueError(
            f"{model}: SAEs and transcoders write the same hooks {sorted(written_hooks)}; with activations.site "
            "mlp_out the SAEs sit where the transcoders write, so leave the model out of transcoders.models"
        )
    language_model = shared_model(manifest, device=settings.device, dtype=dtype)
    losses = sae_lib.document_losses(
        language_model,
        {written: loaded for loaded, _, written, _ in evaluated.values()},
        sequences,
        settings.batch_size,
        {written: read for _, _, written, read in evaluated.values()},
    )
    key_of = {written: key for key, (_, _, written, _) in evaluated.items()}
    losses.insert(0, "layer", losses["hook_name"].map(lambda hook: key_of[hook][1]))
    losses.insert(0, "kind", losses["hook_name"].map(lambda hook: key_of[hook][0]))
    losses.insert(0, "model", model)
    losses["document"] = [document_ids[index] for index in losses["document"]]
    means = sae_lib.loss_recovered(losses, by=("kind", "layer")).set_index(["kind", "layer"])
    records = []
    for (kind, layer), (loaded, training, written, _) in evaluated.items():
        if kind == "sae":
            rows, targets = token_cache.load(layer, "heldout"), None
        else:
            rows, targets = token_cache.load(layer, "heldout", "mlp_in"), token_cache.load(layer, "heldout", "mlp_out")
        scores = sae_lib.reconstruction_metrics(loaded, rows, settings.dense_threshold, targets=targets)
        records.append(
            scores
            | means.loc[(kind, layer)].to_dict()
            | {
                "model": model,
                "kind": kind,
                "layer": layer,
                "n_layers": token_cache.meta["n_layers"],
                "hook_name": written,
                "architecture": training["architecture"],
                "d_sae": loaded.cfg.d_sae,
                "training_tokens": training["training_tokens"],
            }
        )
    write_json(metrics, records)
    write_parquet(documents, losses)
    n_tokens = losses.groupby(["kind", "layer"])["n_tokens"].sum().iloc[0]
    return {"n_loss_documents": len(sequences), "n_loss_tokens": int(n_tokens)}


def sparse_probing(
    tensors: str | os.PathLike,
    activations_meta: str | os.PathLike,
    mlp: str | os.PathLike,
    saes: Sequence[str | os.PathLike],
    transcoders: Sequence[str | os.PathLike],
    scores: str | os.PathLike,
    model: str,
    task: str,
    level: str,
    layers: Sequence[int],
    pooling: str,
    probe_settings: dict,
    ks: Sequence[int] = SPARSE_KS,
) -> None:
    """The ``sparse_probing`` rule: top-k probes on SAE latents, transcoder latents (where the model has
    them: they encode the pooled MLP input) and residual dimensions at every SAE layer of one task."""
    import torch
    from sae_lens import SAE
    from tqdm.auto import tqdm

    from probes.activations.storage import load_activations
    from probes.dictionaries.neurons import load_mlp_activations
    from probes.dictionaries.sae import encode, sparse_probe
    from probes.probing.settings import ProbeSettings

    settings = ProbeSettings(**probe_settings)
    stored = load_activations(tensors, pooling)
    vectors, y, groups = stored.vectors, stored.labels, stored.groups
    extraction = read_json(activations_meta)
    mlp_inputs = load_mlp_activations(mlp, "mlp_in", pooling) if transcoders else None
    frames = []
    for index, (layer, path) in enumerate(
        tqdm(list(zip(layers, saes, strict=True)), desc="sparse probing", unit="layer")
    ):
        layer = int(layer)
        residual = vectors[:, extraction["layers"].index(layer)]
        feature_sets = {"sae": encode(SAE.load_from_disk(path, device=settings.device), torch.from_numpy(residual))}
        if transcoders:
            transcoder = SAE.load_from_disk(transcoders[index], device=settings.device)
            feature_sets["transcoder"] = encode(transcoder, torch.from_numpy(mlp_inputs[:, layer - 1]))
        for features, X in (
            *((name, latents.numpy()) for name, latents in feature_sets.items()),
            ("residual", residual),
        ):
            frame = sparse_probe(X, y, settings, ks, groups)
            frames.append(frame.assign(layer=layer, features=features))
    tidy = pd.concat(frames, ignore_index=True)
    # the example's group code (missing when the task declares none), so the summary can resample groups
    tidy["group"] = pd.array(
        groups[tidy["example"].to_numpy()] if groups is not None else [None] * len(tidy), dtype="Int64"
    )
    keys = {"model": model, "dataset": task, "level": level, "pooling": pooling, "n_layers": extraction["n_layers"]}
    tidy = pd.concat([pd.DataFrame(keys, index=tidy.index), tidy], axis=1)
    write_parquet(scores, tidy[[*keys, "layer", "features", "k", "seed", "fold", "example", "group", "correct"]])


def feature_pages(
    manifest: str | os.PathLike,
    tensors: str | os.PathLike,
    activations_meta: str | os.PathLike,
    mlp: str | os.PathLike,
    cache: str | os.PathLike,
    saes: Sequence[str | os.PathLike],
    transcoders: Sequence[str | os.PathLike],
    dataset: str | os.PathLike,
    page: str | os.PathLike,
    writes: str | os.PathLike,
    model: str,
    task: str,
    layers: Sequence[int],
    pooling: str,
    columns: dict | None = None,
    n_top: int = 5,
    n_examples: int = 3,
    n_tokens: int = 8,
    device: str = "cpu",
    dtype: str = "float32",
) -> None:
    """The ``feature_pages`` rule: the top neurons, SAE latents and transcoder latents of one task at every SAE
    layer, where they fire and what they write, as one page and one tidy table of their top and bottom logits."""
    import torch
    from sae_lens import SAE

    from probes.activations.storage import load_activations
    from probes.activations.token_cache import TokenCache
    from probes.datasets.concepts import load_dataset
    from probes.dictionaries.features import feature_writes, top_features, writes_frame
    from probes.dictionaries.neurons import load_mlp_activations
    from probes.dictionaries.sae import encode
    from probes.workflow.report import feature_page

    data = load_dataset(dataset, **(columns or {}))
    stored = load_activations(tensors, pooling)
    extraction = read_json(activations_meta)
    neurons = load_mlp_activations(mlp, "mlp_post", pooling)
    mlp_inputs = load_mlp_activations(mlp, "mlp_in", pooling) if transcoders else None
    token_cache = TokenCache(cache)
    corpus_tokens, corpus_str_tokens = token_cache.heldout_tokens(), token_cache.heldout_str_tokens()
    language_model = shared_model(manifest, device=device, dtype=dtype)
    sections, described = {}, []
    for index, layer in enumerate(int(layer) for layer in layers):
        sae = SAE.load_from_disk(saes[index], device=device)
        residual = torch.from_numpy(stored.vectors[:, extraction["layers"].index(layer)])
        kinds = {
            "neuron": (
                torch.from_numpy(neurons[:, layer - 1]),
                token_cache.load(layer, "heldout", "mlp_post"),
                language_model.W_out[layer - 1],
            ),
            "sae": (encode(sae, residual), encode(sae, token_cache.load(layer, "heldout")), sae.W_dec),
        }
        if transcoders:
            transcoder = SAE.load_from_disk(transcoders[index], device=device)
            kinds["transcoder"] = (
                encode(transcoder, torch.from_numpy(mlp_inputs[:, layer - 1])),
                encode(transcoder, token_cache.load(layer, "heldout", "mlp_in")),
                transcoder.W_dec,
            )
        section = []
        for kind, (task_values, corpus_values, directions) in kinds.items():
            rows = top_features(
                task_values.numpy(),
                stored.labels,
                data.texts,
                extraction["classes"],
                corpus_values,
                corpus_tokens,
                corpus_str_tokens,
                n_top,
                n_examples,
            )
            chosen = directions.detach()[[row["feature"] for row in rows]]
            for row, written in zip(rows, feature_writes(language_model, chosen, n_tokens), strict=True):
                section.append(row | {"kind": kind, "layer": layer, "writes": written})
        sections[f"Layer {layer}: {', '.join(kinds)}"] = section
        described += section
    title = f"Feature pages: {model}, {task} ({pooling} token)"
    write_text(page, feature_page(title, extraction["classes"], sections))
    write_parquet(writes, writes_frame(described, {"model": model, "dataset": task}))


# The columns each table page opens with (estimates with their intervals); every column stays one click below.
METRICS_LEAD = {
    "model": "model",
    "kind": "kind",
    "layer": "layer",
    "fvu": "FVU",
    "l0": "mean L0",
    "loss_recovered": "loss recovered (BOS kept)",
    "ce_loss_score": "CE loss score (SAELens)",
    "kl_div_score": "KL score (SAELens)",
    "kl_sae": "KL to clean (nats)",
    "dead_fraction": "dead",
    "dense_fraction": "dense",
}
SPARSE_LEAD = {
    "model": "model",
    "dataset": "task",
    "layer": "layer",
    "k": "k",
    "sae_topk_accuracy": "top-k SAE latents",
    "transcoder_topk_accuracy": "top-k transcoder latents",
    "residual_topk_accuracy": "top-k residual dimensions",
    "dense_accuracy": "dense probe",
}
COMPARISON_LEAD = {
    "model": "model",
    "layer": "layer",
    "sae_l0": "SAE L0",
    "transcoder_l0": "transcoder L0",
    "sae_fvu": "SAE FVU",
    "transcoder_fvu": "transcoder FVU",
    "sae_loss_recovered": "SAE loss recovered (BOS kept)",
    "transcoder_loss_recovered": "transcoder loss recovered (BOS kept)",
    "sae_ce_loss_score": "SAE CE loss score",
    "transcoder_ce_loss_score": "transcoder CE loss score",
}


def summarise_sae(
    metrics: Sequence[str | os.PathLike],
    loss_documents: Sequence[str | os.PathLike],
    scores: Sequence[str | os.PathLike],
    curves: str | os.PathLike,
    metrics_csv: str | os.PathLike,
    metrics_html: str | os.PathLike,
    metrics_table: str | os.PathLike,
    sparse_table: str | os.PathLike,
    sparse_summary_csv: str | os.PathLike,
    sparse_summary_html: str | os.PathLike,
    sparse_summary_table: str | os.PathLike,
    comparison_csv: str | os.PathLike,
    comparison_html: str | os.PathLike,
    comparison_table: str | os.PathLike,
    weights: str,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> None:
    """The ``summarise_sae`` rule: SAE and transcoder metrics per layer, the two side by side, and sparse vs
    dense probe accuracy per layer.

    The intervals are percentile bootstraps: of the loss statistics over held-out documents, of the
    sparse-probing accuracies over each task's examples (or groups).
    """
    from probes.dictionaries.sae import dictionary_comparison, metrics_frame, sparse_summary

    documents = pd.concat([pd.read_parquet(path) for path in loss_documents], ignore_index=True)
    records = [record for path in metrics for record in read_json(path)]
    metrics_rows = metrics_frame(records, documents, n_boot, ci, seed)
    sparse = pd.concat([pd.read_parquet(path) for path in scores], ignore_index=True)
    summary = sparse_summary(sparse, dense_accuracy(curves, weights), n_boot, ci, seed)
    write_table(
        metrics_rows,
        metrics_csv,
        metrics_html,
        f"SAE metrics per model and layer (held-out corpus tokens; {ci:.0%} bootstrap intervals over documents)",
        lead=METRICS_LEAD,
    )
    write_table(
        summary,
        sparse_summary_csv,
        sparse_summary_html,
        f"Sparse probing: top-k accuracy per model, task, SAE layer and k ({ci:.0%} bootstrap intervals over examples)",
        lead=SPARSE_LEAD,
    )
    comparison = dictionary_comparison(metrics_rows)
    write_table(
        comparison,
        comparison_csv,
        comparison_html,
        f"SAE vs transcoder per model and layer, mean L0 {_k_note(metrics_rows)} ({ci:.0%} bootstrap intervals over "
        "documents; the SAE reconstructs the residual stream, the transcoder the MLP output)",
        lead=COMPARISON_LEAD,
    )
    write_parquet(comparison_table, comparison)
    write_parquet(metrics_table, metrics_rows)
    write_parquet(sparse_table, sparse)
    write_parquet(sparse_summary_table, summary)


def _k_note(metrics_rows: pd.DataFrame) -> str:
    """The mean L0 of each kind, rounded, as the comparison's caption states it."""
    means = metrics_rows.groupby("kind")["l0"].mean()
    return " vs ".join(f"{value:.1f} ({kind})" for kind, value in means.items())


def plot_sae_metrics(table: str | os.PathLike, figures: Sequence[str | os.PathLike], dpi: int = 200) -> None:
    """The ``plot_sae_metrics`` rule."""
    from probes.plotting.dictionaries import sae_metrics_figure

    save_figure(sae_metrics_figure(pd.read_parquet(table)), figures, dpi)


def plot_sparse_probing(
    summary: str | os.PathLike,
    curves: str | os.PathLike,
    figures: Sequence[str | os.PathLike],
    model: str,
    dataset: str,
    weights: str,
    neurons: str | os.PathLike | Sequence = (),
    ci: float = 0.95,
    dpi: int = 200,
) -> None:
    """The ``plot_sparse_probing`` rule: one task of one model, from the sparse-probing summary table, with the
    model's top-k neurons (F-statistic ranking, the latents' own) where the config probes its neurons."""
    from probes.plotting.dictionaries import sparse_probing_figure

    rows = pd.read_parquet(summary).query("model == @model and dataset == @dataset")
    dense = dense_accuracy(curves, weights).query("model == @model and dataset == @dataset")
    neuron_rows = None
    if neurons:
        neuron_rows = pd.read_parquet(neurons).query("model == @model and dataset == @dataset")
        neuron_rows = neuron_rows[neuron_rows["criterion"] == "f_statistic"]
        neuron_rows = neuron_rows if len(neuron_rows) else None
    save_figure(sparse_probing_figure(rows, dense, ci, neuron_rows), figures, dpi)


def dense_accuracy(curves: str | os.PathLike, weights: str) -> pd.DataFrame:
    """The dense probe's accuracy per model, task and layer with its interval (the concept-depth curves table),
    on the run's own weights and clean inputs, as the sparse-probing summary and figure read it."""
    from probes.models.perturbations import unperturbed

    table = pd.read_parquet(curves)
    table = table[unperturbed(table, weights) & (table["metric"] == "accuracy")]
    return table[["model", "dataset", "layer", "value", "lo", "hi"]].rename(
        columns={"lo": "accuracy_lo", "hi": "accuracy_hi"}
    )
