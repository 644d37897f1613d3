"""Sparse autoencoders per layer (docs/methods.md §4): SAELens training from the token cache, metrics, sparse probing.

SAEs are trained by SAELens's own ``SAETrainer`` fed from :class:`probes.token_cache.TokenCache` and
saved with ``save_inference_model``, so ``sae_lens.SAE.load_from_disk(path)`` loads every one of them.
Activations are normalised to mean norm sqrt(d_in) during training (SAELens's
``expected_average_only_in``), and the trainer folds that scale into the saved weights, so the saved SAE
takes raw residual-stream vectors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from probes.probing import ProbeSettings
    from probes.token_cache import TokenCache

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
        if not (
            self.lr_warm_up_fraction >= 0
            and self.lr_decay_fraction >= 0
            and self.lr_warm_up_fraction + self.lr_decay_fraction < 1
        ):
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
        raise ValueError(
            f"sae.options {settings.options} do not fit SAELens's {config_class.__name__}: {error}"
        ) from None
    torch.manual_seed(seed)
    return sae_class(config)


def sae_trainer(
    sae: Any, settings: SAESettings, mean: torch.Tensor, mean_norm: float, batches: Iterator[torch.Tensor]
) -> Any:
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
    sae = training_sae(
        cache.meta["d_model"], settings, cache.hook_names[layer], model_name, cache.meta["context"], seed
    )
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


def reconstruction_metrics(
    sae: SAE, activations: torch.Tensor, dense_threshold: float = 0.1, chunk: int = 4096
) -> dict:
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
                sae,
                model,
                ActivationScaler(),
                tokens.to(device),
                compute_kl=True,
                compute_ce_loss=True,
                ignore_tokens=[bos] if bos is not None else None,
                model_kwargs={"attention_mask": mask.long().to(device)},
                hook_name=hook_name,
            )
        pairs = (mask[:, :-1] & mask[:, 1:]).to(device)
        positions = mask.to(device)
        for name, key in (
            ("ce_clean", "ce_loss_without_sae"),
            ("ce_sae", "ce_loss_with_sae"),
            ("ce_zero", "ce_loss_with_ablation"),
        ):
            sums[name] += float(out[key][pairs].double().sum())
        sums["kl_sae"] += float(out["kl_div_with_sae"][positions].double().sum())
        sums["kl_zero"] += float(out["kl_div_with_ablation"][positions].double().sum())
        n_pairs += int(pairs.sum())
        n_positions += int(positions.sum())
    means = {name: total / (n_positions if name.startswith("kl") else n_pairs) for name, total in sums.items()}
    if not all(math.isfinite(value) for value in means.values()):
        from probes.activations import NonFiniteActivations

        raise NonFiniteActivations(
            f"{model.cfg.model_name} ({str(model.cfg.dtype).removeprefix('torch.')}): non-finite losses {means} with "
            f"the SAE at {hook_name}; run the model in bf16 or fp32"
        )
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

    Task examples are (text, class, activation) of the dataset's texts (the probe's pooled token); corpus
    examples are (the document's tokens, position, activation) of held-out corpus tokens, so a latent can be
    read off text that is not the task's (:func:`probes.html.top_latents_page` shows them in context).
    """
    latents, y = np.asarray(latents, dtype=np.float64), np.asarray(y)
    everything = np.ones(len(y), dtype=bool)
    rows = []
    for latent in mean_difference_order(latents, y, everything)[:n_top]:
        values = latents[:, latent]
        means = [values[y == c].mean() for c in (0, 1)]
        task = [
            (texts[i], classes[y[i]], float(values[i]))
            for i in np.argsort(-values, kind="stable")[:n_examples]
            if values[i] > 0
        ]
        corpus = []
        if corpus_latents is not None:
            column = corpus_latents[:, latent]
            for row in column.argsort(descending=True, stable=True)[:n_examples].tolist():
                if column[row] > 0:
                    document, position = int(corpus_tokens["document"][row]), int(corpus_tokens["position"][row])
                    corpus.append((corpus_str_tokens[document], position, float(column[row])))
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


# ---------------------------------------------------------------------------------------------------
# Summaries


def metrics_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per SAE from its held-out metrics, with its relative depth, ordered by model and layer."""
    frame = pd.DataFrame(list(records))
    frame.insert(2, "relative_depth", frame["layer"] / frame["n_layers"])
    return frame.sort_values(["model", "layer"]).reset_index(drop=True)


def sparse_summary(sparse: pd.DataFrame, dense: pd.DataFrame) -> pd.DataFrame:
    """Mean top-k accuracy per model, task, SAE layer and k for both feature sets, beside the dense probe's."""
    dense = dense[dense["metric"] == "accuracy"].groupby(["model", "dataset", "layer"], as_index=False)["value"].mean()
    keys = ["model", "dataset", "level", "layer", "n_layers"]
    summary = sparse.groupby([*keys, "features", "k"], as_index=False)["accuracy"].mean()
    summary = summary.pivot_table(index=[*keys, "k"], columns="features", values="accuracy").reset_index()
    summary.columns.name = None
    summary = summary.rename(columns={name: f"{name}_topk_accuracy" for name in FEATURE_SETS})
    return summary.merge(
        dense.rename(columns={"value": "dense_accuracy"}), on=["model", "dataset", "layer"], how="left"
    )
