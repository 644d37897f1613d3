"""Sparse autoencoders per layer (METHODS.md §4): SAELens training from the token cache, metrics, sparse probing.

SAEs are trained by SAELens's own ``SAETrainer`` fed from :class:`probes.activations.TokenCache` and
saved with ``save_inference_model``, so ``sae_lens.SAE.load_from_disk(path)`` loads every one of them.
Activations are normalised to mean norm sqrt(d_in) during training (SAELens's
``expected_average_only_in``), and the trainer folds that scale into the saved weights, so the saved SAE
takes raw residual-stream vectors.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from probes.io import atomic_directory, atomic_path, read_json, sha256_file, stage, write_json
from probes.provenance import package_versions
from probes.report import html_page, write_table

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from probes.activations import TokenCache
    from probes.probing import ProbeSettings

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")
# The config key that sets each architecture's sparsity, by the name SAELens gives it.
SPARSITY_KEY = {"topk": "k", "batchtopk": "k", "jumprelu": "l0_coefficient", "standard": "l1_coefficient"}
FEATURE_SETS = ("sae", "residual")
SPARSE_KS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class SAESettings:
    """What an SAE is and how it is trained; ``options`` passes further fields to SAELens's config class."""

    architecture: str = "topk"
    expansion: int = 4
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    training_tokens: int = 196608
    batch_size: int = 1024
    lr: float = 2e-3
    lr_end: float | None = None
    lr_warm_up_fraction: float = 0.05
    lr_decay_fraction: float = 0.2
    dead_feature_window: int = 100
    feature_sampling_window: int = 200
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.expansion < 1 or self.k < 1 or self.batch_size < 1:
            raise ValueError("expansion, k and batch_size must be >= 1")
        if self.training_tokens < self.batch_size:
            raise ValueError(f"training_tokens ({self.training_tokens}) must be at least one batch ({self.batch_size})")
        if not (0 <= self.lr_warm_up_fraction and 0 <= self.lr_decay_fraction and self.lr_warm_up_fraction + self.lr_decay_fraction < 1):
            raise ValueError("lr_warm_up_fraction and lr_decay_fraction must be >= 0 and sum to less than 1")

    @property
    def steps(self) -> int:
        return self.training_tokens // self.batch_size


@dataclass(frozen=True)
class SAEEvalSettings:
    """Held-out evaluation: ``dense_threshold`` is the firing rate above which a latent counts as dense."""

    dense_threshold: float = 0.1
    loss_documents: int = 8
    batch_size: int = 8
    device: str = "cpu"


def select_layers(n_layers: int, site: str, layers: Sequence[int] | None = None, count: int = 5) -> list[int]:
    """The layers that get an SAE: the configured ones, or ``count`` spread evenly over depth (ends excluded)."""
    valid = range(0 if site == "resid" else 1, n_layers + 1)
    if layers:
        wrong = [layer for layer in layers if layer not in valid]
        if wrong:
            raise ValueError(f"sae.layers {wrong} are outside the {site} layers {valid.start}..{n_layers}")
        return sorted(set(layers))
    return sorted({min(max(round(n_layers * (i + 1) / (count + 1)), valid.start), n_layers) for i in range(count)})


# ---------------------------------------------------------------------------------------------------
# Training


def training_sae(d_in: int, settings: SAESettings, hook_name: str, model_name: str, context: int, seed: int) -> Any:
    """A fresh SAELens training SAE of the configured architecture, seeded."""
    import torch
    from sae_lens.registry import get_sae_training_class
    from sae_lens.saes.sae import SAEMetadata

    sae_class, config_class = get_sae_training_class(settings.architecture)
    key = SPARSITY_KEY[settings.architecture]
    fields = {
        "d_in": d_in,
        "d_sae": settings.expansion * d_in,
        "normalize_activations": "expected_average_only_in",
        "device": settings.device,
        key: getattr(settings, key),
        **settings.options,
    }
    metadata = SAEMetadata(model_name=model_name, hook_name=hook_name, context_size=context, prepend_bos=True)
    try:
        config = config_class(**fields, metadata=metadata)
    except TypeError as error:
        raise ValueError(f"sae.options {settings.options} do not fit SAELens's {config_class.__name__}: {error}") from None
    torch.manual_seed(seed)
    return sae_class(config)


