"""Cross-validated ridge maps between the layers of one or more models (Csordás et al., 2025).

For every ordered pair of layers (model A layer i -> model B layer j, A == B included) a ridge regression
from A's pooled vectors predicts B's on held-out texts under grouped K-fold CV; both sides are z-scored
with the training fold's statistics and the ridge strength is chosen per pair and fold by GCV on the
training fold. Per-text squared errors are kept, so R² intervals resample texts (groups) with the
project's bootstrap and the layer of B that best predicts each layer of A gets an interval from the
same resamples: if models compute in the same order, layers at the same relative depth map best.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from probes.resampling import bootstrap_weights, percentile_interval

# Ridge strengths relative to the mean non-zero eigenvalue of the standardised training Gram matrix, so
# one grid fits any number of texts and any width: alpha = 1 halves the fit of an average direction.
DEFAULT_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
_STD_FLOOR = 1e-6  # a dimension whose training std is below this fraction of the layer's largest is constant
_DIAGONAL_COLUMNS = ("source_model", "target_model", "mean_abs_offset", "lo", "hi", "chance_abs_offset", "n_layers")


@dataclass(frozen=True)
class LayerMaps:
    """Out-of-fold errors of every layer map: ``pairs`` (source_model, source_layer, target_model,
    target_layer, source_depth, target_depth, alpha: the median over folds of the GCV choice, on the
    relative scale of :data:`DEFAULT_ALPHAS`), and per text (rows) and pair (columns, in ``pairs`` order)
    the squared error ``sse`` and the squared norm of the z-scored target ``sst``, kept apart so that a
    resample's R² is a ratio of resampled sums."""

    pairs: pd.DataFrame
    sse: np.ndarray
    sst: np.ndarray
    groups: np.ndarray


def fit_layer_maps(
    vectors: Mapping[str, np.ndarray],
    groups: np.ndarray,
    folds: int = 5,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
    progress: bool = True,
) -> LayerMaps:
    """Ridge maps from every layer to every layer of the models in ``vectors`` (name -> (n, L + 1, d)).

    The texts are the same across models and ``groups`` labels them (one label per text); a group stays
    in one of the ``folds`` folds (``GroupKFold`` shuffled with ``seed``). Each map works in the dual:
    one eigendecomposition of the source layer's training Gram matrix serves all targets, which enter
    only through their own Gram matrices, so the cost grows with the number of texts, not the width.
    GCV is leave-one-text-out in effect and does not see groups: near-duplicate texts in a training fold
    make it choose weaker ridges, which lowers the held-out R² rather than inflating it.
    """
    from sklearn.model_selection import GroupKFold
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    arrays, groups, alphas = _validate(vectors, groups, folds, alphas)
    slots = [(model, layer) for model, array in arrays.items() for layer in range(array.shape[1])]
    n, n_slots = len(groups), len(slots)
    sse = np.zeros((n, n_slots * n_slots))
    sst = np.zeros((n, n_slots * n_slots))
    chosen = np.zeros((folds, n_slots * n_slots))
    splits = list(GroupKFold(folds, shuffle=True, random_state=seed).split(np.zeros((n, 1)), groups=groups))
    if min(len(train) for train, _ in splits) < 2:
        raise ValueError(f"{n} texts in {folds} folds leave a training fold under 2 texts")
    # One BLAS thread: the products are texts x texts, too small to share, and on a 2-core machine two
    # threads ran the default maps in 57 s against 31 s for one.
    bar = tqdm(total=folds * n_slots, desc="layer maps", unit="source layer", disable=not progress)
    with threadpool_limits(1), bar:
        for fold, (train, test) in enumerate(splits):
            fold_maps = _FoldGrams(arrays, train, test)
            for source in range(n_slots):
                columns = slice(source * n_slots, (source + 1) * n_slots)
                picked, sse[test, columns] = fold_maps.maps_from(source, alphas)
                sst[test, columns] = fold_maps.test_norms
                chosen[fold, columns] = alphas[picked]
                bar.update()
    return LayerMaps(_pairs(arrays, slots, np.median(chosen, axis=0)), sse, sst, groups)


