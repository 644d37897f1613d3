"""The probe protocol's settings, in a module of their own so the solver, MDL and the protocol import them
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

from probes.probing.solver import DTYPES, SolverSettings

# auto: the type control where the labels are mostly a function of the declared type, the shortcut baselines elsewhere.
CONTROLS = ("auto", "type", "shortcut")

# The online code's C grid and inner CV folds (docs/methods.md §2.8), chosen per block on the prefix.
MDL_C_GRID = (0.001, 0.01, 0.1, 1.0)
MDL_INNER_FOLDS = 3


@dataclass(frozen=True)
class ProbeSettings:
    """The probe protocol; every field that changes a number is recorded with the results.

    ``tol`` is in the units of scikit-learn's ``lbfgs`` tolerance: a fit has converged when every
    component of the gradient of (mean training log-loss + ||w||^2 / (2 C n_train)) is below ``tol``
    in absolute value (scikit-learn's default is 1e-4; 1e-6 puts the probe well inside the region
    where test predictions no longer change). ``max_iter`` caps the L-BFGS iterations of each fit.
    ``null_permutations`` label permutations, each refitted over the whole layer sweep with the
    CV seeds' folds (to ``max(tol, NULL_TOL)``), give the null distribution of the best accuracy, the mean
    over seeds as the task's (0 turns the test off). ``refits`` bootstrap resamples of the examples are
    probed again from scratch, with folds of their own (to the null's tolerance), so that intervals include
    the variance of fitting the probe (0 leaves it out).
    ``mdl`` adds online-code MDL (:mod:`probes.probing.mdl`, C chosen per block on the prefix from
    ``mdl_C_grid`` by ``mdl_inner_folds``-fold CV) in ``mdl_orders`` transmission orders, whose spread the
    intervals include.
    ``dtype`` is the solver's float type: float32 halves the cost and reaches tolerances down to about
    1e-7 on real activations; below that it stalls at its precision until ``max_iter``, so use float64.
    """

    folds: int = 5
    seeds: tuple[int, ...] = (0,)
    C: float = 1.0
    tol: float = 1e-6
    max_iter: int = 500
    control: str = "auto"
    null_permutations: int = 19
    refits: int = 20
    device: str = "cpu"
    dtype: str = "float32"
    mdl: bool = True
    mdl_C_grid: tuple[float, ...] = MDL_C_GRID
    mdl_inner_folds: int = MDL_INNER_FOLDS
    mdl_orders: int = 3

    @property
    def solver(self) -> SolverSettings:
        """The fields the batched solver reads."""
        return SolverSettings(C=self.C, tol=self.tol, max_iter=self.max_iter, device=self.device, dtype=self.dtype)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty tuple of distinct integers, got {self.seeds!r}")
        if not self.C > 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {self.control!r}")
        if self.null_permutations < 0:
            raise ValueError(f"null_permutations must be >= 0, got {self.null_permutations}")
        if self.refits == 1 or self.refits < 0:
            raise ValueError(f"refits must be 0 (off) or >= 2, got {self.refits}")
        if self.mdl_orders < 1:
            raise ValueError(f"mdl_orders must be >= 1, got {self.mdl_orders}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
