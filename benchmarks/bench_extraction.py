"""Extraction throughput of the activation stage vs a bare Hugging Face forward pass on the same batches.

Both run in this process on the same length-sorted, right-padded batches of a real concept dataset;
the ratio (ours / HF, in tokens per second) should be >= 0.9.

    python benchmarks/bench_extraction.py [--model smollm2-135m] [--texts 256] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from probes.activations.extraction import ExtractionSettings, pooled_activations, tokenize
from probes.datasets.concepts import load_dataset
from probes.models.cache import load_model
from probes.models.loading import load_hf_model
from probes.workflow.stages.models import convert_model

REPO = Path(__file__).resolve().parents[1]


def hf_forward_seconds(hf_model, token_lists: list[torch.Tensor], batch_size: int, pad_id: int) -> float:
    lengths = torch.tensor([len(t) for t in token_lists])
    order = torch.argsort(lengths, stable=True)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            width = int(lengths[batch].max())
            tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
            for row, index in enumerate(batch.tolist()):
                tokens[row, : lengths[index]] = token_lists[index]
            mask = (torch.arange(width)[None, :] < lengths[batch][:, None]).long()
            hf_model(input_ids=tokens, attention_mask=mask)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default=str(REPO / "data" / "concepts" / "cities.csv"))
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-cache", default=str(REPO / "results" / "models"))
    args = parser.parse_args()

    manifest = Path(args.model_cache) / args.model / "manifest.json"
    if not manifest.is_file():
        convert_model(args.model, args.model, manifest)
    texts = load_dataset(args.dataset).texts[: args.texts]
    model = load_model(manifest)
    hf_model, _ = load_hf_model(manifest)
    token_lists, _ = tokenize(model, texts, max_tokens=256)
    n_tokens = sum(len(t) for t in token_lists)
    pad_id = model.tokenizer.pad_token_id or 0
    settings = ExtractionSettings(batch_size=args.batch_size)

    pooled_activations(model, texts[: args.batch_size], settings, progress=False)  # warm-up
    hf_forward_seconds(hf_model, token_lists[: args.batch_size], args.batch_size, pad_id)
    ours, theirs = [], []
    for _ in range(args.repeats):  # interleaved so drift in machine load hits both alike
        start = time.perf_counter()
        pooled_activations(model, texts, settings, progress=False)
        ours.append(time.perf_counter() - start)
        theirs.append(hf_forward_seconds(hf_model, token_lists, args.batch_size, pad_id))
    ours_tps, hf_tps = n_tokens / min(ours), n_tokens / min(theirs)
    print(
        f"model {args.model}, {len(texts)} texts, {n_tokens} tokens, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"bare Hugging Face forward: {hf_tps:8.1f} tokens/s (best of {args.repeats})")
    print(f"probes extraction:         {ours_tps:8.1f} tokens/s (all {model.cfg.n_layers + 1} layers, both poolings)")
    print(f"ratio probes / HF: {ours_tps / hf_tps:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
