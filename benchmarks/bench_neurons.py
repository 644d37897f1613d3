"""Neurons: what storing them in float16 costs in probe accuracy, and what extracting them costs in time.

Three measurements on one real task, in one process:

1. *Precision*: the MLP neurons of SmolLM2 on the task are extracted in float32, then k-sparse probes
   (every layer, both rankings, the default ks, the dense probe's folds) run on them and on the same values
   rounded to float16, as the pipeline stores them. Prints the largest accuracy difference over all points
   and the share of out-of-fold predictions that change (small next to the accuracy intervals, about ±0.03).
2. *Extraction*: residual extraction with and without the MLP sites pooled from the same pass, on the same
   texts, interleaved; prints the time ratio (with / without; target <= 1.3).
3. *Solver*: the batched k-sparse solve vs one scikit-learn LogisticRegression per (layer, criterion, k,
   fold) on a few layers; prints the speed-up and the largest accuracy difference.

    python benchmarks/bench_neurons.py [--dataset data/concepts/cities.csv] [--texts 800] [--timing-texts 192]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from probes.activations.extraction import ExtractionSettings, pooled_activations
from probes.datasets.concepts import load_dataset
from probes.dictionaries.neurons import NEURON_KS, k_sparse_probe
from probes.models.cache import load_model
from probes.probing.protocol import cv_splits
from probes.probing.settings import ProbeSettings
from probes.workflow.stages.models import convert_model

REPO = Path(__file__).resolve().parents[1]


def sklearn_k_sparse(X: np.ndarray, y: np.ndarray, settings: ProbeSettings, ks, groups) -> dict:
    """The same probes, one scikit-learn fit each: accuracy per (layer, k) for the F-statistic ranking."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from probes.dictionaries.neurons import neuron_scores, ranked_neurons

    correct = {}
    for _, _, train in cv_splits(y, settings, groups):
        order = ranked_neurons(neuron_scores(X, y, train, "f_statistic"))
        for layer in range(X.shape[1]):
            for k in ks:
                columns = order[layer, :k]
                probe = make_pipeline(
                    StandardScaler(), LogisticRegression(C=settings.C, tol=settings.tol, max_iter=settings.max_iter)
                )
                probe.fit(X[train][:, layer, columns], y[train])
                hits = probe.predict(X[~train][:, layer, columns]) == y[~train]
                correct.setdefault((layer + 1, k), []).extend(hits.tolist())
    return {key: float(np.mean(value)) for key, value in correct.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(REPO / "data" / "concepts" / "cities.csv"))
    parser.add_argument("--model-cache", default=str(REPO / "results" / "models"))
    parser.add_argument("--texts", type=int, default=800)
    parser.add_argument("--timing-texts", type=int, default=192)
    parser.add_argument("--solver-layers", type=int, default=3)
    args = parser.parse_args()

    manifest = Path(args.model_cache) / "smollm2-135m" / "manifest.json"
    if not manifest.is_file():
        convert_model("smollm2-135m", "smollm2-135m", manifest)
    model = load_model(manifest)
    data = load_dataset(args.dataset, group_column="group")
    texts, y = data.texts[: args.texts], np.asarray(data.labels[: args.texts])
    groups = None if data.groups is None else np.asarray(data.groups[: args.texts])
    settings = ProbeSettings()

    # 1. precision
    pooled, _ = pooled_activations(
        model, texts, ExtractionSettings(poolings=("last",), batch_size=64), mlp_sites=("mlp_post",)
    )
    fp32 = pooled["mlp_post/last"].numpy()
    fp16 = pooled["mlp_post/last"].to(torch.float16).float().numpy()
    start = time.perf_counter()
    exact, _ = k_sparse_probe(fp32, y, settings, NEURON_KS, groups=groups)
    batched_seconds = time.perf_counter() - start
    rounded, _ = k_sparse_probe(fp16, y, settings, NEURON_KS, groups=groups)
    points = ["criterion", "layer", "k"]
    accuracy = exact.groupby(points)["correct"].mean(), rounded.groupby(points)["correct"].mean()
    changed = float((exact["predicted"].to_numpy() != rounded["predicted"].to_numpy()).mean())
    gap = float((accuracy[0] - accuracy[1]).abs().max())
    print(
        f"precision: {len(texts)} texts, {fp32.shape[1]} layers x {fp32.shape[2]} neurons, {len(accuracy[0])} points; "
        f"float16 vs float32: max |accuracy difference| {gap:.4f}, predictions changed {changed:.2%}, "
        f"relative RMS rounding {float(np.linalg.norm(fp16 - fp32) / np.linalg.norm(fp32)):.2e}"
    )

    # 2. extraction cost of the MLP sites, interleaved
    subset = texts[: args.timing_texts]
    timing = ExtractionSettings(batch_size=64)
    seconds = {"without": [], "with": []}
    for _ in range(2):
        for name, sites in (("without", ()), ("with", ("mlp_post", "mlp_in"))):
            start = time.perf_counter()
            pooled_activations(model, subset, timing, progress=False, mlp_sites=sites)
            seconds[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in seconds.items()}
    print(
        f"extraction: {len(subset)} texts, both poolings; with MLP sites {best['with']:.2f} s, without "
        f"{best['without']:.2f} s: ratio {best['with'] / best['without']:.2f} (target <= 1.3)"
    )

    # 3. the batched solve vs scikit-learn, on the first layers
    layers = args.solver_layers
    start = time.perf_counter()
    reference = sklearn_k_sparse(fp32[:, :layers], y, settings, NEURON_KS, groups)
    sklearn_seconds = time.perf_counter() - start
    ours = (
        exact[(exact["criterion"] == "f_statistic") & (exact["layer"] <= layers)]
        .groupby(["layer", "k"])["correct"]
        .mean()
    )
    difference = max(abs(ours[key] - value) for key, value in reference.items())
    per_layer = batched_seconds / (fp32.shape[1] * 2), sklearn_seconds / layers
    print(
        f"solver: batched {per_layer[0]:.3f} s per layer and criterion (all {fp32.shape[1]} layers, both rankings, "
        f"{batched_seconds:.1f} s) vs scikit-learn {per_layer[1]:.3f} s per layer ({layers} layers): "
        f"{per_layer[1] / per_layer[0]:.1f}x faster; max |accuracy difference| {difference:.4f}"
    )


if __name__ == "__main__":
    main()
