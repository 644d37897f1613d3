"""Probe-stage speed and agreement: batched ``probe_layers`` vs a plain scikit-learn loop of the same fits.

Both run in this process on the same activations, layers, folds, seeds, control labels and null
permutations: the whole protocol but MDL (``probes.probing.mdl`` has its own fits). The loop is what a
straightforward implementation does: per layer, seed, fold and task/control, and per layer, null
permutation and fold of the first seed, a StandardScaler and a default ``LogisticRegression(C=1.0)``
(lbfgs, tol=1e-4, max_iter=100), plus accuracy, F1 and ROC-AUC. Targets: speed-up >= 10x, per-layer
mean accuracy within 0.5 points (task and control; the null's mean within 1 point, its fits stop at
tol 1e-4 in both).

On real activations most of that loop's fits stop at max_iter=100 before reaching tol (the script
prints how many), so its accuracies are those of unconverged probes; ``--converged`` adds a float64
loop run to convergence, the optimum both implementations aim at, to tell solver error from that.

    python benchmarks/bench_probes.py                      # synthetic SmolLM2-sized tensor (n=400, 31 x 576)
    python benchmarks/bench_probes.py --layers 8           # a quick run on 8 evenly spaced layers
    python benchmarks/bench_probes.py --converged --activations FILE  # an extraction's file, e.g.
                                    # results/activations/smollm2-135m/fp32/clean/cities/resid.safetensors
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from probes.probing.protocol import control_labels, null_labels, probe_layers
from probes.probing.settings import ProbeSettings


def synthetic_activations(n: int, n_layers: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Residual-stream-like activations whose label signal rises through the middle layers.

    A power-law covariance shared by all layers (so standardised features stay strongly
    correlated), a few "massive activation" dimensions with a large mean, per-layer drift, and 10%
    of examples whose signal points the wrong way, which caps accuracy near 90% as on real tasks.
    """
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    spectrum = 1.0 / np.arange(1, d + 1)
    latent = rng.standard_normal((n, d)) * np.sqrt(spectrum)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    offset = 0.5 * rng.standard_normal(d)
    offset[:3] = [30.0, -20.0, 15.0]
    sign = np.where(rng.random(n) < 0.1, -1, 1) * (2 * y - 1)
    X = np.empty((n, n_layers, d), dtype=np.float32)
    for layer in range(n_layers):
        strength = 0.75 / (1 + np.exp(-(layer - n_layers / 2) / 3))
        drift = 0.3 * rng.standard_normal((n, d)) * np.sqrt(spectrum)
        h = 3 * (latent + drift) @ basis.T + strength * np.outer(sign, direction) + offset
        h[:, :3] *= 1 + 0.2 * rng.standard_normal((n, 1))
        X[:, layer] = h
    return X, y


