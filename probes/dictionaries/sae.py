"""Sparse autoencoders per layer (docs/methods.md §4): SAELens training from the token cache, metrics, sparse probing.

SAEs are trained by SAELens's own ``SAETrainer`` fed from :class:`probes.activations.token_cache.TokenCache` and
saved with ``save_inference_model``, so ``sae_lens.SAE.load_from_disk(path)`` loads every one of them.
Activations are normalised to mean norm sqrt(d_in) during training (SAELens's
``expected_average_only_in``), and the trainer folds that scale into the saved weights, so the saved SAE
takes raw residual-stream vectors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from probes.activations.token_cache import TokenCache
    from probes.probing.settings import ProbeSettings

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")
# The config key that sets each architecture's sparsity, by the name SAELens gives it.
SPARSITY_KEY = {"topk": "k", "batchtopk": "k", "jumprelu": "l0_coefficient", "standard": "l1_coefficient"}
FEATURE_SETS = ("sae", "transcoder", "residual")
SPARSE_KS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class SAESettings:
    """What an SAE is and how it is trained; ``options`` passes further fields to SAELens's config class."""

    architecture: str = "topk"
    expansion: int = 4
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    training_tokens: int = 131072
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
    """Held-out evaluation: ``dense_threshold`` is the firing rate above which a latent counts as dense;
    loss recovered runs the first ``loss_documents`` held-out documents, ``batch_size`` at a time."""

    dense_threshold: float = 0.1
    loss_documents: int = 32
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
    sae: SAE,
    activations: torch.Tensor,
    dense_threshold: float = 0.1,
    chunk: int = 4096,
    targets: torch.Tensor | None = None,
) -> dict:
    """FVU, explained variance, mean L0, and dead / dense latent fractions of ``sae`` on held-out token rows.

    FVU = sum ||t - t_hat||^2 / sum ||t - mean(t)||^2 over the rows, where the target t is the input
    itself for an SAE and ``targets`` (the same tokens' MLP output) for a transcoder; explained variance is
    1 - FVU, SAELens's corrected definition (SAEBench's measures the variance about zero). A latent is dead
    when it fires on none of the rows and dense when it fires on more than ``dense_threshold`` of them.
    """
    import torch

    targets = activations if targets is None else targets
    if len(targets) != len(activations):
        raise ValueError(f"{len(activations)} input rows but {len(targets)} target rows")
    squared_error, firing, active = 0.0, torch.zeros(sae.cfg.d_sae, dtype=torch.float64), 0.0
    with torch.no_grad():
        for rows, wanted in zip(activations.split(chunk), targets.split(chunk), strict=True):
            latents = sae.encode(rows.to(sae.device, sae.dtype))
            wanted = wanted.to(sae.device, sae.dtype)
            squared_error += float(((wanted - sae.decode(latents)).double() ** 2).sum())
            fired = (latents > 0).cpu()
            firing += fired.sum(0).double()
            active += float(fired.sum())
    x = targets.double()
    total_variance = float(((x - x.mean(0)) ** 2).sum())
    rate = firing / len(activations)
    return {
        "fvu": squared_error / total_variance,
        "explained_variance": 1 - squared_error / total_variance,
        "l0": active / len(activations),
        "dead_fraction": float((rate == 0).double().mean()),
        "dense_fraction": float((rate > dense_threshold).double().mean()),
        "n_heldout_tokens": len(activations),
    }


LOSS_SUMS = ("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero")
# SAELens's / SAEBench's names for the field's scores: the ablation zeroes every position (BOS included) and KL is
# also counted at each document's last position (which predicts past it); ce_clean and ce_sae are theirs already.
FIELD_SUMS = ("ce_loss_with_ablation", "kl_div_with_sae", "kl_div_with_ablation")
LOSS_STATISTICS = (*LOSS_SUMS, "loss_recovered", *FIELD_SUMS, "ce_loss_score", "kl_div_score")


