"""The text corpus that sparse autoencoders are trained on: a shipped default, local files, or a cached HF dataset.

The default corpus must exist on an offline machine with nothing downloaded, so this project makes it:
the embedded SmolLM2-135M-Instruct writes one response to each of a seeded sample of topic × form
prompts (:func:`generate_corpus`, run once; ``data/README.md`` is the file's data card). Users can
instead give their own ``.txt``/``.jsonl`` files or a Hugging Face dataset already in the local cache.

Regenerate the shipped file with::

    python -m probes.datasets.corpus --manifest results/models/smollm2-135m/manifest.json \\
        --out data/corpus/smollm2_generated.jsonl
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from probes.io import atomic_path

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".txt")
HF_DATASET_KEYS = ("name", "split", "text_column", "max_documents")


class CorpusError(ValueError):
    """A corpus that cannot be read; the message starts with the file or dataset and says what is wrong."""


# Written by this project. Everyday life, science, history, culture and practical skills, so the SAE sees
# more than one register and subject; nothing specific to the concept datasets.
TOPICS: tuple[str, ...] = (
    # everyday life
    "baking bread at home",
    "riding a bicycle in a busy city",
    "keeping houseplants alive",
    "packing for a long journey",
    "learning to swim",
    "a rainy afternoon indoors",
    "moving to a new apartment",
    "a neighbourhood farmers' market",
    "getting a good night's sleep",
    "having a pet cat",
    "a family dinner",
    "the first day at a new school",
    # science and nature
    "volcanoes",
    "the water cycle",
    "honeybees",
    "black holes",
    "photosynthesis",
    "the human heart",
    "earthquakes",
    "the phases of the Moon",
    "rainbows",
    "how vaccines work",
    "electricity",
    "coral reefs",
    "dinosaurs",
    "magnets",
    "octopuses",
    "the immune system",
    "glaciers",
    "migrating birds",
    # history
    "the printing press",
    "ancient Egypt",
    "the Roman Empire",
    "the Silk Road",
    "the first powered airplane flight",
    "the invention of the telephone",
    "the Industrial Revolution",
    "the first Moon landing",
    "medieval castles",
    "the Vikings",
    # culture
    "jazz music",
    "the Olympic Games",
    "chess",
    "origami",
    "folk tales",
    "street food",
    "the violin",
    "visiting a museum",
    "board games",
    "poetry",
    "football",
    # practical skills
    "fixing a flat bicycle tyre",
    "writing a polite email",
    "planting a vegetable garden",
    "first aid for small cuts",
    "preparing for a job interview",
    "recycling at home",
    "reading a paper map",
    "planning a monthly budget",
    "learning a new language",
)

FORMS: tuple[str, ...] = (
    "Write a short encyclopedia paragraph about {topic}.",
    "Write a short story that involves {topic}.",
    "Write a short how-to guide related to {topic}.",
    "Write a dialogue between two friends talking about {topic}.",
    "Write a friendly letter to a relative about {topic}.",
    "Write a short news report about {topic}.",
    "Explain {topic} to a ten-year-old child.",
    "List some interesting facts about {topic}.",
)


def generation_prompts(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` distinct (topic, form) prompts in a seeded random order.

    The whole grid is shuffled and its head taken, so a smaller ``n`` gives a prefix of a larger one:
    a corpus that dropped some responses can still be matched to its prompts by index.
    """
    combinations = list(itertools.product(TOPICS, FORMS))
    if not 0 <= n <= len(combinations):
        raise ValueError(f"n must be between 0 and {len(combinations)} (topics × forms), got {n}")
    random.Random(seed).shuffle(combinations)
    return [{"topic": topic, "form": form, "prompt": form.format(topic=topic)} for topic, form in combinations[:n]]


def generate_corpus(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    n_documents: int = 384,
    max_new_tokens: int = 192,
    seed: int = 0,
    batch_size: int = 32,
    temperature: float = 0.8,
    top_p: float = 0.95,
) -> None:
    """Write the model's responses to :func:`generation_prompts` as JSONL, one document per line.

    Each batch reseeds torch from (seed, batch index), so a batch's text does not depend on what ran
    before it; nothing time-dependent is written, so a rerun on the same machine gives the same file.
    """
    import torch
    from tqdm.auto import tqdm

    from probes.models.loading import load_hf_model

    prompts = generation_prompts(n_documents, seed)
    model, tokenizer = load_hf_model(manifest)
    tokenizer.padding_side = "left"  # generation continues from the last column, so pads go first
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p["prompt"]}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    records, n_empty = [], 0
    starts = range(0, len(prompts), batch_size)
    for batch_index, start in enumerate(tqdm(starts, desc="generating corpus", unit="batch")):
        batch = chats[start : start + batch_size]
        inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(_batch_seed(seed, batch_index))
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        responses = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for offset, response in enumerate(responses):
            index = start + offset
            text = response.strip()
            if not text:
                n_empty += 1
                continue
            records.append({"id": index, **prompts[index], "text": text})
    if n_empty:
        log.warning("dropped %d empty response(s) of %d", n_empty, len(prompts))
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    log.info("wrote %d documents to %s", len(records), out)


