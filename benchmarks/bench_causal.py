"""Causal checks: what the cached-prefix passes save over full forward passes, and that they agree.

On SmolLM2 and one real task, in one process: the texts' readout (``BOS + text + question``) under one edit at
layer l (an added vector at the read position), computed (a) by :class:`probes.interventions.editing.ReadoutPasses`,
which runs the prefix once into a frozen key/value cache and each edit from layer l on over the read position
and the question only, and (b) by one full ``run_with_hooks`` per edit over the whole padded batch. Prints the
time per edit of each, their ratio (target >= 3 on coinflip) and the largest log-odds difference (target < 1e-3).

    python benchmarks/bench_causal.py [--dataset data/concepts/coinflip.csv] [--texts 64] [--edits 4]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from probes.activations.extraction import right_padded, tokenize
from probes.datasets.concepts import load_dataset
from probes.interventions.editing import Edit, ReadoutPasses, residual_hook
from probes.interventions.readout import BUILT_IN_READOUTS, answer_logodds, suffix_ids, verbaliser_ids
from probes.models.cache import load_model
from probes.workflow.stages.models import convert_model

REPO = Path(__file__).resolve().parents[1]


def full_passes(model, token_lists, suffix, positive, negative, layer, vector) -> np.ndarray:
    """One full pass over every text + question, the vector added at the read position of layer ``layer``."""
    sequences = [torch.cat([tokens, suffix]) for tokens in token_lists]
    tokens, mask = right_padded(model, sequences)
    read = torch.tensor([len(t) - 1 for t in token_lists])
    last = torch.tensor([len(s) - 1 for s in sequences])

    def add(activation, hook):
        activation[torch.arange(len(read)), read] += vector
        return activation

    with torch.inference_mode():
        hooks = [(residual_hook(layer), add)]
        mask = mask.long()
        final = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers)
        return answer_logodds(model, final[torch.arange(len(last)), last], positive, negative).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(REPO / "data" / "concepts" / "coinflip.csv"))
    parser.add_argument("--model-cache", default=str(REPO / "results" / "models"))
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--edits", type=int, default=4)
    parser.add_argument("--layer", type=int, default=20)
    args = parser.parse_args()

    manifest = Path(args.model_cache) / "smollm2-135m" / "manifest.json"
    if not manifest.is_file():
        convert_model("smollm2-135m", "smollm2-135m", manifest)
    model = load_model(manifest)
    readout = BUILT_IN_READOUTS[Path(args.dataset).stem]
    texts = load_dataset(args.dataset).texts[: args.texts]
    token_lists, _ = tokenize(model, texts, 512)
    suffix = suffix_ids(model, readout)
    positive, negative = verbaliser_ids(model, readout)
    vectors = [torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(i)) for i in range(args.edits)]

    start = time.perf_counter()
    passes = ReadoutPasses(model, token_lists, suffix, positive, negative, starts=[args.layer])
    prefix_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cached = [passes.run(Edit(args.layer, lambda x, v=v: x + v))[0] for v in vectors]
    cached_seconds = (time.perf_counter() - start) / args.edits
    start = time.perf_counter()
    full = [full_passes(model, token_lists, suffix, positive, negative, args.layer, v) for v in vectors]
    full_seconds = (time.perf_counter() - start) / args.edits

    gap = max(float(np.abs(a - b).max()) for a, b in zip(cached, full))
    tokens = sum(len(t) for t in token_lists) + len(token_lists) * len(suffix)
    print(f"{Path(args.dataset).stem}: {len(texts)} texts, {tokens} tokens with the question, layer {args.layer}")
    print(f"clean prefix and cache, once: {prefix_seconds:.2f} s")
    ratio = full_seconds / cached_seconds
    print(f"per edit: cached {cached_seconds:.3f} s, full pass {full_seconds:.3f} s: {ratio:.1f}x")
    print(f"largest |log-odds difference|: {gap:.2e}")


if __name__ == "__main__":
    main()
