"""Online-code MDL of a task's labels given each layer's activations, with the regularisation of every block
chosen on the data sent before it (docs/methods.md §2).

The labels are sent in blocks, in a seeded random order (Voita & Titov 2020, after Blier & Ollivier 2018).
The first block, and any block whose prefix holds a single class, goes with the uniform code (1 bit a
label). Every other block is coded with an L2 logistic probe fitted on the whole prefix, at an inverse
regularisation ``C`` picked from a small grid by an inner, seeded k-fold cross-validation *on the prefix*
(criterion: the held-out code length, i.e. log-loss in bits) with the one-standard-error rule towards
regularisation: the smallest C whose held-out codelength is within one standard error (over the prefix's rows,
or groups) of the best grid value's. Nothing after the prefix is looked at, so the result is a code a receiver
could decode. A prefix too small to cross-validate codes its block with its own
label frequencies, the C -> 0 limit of the probe (whose intercept is not penalised): a probe standardised on
a handful of rows blows up every feature that happens to be nearly constant on them, and can then cost
hundreds of bits on a single later row.

All fits (layers x seeds x blocks x inner folds x grid, plus the full-prefix fit of every grid value) run as
two batched :func:`probes.probing.solver.fit_probes` calls, each problem at its own C: one for the small blocks, on
the rows they need, and one for the large ones.

Each row's influence on the codelength (its derivative with respect to the row's weight, :func:`_influence`) comes
with the bits, so that a bootstrap can see the variance of fitting the block probes, not only of the rows' own bits.

Why the one-standard-error rule rather than the best grid value: on a small prefix the held-out codelengths of
neighbouring grid values differ by less than their noise, and the argmin then jumps now and then to a large C that
costs the next block many bits. Those jumps were most of the codelength's variance across datasets, and the
influence, which holds each block's C fixed, cannot see them: on random balanced labels (n = 400, d = 32 and 128,
200 datasets x 3 layers) the normal interval codelength +- 1.96 sqrt(sum (U - mean U)^2) covered 0.877 and 0.872
under the argmin. Under the rule the choice is stable, the SD of the codelength across datasets halves (8.3 -> 4.5
and 7.6 -> 3.9 bits), the interval covers 0.963 and 0.973 at 1.08 and 1.22 times that SD, and the codelength falls
by 4 bits on average (compression 0.975 -> 0.984); with a signal (+-1 on one feature, 100 datasets) coverage is
0.967 and 0.973 and the mean codelength moves by -0.1% and +0.6%.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np

from probes.probing.settings import MDL_C_GRID, MDL_INNER_FOLDS, ProbeSettings
from probes.probing.solver import fit_probes, probe_inputs

MDL_FRACTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
# The online code's fits stop at scikit-learn's default tolerance: on SmolLM2's cities and comparisons
# activations a layer's codelength moves by at most 1e-4 of itself from the task probe's 1e-6, at 40% less cost.
MDL_TOL = 1e-4
# Each block's C is the smallest whose inner-CV held-out codelength is within this many of its standard errors of
# the best grid value's (the one-standard-error rule; 0 takes the best).
MDL_SE_RULE = 1.0
# How each block was sent (OnlineCode.selection).
UNIFORM, EMPTY, PRIOR, CROSS_VALIDATED = "uniform", "empty", "prior", "cv"

_MDL_STREAM = 0x3D1  # mixed with the seed for the transmission order, apart from the CV and control streams
_INNER_STREAM = 0x1F  # mixed with the seed, _MDL_STREAM and the block for the inner folds


@dataclass(frozen=True)
class OnlineCode:
    """The online code of the labels at every layer, for each seed's transmission order.

    ``bits`` (n_layers, n_seeds, n) is what each example's label costs, indexed by the rows of ``X`` (so
    bootstrap weights over rows apply directly). ``order`` (n_seeds, n) is the transmission order and
    ``boundaries`` (n_seeds, n_blocks) the end (exclusive, a position in ``order``) of each block; block 0
    is ``order[:boundaries[s, 0]]``. ``C`` (n_layers, n_seeds, n_blocks) is the C each block was coded at:
    NaN for blocks sent uniformly or empty, 0 for blocks coded with the prefix's label frequencies (the
    C -> 0 limit). ``selection`` (n_seeds, n_blocks) says how each block was sent: ``"uniform"`` (the first
    block, or a prefix of one class), ``"empty"`` (a block that group boundaries emptied), ``"prior"``
    (prefix too small for inner CV) or ``"cv"`` (C chosen by inner CV on the prefix). ``cv_bits``
    (n_layers, n_seeds, n_blocks, n_C) is the inner-CV held-out codelength of the prefix at each grid value
    (NaN where no CV ran) and ``cv_se`` its standard error, sqrt(u) times the SD of the held-out bits of the
    prefix's u units (rows, or groups): a ``"cv"`` block's C is the smallest grid value whose ``cv_bits`` is at
    most the smallest ``cv_bits`` plus that best value's ``cv_se`` (:data:`MDL_SE_RULE` standard errors), the
    one-standard-error rule, which keeps the choice from jumping to a large C on the noise of a small prefix.
    ``n_unconverged`` counts solver fits that stopped at ``max_iter``.

    ``influence`` (n_layers, n_seeds, n) is each row's infinitesimal-jackknife influence U_i, the derivative of
    the codelength with respect to the row's weight (multiplicity) at 1, with every block's C, the order and the
    block ends held fixed: its own bits plus how its weight in every later block's prefix moves that block's bits
    (see :func:`_influence`). A bootstrap resample with multiplicities W has codelength ~ codelength +
    sum_i (W_i - 1) U_i (Efron 2014's linear bootstrap), so sum_i (U_i - mean U)^2 estimates the variance of the
    codelength including that of fitting the block probes, which a bootstrap over fixed ``bits`` misses. It
    cannot see the choice of C changing between resamples: the one-standard-error rule is there to keep that
    change rare (see the module's docstring for the coverage with and without it).
    """

    bits: np.ndarray
    C: np.ndarray
    cv_bits: np.ndarray
    cv_se: np.ndarray
    selection: np.ndarray
    boundaries: np.ndarray
    order: np.ndarray
    seeds: tuple[int, ...]
    C_grid: tuple[float, ...]
    inner_folds: int
    n_unconverged: int
    influence: np.ndarray

    @property
    def codelength(self) -> np.ndarray:
        """Online codelength in bits, (n_layers, n_seeds)."""
        return self.bits.sum(-1)

    @property
    def compression(self) -> np.ndarray:
        """Uniform codelength (n bits) over online codelength, (n_layers, n_seeds)."""
        return self.bits.shape[-1] / self.codelength


def mdl_boundaries(n: int) -> np.ndarray:
    """Block ends of the online code: Voita & Titov's fractions of the data (0.1%, 0.2%, ..., 50%, 100%)."""
    return np.unique(np.clip(np.round(np.asarray(MDL_FRACTIONS) * n).astype(int), 1, n))


def online_code(
    X: np.ndarray,
    y: np.ndarray,
    settings: ProbeSettings,
    C_grid: tuple[float, ...] = MDL_C_GRID,
    inner_folds: int = MDL_INNER_FOLDS,
    groups: np.ndarray | None = None,
    whole_groups: bool = True,
) -> OnlineCode:
    """Online code of binary labels ``y`` given activations ``X`` (n, n_layers, d), per seed of ``settings``.

    The probe protocol (standardisation, solver, ``max_iter``, ``dtype``, ``device``) is that of ``settings``,
    with ``tol`` at least :data:`MDL_TOL`; its ``C`` and ``folds`` are not used: each block's C is chosen
    from ``C_grid`` by ``inner_folds``-fold CV on the prefix, as the smallest C whose held-out codelength is within
    one standard error of the best (the argmin over a grid is unstable on a small prefix, and its jumps to a large
    C are variance that the rows' influence, which holds C fixed, cannot see). With ``groups`` (one label per row)
    the inner folds keep groups together and the standard error is over groups; with ``whole_groups`` whole groups
    are also sent together and block ends move to the next group end, so no block holds part of a group already
    begun, while without it rows are sent one by one, as Voita & Titov send their examples.
    The same inputs always give the same bits.
    """
    X, y = probe_inputs(X, y)
    settings = dataclasses.replace(settings, tol=max(settings.tol, MDL_TOL))
    grid = tuple(sorted({float(c) for c in C_grid}))
    if not grid or not all(math.isfinite(c) and c > 0 for c in grid):
        raise ValueError(f"C_grid must hold positive numbers, got {C_grid!r}")
    if inner_folds < 2:
        raise ValueError(f"inner_folds must be >= 2, got {inner_folds}")
    n, n_layers = X.shape[0], X.shape[1]
    codes = _group_codes(groups, n)
    seeds = tuple(settings.seeds)
    orders, ends = zip(*(_transmission(n, seed, codes if whole_groups else None) for seed in seeds))
    order, boundaries = np.array(orders), np.array(ends)
    n_seeds, n_blocks = boundaries.shape

    bits = np.zeros((n_layers, n_seeds, n))
    C = np.full((n_layers, n_seeds, n_blocks), np.nan)
    cv_bits = np.full((n_layers, n_seeds, n_blocks, len(grid)), np.nan)
    selection = np.full((n_seeds, n_blocks), UNIFORM, dtype=object)
    # What to fit: (seed index, block, prefix, block rows, held-out rows of each inner fold) per coded block.
    plan: list[tuple[int, int, np.ndarray, np.ndarray, list[np.ndarray]]] = []
    for s, seed in enumerate(seeds):
        bits[:, s, order[s, : boundaries[s, 0]]] = 1.0
        for j in range(1, n_blocks):
            prefix, block = order[s, : boundaries[s, j - 1]], order[s, boundaries[s, j - 1] : boundaries[s, j]]
            if not block.size:
                selection[s, j] = EMPTY
            elif np.unique(y[prefix]).size < 2:
                bits[:, s, block] = 1.0
            else:
                folds = _inner_folds(y[prefix], None if codes is None else codes[prefix], inner_folds, seed, j)
                if folds is None:  # the C -> 0 limit: the prefix's label frequencies
                    selection[s, j], C[:, s, j] = PRIOR, 0.0
                    bits[:, s, block] = -np.log2(np.mean(y[prefix][:, None] == y[block][None], axis=0))
                else:
                    selection[s, j] = CROSS_VALIDATED
                    plan.append((s, j, prefix, block, [prefix[f] for f in folds]))

    n_unconverged = 0
    decisions: dict[tuple[int, int], np.ndarray] = {}
    cv_se = np.full_like(cv_bits, np.nan)
    units = np.arange(n) if codes is None else codes  # the inner folds' units: rows, or groups
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*probes did not reach tol", RuntimeWarning)
        for batch in _batches(plan, n):
            n_unconverged += _code_blocks(X, y, settings, grid, batch, units, bits, C, cv_bits, cv_se, decisions)
    if not np.isfinite(bits).all():
        bad = np.argwhere(~np.isfinite(bits).all(-1))
        raise FloatingPointError(f"non-finite codelength at (layer, seed index) {bad[:5].tolist()}; see the solver")
    if n_unconverged:
        warnings.warn(
            f"{n_unconverged} online-code fits did not reach tol={settings.tol} within max_iter={settings.max_iter}",
            RuntimeWarning,
            stacklevel=2,
        )
    return OnlineCode(
        bits=bits,
        C=C,
        cv_bits=cv_bits,
        cv_se=cv_se,
        selection=selection.astype(str),
        boundaries=boundaries,
        order=order,
        seeds=seeds,
        C_grid=grid,
        inner_folds=inner_folds,
        n_unconverged=n_unconverged,
        influence=_influence(X, y, order, boundaries, selection, C, decisions, bits),
    )


# ---------------------------------------------------------------------------------------------------
# Internals


_SMALL_BLOCKS = 0.25  # blocks ending within this fraction of the rows are fitted together, on the rows they need


def _batches(plan: list, n: int) -> list[list]:
    """Blocks fitted together: the small ones (on the few rows they need) and the rest (on all rows).

    Every fit costs a few dozen L-BFGS iterations whatever its size, so fewer, larger batches are faster;
    small blocks apart keep their fits on the rows they need and their preconditioner scaled to them.
    """
    small = [entry for entry in plan if entry[2].size + entry[3].size <= _SMALL_BLOCKS * n]
    large = [entry for entry in plan if entry[2].size + entry[3].size > _SMALL_BLOCKS * n]
    return [batch for batch in (small, large) if batch]


def _code_blocks(
    X: np.ndarray,
    y: np.ndarray,
    settings: ProbeSettings,
    grid: tuple[float, ...],
    plan: list[tuple[int, int, np.ndarray, np.ndarray, list[np.ndarray]]],
    units: np.ndarray,
    bits: np.ndarray,
    C: np.ndarray,
    cv_bits: np.ndarray,
    cv_se: np.ndarray,
    decisions: dict[tuple[int, int], np.ndarray],
) -> int:
    """Code the blocks of ``plan`` into ``bits``, ``C``, ``cv_bits`` and ``cv_se``; returns the number of
    unconverged fits.

    One :func:`fit_probes` call for the whole grid, on the rows the blocks need (their prefixes and blocks):
    for each block and grid value one fit per inner fold and one on the full prefix, whose bits are kept for
    the grid value the inner folds choose (per layer, :func:`_choose`). ``units`` (one per row: the row itself, or
    its group) are what the inner folds deal, and what the standard error of a held-out codelength is taken over.
    The chosen fit's decision values on the prefix, then the block, go into ``decisions[seed index, block]``
    (n_layers, prefix + block rows), for :func:`_influence`.
    """
    rows = np.unique(np.concatenate([np.concatenate([prefix, block]) for _, _, prefix, block, _ in plan]))
    where = np.full(X.shape[0], -1)
    where[rows] = np.arange(rows.size)
    problems = []  # (plan index, held-out rows or None for the full prefix, training mask)
    for p, (_, _, prefix, _, folds) in enumerate(plan):
        for held_out in [None, *folds]:
            mask = np.zeros(rows.size, dtype=bool)
            mask[where[prefix]] = True
            if held_out is not None:
                mask[where[held_out]] = False
            problems.append((p, held_out, mask))
    y_rows, X_rows = y[rows], X[rows]
    train = np.tile(np.array([mask for *_, mask in problems]), (len(grid), 1))  # grid value, then problem
    labels = np.broadcast_to(y_rows, train.shape)
    fit = _fit(X_rows, labels, train, settings, np.repeat(np.asarray(grid), len(problems)))
    n_unconverged = int((~fit.converged).sum())
    row_bits = _bits(fit.decision, y_rows).reshape(X.shape[1], len(grid), len(problems), rows.size)
    row_bits = np.where(np.isfinite(row_bits), row_bits, np.inf)
    k = 0  # problem index of the plan entry's full-prefix fit
    for s, j, prefix, block, folds in plan:
        # Every prefix row is held out once: its held-out bits at each grid value, summed by unit.
        held_out = np.concatenate(folds)
        held = np.concatenate([row_bits[:, :, k + 1 + f, where[rows_f]] for f, rows_f in enumerate(folds)], -1)
        unit_of_row = np.unique(units[held_out], return_inverse=True)[1].ravel()
        per_unit = np.zeros((*held.shape[:2], unit_of_row.max() + 1))
        np.add.at(per_unit, (slice(None), slice(None), unit_of_row), held)
        cv_bits[:, s, j] = per_unit.sum(-1)
        cv_se[:, s, j] = _standard_error(per_unit)
        per_c = row_bits[:, :, k, where[block]]  # (layer, grid value, block row)
        # A grid value whose fit diverged (on separable data at a large C, the float32 solver can overflow) is
        # not a code a receiver could use: it is never chosen; if every value diverged the job stops below.
        usable = np.where(np.isfinite(per_c).all(-1), cv_bits[:, s, j], np.inf)
        chosen = _choose(usable, cv_se[:, s, j])  # (layer,)
        C[:, s, j] = np.asarray(grid)[chosen]
        bits[:, s, block] = np.take_along_axis(per_c, chosen[:, None, None], 1)[:, 0]
        problem = chosen * len(problems) + k  # the chosen full-prefix fit's problem index, per layer
        decisions[s, j] = fit.decision[np.arange(X.shape[1])[:, None], problem[:, None], where[np.r_[prefix, block]]]
        k += 1 + len(folds)
    return n_unconverged


def _standard_error(per_unit: np.ndarray) -> np.ndarray:
    """Standard error of a sum over units (last axis) of their held-out bits: sqrt(u) times their sample SD."""
    u = per_unit.shape[-1]
    with np.errstate(invalid="ignore"):
        spread = ((per_unit - per_unit.mean(-1, keepdims=True)) ** 2).sum(-1)
    return np.sqrt(spread * u / max(u - 1, 1))


def _choose(cv: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Index into the (ascending) grid of the chosen C, per layer, from the held-out codelengths ``cv`` and their
    standard errors ``se`` (layer, grid value): the one-standard-error rule towards regularisation, the smallest C
    whose held-out codelength is within :data:`MDL_SE_RULE` standard errors of the best one (0: the best one)."""
    best = np.argmin(cv, axis=-1)
    threshold = np.take_along_axis(cv + MDL_SE_RULE * np.nan_to_num(se, posinf=0.0), best[:, None], -1)
    return np.argmax(cv <= threshold, axis=-1)


def _fit(X: np.ndarray, labels: np.ndarray, train: np.ndarray, settings: ProbeSettings, C: np.ndarray):
    """:func:`fit_probes` at each problem's ``C``, with the problems whose decisions are not finite refitted in
    float64, where they converge.

    A safety net: the float32 solver has had rare NaN paths on tiny, separable training sets (docs/methods.md
    §2.8); float64 solved every one of them. Only the affected layers and problems are refitted.
    """
    fit = fit_probes(X, labels, train, settings.solver, C=C)
    bad = ~np.isfinite(fit.decision).all(-1)  # (layer, problem)
    if bad.any() and settings.dtype != "float64":
        layers, problems = np.flatnonzero(bad.any(1)), np.flatnonzero(bad.any(0))
        again = fit_probes(
            X[:, layers],
            labels[problems],
            train[problems],
            dataclasses.replace(settings.solver, dtype="float64"),
            C=C[problems],
        )
        for field in ("coef", "intercept", "decision", "n_iter", "converged"):
            getattr(fit, field)[np.ix_(layers, problems)] = getattr(again, field)
    return fit


def _bits(decision: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log2 p(label) from decision values: log2(1 + e^-z) for label 1, log2(1 + e^z) for label 0."""
    return np.logaddexp(0.0, np.where(y == 1, -1.0, 1.0) * decision) / math.log(2)


def _influence(
    X: np.ndarray,
    y: np.ndarray,
    order: np.ndarray,
    boundaries: np.ndarray,
    selection: np.ndarray,
    C: np.ndarray,
    decisions: dict[tuple[int, int], np.ndarray],
    bits: np.ndarray,
) -> np.ndarray:
    """Infinitesimal-jackknife influence of every row on the codelength, (n_layers, n_seeds, n).

    With row weights w (1 at the data), CL(w) = sum_j w_j bits_j(w), every block's probe minimising
    C sum_k w_k logloss_k + ||coef||^2 / 2 over its prefix at the block's chosen C (held fixed, as are the order
    and the block ends). dCL/dw_i = bits_i + sum over the later blocks t whose prefix holds i of
    d(bits of t)/dw_i. For a probe block, in the prefix's standardised coordinates with theta = (coef, intercept)
    and x~ = (x, 1): dtheta/dw_i = -H^-1 C (p_i - y_i) x~_i (implicit function theorem at the optimum), with
    H = C sum_prefix p(1-p) x~ x~^T + diag(1, ..., 1, 0), so d(bits of t)/dw_i = -C (p_i - y_i) x~_i^T H^-1 g_t / ln 2
    with g_t = sum_{j in t} (p_j - y_j) x~_j. A block coded with the prefix's label frequencies f moves with them
    (d(-log2 f_c)/dw_i = -([y_i = c] / n_c - 1 / m) / ln 2). Uniform blocks depend on no other row.

    The standardisation's own dependence on the prefix rows is ignored (differentiated with the prefix's scaler
    held fixed): centring changes nothing (the intercept is not penalised) and the scales, which each row moves by
    O(1/m), only reweigh the penalty; against refits with a weighted scaler this leaves out an rms 0.01-0.03 bits
    a row next to fitting terms of ~0.2 (about 1% of their variance). The intercept is
    eliminated exactly (a Schur complement: features centred at their p(1-p)-weighted prefix mean), which leaves
    I + C Z^T Z with Z = sqrt(p(1-p)) (x - mean): it is solved in the smaller of its d x d and (Woodbury) m x m
    forms, batched over layers, at a cost of a few GEMMs per block next to the code's thousands of solver
    iterations.
    """
    n_layers, n_seeds, n = bits.shape
    influence = bits.copy()
    for s in range(n_seeds):
        starts = np.concatenate([[0], boundaries[s, :-1]])
        for j in range(1, boundaries.shape[1]):
            prefix, block = order[s, : starts[j]], order[s, starts[j] : boundaries[s, j]]
            if selection[s, j] == PRIOR:
                counts = np.bincount(y[prefix], minlength=2)
                sent = np.bincount(y[block], minlength=2)
                influence[:, s, prefix] -= (sent / counts - block.size / prefix.size)[y[prefix]] / math.log(2)
            elif selection[s, j] == CROSS_VALIDATED:
                m = prefix.size
                z, labels = decisions[s, j], y[np.r_[prefix, block]]
                curvature = np.exp(-np.logaddexp(0.0, z[:, :m]) - np.logaddexp(0.0, -z[:, :m]))  # p(1 - p)
                residual = np.where(labels == 1, -_sigmoid(-z), _sigmoid(z))  # p - y, without cancellation
                x = _standardised(X[np.r_[prefix, block]].transpose(1, 0, 2), m)  # (layer, rows, d)
                weight = np.maximum(curvature.sum(-1), np.finfo(float).tiny)  # (layer,)
                x -= np.einsum("lk,lkd->ld", curvature, x[:, :m])[:, None] / weight[:, None, None]
                c = C[:, s, j]
                gradient = np.einsum("lj,ljd->ld", residual[:, m:], x[:, m:])
                v = _solve_ridge(np.sqrt(curvature)[..., None] * x[:, :m], c, gradient)  # (I + C Z^T Z)^-1 g
                moved = (
                    c[:, None] * np.einsum("lkd,ld->lk", x[:, :m], v)
                    + residual[:, m:].sum(-1)[:, None] / weight[:, None]
                )
                influence[:, s, prefix] -= residual[:, :m] * moved / math.log(2)
    return influence


def _standardised(X: np.ndarray, m: int) -> np.ndarray:
    """Rows of ``X`` (layer, rows, d) in the coordinates of the solver's standardisation on the first ``m``:
    their mean and ddof=0 std, in float64, with scale 1 where the solver finds a feature constant."""
    X = X.astype(np.float64)
    mean, var = X[:, :m].mean(1, keepdims=True), X[:, :m].var(1, keepdims=True)
    eps = np.finfo(np.float64).eps
    constant = var <= m * eps * var + (m * mean * eps) ** 2
    return (X - mean) / np.where(constant, 1.0, np.sqrt(var))


def _solve_ridge(Z: np.ndarray, C: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(I + C Z^T Z)^-1 g for Z (layer, m, d), C and g (layer,) and (layer, d): directly when d <= m, else by
    Woodbury, g - C Z^T (I + C Z Z^T)^-1 Z g; both matrices are symmetric with eigenvalues >= 1, so Cholesky
    (batched in torch, several times faster than numpy's stacked matmul and LU here)."""
    import torch

    Z, C, g = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (Z, C, g))
    m, d = Z.shape[1:]
    if d <= m:
        H = C[:, None, None] * (Z.mT @ Z) + torch.eye(d, dtype=Z.dtype)
        return torch.cholesky_solve(g[..., None], torch.linalg.cholesky(H))[..., 0].numpy()
    K = C[:, None, None] * (Z @ Z.mT) + torch.eye(m, dtype=Z.dtype)
    inner = torch.cholesky_solve(Z @ g[..., None], torch.linalg.cholesky(K))
    return (g - C[:, None] * (Z.mT @ inner)[..., 0]).numpy()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _group_codes(groups: np.ndarray | None, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must hold one label per row ({n}), got shape {groups.shape}")
    return np.unique(groups, return_inverse=True)[1].ravel()


def _transmission(n: int, seed: int, codes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A seed's transmission order and its block ends (positions in the order, exclusive).

    Without groups the order is ``default_rng([seed, 0x3D1]).permutation(n)`` and the ends are
    :func:`mdl_boundaries`. With groups the same stream permutes the groups, a group's rows follow each
    other (in row order), and each end moves forward to the end of the group it falls in; ends that then
    coincide leave empty blocks, so every seed has the same number of blocks.
    """
    rng = np.random.default_rng([seed, _MDL_STREAM])
    nominal = mdl_boundaries(n)
    if codes is None:
        return rng.permutation(n), nominal
    rank = np.empty(int(codes.max()) + 1, dtype=np.int64)
    rank[rng.permutation(rank.size)] = np.arange(rank.size)
    order = np.lexsort((np.arange(n), rank[codes]))
    group_ends = np.flatnonzero(np.diff(rank[codes[order]], append=rank.size)) + 1
    return order, group_ends[np.searchsorted(group_ends, nominal)]


def _inner_folds(y: np.ndarray, codes: np.ndarray | None, k: int, seed: int, block: int) -> list[np.ndarray] | None:
    """Held-out rows (indices into the prefix) of each inner fold, or None when the prefix is too small.

    Folds are stratified: the prefix's rows (or groups, by their share of class 1, so that minimal pairs,
    which hold both classes, are dealt like any other group) are shuffled within each class (share) by
    ``default_rng([seed, 0x3D1, 0x1F, block])`` and dealt round-robin, class after class. Inner CV needs at
    least 2k rows of each class in the prefix (and k groups holding it), so every inner training set holds
    at least half of each class; otherwise the block is coded with the prefix's label frequencies.
    """
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2 * k:
        return None
    rng = np.random.default_rng([seed, _MDL_STREAM, _INNER_STREAM, block])
    if codes is None:
        units, unit_of_row = np.arange(y.size), np.arange(y.size)
        share = y
    else:
        units, unit_of_row = np.unique(codes, return_inverse=True)
        share = np.bincount(unit_of_row, weights=y) / np.bincount(unit_of_row)  # a group's fraction of class 1
        if min((share > 0).sum(), (share < 1).sum()) < k:  # groups that hold each class
            return None
    dealt = np.concatenate([rng.permutation(np.flatnonzero(share == level)) for level in np.unique(share)])
    fold_of_unit = np.empty(units.size, dtype=np.int64)
    fold_of_unit[dealt] = np.arange(dealt.size) % k
    fold_of_row = fold_of_unit[unit_of_row.ravel()]
    folds = [np.flatnonzero(fold_of_row == f) for f in range(k)]
    for held_out in folds:
        train = np.ones(y.size, dtype=bool)
        train[held_out] = False
        if not held_out.size or np.unique(y[train]).size < 2:
            return None
    return folds
