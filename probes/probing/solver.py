"""The batched L-BFGS solver behind every probe: thousands of L2 logistic regressions as one torch solve.

Each problem is scikit-learn's objective, C * sum(log-loss) + ||w||^2 / 2 with an unpenalised intercept, on
features standardised with the problem's training statistics; :func:`fit_probes` solves every layer x problem
at once and agrees with ``sklearn.linear_model.LogisticRegression`` to the solver tolerance (tested), and
``benchmarks/bench_probes.py`` measures the speed-up. The probe protocol around it is :mod:`probes.probing.protocol`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from tqdm.auto import tqdm


# Solver constants. None of them changes the solution, only how fast it is reached.
_HISTORY = 10  # L-BFGS memory (pairs of steps and gradient changes)
_PRECOND_FLOOR = 0.05  # preconditioner directions must be able to add this much curvature to the identity
_LINE_SEARCH_STEPS = 2  # safeguarded 1-D Newton steps on the exact (convex) objective along each direction
_MEMORY_BUDGET = 2 << 30  # bytes of solver state per chunk of layers


DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class SolverSettings:
    """What the solver needs of a probe protocol: the objective's ``C``, the gradient tolerance ``tol`` (scikit-learn's
    ``lbfgs`` units), the iteration cap, and where and in which float type to solve."""

    C: float = 1.0
    tol: float = 1e-6
    max_iter: int = 500
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(frozen=True)
class ProbeFit:
    """Solutions of a batch of probes, in the standardised coordinates scikit-learn would report.

    Arrays are indexed [layer, problem, ...]: ``coef`` (d) and ``intercept`` equal
    ``LogisticRegression.coef_[0]`` / ``intercept_[0]`` fitted on the problem's standardised training
    rows, and ``decision`` (n) is its ``decision_function`` on every row, standardised the same way.
    """

    coef: np.ndarray
    intercept: np.ndarray
    decision: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray


def fit_probes(
    X: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    settings: SolverSettings,
    progress: bool = False,
    C: np.ndarray | None = None,
    tol: np.ndarray | None = None,
) -> ProbeFit:
    """Fit standardise + L2 logistic regression for every layer x problem at once.

    ``labels`` and ``train`` are (n_problems, n) arrays: the binary targets and the training rows of
    each problem, as a mask or as non-negative row weights (a bootstrap resample's multiplicities); every
    problem is fitted on every layer of ``X`` (n, n_layers, d). The objective is scikit-learn's,
    C * sum(weight * log-loss) + ||w||^2 / 2 with an unpenalised intercept, on features standardised with the
    problem's weighted training mean and (ddof=0) std, which is ``StandardScaler`` and ``LogisticRegression``
    fitted with ``sample_weight``. ``C`` and ``tol`` (n_problems,) give
    each problem its own inverse regularisation and tolerance instead of ``settings.C`` and ``settings.tol``,
    so that a grid of C, or fits to different tolerances, share one solve. A public seam so that notebooks
    and tests can inspect coefficients, not only scores.
    """
    import torch
    from tqdm.auto import tqdm

    X = np.asarray(X)
    labels = np.asarray(labels, dtype=np.float64)
    train = np.asarray(train, dtype=np.float64)
    n, n_layers, d = X.shape
    n_problems = labels.shape[0]
    if labels.shape != (n_problems, n) or train.shape != labels.shape:
        raise ValueError(f"labels {labels.shape} and train {train.shape} must both be (n_problems, {n})")
    if not (np.isfinite(train) & (train >= 0)).all():
        raise ValueError("train must be a mask or non-negative finite row weights")
    C = _per_problem("C", settings.C if C is None else C, n_problems)
    tol = _per_problem("tol", settings.tol if tol is None else tol, n_problems)
    for p in range(n_problems):
        if np.unique(labels[p, train[p] > 0]).size != 2:
            raise ValueError(f"problem {p}: its training rows must hold both classes")

    device, dtype = torch.device(settings.device), getattr(torch, settings.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    # Solver state (activations, preconditioner, iterates, L-BFGS history, margins) plus float64 temporaries.
    rank = min(n, d)
    state = n * d + rank * (d + rank) + (2 * _HISTORY + 10) * n_problems * (d + 1) + _HISTORY * n_problems * rank
    per_layer = itemsize * (state + 8 * n * n_problems) + 8 * 4 * n * d
    chunk = max(1, min(n_layers, _MEMORY_BUDGET // per_layer))

    out = ProbeFit(
        coef=np.zeros((n_layers, n_problems, d)),
        intercept=np.zeros((n_layers, n_problems)),
        decision=np.zeros((n_layers, n_problems, n)),
        n_iter=np.zeros((n_layers, n_problems), dtype=np.int64),
        converged=np.zeros((n_layers, n_problems), dtype=bool),
    )
    targets = torch.as_tensor(labels, dtype=dtype, device=device)  # (P, n)
    mask = torch.as_tensor(train, dtype=dtype, device=device)  # (P, n)
    inverse_penalty = torch.as_tensor(C, dtype=dtype, device=device)  # (P,)
    tolerance = torch.as_tensor(tol, dtype=dtype, device=device)  # (P,)
    with tqdm(total=n_layers, desc="probe layers", unit="layer", disable=not progress) as bar:
        for start in range(0, n_layers, chunk):
            Xt, centre, inv_scale = _standardisation(X[:, start : start + chunk], train, dtype, device)
            batch = _Problems(Xt, centre, inv_scale, targets, mask, inverse_penalty)
            _lbfgs(batch, tolerance, settings.max_iter, start, out, bar)
    if not out.converged.all():
        tols = ", ".join(f"{value:g}" for value in np.unique(tol))
        warnings.warn(
            f"{int((~out.converged).sum())} of {out.converged.size} probes did not reach tol={tols} "
            f"within max_iter={settings.max_iter} L-BFGS iterations (median {np.median(out.n_iter):.0f}); "
            "raise max_iter or use dtype='float64' for very small tolerances",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


def _per_problem(name: str, value: float | np.ndarray, n_problems: int) -> np.ndarray:
    values = np.full(n_problems, value, dtype=np.float64) if np.ndim(value) == 0 else np.array(value, dtype=np.float64)
    if values.shape != (n_problems,) or not (np.isfinite(values) & (values > 0)).all():
        raise ValueError(f"{name} must hold one positive number per problem ({n_problems}), got {values.shape}")
    return values


def probe_inputs(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Activations (n, n_layers, d) and binary labels as every probe needs them, or an error saying what is wrong."""
    X = np.asarray(X)
    y = np.asarray(y).ravel()
    if X.ndim != 3:
        raise ValueError(f"X must be (n_examples, n_layers, d), got shape {X.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} examples but y has {y.shape[0]} labels")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite activations")
    classes = np.unique(y)
    if classes.size != 2 or not set(classes.tolist()) <= {0, 1}:
        raise ValueError(f"y must hold both binary classes 0 and 1, got classes {classes.tolist()}")
    return X, y.astype(np.int64)


def _standardisation(
    X: np.ndarray, train: np.ndarray, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Globally standardised activations plus each problem's training mean and 1/std in those units.

    Fitting on (x - centre) * inv_scale is exactly StandardScaler on the raw training rows (the
    affine maps compose), but the global step keeps float32 arithmetic well conditioned: fold means
    are then near 0 and fold stds near 1 even for "massive activation" dimensions. Statistics are
    float64; features that StandardScaler would call constant in a training fold (its own variance
    test) get scale 1. Returns Xt (layer, n, d), centre and inv_scale (layer, problem, d).
    """
    import torch

    raw = torch.tensor(np.asarray(X), dtype=torch.float64, device=device)  # a copy: standardised in place below
    n, n_layers, d = raw.shape
    raw = raw.reshape(n, -1)
    mean = raw.mean(0)
    std = raw.std(0, correction=0)
    std = torch.where(std == 0, 1.0, std)
    Xt = raw.sub_(mean).div_(std)
    mask = torch.as_tensor(train, dtype=torch.float64, device=device)
    n_train = mask.sum(1, keepdim=True)
    centre = (mask @ Xt) / n_train
    second = (mask @ Xt.square()) / n_train
    var = (second - centre.square()).clamp_min_(0)
    # One-pass variance loses digits when a fold's variance is tiny next to the global one; redo those
    # two-pass. (Features constant over all rows are exactly 0 here and need no second pass.)
    suspect = (var <= 1e-8 * second) & (second > 0)
    for p in torch.nonzero(suspect.any(1)).flatten().tolist():
        cols = torch.nonzero(suspect[p]).flatten()
        weights = mask[p][:, None]
        rows = Xt[:, cols]
        mean_p = (weights * rows).sum(0) / n_train[p]
        var[p, cols] = (weights * (rows - mean_p).square()).sum(0) / n_train[p]
    raw_mean, raw_var = mean + centre * std, var * std.square()
    eps = torch.finfo(torch.float64).eps
    constant = raw_var <= n_train * eps * raw_var + (n_train * raw_mean * eps).square()
    inv_scale = std / torch.where(constant, 1.0, raw_var.sqrt())

    def by_layer(a: torch.Tensor) -> torch.Tensor:
        return a.reshape(-1, n_layers, d).transpose(0, 1).to(dtype).contiguous()

    return by_layer(Xt), by_layer(centre), by_layer(inv_scale)


class _Problems:
    """The objectives of one chunk of layers x problems, sharing each layer's activations.

    A problem's weights w live in its standardised coordinates; its margins on all rows are
    Xt @ (w * inv_scale) + b - centre . (w * inv_scale), one batched GEMM per layer for all problems.
    Margins and per-row tensors are laid out (layer, problem, row) so both GEMMs are row-major.
    """

    def __init__(self, Xt, centre, inv_scale, targets, mask, C: torch.Tensor) -> None:
        self.Xt, self.targets, self.mask, self.C = Xt, targets, mask, C  # C: (P,)
        self.inv_scale = inv_scale
        self.shifted = centre * inv_scale
        self.n_train = mask.sum(-1)  # (P,)
        # Keep the directions where even the largest logistic curvature, 1/4, adds _PRECOND_FLOOR to the Hessian
        # of the problem that weighs its data most (a direction only costs time where C is small).
        floor = _PRECOND_FLOOR * 4 * Xt.shape[1] / float((C * self.n_train).max())
        self.basis, self.spectrum = _principal_directions(Xt, floor)  # (layer, rank, d), (layer, rank)

    def select(self, keep: torch.Tensor) -> None:
        """Drop finished layers so that later iterations only pay for the active ones."""
        self.Xt, self.inv_scale, self.shifted = self.Xt[keep], self.inv_scale[keep], self.shifted[keep]
        self.basis, self.spectrum = self.basis[keep], self.spectrum[keep]

    def select_problems(self, keep: torch.Tensor) -> None:
        """Drop problems finished on every active layer, so that a few slow fits do not carry the rest along."""
        self.targets, self.mask, self.n_train = self.targets[keep], self.mask[keep], self.n_train[keep]
        self.C = self.C[keep]
        self.inv_scale, self.shifted = self.inv_scale[:, keep], self.shifted[:, keep]

    def margins(
        self, w: torch.Tensor, b: torch.Tensor, layers: torch.Tensor | None = None, problems: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(layer, P, n) decision values of weights (layer, P, d) and intercepts (layer, P).

        ``layers`` and ``problems`` (masks over the active ones) evaluate only those.
        """
        import torch

        Xt, inv_scale, shifted = self.Xt, self.inv_scale, self.shifted
        if layers is not None:
            Xt, inv_scale, shifted = Xt[layers], inv_scale[layers], shifted[layers]
        if problems is not None:
            inv_scale, shifted = inv_scale[:, problems], shifted[:, problems]
        z = torch.bmm(w * inv_scale, Xt.transpose(1, 2))
        return z.add_((b - torch.linalg.vecdot(w, shifted))[..., None])

    def gradient(self, w: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient (w part, intercept part) and the mean logistic curvature p(1-p) of the training rows."""
        import torch

        p = torch.sigmoid(z)
        residual = (p - self.targets).mul_(self.mask).mul_(self.C[:, None])
        grad_b = residual.sum(-1)
        grad_w = torch.bmm(residual, self.Xt).mul_(self.inv_scale).add_(w).sub_(self.shifted * grad_b[..., None])
        curvature = torch.linalg.vecdot(p.mul_(1 - p), self.mask) / self.n_train
        return grad_w, grad_b, curvature


def _principal_directions(Xt: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Right singular vectors (layer, rank, d) and squared singular values of each layer's Xt.

    They make the L-BFGS preconditioner (see :func:`_lbfgs`), so only the speed of convergence,
    never the solution, depends on them. Exact, from the eigendecomposition of the smaller Gram
    matrix (O(min(n, d)^3) per layer). Directions whose squared singular value is below ``floor``
    barely change the Hessian and are dropped (zeroed where other layers of the chunk need them, so
    that every layer keeps one shape).
    """
    import torch

    n_layers, n, d = Xt.shape
    if n <= d:
        spectrum, vectors = torch.linalg.eigh(torch.bmm(Xt, Xt.transpose(1, 2)))
    else:
        spectrum, vectors = torch.linalg.eigh(torch.bmm(Xt.transpose(1, 2), Xt))
    keep = spectrum.flip(-1) >= floor
    rank = max(int(keep.sum(1).max()), 1)
    spectrum, vectors, keep = spectrum.flip(-1)[:, :rank], vectors.flip(-1)[:, :, :rank], keep[:, :rank]
    if n <= d:
        directions = torch.bmm(vectors.transpose(1, 2), Xt) * torch.where(keep, spectrum, 1.0).rsqrt()[..., None]
    else:
        directions = vectors.transpose(1, 2)
    return (directions * keep[..., None]).contiguous(), spectrum * keep


def _lbfgs(batch: _Problems, tol: torch.Tensor, max_iter: int, first_layer: int, out: ProbeFit, bar: tqdm) -> None:
    """Minimise every objective of ``batch`` with L-BFGS and write the solutions into ``out``.

    The initial inverse Hessian of each problem is that of I + C * mean(p(1-p)) * Z^T Z, with the
    fold's Z^T Z approximated by (n_train / n) Xt^T Xt on the layer's principal directions (identity
    elsewhere), and 1 / (C * sum p(1-p)) for the intercept, rescaled by the usual s'y / y'Hy factor.
    It follows the logistic curvature as the fit sharpens. Activations are strongly correlated, so
    this matters: on SmolLM2 residual streams it cuts the median iterations from ~370 to ~30.
    Margins are linear in the step, so the line search minimises the exact objective along the
    direction without further GEMMs. Problems stop individually at the gradient test of
    :class:`SolverSettings`; layers leave the batch once all their problems have, and problems once
    they have on every layer left.
    """
    import torch

    Xt = batch.Xt
    n_layers, n, d = Xt.shape
    n_problems = batch.targets.shape[0]
    C, n_train = batch.C, batch.n_train
    threshold = tol * C * n_train
    layer_ids = torch.arange(first_layer, first_layer + n_layers)
    tiny = torch.finfo(Xt.dtype).tiny
    curvature_floor = torch.finfo(Xt.dtype).eps ** 0.5  # of the intercept's preconditioner, see below

    prior = torch.linalg.vecdot(batch.mask, batch.targets) / n_train
    w = Xt.new_zeros(n_layers, n_problems, d)
    b = torch.log(prior / (1 - prior)).expand(n_layers, n_problems).clone()
    z = batch.margins(w, b)
    grad_w, grad_b, curvature = batch.gradient(w, z)
    grad_p = torch.bmm(grad_w, batch.basis.transpose(1, 2))  # gradient in the principal directions
    steps_w = Xt.new_zeros(_HISTORY, n_layers, n_problems, d)
    steps_b = Xt.new_zeros(_HISTORY, n_layers, n_problems)
    diffs_w, diffs_b = torch.zeros_like(steps_w), torch.zeros_like(steps_b)
    diffs_p = Xt.new_zeros(_HISTORY, n_layers, n_problems, batch.basis.shape[1])
    rho = Xt.new_zeros(_HISTORY, n_layers, n_problems)
    done = torch.zeros(n_layers, n_problems, dtype=torch.bool, device=Xt.device)
    converged = torch.zeros_like(done)
    n_iter = torch.zeros(n_layers, n_problems, dtype=torch.long, device=Xt.device)
    stored = 0

    def emit(layers: torch.Tensor, problems: torch.Tensor) -> None:
        """Write the solutions of the active ``layers`` x ``problems`` (masks) into ``out``."""
        ids, pids = layer_ids[layers.cpu()].numpy(), problem_ids[problems.cpu()].numpy()
        block = np.ix_(ids, pids)
        w_, b_ = w[layers][:, problems], b[layers][:, problems]
        out.coef[block] = w_.double().cpu().numpy()
        out.intercept[block] = b_.double().cpu().numpy()
        out.decision[block] = batch.margins(w_, b_, layers, problems).double().cpu().numpy()  # fresh margins
        out.n_iter[block] = n_iter[layers][:, problems].cpu().numpy()
        out.converged[block] = converged[layers][:, problems].cpu().numpy()

    def every(count: int) -> torch.Tensor:
        return torch.ones(count, dtype=torch.bool, device=Xt.device)

    problem_ids = torch.arange(n_problems)
    for iteration in range(max_iter + 1):
        small = torch.maximum(grad_w.abs().amax(-1), grad_b.abs()) <= threshold
        converged |= small & ~done
        done |= small
        if iteration == max_iter:
            done[:] = True
        finished = done.all(1)
        if finished.any():
            emit(finished, every(len(problem_ids)))
            bar.update(int(finished.sum()))
            keep = ~finished
            if not keep.any():
                return
            batch.select(keep)
            layer_ids, w, b, z = layer_ids[keep.cpu()], w[keep], b[keep], z[keep]
            grad_w, grad_b, grad_p, curvature = grad_w[keep], grad_b[keep], grad_p[keep], curvature[keep]
            steps_w, steps_b, diffs_w, diffs_b = steps_w[:, keep], steps_b[:, keep], diffs_w[:, keep], diffs_b[:, keep]
            diffs_p = diffs_p[:, keep]
            rho, done, converged, n_iter = rho[:, keep], done[keep], converged[keep], n_iter[keep]
        # Every problem's iterates are independent of the others', so a problem done on every active layer
        # leaves the batch too, once a quarter of them have (each removal copies the solver state).
        stopped = done.all(0)
        if 4 * int(stopped.sum()) >= len(problem_ids):
            emit(every(len(layer_ids)), stopped)
            keep = ~stopped
            batch.select_problems(keep)
            problem_ids, threshold, C, n_train = problem_ids[keep.cpu()], threshold[keep], batch.C, batch.n_train
            w, b, z = w[:, keep], b[:, keep], z[:, keep]
            grad_w, grad_b, grad_p, curvature = grad_w[:, keep], grad_b[:, keep], grad_p[:, keep], curvature[:, keep]
            steps_w, steps_b = steps_w[:, :, keep], steps_b[:, :, keep]
            diffs_w, diffs_b, diffs_p = diffs_w[:, :, keep], diffs_b[:, :, keep], diffs_p[:, :, keep]
            rho, done, converged, n_iter = rho[:, :, keep], done[:, keep], converged[:, keep], n_iter[:, keep]

        # Two-loop recursion around the curvature-scaled principal-direction preconditioner H0.
        scale = (C * curvature * n_train / n)[..., None] * batch.spectrum[:, None, :]
        shrink = scale / (1 + scale)  # H0 = I - V diag(shrink) V^T on w
        # Floored: once a separable fold's margins are large its curvature is ~0, and 1 / curvature would
        # blow the float32 rounding noise of the intercept gradient up into steps that end in NaN.
        intercept_scale = 1 / (C * n_train * curvature.clamp_min(curvature_floor))
        q_w, q_b, q_p = grad_w.clone(), grad_b.clone(), grad_p.clone()
        history = [i % _HISTORY for i in range(stored - 1, max(stored - _HISTORY, 0) - 1, -1)]  # newest first
        alphas = []
        for i in history:
            a = rho[i] * (torch.linalg.vecdot(steps_w[i], q_w) + steps_b[i] * q_b)
            q_w.addcmul_(a[..., None], diffs_w[i], value=-1)
            q_b.addcmul_(a, diffs_b[i], value=-1)
            q_p.addcmul_(a[..., None], diffs_p[i], value=-1)  # keeps q_p = V^T q without a GEMM
            alphas.append(a)
        q_w.sub_(torch.bmm(q_p.mul_(shrink), batch.basis))
        q_b.mul_(intercept_scale)
        if history:
            i = history[0]
            yhy = torch.linalg.vecdot(diffs_w[i], diffs_w[i]) - torch.linalg.vecdot(shrink, diffs_p[i] ** 2)
            yhy += intercept_scale * diffs_b[i] ** 2
            # y'H0y > 0 in exact arithmetic; when float32 cancellation makes it <= 0 it says nothing (and
            # 1 / tiny would turn the direction into inf, then NaN), so that pair leaves the scale at 1.
            gamma = torch.where((rho[i] > 0) & (yhy > 0), 1 / (rho[i] * yhy).clamp_min(tiny), 1.0)
            q_w.mul_(gamma[..., None])
            q_b.mul_(gamma)
        for i, a in zip(reversed(history), reversed(alphas)):
            beta = rho[i] * (torch.linalg.vecdot(diffs_w[i], q_w) + diffs_b[i] * q_b)
            q_w.addcmul_((a - beta)[..., None], steps_w[i])
            q_b.addcmul_(a - beta, steps_b[i])
        active = ~done
        sign = active.to(q_w.dtype).neg_()  # direction -H g, zero for problems that have stopped
        dir_w, dir_b = q_w.mul_(sign[..., None]), q_b.mul_(sign)

        dz = batch.margins(dir_w, dir_b)
        step = torch.where(active, _line_search(batch, z, dz, w, dir_w), 0.0)
        slot = stored % _HISTORY
        steps_w[slot] = dir_w.mul_(step[..., None])
        steps_b[slot] = dir_b.mul_(step)
        w = w + steps_w[slot]
        b = b + steps_b[slot]
        z.addcmul_(step[..., None], dz)
        new_w, new_b, curvature = batch.gradient(w, z)
        torch.sub(new_w, grad_w, out=diffs_w[slot])
        torch.sub(new_b, grad_b, out=diffs_b[slot])
        new_p = torch.bmm(new_w, batch.basis.transpose(1, 2))
        torch.sub(new_p, grad_p, out=diffs_p[slot])
        sy = torch.linalg.vecdot(steps_w[slot], diffs_w[slot]) + steps_b[slot] * diffs_b[slot]
        rho[slot] = torch.where(sy > 0, 1 / sy.clamp_min(tiny), 0.0)  # a pair without curvature is skipped
        stored += 1  # noqa: SIM113 (counts stored pairs; the loop index counts iterations)
        grad_w, grad_b, grad_p = new_w, new_b, new_p
        n_iter += active


def _line_search(
    batch: _Problems, z: torch.Tensor, dz: torch.Tensor, w: torch.Tensor, dir_w: torch.Tensor
) -> torch.Tensor:
    """Step length along each direction: safeguarded Newton on the convex 1-D objective, from t = 1.

    phi(t) = C sum log-loss(z + t dz) + ||w + t d||^2 / 2; its derivatives cost O(n) per problem
    because the margins along the direction are already known. Each evaluation narrows a bracket
    around the minimiser (phi' < 0 at lo, >= 0 at hi); a Newton step that leaves the bracket is
    replaced by bisection, or by doubling while no upper end is known.
    """
    import torch

    C, targets = batch.C, batch.targets
    masked_dz = batch.mask * dz
    masked_dz2 = masked_dz * dz
    w_dot = torch.linalg.vecdot(w, dir_w)
    d_dot = torch.linalg.vecdot(dir_w, dir_w)
    lo = torch.zeros_like(w_dot)
    hi = torch.full_like(w_dot, math.inf)
    t = torch.ones_like(w_dot)
    for _ in range(_LINE_SEARCH_STEPS):
        p = torch.sigmoid(torch.addcmul(z, t[..., None], dz))
        slope = C * torch.linalg.vecdot(masked_dz, p - targets) + w_dot + t * d_dot
        curve = C * torch.linalg.vecdot(masked_dz2, p.mul_(1 - p)) + d_dot
        lo = torch.where(slope < 0, t, lo)
        hi = torch.where(slope >= 0, t, hi)
        newton = t - slope / curve
        fallback = torch.where(torch.isinf(hi), 2 * lo, (lo + hi) / 2)
        t = torch.where((newton > lo) & (newton < hi), newton, fallback)
    return t