def _batch_seed(seed: int, batch_index: int) -> int:
    """Distinct torch seeds for every (seed, batch) pair, so two corpus seeds never share a batch stream."""
    return seed * 1_000_003 + batch_index


def read_documents(path: str | os.PathLike) -> list[str]:
    """Documents of a ``.txt`` file (separated by blank lines) or a ``.jsonl`` file (a ``text`` per line)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: corpus file not found")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CorpusError(f"{path}: unsupported corpus file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not UTF-8 text ({error})") from error
    if suffix == ".txt":
        documents = [part.strip() for part in re.split(r"\n[ \t]*\n", content)]
    else:
        documents = list(_jsonl_texts(path, content))
    documents = [document for document in documents if document]
    if not documents:
        raise CorpusError(f"{path}: the file has no non-empty documents")
    return documents


def _jsonl_texts(path: Path, content: str) -> Iterator[str]:
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusError(f"{path}: line {number} is not valid JSON ({error})") from error
        if not isinstance(record, dict) or "text" not in record:
            raise CorpusError(f'{path}: line {number} has no "text" field; each line must be a JSON object with one')
        if not isinstance(record["text"], str):
            raise CorpusError(f'{path}: line {number}: "text" must be a string, not {type(record["text"]).__name__}')
        yield record["text"].strip()


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Force offline mode even when ``datasets`` was imported before HF_HUB_OFFLINE was set.

    Both libraries read the variable once at import, and transformer_lens imports ``datasets`` early, so
    the module-level flags they check at call time are switched instead.
    """
    import datasets
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def load_hf_documents(name: str, split: str, text_column: str, max_documents: int | None) -> list[str]:
    """Documents of a Hugging Face dataset read from the local cache only: jobs never reach the network."""
    import datasets

    where = f"Hugging Face dataset {name!r} (split {split!r})"
    try:
        with _hub_offline():
            dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # datasets raises many error types for a missing or unreadable dataset
        raise CorpusError(
            f"{where}: cannot be loaded offline ({type(error).__name__}: {error}). On an offline machine the "
            "dataset must already be in the local Hugging Face cache (HF_HOME or HF_DATASETS_CACHE): load it "
            "once where the internet is reachable, with the same cache directory."
        ) from error
    if text_column not in dataset.column_names:
        raise CorpusError(f"{where}: no column {text_column!r}; the dataset has columns {dataset.column_names}")
    if max_documents is not None:
        dataset = dataset.select(range(min(max_documents, len(dataset))))
    texts = [text.strip() for text in dataset[text_column] if isinstance(text, str)]
    return [text for text in texts if text]


def load_corpus(
    files: Sequence[str | os.PathLike] = (),
    texts: Sequence[str] = (),
    hf_dataset: dict[str, Any] | None = None,
) -> list[str]:
    """All training documents, in order: each file's, then ``texts``, then the HF dataset's."""
    documents = [document for path in files for document in read_documents(path)]
    documents += [text.strip() for text in texts if text.strip()]
    if hf_dataset is not None:
        unknown = sorted(set(hf_dataset) - set(HF_DATASET_KEYS))
        if unknown or "name" not in hf_dataset:
            raise CorpusError(
                f"hf_dataset {hf_dataset!r}: needs a 'name' and takes only the keys {', '.join(HF_DATASET_KEYS)}"
                + (f"; unknown key(s) {unknown}" if unknown else "")
            )
        documents += load_hf_documents(
            hf_dataset["name"],
            hf_dataset.get("split", "train"),
            hf_dataset.get("text_column", "text"),
            hf_dataset.get("max_documents"),
        )
    if not documents:
        sources = [str(path) for path in files] + (["texts"] if texts else [])
        sources += [hf_dataset["name"]] if hf_dataset else []
        raise CorpusError(f"corpus from {sources or 'no sources'}: no non-empty documents")
    return documents


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Generate the default SAE-training corpus with an embedded model.")
    parser.add_argument("--manifest", required=True, help="model manifest written by the convert_model rule")
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--n-documents", type=int, default=384)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from probes.models.loading import use_threads

    use_threads(args.threads)
    generate_corpus(
        args.manifest,
        args.out,
        n_documents=args.n_documents,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
    )


if __name__ == "__main__":
    main()
