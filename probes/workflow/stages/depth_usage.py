"""Stages of ``workflow/rules/depth_usage.smk``: how each model uses its depth, layer maps, summary and figures."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from probes.io import write_parquet
from probes.resampling import bootstrap_weights, percentile_interval, resampled_means
from probes.workflow.stages import save_figure, shared_model, write_table

log = logging.getLogger(__name__)

_FINDINGS = {
    ("sublayers", "second_over_first"): "{metric}: second-half blocks / first-half blocks",
    ("skipping", "second_over_first"): "skipping, output {metric}: second-half blocks / first-half blocks",
    ("shortcuts", "linear_minus_logit"): "linear shortcut − logit lens, {metric} (mean over layers)",
    ("shortcuts", "tuned_minus_logit"): "tuned lens − logit lens, {metric} (mean over layers)",
}
INTERVAL_NOTE = (
    "Intervals: {ci:.0%} percentile intervals of {n_boot} bootstrap resamples of the held-out documents "
    "(of the concept texts' groups for layer maps)."
)


def _with_depth(
    table: pd.DataFrame, model: str, n_layers: int, n_documents: int, ci: float, n_boot: int
) -> pd.DataFrame:
    table.insert(0, "model", model)
    table.insert(table.columns.get_loc("layer") + 1, "depth", table["layer"] / n_layers)
    return table.assign(n_documents=n_documents, ci=ci, n_boot=n_boot)


def _interval_rows(point: dict[str, float], resampled: dict[str, np.ndarray], ci: float, **keys) -> list[dict]:
    rows = []
    for quantity, samples in resampled.items():
        lo, hi = percentile_interval(samples, ci)
        rows.append(keys | {"quantity": quantity, "value": point[quantity], "lo": lo, "hi": hi})
    return rows


def _halves_summary(
    per_window: dict[str, np.ndarray], layers: np.ndarray, n_layers: int, weights: np.ndarray, ci: float
) -> pd.DataFrame:
    """Mean of each per-block metric over the first and the second half of the blocks, and second / first,
    with intervals from the same document resamples: what "later layers contribute less" rests on."""
    first = layers <= n_layers / 2
    rows = []
    for metric, values in per_window.items():
        halves = {"first_half": values[:, first].mean(1), "second_half": values[:, ~first].mean(1)}
        resampled = {half: resampled_means(weights, v) for half, v in halves.items()}
        point = {half: v.mean() for half, v in halves.items()}
        resampled["second_over_first"] = resampled["second_half"] / resampled["first_half"]
        point["second_over_first"] = point["second_half"] / point["first_half"]
        rows += _interval_rows(point, resampled, ci, metric=metric)
    return pd.DataFrame(rows)


def _lens_differences(metrics: dict[str, dict[str, np.ndarray]], weights: np.ndarray, ci: float) -> pd.DataFrame:
    """Each lens against the logit lens, averaged over layers 0..L-1 (at L all lenses are the output)."""
    rows = []
    for lens in [name for name in metrics if name != "logit"]:
        for metric, values in metrics[lens].items():
            difference = (values - metrics["logit"][metric])[:, :-1].mean(1)
            quantity = f"{lens}_minus_logit"
            rows += _interval_rows(
                {quantity: difference.mean()}, {quantity: resampled_means(weights, difference)}, ci, metric=metric
            )
    return pd.DataFrame(rows)


def depth_usage(
    manifest: str | os.PathLike,
    corpus: Sequence[str | os.PathLike],
    datasets: Sequence[str | os.PathLike],
    tuned_lens: Sequence[str | os.PathLike],
    sublayers: str | os.PathLike,
    skipping: str | os.PathLike,
    shortcuts: str | os.PathLike,
    quality: str | os.PathLike,
    quality_replicates: str | os.PathLike,
    findings: str | os.PathLike,
    model: str,
    dataset_columns: Sequence[dict],
    settings: dict,
    corpus_settings: dict,
    quality_settings: dict,
    hf_dataset: dict | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``depth_usage`` rule: sublayer contributions, layer skipping, linear shortcuts and representation
    quality of one model, all on the same held-out corpus windows (docs/methods.md §6).

    The windows come from the documents the token cache holds out (same corpus, tokenisation and seeded
    split, :func:`probes.activations.token_cache.tokenised_corpus`), whether or not this model has SAEs; the shortcuts
    train on windows of the training documents. ``tuned_lens`` is the model's tuned lens where the config
    trains one (then it is compared on the same tokens), else empty.
    """
    import torch

    from probes.activations.token_cache import TokenCacheSettings, tokenised_corpus
    from probes.depth_usage import contributions as usage
    from probes.depth_usage.augmentation import NAME, augmented_views
    from probes.depth_usage.representation_quality import quality_curves
    from probes.lenses.tuned import load_tuned_lens, unembed_of
    from probes.models.loading import final_norm
    from probes.workflow.stages.sae import corpus_texts

    settings = usage.DepthUsageSettings(**settings)
    torch.manual_seed(seed)
    hooked = shared_model(manifest, device=settings.device, dtype=settings.dtype)
    n_layers, skip_first = hooked.cfg.n_layers, int(bool(hooked.cfg.default_prepend_bos))
    texts = corpus_texts(corpus, datasets, dataset_columns, hf_dataset)
    token_lists, train, heldout, _ = tokenised_corpus(hooked, texts, TokenCacheSettings(**corpus_settings), seed)
    length = skip_first + settings.context
    windows, documents = usage.corpus_windows(token_lists, heldout, length, settings.documents)
    if len(documents) < 2:
        raise ValueError(
            f"{model}: only {len(documents)} held-out document holds {length} tokens; lower depth_usage.context"
        )
    if len(documents) < settings.documents:
        log.warning(
            "only %d held-out documents hold %d tokens (depth_usage.documents: %d)",
            len(documents),
            length,
            settings.documents,
        )
    n_docs = len(documents)
    train_windows, _ = usage.corpus_windows(
        token_lists, train, length, math.ceil(settings.train_tokens / settings.context)
    )
    resid, mid = usage.window_residuals(hooked, windows, settings.batch_size)
    weights = bootstrap_weights(n_docs, n_boot, seed)
    blocks, residuals = np.arange(1, n_layers + 1), np.arange(n_layers + 1)

    contributions = usage.sublayer_contributions(resid, mid, skip_first)
    sublayer_table = pd.concat(
        [
            usage.document_curves(contributions, blocks, weights, ci),
            usage.document_curves({"resid_norm": usage.residual_norms(resid, skip_first)}, residuals, weights, ci),
        ],
        ignore_index=True,
    )
    del mid

    unembed = unembed_of(hooked)
    n_skip = min(settings.skip_documents, n_docs)
    skip_length = skip_first + settings.skip_context
    skipped = usage.skip_blocks(
        hooked,
        unembed,
        resid[:n_skip, :skip_length],
        usage.measured_positions(skip_length, skip_first, settings.positions),
        skip_first,
    )
    skip_weights = bootstrap_weights(n_skip, n_boot, seed)
    frames = []
    for block in range(n_layers):
        change = usage.document_curves(
            {"relative_change": skipped["relative_change"][:, block, block:]}, blocks[block:], skip_weights, ci
        )
        frames.append(change.assign(skipped_layer=block + 1))
    outputs = usage.document_curves(
        {name: skipped[name] for name in ("kl_bits", "top1_agreement")}, blocks, skip_weights, ci
    )
    frames.append(outputs.rename(columns={"layer": "skipped_layer"}).assign(layer=n_layers))
    skip_table = _with_depth(pd.concat(frames, ignore_index=True), model, n_layers, n_skip, ci, n_boot)
    skip_table.insert(2, "skipped_layer", skip_table.pop("skipped_layer"))
    skip_table.insert(3, "skipped_depth", skip_table["skipped_layer"] / n_layers)
    findings_tables = [
        _halves_summary(
            {name: values for name, values in contributions.items() if name.endswith("relative_norm")},
            blocks,
            n_layers,
            weights,
            ci,
        ).assign(analysis="sublayers", n_documents=n_docs),
        _halves_summary(
            {name: skipped[name] for name in ("kl_bits", "top1_agreement")}, blocks, n_layers, skip_weights, ci
        ).assign(analysis="skipping", n_documents=n_skip),
    ]

    maps, bias, n_train = usage.fit_linear_shortcuts(hooked, train_windows, settings)
    tuned = load_tuned_lens(tuned_lens[0], unembed) if tuned_lens else None
    positions = usage.measured_positions(length, skip_first, settings.positions)
    metrics = usage.shortcut_metrics(hooked, unembed, resid[:, positions], maps, bias, tuned)
    shortcut_table = pd.concat(
        [usage.document_curves(values, residuals, weights, ci).assign(lens=lens) for lens, values in metrics.items()],
        ignore_index=True,
    )
    shortcut_table = _with_depth(shortcut_table, model, n_layers, n_docs, ci, n_boot).assign(
        n_tokens=n_docs * len(positions), n_train_tokens=n_train
    )
    shortcut_table.insert(1, "lens", shortcut_table.pop("lens"))
    findings_tables.append(_lens_differences(metrics, weights, ci).assign(analysis="shortcuts", n_documents=n_docs))
    findings_table = pd.concat(findings_tables, ignore_index=True).assign(ci=ci, n_boot=n_boot)
    findings_table.insert(0, "model", model)

    # Representation quality reads layer L as Hugging Face's hidden_states give it, after the final norm and its
    # weight (docs/methods.md §6.6); every other analysis is done with resid, so its layer L is replaced in place.
    norm = final_norm(manifest)
    with torch.inference_mode():
        resid[:, :, -1] = norm(resid[:, :, -1])
    window_texts = [hooked.tokenizer.decode(window[skip_first:]) for window in windows]
    views = [
        usage.pooled_residuals(hooked, view, settings.batch_size, norm)
        for view in augmented_views(window_texts, 2, seed)
    ]
    curves = quality_curves(
        [window[skip_first:] for window in resid],
        views,
        alpha=quality_settings["alpha"],
        temperature=quality_settings["temperature"],
        n_boot=n_boot,
        ci=ci,
        seed=seed,
    )
    quality_table = curves.table.copy()
    quality_table.insert(0, "model", model)
    quality_table.insert(quality_table.columns.get_loc("layer") + 1, "depth", quality_table["layer"] / n_layers)
    replicates = pd.concat(
        [
            pd.DataFrame(
                {
                    "model": model,
                    "metric": metric,
                    "replicate": np.repeat(np.arange(values.shape[0]), values.shape[1]),
                    "layer": np.tile(residuals, values.shape[0]),
                    "value": values.reshape(-1),
                }
            )
            for metric, values in curves.replicates.items()
        ],
        ignore_index=True,
    )

    write_parquet(sublayers, _with_depth(sublayer_table, model, n_layers, n_docs, ci, n_boot))
    write_parquet(skipping, skip_table)
    write_parquet(shortcuts, shortcut_table)
    write_parquet(quality, quality_table)
    write_parquet(quality_replicates, replicates)
    write_parquet(findings, findings_table)
    log.info("findings:\n%s", findings_table[["analysis", "metric", "quantity", "value", "lo", "hi"]])
    return {
        "n_documents": n_docs,
        "n_skip_documents": n_skip,
        "n_train_tokens": n_train,
        "heldout_documents": [int(index) for index in documents],
        "augmentation": NAME,
        "tuned_lens": bool(tuned_lens),
    }


