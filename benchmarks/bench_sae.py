"""SAE training throughput of the pipeline vs SAELens's trainer fed the same activations from memory.

The pipeline streams shards from the on-disk token cache (:meth:`TokenCache.batches`) into SAELens's
``SAETrainer`` and first makes one pass over the cache for the mean and scale. The baseline hands the
same trainer, SAE config and scale an iterator over the rows already in RAM. Both run in this process,
interleaved; the ratio (pipeline / in-memory, in tokens per second) should be >= 0.8.

    python benchmarks/bench_sae.py [--cache results/token_activations/smollm2-135m] [--layer 15] [--steps 60]

Without a cache at --cache, one is built first from the concept datasets' texts (a minute on a laptop).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from probes.activations.token_cache import TokenCache, TokenCacheSettings, cache_token_activations
from probes.datasets.concepts import load_dataset
from probes.dictionaries.sae import SAESettings, sae_trainer, train_sae, training_sae
from probes.models.cache import load_model
from probes.workflow.stages.models import convert_model

REPO = Path(__file__).resolve().parents[1]


def build_cache(model_name: str, model_cache: Path, layer: int, out: Path) -> TokenCache:
    manifest = model_cache / model_name / "manifest.json"
    if not manifest.is_file():
        convert_model(model_name, model_name, manifest)
    texts = [text for path in sorted((REPO / "data" / "concepts").glob("*.csv")) for text in load_dataset(path).texts]
    cache_token_activations(load_model(manifest), texts, [layer], "resid", out, TokenCacheSettings())
    return TokenCache(out)


def in_memory_seconds(cache: TokenCache, layer: int, settings: SAESettings, seed: int) -> float:
    """SAELens's trainer on rows already in RAM: the same SAE, scale, b_dec start and schedule as the pipeline's."""
    rows = cache.load(layer, "train")
    start = time.perf_counter()
    sae = training_sae(rows.shape[1], settings, cache.hook_names[layer], "bench", cache.meta["context"], seed)
    generator = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            shuffled = rows[torch.randperm(len(rows), generator=generator)]
            yield from shuffled[: len(rows) // settings.batch_size * settings.batch_size].split(settings.batch_size)

    sae_trainer(sae, settings, rows.mean(0), float(rows.norm(dim=1).mean()), batches()).fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cache", default=str(REPO / "results" / "token_activations" / "smollm2-135m"))
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model-cache", default=str(REPO / "results" / "models"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        cache_path = Path(args.cache)
        if (cache_path / "meta.json").is_file() and args.layer in TokenCache(cache_path).layers:
            cache = TokenCache(cache_path)
        else:
            print(f"no cache of layer {args.layer} at {cache_path}; building one from the concept datasets")
            cache = build_cache(args.model, Path(args.model_cache), args.layer, Path(scratch) / "cache")
        settings = SAESettings(training_tokens=args.steps * args.batch_size, batch_size=args.batch_size)
        n_tokens = settings.steps * settings.batch_size
        train_sae(
            cache, args.layer, SAESettings(training_tokens=4 * args.batch_size, batch_size=args.batch_size), "bench"
        )
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved so drift in machine load hits both alike
            start = time.perf_counter()
            train_sae(cache, args.layer, settings, "bench")
            ours.append(time.perf_counter() - start)
            theirs.append(in_memory_seconds(cache, args.layer, settings, seed=0))
    ours_tps, theirs_tps = n_tokens / min(ours), n_tokens / min(theirs)
    print(
        f"{args.model} layer {args.layer}: {cache.meta['n_train_tokens']} cached train tokens, "
        f"{settings.architecture} d_sae {settings.expansion * cache.meta['d_model']}, {settings.steps} steps x "
        f"{settings.batch_size}, torch threads {torch.get_num_threads()}"
    )
    print(f"SAELens trainer, rows in memory: {theirs_tps:8.1f} tokens/s (best of {args.repeats})")
    print(f"pipeline, streamed from disk:    {ours_tps:8.1f} tokens/s (incl. the mean/scale pass)")
    print(f"ratio pipeline / in-memory: {ours_tps / theirs_tps:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
