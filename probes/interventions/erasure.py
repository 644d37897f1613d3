"""Concept erasure with LEACE (Belrose et al. 2023, docs/methods.md §8.2) and its control of the same size.

LEACE removes, with the smallest least-squares edit, every direction along which the class means differ, so
no linear probe beats a constant on the fitting rows. The control is the same fit on a random linear concept: the same
oblique form, affine bias, shrinkage and rank, so "effect minus control" asks only *which* direction was removed.
A random direction's edit can be many times the real one's on an anisotropic residual stream, and a control
that edits more manufactures an effect, so the control's direction is drawn to match the real edit size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

_CONTROL_STREAM = 0xC0DE  # mixed with the caller's seed, apart from the CV, null and bootstrap streams

if TYPE_CHECKING:
    import torch
    from concept_erasure import LeaceEraser

LEACE_SETTINGS = {
    "method": "leace",
    "affine": True,  # centre on the fitting rows' mean, which the edit then leaves unchanged
    "shrinkage": True,  # n_train ~ d: the sample covariance is near singular, its whitening unstable
    # the trace constraint mixes in an orthogonal projection that is no longer exactly guarding; it only
    # matters for erasure repeated at every layer, which this family does not do
    "constrain_cov_trace": False,
    "svd_tol": 0.01,  # the package's default, an absolute threshold in whitened units: rank is recorded
}
"""``concept_erasure.LeaceFitter`` settings of every eraser, real and control (recorded with each fit)."""


@dataclass(frozen=True)
class Eraser:
    """A float32 LEACE eraser, the rank of its edit, and its mean edit size ||x - erase(x)|| on the fitting rows.

    Calling it erases the concept from any (..., d) float tensor, returned in the input's dtype and device; the
    arithmetic is at least float32, since x - mean cancels badly in half precision on large activations.
    """

    eraser: LeaceEraser
    rank: int
    edit_size: float
    _moved: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch
        from concept_erasure import LeaceEraser

        dtype = torch.promote_types(x.dtype, torch.float32)
        key = (x.device, dtype)
        if key not in self._moved:
            e = self.eraser
            self._moved[key] = LeaceEraser(*(t.to(x.device, dtype) for t in (e.proj_left, e.proj_right, e.bias)))
        return self._moved[key](x.to(dtype)).to(x.dtype)


def concept_inputs(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors (n, d) and their binary labels, or an error saying what is wrong (the probes' own checks)."""
    from probes.probing.solver import probe_inputs

    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be (n_examples, d), got shape {X.shape}")
    X3, y = probe_inputs(X[:, None, :], y)
    return X3[:, 0], y


def fit_eraser(X: np.ndarray, y: np.ndarray) -> Eraser:
    """LEACE fitted in float64 on rows X (n, d) with 0/1 labels y, kept as a float32 eraser.

    The float32 copy is built with the ``LeaceEraser`` constructor, not ``.to``, which concept-erasure 0.2.4
    lacks.
    """
    import torch
    from concept_erasure import LeaceEraser, LeaceFitter

    X, y = concept_inputs(X, y)
    x = torch.as_tensor(X, dtype=torch.float64)
    exact = LeaceFitter.fit(x, torch.as_tensor(y, dtype=torch.float64), **LEACE_SETTINGS).eraser
    # the SVD zeroes, rather than drops, the directions below svd_tol
    rank = int((exact.proj_left.norm(dim=0) > 0).sum())
    edit_size = float((x - exact(x)).norm(dim=1).mean())
    single = LeaceEraser(exact.proj_left.float(), exact.proj_right.float(), exact.bias.float())
    return Eraser(single, rank, edit_size)


def random_eraser(
    X: np.ndarray, target_size: float, seed: int, size_band: float = 1.25, tries: int = 12
) -> tuple[Eraser, float]:
    """The control eraser: LEACE fitted the same way on a random linear concept z = (x − μ)·r, with its size ratio
    (control / real).

    The residual stream is so anisotropic that a direction drawn at random edits 0.2× to 10× what the concept's
    eraser does (and labels permuted at random give 0.2×, measured on SmolLM2), and an edit of another size makes
    an effect of its own. So r = Σ^(p/2) g for one seeded Gaussian g, with the power p found by bisection until
    the edit size is within a factor ``size_band`` of ``target_size``: p > 0 leans towards high-variance
    directions, p < 0 towards quiet ones. If ``tries`` fits do not reach the band the closest is kept, and its
    ratio says so. Several control draws are several ``seed``s.
    """
    import torch

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ValueError(f"X must be finite (n_examples, d), got shape {X.shape}")
    if not target_size > 0:
        raise ValueError(f"the real eraser's edit size must be positive to match a control to it, got {target_size}")
    if size_band < 1 or tries < 1:
        raise ValueError(f"need size_band >= 1 and tries >= 1, got size_band={size_band}, tries={tries}")
    from concept_erasure import LeaceEraser, LeaceFitter

    centred = X - X.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(X))
    scales = np.sqrt(np.clip(eigenvalues, eigenvalues.max() * 1e-12, None))
    g = np.random.default_rng([seed, _CONTROL_STREAM]).standard_normal(X.shape[1]) @ eigenvectors
    x = torch.as_tensor(X)
    best, best_ratio, low, high, power = None, np.nan, -4.0, 4.0, 0.0
    for _ in range(tries):
        direction = eigenvectors @ (scales**power * g)
        exact = LeaceFitter.fit(x, torch.as_tensor(centred @ direction), **LEACE_SETTINGS).eraser
        ratio = float((x - exact(x)).norm(dim=1).mean()) / target_size
        if best is None or abs(np.log(ratio)) < abs(np.log(best_ratio)):
            rank = int((exact.proj_left.norm(dim=0) > 0).sum())
            single = LeaceEraser(exact.proj_left.float(), exact.proj_right.float(), exact.bias.float())
            best, best_ratio = Eraser(single, rank, ratio * target_size), ratio
        if max(ratio, 1 / ratio) <= size_band:
            break
        low, high = (power, high) if ratio < 1 else (low, power)
        power = (low + high) / 2
    return best, float(best_ratio)
