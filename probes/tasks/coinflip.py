"""Inferential task ``coinflip``: coin-flip state tracking, is the coin still heads up?"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pandas as pd

from probes.tasks._common import _dealt_labels, _frame, _spread, _unique

# Sixty names, so that even the one-person examples are distinct for either label.
NAMES = (
    "Alice",
    "Bob",
    "Carol",
    "David",
    "Emma",
    "Frank",
    "Grace",
    "Henry",
    "Irene",
    "Jack",
    "Karen",
    "Liam",
    "Maria",
    "Nathan",
    "Olivia",
    "Peter",
    "Quinn",
    "Rachel",
    "Samuel",
    "Tara",
    "Umar",
    "Vera",
    "Walter",
    "Xenia",
    "Yusuf",
    "Zoe",
    "Aisha",
    "Bruno",
    "Chloe",
    "Diego",
    "Elena",
    "Felix",
    "Hannah",
    "Igor",
    "Jonas",
    "Kofi",
    "Leila",
    "Mateo",
    "Nina",
    "Oscar",
    "Priya",
    "Rosa",
    "Sven",
    "Tom",
    "Ursula",
    "Victor",
    "Wendy",
    "Yara",
    "Zain",
    "Anna",
    "Ben",
    "Clara",
    "Daniel",
    "Eva",
    "Fatima",
    "George",
    "Hugo",
    "Ines",
    "James",
    "Lucy",
)
MAX_PEOPLE = 5


def coin_text(names: Sequence[str], flips: Sequence[bool]) -> str:
    steps = " ".join(f"{name} {'flips' if flip else 'does not flip'} the coin." for name, flip in zip(names, flips))
    return f"A coin is heads up. {steps} Is the coin still heads up?"


def generate(seed: int) -> pd.DataFrame:
    """1-5 people (80 examples each) flip or not; heads up (label 1) after an even number of flips. The
    labels are dealt independently of the number of people, so length does not predict the answer."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(label: int, n_people: int) -> tuple:
        flips = [rng.random() < 0.5 for _ in range(n_people)]
        if (sum(flips) % 2 == 0) != bool(label):
            flips[rng.randrange(n_people)] ^= True  # fix the parity: uniform over the flips with this parity
        pattern = "".join("F" if flip else "N" for flip in flips)  # who flips, in order: the control's type
        return coin_text(rng.sample(NAMES, n_people), flips), label, n_people, sum(flips), pattern

    rows = [
        _unique(draw, seen, label, n_people)
        for label, n_people in zip(_dealt_labels(rng), _spread(range(1, MAX_PEOPLE + 1), rng))
    ]
    return _frame(rows, ["text", "label", "n_people", "n_flips", "pattern"], rng)
