"""The causal checks' settings: sizes that set their cost, and the choices each number depends on."""

from __future__ import annotations

from dataclasses import dataclass

POSITIONS = ("read", "from_read")
STEERING_VECTORS = ("probe", "mean_difference")


@dataclass(frozen=True)
class CausalSettings:
    """Budgets and choices of the causal checks (docs/methods.md §8); the defaults fit the 2-core CPU budget.

    ``depths`` are relative depths; each gives the residual layer round(depth · L), kept within 1..L-1.
    ``n_eval`` rows per task (whole groups, classes balanced) go through the model; the rest fit every eraser,
    direction and neuron choice. ``probe_layers`` later layers (evenly spaced from the edited one to L) are
    probed again after erasure.
    """

    depths: tuple[float, ...] = (0.33, 0.67)
    n_eval: int = 160
    folds: int = 5
    min_auc: float = 0.6
    probe_layers: int = 6
    erasure_controls: int = 2
    size_band: float = 1.25
    steering_vector: str = "probe"
    strengths: tuple[float, ...] = (0.25, 0.5, 1.0)
    steering_controls: int = 1
    steering_positions: str = "read"
    deactivation_depths: tuple[float, ...] = (0.67,)
    k: int = 16
    ablations: tuple[str, ...] = ("zero", "mean")
    criterion: str = "f_statistic"
    deactivation_controls: int = 1
    deactivation_positions: str = "from_read"
    kl_documents: int = 4
    kl_context: int = 48
    kl_positions: int = 16
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("depths", "deactivation_depths"):
            if any(not 0 < depth < 1 for depth in getattr(self, name)):
                raise ValueError(f"{name} must lie strictly between 0 and 1, got {list(getattr(self, name))}")
        if self.n_eval < 4 * self.folds:
            raise ValueError(f"n_eval ({self.n_eval}) must hold at least 4 rows per fold ({self.folds} folds)")
        if (
            min(self.erasure_controls, self.steering_controls, self.deactivation_controls, self.k, self.probe_layers)
            < 1
        ):
            raise ValueError("controls, k and probe_layers must be >= 1")
        if self.steering_vector not in STEERING_VECTORS:
            raise ValueError(f"steering vector must be one of {STEERING_VECTORS}, got {self.steering_vector!r}")
        for name in ("steering_positions", "deactivation_positions"):
            if getattr(self, name) not in POSITIONS:
                raise ValueError(f"{name} must be one of {POSITIONS}, got {getattr(self, name)!r}")

    def layers(self, n_layers: int, depths: tuple[float, ...] | None = None) -> list[int]:
        """The layers of ``depths`` (default: the erasure and steering depths) in a model of ``n_layers``."""
        return sorted({min(max(round(depth * n_layers), 1), n_layers - 1) for depth in depths or self.depths})