def summarise_layer_maps(
    maps: LayerMaps, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """R² of every map, the best target layer of every source layer, and how diagonal cross-model maps are.

    Returns ``r2`` (``pairs`` plus r2, r2_lo, r2_hi, n_texts, n_groups, ci, n_boot); ``best`` per
    (source_model, target_model, source_layer): the target layer of highest R², its relative depth and
    offset (best_depth - source_depth) with intervals, and best_r2 (within a model it is the layer
    itself, a sanity check); ``diagonal`` per ordered pair of different models: the mean |offset| over
    source layers with its interval, against the mean |offset| were the best depth uniform on [0, 1]
    whatever the source depth. Every interval is a percentile interval over the same ``n_boot``
    resamples of the texts (groups), so the best layers and their offsets are paired with the R².
    """
    pairs, groups = maps.pairs, maps.groups
    grouped = np.unique(groups).size < groups.size
    W = bootstrap_weights(groups.size, n_boot, seed, groups if grouped else None)
    with np.errstate(divide="ignore", invalid="ignore"):  # a target without variance has no R² (NaN)
        r2 = 1 - maps.sse.sum(0) / maps.sst.sum(0)
        r2_boot = 1 - (W @ maps.sse) / (W @ maps.sst)
    lo, hi = percentile_interval(r2_boot, ci)
    r2_frame = pairs.assign(
        r2=r2, r2_lo=lo, r2_hi=hi, n_texts=groups.size, n_groups=np.unique(groups).size, ci=ci, n_boot=n_boot
    )
    best_rows, diagonal_rows = [], []
    for (source_model, target_model), block in pairs.groupby(["source_model", "target_model"], sort=False):
        best, best_boot = _best_rows(block, r2, r2_boot, source_model, target_model, ci)
        best_rows.append(best)
        if source_model != target_model:
            diagonal_rows.append(_diagonal_row(best, best_boot, source_model, target_model, ci))
    return r2_frame, pd.concat(best_rows, ignore_index=True), pd.DataFrame(diagonal_rows, columns=_DIAGONAL_COLUMNS)


class _FoldGrams:
    """Every layer's Gram matrices of vectors z-scored with one training fold: training x training,
    held-out x training, and the held-out texts' squared norms.

    Source and target layers are z-scored the same way, so one set of Gram matrices per layer plays both
    roles: the source kernel, and the target whose GCV residuals and held-out squared errors follow from
    its Gram matrices without forming any prediction.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], train: np.ndarray, test: np.ndarray) -> None:
        n_slots = sum(array.shape[1] for array in arrays.values())
        self.n_train = len(train)
        self.train = np.empty((n_slots, len(train), len(train)), dtype=np.float32)
        self.cross = np.empty((n_slots, len(test), len(train)), dtype=np.float32)
        self.test_norms = np.empty((len(test), n_slots))  # each held-out text's SST
        self.ranks = np.empty(n_slots)
        slot = 0
        for array in arrays.values():
            for layer in range(array.shape[1]):
                z, active = _standardise(array[:, layer], train)
                z_train, z_test = z[train], z[test]
                self.train[slot] = z_train @ z_train.T
                self.cross[slot] = z_test @ z_train.T
                self.test_norms[:, slot] = np.einsum("ij,ij->i", z_test, z_test)
                self.ranks[slot] = max(1, min(len(train) - 1, active))
                slot += 1

    def maps_from(self, source: int, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(alpha index chosen by GCV, held-out squared errors (n_test, slot)) of the maps from ``source``.

        With K = U diag(s²) U^T the source's training Gram, shrink_k = λ / (s²_k + λ) and G a target's
        training Gram, the training residual sum of squares is <U diag(shrink²) U^T, G> and the
        residual degrees of freedom are n_train - 1 (the training mean) - sum(1 - shrink). A held-out
        text with cross-kernel row k and target cross-Gram row c gets the dual weights
        a = U diag(1 / (s² + λ)) U^T k and the squared error ||y||² - 2 a·c + a^T G a.
        """
        from scipy.linalg import eigh

        kernel = self.train[source]
        s2, U32 = eigh(kernel, driver="evd", check_finite=False)
        s2 = np.clip(s2.astype(np.float64), 0.0, None)
        scale = float(np.trace(kernel, dtype=np.float64)) / self.ranks[source]
        lambdas = alphas * (scale if scale > 0 else 1.0)  # a constant layer predicts 0 whatever the ridge
        shrink = lambdas[:, None] / (s2 + lambdas[:, None])  # (alpha, n_train)
        residual_maps = []
        for keep in shrink.astype(np.float32):
            scaled = U32 * keep
            residual_maps.append((scaled @ scaled.T).ravel())
        rss = np.stack(residual_maps) @ self.train.reshape(len(self.train), -1).T  # (alpha, slot)
        dof = self.n_train - 1 - (1 - shrink).sum(1)
        picked = np.argmin(rss / dof[:, None] ** 2, axis=0)
        projected = self.cross[source] @ U32  # (n_test, n_train)
        errors = np.empty_like(self.test_norms)
        for index in np.unique(picked):
            weights = (projected / (s2 + lambdas[index]).astype(np.float32)) @ U32.T  # dual weights (n_test, n_train)
            for target in np.flatnonzero(picked == index):
                quadratic = np.einsum("ij,ij->i", weights @ self.train[target], weights)
                cross = np.einsum("ij,ij->i", self.cross[target], weights)
                errors[:, target] = self.test_norms[:, target] - 2 * cross + quadratic
        return picked, np.clip(errors, 0.0, None)  # float rounding can push a near-perfect fit below 0


def _standardise(x: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, int]:
    """Vectors z-scored with the training rows' mean and std (float32), and the number of dimensions kept.

    A dimension that is constant on the training rows is set to 0 rather than divided by its std: the
    training fold cannot fit it, and a tiny std would turn its held-out rounding noise into huge errors.
    """
    x = np.asarray(x, dtype=np.float64)
    mean, std = x[train].mean(0), x[train].std(0)
    active = std > _STD_FLOOR * std.max()
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=active)
    return ((x - mean) * scale).astype(np.float32), int(active.sum())