def layer_maps(
    tensors: Sequence[str | os.PathLike],
    r2: str | os.PathLike,
    best: str | os.PathLike,
    diagonal: str | os.PathLike,
    models: Sequence[str],
    datasets: Sequence[str],
    pooling: str,
    texts: int,
    folds: int,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``layer_maps`` rule: ridge maps between every layer of every model on the shared concept texts.

    ``tensors`` holds each model's activations of each dataset, model-major. The same texts (whole groups,
    an even share of ``texts`` per dataset, seeded) are taken from every model, so the maps compare the
    models on identical inputs.
    """
    from probes.activations.storage import load_activations
    from probes.depth_usage.layer_maps import fit_layer_maps, summarise_layer_maps

    tensors = np.asarray(tensors, dtype=object).reshape(len(models), len(datasets))
    rng = np.random.default_rng([seed, 0x1A7E])
    per_dataset = max(1, texts // len(datasets))
    vectors: dict[str, list[np.ndarray]] = {model: [] for model in models}
    groups = []
    for column, dataset in enumerate(datasets):
        stored = [load_activations(path, pooling) for path in tensors[:, column]]
        labels = stored[0].groups if stored[0].groups is not None else np.arange(len(stored[0].labels))
        order = rng.permutation(np.unique(labels))
        counts = pd.Series(labels).value_counts()
        kept = order[: int(np.searchsorted(counts.loc[order].cumsum().to_numpy(), per_dataset, side="left")) + 1]
        rows = np.flatnonzero(np.isin(labels, kept))
        for model, activations in zip(models, stored, strict=True):
            vectors[model].append(activations.vectors[rows])
        groups.append(np.char.add(f"{dataset}:", labels[rows].astype(str)))
    stacked = {model: np.concatenate(parts) for model, parts in vectors.items()}
    maps = fit_layer_maps(stacked, np.concatenate(groups), folds=folds, seed=seed)
    r2_table, best_table, diagonal_table = summarise_layer_maps(maps, n_boot=n_boot, ci=ci, seed=seed)
    write_parquet(r2, r2_table)
    write_parquet(best, best_table)
    write_parquet(diagonal, diagonal_table)
    return {"n_texts": int(len(maps.groups)), "n_groups": int(len(np.unique(maps.groups)))}


def summarise_depth_usage(
    sublayers: Sequence[str | os.PathLike],
    skipping: Sequence[str | os.PathLike],
    shortcuts: Sequence[str | os.PathLike],
    quality: Sequence[str | os.PathLike],
    quality_replicates: Sequence[str | os.PathLike],
    findings: Sequence[str | os.PathLike],
    predictions: Sequence[str | os.PathLike],
    diagonal: str | os.PathLike,
    sublayers_table: str | os.PathLike,
    skipping_table: str | os.PathLike,
    shortcuts_table: str | os.PathLike,
    quality_table: str | os.PathLike,
    correlations: str | os.PathLike,
    summary: str | os.PathLike,
    summary_csv: str | os.PathLike,
    summary_html: str | os.PathLike,
    models: Sequence[str],
    datasets: Sequence[str],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> None:
    """The ``summarise_depth_usage`` rule: every model's tables in one, the rank correlation of each quality
    curve with each task's concept-depth accuracy curve, and the headline table.

    ``predictions`` are the concept-depth out-of-fold predictions, model-major; their accuracy curves are
    resampled over examples (groups) as the concept-depth summary resamples them, independently of the
    documents behind the quality curves, and replicate b of one is paired with replicate b of the other.
    """
    from probes.depth_usage.representation_quality import QualityCurves, curve_correlations
    from probes.probing.depth import accuracy_replicates

    for paths, path in ((sublayers, sublayers_table), (skipping, skipping_table), (shortcuts, shortcuts_table)):
        write_parquet(path, pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True))
    quality_frames = [pd.read_parquet(path) for path in quality]
    write_parquet(quality_table, pd.concat(quality_frames, ignore_index=True))
    predictions = np.asarray(predictions, dtype=object).reshape(len(models), len(datasets))
    frames = []
    for model, table, replicates_path, row in zip(models, quality_frames, quality_replicates, predictions, strict=True):
        replicates = pd.read_parquet(replicates_path)
        curves = QualityCurves(
            table=table,
            replicates={
                metric: group.pivot(index="replicate", columns="layer", values="value").to_numpy()
                for metric, group in replicates.groupby("metric", sort=False)
            },
        )
        accuracy = {}
        for dataset, path in zip(datasets, row, strict=True):
            _, point, boot = accuracy_replicates(pd.read_parquet(path), n_boot, seed)
            accuracy[dataset] = (point, boot)
        frames.append(curve_correlations(curves, accuracy, ci).assign(model=model))
    correlation_table = pd.concat(frames, ignore_index=True)
    correlation_table.insert(0, "model", correlation_table.pop("model"))
    write_parquet(correlations, correlation_table)

    findings_table = pd.concat([pd.read_parquet(path) for path in findings], ignore_index=True)
    headline = [
        {"model": row.model, "finding": _FINDINGS[(row.analysis, row.quantity)].format(metric=row.metric)}
        | {"estimate": row.value, "estimate_lo": row.lo, "estimate_hi": row.hi}
        for row in findings_table.itertuples()
        if (row.analysis, row.quantity) in _FINDINGS
    ]
    for row in pd.read_parquet(diagonal).itertuples():
        headline.append(
            {
                "model": f"{row.source_model} → {row.target_model}",
                "finding": "layer maps: mean distance of the best-matching depth from its own "
                f"(chance {row.chance_abs_offset:.2f})",
                "estimate": row.mean_abs_offset,
                "estimate_lo": row.lo,
                "estimate_hi": row.hi,
            }
        )
    headline = pd.DataFrame(headline).assign(ci=ci, n_boot=n_boot)
    write_parquet(summary, headline)
    write_table(
        headline,
        summary_csv,
        summary_html,
        "Depth usage",
        INTERVAL_NOTE.format(ci=ci, n_boot=n_boot),
        lead={"model": "model", "finding": "finding", "estimate": "estimate"},
    )


def plot_depth_usage(
    sublayers: str | os.PathLike,
    shortcuts: str | os.PathLike,
    quality: str | os.PathLike,
    correlations: str | os.PathLike,
    r2: str | os.PathLike,
    best: str | os.PathLike,
    sublayers_figure: Sequence[str | os.PathLike],
    shortcuts_figure: Sequence[str | os.PathLike],
    quality_figure: Sequence[str | os.PathLike],
    correlations_figure: Sequence[str | os.PathLike],
    layer_maps_figure: Sequence[str | os.PathLike],
    matches_figure: Sequence[str | os.PathLike],
    dpi: int = 200,
) -> None:
    """The ``plot_depth_usage`` rule: the depth-usage figures that set the models side by side."""
    from probes.plotting import depth_usage as figures

    r2_table, best_table = pd.read_parquet(r2), pd.read_parquet(best)
    save_figure(figures.depth_usage_sublayers_figure(pd.read_parquet(sublayers)), sublayers_figure, dpi)
    save_figure(figures.linear_shortcuts_figure(pd.read_parquet(shortcuts)), shortcuts_figure, dpi)
    save_figure(figures.representation_quality_figure(pd.read_parquet(quality)), quality_figure, dpi)
    save_figure(figures.quality_correlation_figure(pd.read_parquet(correlations)), correlations_figure, dpi)
    save_figure(figures.layer_maps_figure(r2_table, best_table), layer_maps_figure, dpi)
    save_figure(figures.layer_map_matches_figure(best_table, float(r2_table["ci"].iloc[0])), matches_figure, dpi)


def plot_layer_skipping(
    skipping: str | os.PathLike, figures: Sequence[str | os.PathLike], model: str, dpi: int = 200
) -> None:
    """The ``plot_layer_skipping`` rule: one model's skip matrix and output change per skipped block."""
    from probes.plotting.depth_usage import layer_skipping_figure

    save_figure(layer_skipping_figure(pd.read_parquet(skipping), model), figures, dpi)