def document_losses(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    sequences: Sequence[torch.Tensor],
    batch_size: int = 8,
    inputs: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Per-document next-token losses with each SAE's reconstruction spliced in, and with its hook zero-ablated.

    ``saes`` maps a hook name to the SAE written there; it reads the same hook unless ``inputs`` names
    another one (a transcoder at ``hook_mlp_out`` reads ``ln2.hook_normalized`` of the same pass, so the
    MLP is replaced by the transcoder). One clean pass per batch serves every SAE; then, per
    SAE, one pass with the reconstruction and one with zeros, both spliced at exactly the same positions:
    every real position after the BOS. The BOS keeps its clean activation in both runs (the SAE never saw
    it) and pads are untouched, so loss recovered compares like with like. A third pass zeroes every real
    position, the BOS too, as SAELens's and SAEBench's ``ce_loss_score`` and ``kl_div_score`` ablate. The
    spliced runs start at the hook's block from the clean run's residual there (the same numbers as a full
    pass, fewer blocks). Cross-entropies count the predictions a splice can change: a spliced position
    predicting the next real token; the field's KL sums also count each document's last position.

    Returns one row per SAE and document (``document``: its index in ``sequences``): ``n_tokens`` and
    ``n_kl_tokens`` (the counted positions), and the float64 sums over them of the cross-entropy (``ce_clean``,
    ``ce_sae``, ``ce_zero``, ``ce_loss_with_ablation``) and of ``KL(P_clean || P_run)`` (``kl_sae``, ``kl_zero``
    over the cross-entropy's positions; ``kl_div_with_sae``, ``kl_div_with_ablation`` over every spliced
    position), in nats. :func:`loss_recovered` turns them into means and scores.
    """
    import torch

    from probes.activations.extraction import right_padded

    skip_first = int(bool(model.cfg.default_prepend_bos))
    device = model.cfg.device
    starts = {hook: _start_block(model, hook) for hook in saes}
    needed = sorted({f"blocks.{block}.hook_resid_pre" for block in starts.values() if block is not None})
    runs = (("sae", "spliced"), ("zero", "spliced"), ("ablated", "every"))
    rows = []
    for first in range(0, len(sequences), batch_size):
        tokens, mask = right_padded(model, sequences[first : first + batch_size])
        tokens, mask = tokens.to(device), mask.to(device)
        spliced = mask.clone()
        spliced[:, :skip_first] = False
        predicts = torch.zeros_like(spliced)
        predicts[:, :-1] = spliced[:, :-1] & mask[:, 1:]  # position p (spliced) predicting token p + 1 (real)
        counted = predicts[spliced]  # which spliced positions the cross-entropies count
        row_of = spliced.nonzero()[:, 0]
        targets = tokens[:, 1:][predicts[:, :-1]][:, None]

        def per_document(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(tokens), dtype=torch.float64, device=device).index_add_(0, rows, values.double())

        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, attention_mask=mask.long(), names_filter=needed)
            clean = logits[spliced].float().log_softmax(-1)
            del logits
            ce_clean = per_document(-clean[counted].gather(1, targets)[:, 0], row_of[counted]).cpu()
            for hook, sae in saes.items():
                record = {"ce_clean": ce_clean}
                source = (inputs or {}).get(hook, hook)
                for name, where in runs:
                    read: dict[str, torch.Tensor] = {}
                    positions = spliced if where == "spliced" else mask
                    splice = partial(_reconstruction, sae) if name == "sae" else torch.zeros_like

                    def capture(activation: torch.Tensor, hook: Any, read: dict = read) -> None:  # noqa: ARG001
                        read["input"] = activation

                    def replace(
                        activation: torch.Tensor,
                        hook: Any,
                        splice: Callable = splice,
                        read: dict = read,
                        name: str = name,
                        positions: torch.Tensor = positions,
                    ) -> torch.Tensor:  # noqa: ARG001
                        given = read.pop("input", activation) if name == "sae" else activation
                        replaced = activation.clone()
                        replaced[positions] = splice(given[positions]).to(activation.device, activation.dtype)
                        return replaced

                    fwd_hooks = ([(source, capture)] if source != hook else []) + [(hook, replace)]
                    block = starts[hook]
                    if block is None:
                        logits = model.run_with_hooks(tokens, attention_mask=mask.long(), fwd_hooks=fwd_hooks)
                    else:
                        logits = model.run_with_hooks(
                            cache[f"blocks.{block}.hook_resid_pre"],
                            start_at_layer=block,
                            attention_mask=mask.long(),
                            fwd_hooks=fwd_hooks,
                        )
                    log_probs = logits[spliced].float().log_softmax(-1)
                    del logits
                    kl = torch.nn.functional.kl_div(log_probs, clean, reduction="none", log_target=True).sum(1)
                    ce = per_document(-log_probs[counted].gather(1, targets)[:, 0], row_of[counted]).cpu()
                    if name == "ablated":
                        record["ce_loss_with_ablation"] = ce
                        record["kl_div_with_ablation"] = per_document(kl, row_of).cpu()
                    else:
                        record[f"ce_{name}"] = ce
                        record[f"kl_{name}"] = per_document(kl[counted], row_of[counted]).cpu()
                    if name == "sae":
                        record["kl_div_with_sae"] = per_document(kl, row_of).cpu()
                    del log_probs, kl
                n_tokens, n_kl_tokens = predicts.sum(1).cpu(), spliced.sum(1).cpu()
                for row in range(len(tokens)):
                    rows.append(
                        {
                            "hook_name": hook,
                            "document": first + row,
                            "n_tokens": int(n_tokens[row]),
                            "n_kl_tokens": int(n_kl_tokens[row]),
                        }
                        | {name: float(record[name][row]) for name in (*LOSS_SUMS, *FIELD_SUMS)}
                    )
            del cache, clean
    sums = [*LOSS_SUMS, *FIELD_SUMS]
    frame = pd.DataFrame(rows, columns=["hook_name", "document", "n_tokens", "n_kl_tokens", *sums])
    frame = frame.sort_values(["hook_name", "document"], kind="stable").reset_index(drop=True)
    finite = np.isfinite(frame[sums].to_numpy()).all(1)
    if not finite.all():
        from probes.activations.extraction import NonFiniteActivations

        raise NonFiniteActivations(
            f"{model.cfg.model_name} ({str(model.cfg.dtype).removeprefix('torch.')}): non-finite losses with the "
            f"SAE at {sorted(set(frame.loc[~finite, 'hook_name']))}; run the model in bf16 or fp32"
        )
    return frame


def _start_block(model: HookedTransformer, hook_name: str) -> int | None:
    """The block a spliced run can start at (its input is the clean run's), or None for a full pass."""
    match = re.fullmatch(r"blocks\.(\d+)\.\w+", hook_name)
    if match is None or model.cfg.positional_embedding_type == "shortformer":
        return None
    return int(match.group(1))


def _reconstruction(sae: SAE, rows: torch.Tensor) -> torch.Tensor:
    return sae.decode(sae.encode(rows.to(sae.device, sae.dtype)))


def loss_recovered(
    documents: pd.DataFrame, by: Sequence[str] = ("hook_name",), n_boot: int = 0, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Mean losses and loss recovered per SAE from :func:`document_losses`'s per-document sums.

    Means are per counted prediction (sums over documents / tokens), and
    ``loss_recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)``, a ratio of sums, with the BOS clean in both
    runs; SAELens's and SAEBench's scores zero the BOS too: ``ce_loss_score = (CE_ablation − CE_sae) /
    (CE_ablation − CE_clean)`` and ``kl_div_score = (KL_ablation − KL_sae) / KL_ablation``. With ``n_boot`` every
    statistic also gets a percentile interval (``<name>_lo``, ``<name>_hi``) from a bootstrap over
    documents (:func:`probes.resampling.bootstrap_weights`): each resample draws the documents with
    replacement and recomputes the ratio of resampled sums. SAEs evaluated on the same documents (every
    layer of a model) share the resamples. One row per group of ``by``.
    """
    from probes.resampling import bootstrap_weights, percentile_interval

    columns = ["n_tokens", "n_kl_tokens", *LOSS_SUMS, *FIELD_SUMS]
    shared: dict[tuple, np.ndarray] = {}
    rows = []
    for key, group in documents.groupby(list(by), sort=True):
        group = group.sort_values("document", kind="stable")
        ids = tuple(group["document"].tolist())
        if len(set(ids)) != len(ids):
            raise ValueError(f"{dict(zip(by, key))}: a document appears more than once; group by more columns")
        sums = group[columns].to_numpy(np.float64)  # (documents, columns)
        record = dict(zip(by, key)) | {name: float(value) for name, value in _loss_statistics(sums.sum(0)).items()}
        record |= {"n_loss_tokens": int(group["n_tokens"].sum()), "n_loss_documents": len(group)}
        if n_boot:
            if ids not in shared:
                shared[ids] = bootstrap_weights(len(ids), n_boot, seed)
            for name, samples in _loss_statistics((shared[ids] @ sums).T).items():
                lo, hi = percentile_interval(samples, ci)
                record[f"{name}_lo"], record[f"{name}_hi"] = float(lo), float(hi)
        rows.append(record)
    return pd.DataFrame(rows)


def _loss_statistics(totals: np.ndarray) -> dict[str, np.ndarray]:
    """Means and scores from summed (n_tokens, n_kl_tokens, *LOSS_SUMS, *FIELD_SUMS), each a scalar or one value per
    resample."""
    n_tokens, n_kl_tokens, sums = totals[0], totals[1], dict(zip((*LOSS_SUMS, *FIELD_SUMS), totals[2:]))
    counts = {name: n_kl_tokens if name.startswith("kl_div") else n_tokens for name in sums}
    with np.errstate(divide="ignore", invalid="ignore"):  # no counted token, or CE_zero == CE_clean: NaN
        means = {name: sums[name] / counts[name] for name in sums}
        recovered = (sums["ce_zero"] - sums["ce_sae"]) / (sums["ce_zero"] - sums["ce_clean"])
        ablated = sums["ce_loss_with_ablation"]
        ce_score = (ablated - sums["ce_sae"]) / (ablated - sums["ce_clean"])
        kl_score = (sums["kl_div_with_ablation"] - sums["kl_div_with_sae"]) / sums["kl_div_with_ablation"]
    return means | {"loss_recovered": recovered, "ce_loss_score": ce_score, "kl_div_score": kl_score}


# ---------------------------------------------------------------------------------------------------
# Sparse probing


def standardised_difference_order(X: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Features by decreasing standardised mean difference over ``rows``; ties keep feature order.

    ``d_j = |mean(x_j | y=1) − mean(x_j | y=0)| / s_j`` with ``s_j`` the pooled within-class standard
    deviation (Cohen's d), so a dimension with a huge norm but a weak class signal no longer outranks a
    small one that separates the classes. A feature constant over ``rows`` scores 0 (last); one constant
    within each class but not across them separates them perfectly and scores inf (first).
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    ones, zeros = X[rows & (y == 1)], X[rows & (y == 0)]
    difference = np.abs(ones.mean(0) - zeros.mean(0))
    squares = ((ones - ones.mean(0)) ** 2).sum(0) + ((zeros - zeros.mean(0)) ** 2).sum(0)
    pooled = np.sqrt(squares / max(len(ones) + len(zeros) - 2, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(pooled > 0, difference / pooled, np.where(difference > 0, np.inf, 0.0))
    return np.argsort(-score, kind="stable")


def sparse_probe(
    X: np.ndarray,
    y: np.ndarray,
    settings: ProbeSettings,
    ks: Sequence[int] = SPARSE_KS,
    groups: np.ndarray | None = None,
) -> pd.DataFrame:
    """Out-of-fold predictions of probes on the top-k features of each training fold, for every k.

    Folds and seeds are the dense probe's (:func:`probes.probing.protocol.cv_splits`, by group when ``groups`` is
    given); features are ranked on the training rows by :func:`standardised_difference_order`; each probe
    is the dense probe's standardise + L2 logistic regression (same C), fitted by scikit-learn on k columns.
    Returns a tidy frame (seed, fold, k, example, correct): for every seed and k, each example once, from
    the fold where it was a test row, so :func:`sparse_accuracy` can resample examples.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from probes.probing.protocol import cv_splits

    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    frames = []
    for seed, fold, train in cv_splits(y, settings, groups):
        order = standardised_difference_order(X, y, train)
        test = np.flatnonzero(~train)
        for k in ks:
            columns = order[: min(k, X.shape[1])]
            probe = make_pipeline(
                StandardScaler(), LogisticRegression(C=settings.C, tol=settings.tol, max_iter=settings.max_iter)
            )
            probe.fit(X[train][:, columns], y[train])
            correct = probe.predict(X[test][:, columns]) == y[test]
            frames.append(pd.DataFrame({"seed": seed, "fold": fold, "k": k, "example": test, "correct": correct}))
    return pd.concat(frames, ignore_index=True).sort_values(["seed", "k", "example"], ignore_index=True)


def per_example(predictions: pd.DataFrame, points: Sequence[str], value: str) -> pd.DataFrame:
    """``value`` averaged over seeds, one row per point and one column per example 0..n-1; a point missing an
    example's out-of-fold prediction is refused."""
    table = predictions.pivot_table(index=list(points), columns="example", values=value, aggfunc="mean")
    if table.isna().any().any() or not np.array_equal(table.columns, np.arange(table.shape[1])):
        raise ValueError("every point needs an out-of-fold prediction for every example 0..n-1")
    return table


def sparse_accuracy(
    predictions: pd.DataFrame, n_boot: int, ci: float = 0.95, seed: int = 0, groups: np.ndarray | None = None
) -> pd.DataFrame:
    """Accuracy and a bootstrap interval over examples for every (features, layer, k) point of one task.

    ``predictions`` is :func:`sparse_probe`'s frame with ``features`` and ``layer`` columns. A point's
    accuracy is the mean over seeds of its out-of-fold accuracy, i.e. the mean over examples of each
    example's correctness averaged over seeds. The interval is a percentile bootstrap that resamples the
    examples (whole groups when ``groups``, one label per example, is given), the same resamples for
    every point, so points of one task compare under the same draws.
    """
    from probes.resampling import bootstrap_weights, percentile_interval, resampled_means

    correct = per_example(predictions, ["features", "layer", "k"], "correct")
    n = correct.shape[1]
    values = correct.to_numpy(np.float64)
    samples = resampled_means(bootstrap_weights(n, n_boot, seed, groups), values)
    lo, hi = percentile_interval(samples, ci)
    summary = correct.index.to_frame(index=False)
    return summary.assign(accuracy=values.mean(1), accuracy_lo=lo, accuracy_hi=hi, n_examples=n)


def encode(sae: SAE, vectors: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    import torch

    with torch.no_grad():
        return torch.cat([sae.encode(rows.to(sae.device, sae.dtype)).cpu() for rows in vectors.split(chunk)])


# ---------------------------------------------------------------------------------------------------
# Summaries


def metrics_frame(
    records: Sequence[dict],
    documents: pd.DataFrame | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per SAE (or transcoder) from its held-out metrics, with its relative depth, ordered by model,
    ``kind`` where the records carry one (sae, transcoder), and layer.

    With ``documents`` (:func:`document_losses`'s rows with ``model``, ``layer`` and the records' ``kind``)
    and ``n_boot``, every loss statistic gets its bootstrap interval over documents (:func:`loss_recovered`)
    beside it.
    """
    frame = pd.DataFrame(list(records))
    keys = [key for key in ("model", "kind", "layer") if key in frame]
    frame.insert(len(keys), "relative_depth", frame["layer"] / frame["n_layers"])
    if documents is not None and n_boot:
        intervals = loss_recovered(documents, keys, n_boot, ci, seed)
        bounds = [f"{name}_{end}" for name in LOSS_STATISTICS for end in ("lo", "hi")]
        frame = frame.merge(intervals[[*keys, *bounds]], on=keys, how="left")
        order = [column for column in frame.columns if column not in bounds]
        for name in reversed(LOSS_STATISTICS):
            at = order.index(name) + 1
            order[at:at] = [f"{name}_lo", f"{name}_hi"]
        frame = frame[order]
    return frame.sort_values(keys).reset_index(drop=True)


COMPARED = (
    "l0",
    "fvu",
    "explained_variance",
    "loss_recovered",
    "ce_loss_score",
    "kl_div_score",
    "kl_sae",
    "dead_fraction",
    "dense_fraction",
)


def dictionary_comparison(metrics: pd.DataFrame) -> pd.DataFrame:
    """SAE and transcoder of each model and layer side by side (``sae_<metric>``, ``transcoder_<metric>``),
    with the loss statistics' intervals; layers with only one kind keep the other's columns empty."""
    columns = [f"{name}{end}" for name in COMPARED for end in ("", "_lo", "_hi") if f"{name}{end}" in metrics.columns]
    wide = metrics.pivot_table(index=["model", "layer", "relative_depth"], columns="kind", values=columns)
    wide.columns = [f"{kind}_{name}" for name, kind in wide.columns]
    order = [
        f"{kind}_{name}{end}"
        for name in COMPARED
        for kind in ("sae", "transcoder")
        for end in ("", "_lo", "_hi")
        if f"{kind}_{name}{end}" in wide
    ]
    return wide[order].reset_index()


def sparse_summary(
    sparse: pd.DataFrame, dense: pd.DataFrame, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Top-k accuracy per model, task, SAE layer and k for both feature sets, beside the dense probe's.

    ``sparse`` holds :func:`sparse_probe`'s out-of-fold rows with the task's keys, ``features``, ``layer``
    and ``group`` (the example's group code, missing when the task declares none). Every accuracy has a
    bootstrap interval over the task's examples, or its groups (:func:`sparse_accuracy`). The dense
    probe's accuracy is its mean over runs, with ``dense_accuracy_lo/hi`` where its table carries
    ``accuracy_lo/hi``.
    """
    keys = ["model", "dataset", "level", "n_layers"]
    parts = []
    for key, task in sparse.groupby(keys, sort=True):
        groups = task.groupby("example")["group"].first().sort_index() if "group" in task else None
        groups = None if groups is None or groups.isna().all() else groups.to_numpy()
        accuracy = sparse_accuracy(task, n_boot, ci, seed, groups)
        n_groups = np.nan if groups is None else len(np.unique(groups))
        parts.append(accuracy.assign(**dict(zip(keys, key)), n_groups=n_groups))
    points = pd.concat(parts, ignore_index=True)
    statistics = ["accuracy", "accuracy_lo", "accuracy_hi"]
    summary = points.pivot_table(index=[*keys, "layer", "k"], columns="features", values=statistics)
    summary.columns = [f"{features}_topk_{statistic}" for statistic, features in summary.columns]
    ordered = [f"{features}_topk_{statistic}" for features in FEATURE_SETS for statistic in statistics]
    summary = summary[[column for column in ordered if column in summary.columns]].reset_index()
    sizes = points.groupby(keys, as_index=False)[["n_examples", "n_groups"]].first()
    summary = summary.merge(sizes, on=keys, how="left")
    accuracy = dense[dense["metric"] == "accuracy"] if "metric" in dense else dense
    grouped = accuracy.groupby(["model", "dataset", "layer"])
    dense_summary = grouped["value"].mean().rename("dense_accuracy").to_frame()
    if {"accuracy_lo", "accuracy_hi"} <= set(accuracy.columns):
        dense_summary = dense_summary.join(grouped[["accuracy_lo", "accuracy_hi"]].first().add_prefix("dense_"))
    return summary.merge(dense_summary.reset_index(), on=["model", "dataset", "layer"], how="left")
