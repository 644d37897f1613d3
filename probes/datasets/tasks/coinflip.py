"""Inferential task ``coinflip``: coin-flip state tracking, is the coin heads up after everyone's turn?"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pandas as pd

from probes.datasets.tasks._common import HALF, _frame

# Sixty names, so that each text can give its (up to twelve) people distinct names.
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
PEOPLE = range(6, 13)  # people per text; each flips or leaves the coin, in turn
# Three phrasings of either move, so that no single word marks a flip; two of those that leave it negate.
FLIPS = ("flips the coin", "turns the coin over", "flips the coin over")
KEEPS = ("leaves the coin alone", "does not touch the coin", "does not flip the coin")
STARTS = ("heads", "tails")
QUESTION = "Is the coin heads up now?"


def coin_text(start: str, names: Sequence[str], moves: Sequence[str]) -> str:
    steps = " ".join(f"{name} {move}." for name, move in zip(names, moves))
    return f"A coin is {start} up. {steps} {QUESTION}"


def heads_up(start: str, n_flips: int) -> bool:
    return (start == "heads") == (n_flips % 2 == 0)


def patterns_per_cell(n_people: int, n_patterns: int) -> dict[int, int]:
    """How many flip patterns each number of flips (1 .. n_people - 1) gets: as even as the patterns that
    exist allow, the fewest first. No one flipping, or everyone, has a single pattern, so neither is used."""
    cells = sorted(range(1, n_people), key=lambda flips: (math.comb(n_people, flips), flips))
    counts, left = {}, n_patterns
    for i, flips in enumerate(cells):
        counts[flips] = min(math.comb(n_people, flips), left // (len(cells) - i))
        left -= counts[flips]
    if left:
        raise ValueError(f"{n_people} people have fewer than {n_patterns} flip patterns")
    return dict(sorted(counts.items()))


def generate(seed: int) -> pd.DataFrame:
    """400 flip patterns (who flips, in order) of 6-12 people, each told twice with the same names and
    phrasings: once starting heads up, once tails up. The two texts differ in one word and have opposite
    answers, so every pattern (the row's ``group``) and every (people, flips) cell has both labels, half
    each; the answer is the start state XOR the parity of the flips."""
    rng = random.Random(seed)
    # 400 patterns over the seven numbers of people: 57 each, the remainder to the most people
    per_people = [HALF // len(PEOPLE) + (i >= len(PEOPLE) - HALF % len(PEOPLE)) for i in range(len(PEOPLE))]
    rows = []
    for n_people, n_patterns in zip(PEOPLE, per_people):
        for n_flips, count in patterns_per_cell(n_people, n_patterns).items():
            for flippers in rng.sample(list(itertools.combinations(range(n_people), n_flips)), count):
                flips = [person in flippers for person in range(n_people)]
                names = rng.sample(NAMES, n_people)
                moves = [rng.choice(FLIPS if flip else KEEPS) for flip in flips]
                pattern = "".join("F" if flip else "N" for flip in flips)
                for start in STARTS:
                    label = int(heads_up(start, n_flips))
                    text = coin_text(start, names, moves)
                    rows.append((text, label, pattern, f"{n_people}p{n_flips}f", n_people, n_flips, start))
    return _frame(rows, ["text", "label", "group", "cell", "n_people", "n_flips", "start"], rng)
