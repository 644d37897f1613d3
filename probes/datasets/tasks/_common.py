"""Helpers every built-in task generator shares, so that all six keep the same balance and shuffling rules."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

EXAMPLES_PER_TASK = 800  # per-layer SE of accuracy <= 0.018 at 0.5
HALF = EXAMPLES_PER_TASK // 2


@dataclass(frozen=True)
class BuiltinTask:
    name: str
    level: str
    description: str
    generate: Callable[[int], pd.DataFrame]


def _frame(rows: list[tuple], columns: Sequence[str], rng: random.Random) -> pd.DataFrame:
    """Shuffle with the generator's own stream, and refuse to return duplicates, unbalanced labels or rows
    without the ``group`` that keeps a form, pattern or minimal pair in one cross-validation fold."""
    rng.shuffle(rows)
    frame = pd.DataFrame(rows, columns=list(columns))
    counts = frame["label"].value_counts()
    if "group" not in frame or frame["group"].isna().any():
        raise RuntimeError("generator broke its invariants: every row needs a group")
    if frame["text"].duplicated().any() or counts.get(0) != counts.get(1):
        duplicates = int(frame["text"].duplicated().sum())
        raise RuntimeError(f"generator broke its invariants: labels {counts.to_dict()}, {duplicates} duplicate texts")
    return frame


def _dealt_labels(rng: random.Random) -> list[int]:
    """Half ones, half zeros, in random order: the label of each row before anything else is chosen."""
    labels = [1] * HALF + [0] * HALF
    rng.shuffle(labels)
    return labels


def _spread(options: Sequence, rng: random.Random) -> list:
    """Each option for (nearly) the same number of rows, in random order, so independent of the labels."""
    spread = [options[i % len(options)] for i in range(EXAMPLES_PER_TASK)]
    rng.shuffle(spread)
    return spread


def _unique(draw: Callable[..., tuple], seen: set[str], *args: object) -> tuple:
    """Draw rows until one has a text not seen before."""
    while (row := draw(*args))[0] in seen:
        pass
    seen.add(row[0])
    return row


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]