def sae_trainer(sae: Any, settings: SAESettings, mean: torch.Tensor, mean_norm: float, batches: Iterator[torch.Tensor]) -> Any:
    """SAELens's ``SAETrainer`` for ``sae``, with the two things SAELens leaves to its own runner done here.

    The activation scale is fixed from the data (mean norm -> sqrt(d_in)) and ``b_dec`` starts at the
    scaled data mean: with ``b_dec`` at zero, most latents of a TopK SAE on a residual stream with a large
    mean never fire. ``batches`` must be endless and yield exactly ``settings.batch_size`` rows.
    """
    import torch
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    scale = sae.cfg.d_in**0.5 / mean_norm
    with torch.no_grad():
        sae.b_dec.copy_((mean * scale).to(sae.b_dec))
    steps = settings.steps
    config = SAETrainerConfig(
        total_training_samples=steps * settings.batch_size,
        train_batch_size_samples=settings.batch_size,
        lr=settings.lr,
        lr_end=settings.lr_end if settings.lr_end is not None else settings.lr / 10,
        lr_warm_up_steps=int(settings.lr_warm_up_fraction * steps),
        lr_decay_steps=int(settings.lr_decay_fraction * steps),
        dead_feature_window=settings.dead_feature_window,
        feature_sampling_window=settings.feature_sampling_window,
        device=settings.device,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(config, sae, batches)
    trainer.activation_scaler.scaling_factor = scale
    return trainer


def train_sae(cache: TokenCache, layer: int, settings: SAESettings, model_name: str, seed: int = 0) -> tuple[Any, dict]:
    """Train one SAE on a cached layer, streaming its shards; returns it and training details."""
    sae = training_sae(cache.meta["d_model"], settings, cache.hook_names[layer], model_name, cache.meta["context"], seed)
    mean, mean_norm = cache.mean_and_norm(layer)
    trainer = sae_trainer(sae, settings, mean, mean_norm, cache.batches(layer, settings.batch_size, seed))
    scale = trainer.activation_scaler.scaling_factor
    trainer.fit()
    details = {
        "steps": settings.steps,
        "training_tokens": settings.steps * settings.batch_size,
        "epochs": settings.steps * settings.batch_size / cache.meta["n_train_tokens"],
        "scaling_factor": scale,
        "train_l0_last_window": float(trainer.feature_sparsity.sum()),
        "dead_latents_at_end": int(trainer.dead_neurons.sum()),
    }
    return sae, details


# ---------------------------------------------------------------------------------------------------
# Metrics


def reconstruction_metrics(sae: SAE, activations: torch.Tensor, dense_threshold: float = 0.1, chunk: int = 4096) -> dict:
    """FVU, mean L0, and dead / dense latent fractions of ``sae`` on held-out token rows.

    FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the rows. A latent is dead when it fires on
    none of the rows and dense when it fires on more than ``dense_threshold`` of them.
    """
    import torch

    squared_error, firing, active = 0.0, torch.zeros(sae.cfg.d_sae, dtype=torch.float64), 0.0
    with torch.no_grad():
        for rows in activations.split(chunk):
            rows = rows.to(sae.device, sae.dtype)
            latents = sae.encode(rows)
            squared_error += float(((rows - sae.decode(latents)).double() ** 2).sum())
            fired = (latents > 0).cpu()
            firing += fired.sum(0).double()
            active += float(fired.sum())
    x = activations.double()
    total_variance = float(((x - x.mean(0)) ** 2).sum())
    rate = firing / len(activations)
    return {
        "fvu": squared_error / total_variance,
        "l0": active / len(activations),
        "dead_fraction": float((rate == 0).double().mean()),
        "dense_fraction": float((rate > dense_threshold).double().mean()),
        "n_heldout_tokens": len(activations),
    }


def loss_recovered(
    model: HookedTransformer, sae: SAE, sequences: Sequence[torch.Tensor], hook_name: str, batch_size: int = 8
) -> dict:
    """Next-token loss with the SAE reconstruction spliced in at ``hook_name``, against clean and zero-ablated.

    Uses ``sae_lens.evals.get_recons_loss`` on right-padded batches; the BOS position keeps its clean
    activation (the SAE was not trained on it), and losses are averaged over real next-token pairs only.
    loss_recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean).
    """
    import torch
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    from probes.activations import right_padded

    bos = model.tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0, "kl_sae": 0.0, "kl_zero": 0.0}
    n_pairs = n_positions = 0
    device = model.cfg.device
    for start in range(0, len(sequences), batch_size):
        tokens, mask = right_padded(model, sequences[start : start + batch_size])
        with torch.no_grad():
            out = get_recons_loss(
                sae, model, ActivationScaler(), tokens.to(device), compute_kl=True, compute_ce_loss=True,
                ignore_tokens=[bos] if bos is not None else None,
                model_kwargs={"attention_mask": mask.long().to(device)}, hook_name=hook_name,
            )
        pairs = (mask[:, :-1] & mask[:, 1:]).to(device)
        positions = mask.to(device)
        for name, key in (("ce_clean", "ce_loss_without_sae"), ("ce_sae", "ce_loss_with_sae"), ("ce_zero", "ce_loss_with_ablation")):
            sums[name] += float(out[key][pairs].double().sum())
        sums["kl_sae"] += float(out["kl_div_with_sae"][positions].double().sum())
        sums["kl_zero"] += float(out["kl_div_with_ablation"][positions].double().sum())
        n_pairs += int(pairs.sum())
        n_positions += int(positions.sum())
    means = {name: total / (n_positions if name.startswith("kl") else n_pairs) for name, total in sums.items()}
    means["loss_recovered"] = (means["ce_zero"] - means["ce_sae"]) / (means["ce_zero"] - means["ce_clean"])
    return means | {"n_loss_tokens": n_pairs}