def _pairs(arrays: Mapping[str, np.ndarray], slots: list[tuple[str, int]], alpha: np.ndarray) -> pd.DataFrame:
    n = len(slots)
    source, target = np.repeat(np.arange(n), n), np.tile(np.arange(n), n)
    models = np.array([model for model, _ in slots], dtype=object)
    layers = np.array([layer for _, layer in slots])
    depths = np.array([layer / (arrays[model].shape[1] - 1) for model, layer in slots])
    return pd.DataFrame(
        {
            "source_model": models[source],
            "source_layer": layers[source],
            "target_model": models[target],
            "target_layer": layers[target],
            "source_depth": depths[source],
            "target_depth": depths[target],
            "alpha": alpha,
        }
    )


def _best_rows(
    block: pd.DataFrame, r2: np.ndarray, r2_boot: np.ndarray, source_model: str, target_model: str, ci: float
) -> tuple[pd.DataFrame, np.ndarray]:
    """The best target layer of each source layer of one model pair, and its depth in every resample.

    A target without variance (R² NaN) is never the best.
    """
    source_layers = block["source_layer"].unique()
    target_layers = block["target_layer"].unique()
    shape = (len(source_layers), len(target_layers))
    index = block.index.to_numpy().reshape(shape)
    depth_of = block["target_depth"].to_numpy().reshape(shape)[0]
    source_depth = block["source_depth"].to_numpy().reshape(shape)[:, 0]
    point = np.nan_to_num(r2[index], nan=-np.inf)
    best = point.argmax(1)
    best_boot = depth_of[np.nan_to_num(r2_boot[:, index], nan=-np.inf).argmax(2)]  # (n_boot, source layer)
    depth_lo, depth_hi = percentile_interval(best_boot, ci)
    offset_lo, offset_hi = percentile_interval(best_boot - source_depth, ci)
    frame = pd.DataFrame(
        {
            "source_model": source_model,
            "target_model": target_model,
            "source_layer": source_layers,
            "source_depth": source_depth,
            "best_layer": target_layers[best],
            "best_depth": depth_of[best],
            "best_depth_lo": depth_lo,
            "best_depth_hi": depth_hi,
            "offset": depth_of[best] - source_depth,
            "offset_lo": offset_lo,
            "offset_hi": offset_hi,
            "best_r2": point[np.arange(len(best)), best],
        }
    )
    return frame, best_boot


def _diagonal_row(best: pd.DataFrame, best_boot: np.ndarray, source_model: str, target_model: str, ci: float) -> dict:
    """Mean |offset| over source layers, and E|U - d| = (d² + (1 - d)²) / 2 averaged likewise for U ~ U[0, 1]."""
    depth = best["source_depth"].to_numpy()
    lo, hi = percentile_interval(np.abs(best_boot - depth).mean(1), ci)
    return {
        "source_model": source_model,
        "target_model": target_model,
        "mean_abs_offset": float(best["offset"].abs().mean()),
        "lo": float(lo),
        "hi": float(hi),
        "chance_abs_offset": float(((depth**2 + (1 - depth) ** 2) / 2).mean()),
        "n_layers": len(depth),
    }


def _validate(
    vectors: Mapping[str, np.ndarray], groups: np.ndarray, folds: int, alphas: Sequence[float]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    if not vectors:
        raise ValueError("need the vectors of at least one model")
    arrays = {model: np.asarray(array) for model, array in vectors.items()}
    for model, array in arrays.items():
        if array.ndim != 3 or array.shape[1] < 2:
            raise ValueError(f"{model}: vectors must be (n_texts, n_layers + 1 >= 2, d_model), got {array.shape}")
        finite = np.isfinite(array).all(axis=(0, 2))
        if not finite.all():
            raise ValueError(f"{model}: non-finite vectors at layer(s) {np.flatnonzero(~finite).tolist()}")
    sizes = {model: array.shape[0] for model, array in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"models hold vectors of different numbers of texts: {sizes}")
    n = next(iter(sizes.values()))
    if n < 2:
        raise ValueError(f"need at least 2 texts, got {n}")
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must hold one label per text ({n}), got shape {groups.shape}")
    n_groups = np.unique(groups).size
    if folds < 2 or n_groups < folds:
        raise ValueError(f"{n_groups} groups cannot fill {folds} cross-validation folds (need 2 <= folds <= groups)")
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or not (np.isfinite(alphas) & (alphas > 0)).all():
        raise ValueError(f"alphas must be a non-empty sequence of positive numbers, got {alphas.tolist()}")
    return arrays, groups, alphas