def load_real(path: str, labels_csv: str | None, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """``last``-pooled activations from an activation-stage safetensors file; labels from it or a CSV."""
    from safetensors.numpy import load_file

    tensors = load_file(path)
    if labels_csv is not None:
        y = pd.read_csv(labels_csv)[label_column].to_numpy()
    elif "labels" in tensors:
        y = tensors["labels"]
    else:
        raise SystemExit(f"{path} holds no 'labels' tensor; pass --labels CSV")
    return tensors["last"].astype(np.float32), np.asarray(y).astype(np.int64)


def sklearn_accuracy(
    X: np.ndarray, y: np.ndarray, settings: ProbeSettings, **logistic: float
) -> tuple[np.ndarray, float]:
    """Per-layer mean (task, control, null) accuracy of the scikit-learn loop, (layers, 3), and the
    fraction of fits that stopped at max_iter rather than at their tolerance."""
    n_layers = X.shape[1]
    total = np.zeros((n_layers, 3))
    stopped = []

    def fit(train: np.ndarray, test: np.ndarray, targets: tuple, columns: tuple) -> None:
        for layer in range(n_layers):
            scaler = StandardScaler().fit(X[train, layer])
            X_train, X_test = scaler.transform(X[train, layer]), scaler.transform(X[test, layer])
            for column, target in zip(columns, targets):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    model = LogisticRegression(C=settings.C, **logistic).fit(X_train, target[train])
                stopped.append(model.n_iter_[0] >= model.max_iter)
                pred = model.predict(X_test)
                f1_score(target[test], pred)
                roc_auc_score(target[test], model.decision_function(X_test))
                total[layer, column] += np.mean(pred == target[test])

    for seed in settings.seeds:
        splitter = StratifiedKFold(settings.folds, shuffle=True, random_state=seed)
        for train, test in splitter.split(np.zeros((len(y), 1)), y):
            fit(train, test, (y, control_labels(y, seed, synthetic_types(len(y)))), (0, 1))
    for permutation in range(settings.null_permutations):
        permuted = null_labels(y, permutation, settings.seeds[0])
        splitter = StratifiedKFold(settings.folds, shuffle=True, random_state=settings.seeds[0])
        for train, test in splitter.split(np.zeros((len(y), 1)), permuted):
            fit(train, test, (permuted,), (2,))
    runs = len(settings.seeds) * settings.folds
    counts = np.array([runs, runs, max(settings.null_permutations * settings.folds, 1)])
    return total / counts, float(np.mean(stopped))


def synthetic_types(n: int) -> np.ndarray:
    """Twenty types of consecutive rows, for the type control."""
    return np.arange(n) * 20 // n


def batched_accuracy(X: np.ndarray, y: np.ndarray, settings: ProbeSettings) -> np.ndarray:
    result = probe_layers(X, y, settings, types=synthetic_types(len(y)))
    means = result.metrics.groupby(["layer", "metric"])["value"].mean().unstack()
    null = result.null.groupby("layer")["accuracy"].mean().reindex(means.index).to_numpy()
    return np.column_stack([means[["accuracy", "control_accuracy"]].to_numpy(), null])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", help="activation-stage safetensors file with a 'last' tensor")
    parser.add_argument("--labels", help="CSV with the labels, if the safetensors file has none")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--layers", type=int, help="probe only this many evenly spaced layers")
    parser.add_argument("--n", type=int, default=400, help="synthetic examples")
    parser.add_argument("--n-layers", type=int, default=31, help="synthetic layers (L + 1)")
    parser.add_argument("--d", type=int, default=576, help="synthetic width")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of probe_layers (median reported)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--converged", action="store_true", help="also compare with a scikit-learn loop run to convergence (slow)"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.activations:
        X, y = load_real(args.activations, args.labels, args.label_column)
        source = args.activations
    else:
        X, y = synthetic_activations(args.n, args.n_layers, args.d, seed=0)
        source = f"synthetic (seed 0, n={args.n}, layers={args.n_layers}, d={args.d})"
    if args.layers:
        X = X[:, np.unique(np.linspace(0, X.shape[1] - 1, args.layers).round().astype(int))]
    # The naive loop fits what this protocol fits: task, type control and null (no MDL, no refitted resamples).
    settings = ProbeSettings(dtype=args.dtype, control="type", mdl=False, refits=0)
    n, n_layers, d = X.shape
    n_fits = n_layers * settings.folds * (len(settings.seeds) * 2 + settings.null_permutations)
    print(f"activations: {source}; probing n={n}, layers={n_layers}, d={d}: {n_fits} fits, {args.threads} threads")

    times, ours = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = batched_accuracy(X, y, settings)
        times.append(time.perf_counter() - start)
    ours_time = float(np.median(times))
    runs = ", ".join(f"{t:.2f}" for t in times)
    print(f"probe_layers ({settings.dtype}): {ours_time:.2f} s (median of {args.repeats}: {runs})")

    start = time.perf_counter()
    naive, naive_stopped = sklearn_accuracy(X, y, settings)
    naive_time = time.perf_counter() - start
    print(f"scikit-learn loop: {naive_time:.2f} s; {100 * naive_stopped:.0f}% of its fits hit max_iter=100 unconverged")
    print(f"speed-up: {naive_time / ours_time:.1f}x (target >= 10x)")
    report("scikit-learn loop", ours, naive)
    if args.converged:
        start = time.perf_counter()
        reference, stopped = sklearn_accuracy(X.astype(np.float64), y, settings, tol=1e-8, max_iter=100_000)
        print(f"converged scikit-learn loop (float64, tol=1e-8): {time.perf_counter() - start:.2f} s")
        report("converged scikit-learn loop", ours, reference)


def report(name: str, ours: np.ndarray, theirs: np.ndarray) -> None:
    diff = 100 * np.abs(ours - theirs)
    print(
        f"max |per-layer mean accuracy difference| vs {name}: task {diff[:, 0].max():.3f} pp, "
        f"control {diff[:, 1].max():.3f} pp (target <= 0.5 pp), null {diff[:, 2].max():.3f} pp (<= 1 pp); "
        f"mean task accuracy {100 * ours[:, 0].mean():.2f}% vs {100 * theirs[:, 0].mean():.2f}%"
    )


if __name__ == "__main__":
    main()