# ---------------------------------------------------------------------------------------------------
# Sparse probing


def mean_difference_order(X: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Features by decreasing |mean(class 1) - mean(class 0)| over ``rows``; ties keep feature order."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    difference = X[rows & (y == 1)].mean(0) - X[rows & (y == 0)].mean(0)
    return np.argsort(-np.abs(difference), kind="stable")


def sparse_probe(X: np.ndarray, y: np.ndarray, settings: ProbeSettings, ks: Sequence[int] = SPARSE_KS) -> pd.DataFrame:
    """Test accuracy of probes on the top-k features of each training fold, for every k.

    Folds and seeds are the dense probe's (:func:`probes.probing.cv_splits`); each probe is the dense
    probe's standardise + L2 logistic regression (same C), fitted by scikit-learn on k columns.
    Returns a tidy frame (seed, fold, k, accuracy).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from probes.probing import cv_splits

    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    rows = []
    for seed, fold, train in cv_splits(y, settings):
        order = mean_difference_order(X, y, train)
        for k in ks:
            columns = order[: min(k, X.shape[1])]
            probe = make_pipeline(
                StandardScaler(), LogisticRegression(C=settings.C, tol=settings.tol, max_iter=settings.max_iter)
            )
            probe.fit(X[train][:, columns], y[train])
            accuracy = float((probe.predict(X[~train][:, columns]) == y[~train]).mean())
            rows.append({"seed": seed, "fold": fold, "k": k, "accuracy": accuracy})
    return pd.DataFrame(rows)


def encode(sae: SAE, vectors: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    import torch

    with torch.no_grad():
        return torch.cat([sae.encode(rows.to(sae.device, sae.dtype)).cpu() for rows in vectors.split(chunk)])


def _cell(text: str) -> str:
    """Text safe inside an HTML table cell, newlines shown as ⏎."""
    return html.escape(text.replace("\n", "⏎"))


def _context(str_tokens: Sequence[str], position: int, before: int = 10, after: int = 3) -> str:
    """A token's context for an HTML table cell, with the token itself in bold."""
    left = _cell("".join(str_tokens[max(1, position - before) : position]))
    right = _cell("".join(str_tokens[position + 1 : position + 1 + after]))
    return f"{left}<b>{_cell(str_tokens[position]) or '∅'}</b>{right}"


def top_latents(
    latents: np.ndarray,
    y: np.ndarray,
    texts: Sequence[str],
    classes: Sequence[str],
    corpus_latents: torch.Tensor | None = None,
    corpus_tokens: dict[str, torch.Tensor] | None = None,
    corpus_str_tokens: dict[int, list[str]] | None = None,
    n_top: int = 5,
    n_examples: int = 3,
) -> list[dict]:
    """The latents that best separate the classes over all rows, each with its max-activating examples.

    Task examples are the dataset's texts (the probe's pooled token); corpus examples are held-out corpus
    tokens, shown in context, so a latent can be read off text that is not the task's.
    """
    latents, y = np.asarray(latents, dtype=np.float64), np.asarray(y)
    everything = np.ones(len(y), dtype=bool)
    rows = []
    for latent in mean_difference_order(latents, y, everything)[:n_top]:
        values = latents[:, latent]
        means = [values[y == c].mean() for c in (0, 1)]
        task = [
            f"{_cell(texts[i])} ({classes[y[i]]}, {values[i]:.2f})"
            for i in np.argsort(-values, kind="stable")[:n_examples]
            if values[i] > 0
        ]
        corpus = []
        if corpus_latents is not None:
            column = corpus_latents[:, latent]
            for row in column.argsort(descending=True, stable=True)[:n_examples].tolist():
                if column[row] > 0:
                    document, position = int(corpus_tokens["document"][row]), int(corpus_tokens["position"][row])
                    corpus.append(f"{_context(corpus_str_tokens[document], position)} ({float(column[row]):.2f})")
        rows.append(
            {
                "latent": int(latent),
                "favours": classes[int(means[1] > means[0])],
                "mean": means,
                "firing": [float((values[y == c] > 0).mean()) for c in (0, 1)],
                "task_examples": task,
                "corpus_examples": corpus,
            }
        )
    return rows


def top_latents_html(title: str, classes: Sequence[str], sections: dict[str, list[dict]]) -> str:
    first, second = (_cell(name) for name in classes)
    tables = {
        heading: pd.DataFrame(
            {
                "latent": row["latent"],
                "favours": _cell(row["favours"]),
                f"mean act. ({first} / {second})": f"{row['mean'][0]:.3f} / {row['mean'][1]:.3f}",
                f"fires on ({first} / {second})": f"{row['firing'][0]:.0%} / {row['firing'][1]:.0%}",
                "top task examples": "<br>".join(row["task_examples"]) or "–",
                "top held-out corpus contexts": "<br>".join(row["corpus_examples"]) or "–",
            }
            for row in latents
        )
        for heading, latents in sections.items()
    }
    note = (f"Classes: 0 = <code>{first}</code>, 1 = <code>{second}</code>. Latents ranked by |mean difference| "
            "between the classes over all rows; activations in parentheses; the token a corpus context ends on is in bold.")
    return html_page(title, tables, note, escape=False)


# ---------------------------------------------------------------------------------------------------
# Stages


@stage
def cache_tokens_stage(
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

    from probes.activations import TokenCacheSettings, cache_token_activations
    from probes.corpus import load_corpus
    from probes.datasets import load_dataset
    from probes.models import load_model

    settings = TokenCacheSettings(**settings)
    concept_texts = [
        text
        for path, columns in zip(datasets, dataset_columns, strict=True)
        for text in load_dataset(path, columns["text_column"], columns["label_column"]).texts
    ]
    texts = load_corpus(corpus, concept_texts, hf_dataset)
    torch.manual_seed(seed)
    model_record = read_json(manifest)
    model = load_model(manifest, device=settings.device, dtype=settings.dtype)
    provenance = {
        "model": model_record["model"],
        "model_weights_sha256": model_record.get("weights_sha256"),
        "corpus": [str(path) for path in corpus],
        "corpus_sha256": [sha256_file(path) for path in corpus],
        "concept_datasets": [str(path) for path in datasets],
        "hf_dataset": hf_dataset,
        "versions": package_versions(),
    }
    with atomic_directory(cache) as tmp:
        cache_token_activations(model, texts, layers, site, tmp, settings, seed, provenance=provenance)


@stage
def train_sae_stage(cache: str | os.PathLike, sae: str | os.PathLike, meta: str | os.PathLike, model: str, layer: int | str, settings: dict, seed: int = 0) -> None:
    """The ``train_sae`` rule: one SAE for one cached layer, saved in SAELens's inference format."""
    from probes.activations import TokenCache

    settings = SAESettings(**settings)
    token_cache = TokenCache(cache)
    trained, details = train_sae(token_cache, int(layer), settings, model, seed)
    with atomic_directory(sae) as tmp:
        trained.save_inference_model(tmp)
        write_json(tmp / "cfg.json", read_json(tmp / "cfg.json"))  # SAELens's key order varies between processes
    write_json(
        meta,
        details
        | {
            "model": model,
            "layer": int(layer),
            "hook_name": token_cache.hook_names[int(layer)],
            "settings": asdict(settings),
            "seed": seed,
            "cache_meta_sha256": sha256_file(token_cache.path / "meta.json"),
            "versions": package_versions(),
        },
    )


@stage
def evaluate_sae_stage(
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

    from probes.activations import TokenCache
    from probes.models import load_model

    settings = SAEEvalSettings(**settings)
    layer = int(layer)
    token_cache = TokenCache(cache)
    loaded = SAE.load_from_disk(sae, device=settings.device)
    scores = reconstruction_metrics(loaded, token_cache.load(layer, "heldout"), settings.dense_threshold)
    language_model = load_model(manifest, device=settings.device, dtype=dtype)
    sequences = token_cache.heldout_sequences()[: settings.loss_documents]
    scores |= loss_recovered(language_model, loaded, sequences, token_cache.hook_names[layer], settings.batch_size)
    training = read_json(sae_meta)
    write_json(
        metrics,
        scores
        | {
            "model": model,
            "layer": layer,
            "n_layers": token_cache.meta["n_layers"],
            "hook_name": token_cache.hook_names[layer],
            "architecture": training["settings"]["architecture"],
            "d_sae": loaded.cfg.d_sae,
            "training_tokens": training["training_tokens"],
            "settings": asdict(settings),
            "versions": package_versions(),
        },
    )


@stage
def sparse_probing_stage(
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

    from probes.activations import TokenCache, load_activations
    from probes.datasets import load_dataset
    from probes.probing import ProbeSettings

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
            latents.numpy(), y, data.texts, extraction["classes"], encode(loaded, token_cache.load(layer, "heldout")),
            corpus_tokens, corpus_str_tokens, n_top, n_examples,
        )
    tidy = pd.concat(frames, ignore_index=True)
    keys = {"model": model, "dataset": task, "level": level, "pooling": pooling, "n_layers": extraction["n_layers"]}
    tidy = pd.concat([pd.DataFrame(keys, index=tidy.index), tidy], axis=1)
    columns = [*keys, "layer", "features", "k", "seed", "fold", "accuracy"]
    with atomic_path(scores) as tmp:
        tidy[columns].to_parquet(tmp, index=False)
    title = f"Top SAE latents: {model}, {task} ({pooling} token)"
    with atomic_path(top_latents_page) as tmp:
        tmp.write_text(top_latents_html(title, extraction["classes"], sections), encoding="utf-8")


@stage
def summary_stage(
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
    metrics_frame = pd.DataFrame([read_json(path) for path in metrics]).drop(columns=["settings", "versions"])
    metrics_frame.insert(2, "relative_depth", metrics_frame["layer"] / metrics_frame["n_layers"])
    metrics_frame = metrics_frame.sort_values(["model", "layer"]).reset_index(drop=True)
    sparse = pd.concat([pd.read_parquet(path) for path in scores], ignore_index=True)
    dense = pd.concat([pd.read_parquet(path) for path in probe_metrics], ignore_index=True)
    dense = dense[dense["metric"] == "accuracy"].groupby(["model", "dataset", "layer"], as_index=False)["value"].mean()
    summary = sparse.groupby(["model", "dataset", "level", "layer", "n_layers", "features", "k"], as_index=False)["accuracy"].mean()
    summary = summary.pivot_table(index=["model", "dataset", "level", "layer", "n_layers", "k"], columns="features", values="accuracy").reset_index()
    summary.columns.name = None
    summary = summary.rename(columns={name: f"{name}_topk_accuracy" for name in FEATURE_SETS})
    summary = summary.merge(dense.rename(columns={"value": "dense_accuracy"}), on=["model", "dataset", "layer"], how="left")
    write_table(metrics_frame, metrics_csv, metrics_html, "SAE metrics per model and layer (held-out corpus tokens)")
    write_table(summary, sparse_summary_csv, sparse_summary_html, "Sparse probing: mean top-k accuracy per model, task, SAE layer and k")
    with atomic_path(metrics_table) as tmp:
        metrics_frame.to_parquet(tmp, index=False)
    with atomic_path(sparse_table) as tmp:
        sparse.to_parquet(tmp, index=False)
