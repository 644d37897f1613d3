"""Inferential task ``syllogisms``: categorical syllogisms over nonsense words, valid or not."""

from __future__ import annotations

import functools
import itertools
import random

import pandas as pd

from probes.tasks._common import _dealt_labels, _frame, _spread, _unique

Proposition = tuple[str, str, str]  # (quantifier, subject term, predicate term) over terms "A", "B", "C"
Form = tuple[Proposition, Proposition, Proposition]  # (premise, premise, conclusion)


STATEMENTS = {"all": "All {} are {}", "no": "No {} are {}", "some": "Some {} are {}", "some_not": "Some {} are not {}"}


def statement(q: str, x: str, y: str) -> str:
    return STATEMENTS[q].format(x, y)


def syllogism_follows(form: Form, existential_import: bool = True) -> bool:
    """Brute-force validity over every Venn model of three terms (the 2^8 occupancy patterns).

    With existential import every term names something, as in classical logic; without it (modern logic)
    terms may be empty.
    """
    regions = list(itertools.product((0, 1), repeat=3))  # membership of A, B, C

    def holds(q: str, x: str, y: str, occupied: list) -> bool:
        i, j = "ABC".index(x), "ABC".index(y)
        xs = [r for r in occupied if r[i]]
        return {
            "all": all(r[j] for r in xs),
            "no": not any(r[j] for r in xs),
            "some": any(r[j] for r in xs),
            "some_not": any(not r[j] for r in xs),
        }[q]

    for pattern in itertools.product((0, 1), repeat=len(regions)):
        occupied = [r for r, on in zip(regions, pattern) if on]
        if existential_import and not all(any(r[i] for r in occupied) for i in range(3)):
            continue
        if holds(*form[0], occupied) and holds(*form[1], occupied) and not holds(*form[2], occupied):
            return False
    return True


@functools.cache
def syllogism_forms() -> dict[tuple[str, str, str], tuple[list[Form], list[Form]]]:
    """All forms (either premise first, either term order in each proposition, conclusion about A and C),
    grouped by their three quantifiers into (valid, invalid); only forms whose validity does not depend on
    existential import, and only quantifier patterns that have both valid and invalid forms."""
    groups: dict[tuple[str, str, str], tuple[list[Form], list[Form]]] = {}
    for q1, q2, q3 in itertools.product(STATEMENTS, repeat=3):
        orders = ((("A", "B"), ("B", "A")), (("B", "C"), ("C", "B")), (("A", "C"), ("C", "A")))
        for ab, bc, ac in itertools.product(*orders):
            for premises in (((q1, *ab), (q2, *bc)), ((q1, *bc), (q2, *ab))):
                form: Form = (*premises, (q3, *ac))
                valid = syllogism_follows(form)
                if valid == syllogism_follows(form, existential_import=False):
                    groups.setdefault((q1, q2, q3), ([], []))[0 if valid else 1].append(form)
    return {key: forms for key, forms in groups.items() if all(forms)}


# Invented plurals, so no world knowledge (or belief bias) helps; none is an English word.
NONSENSE_WORDS = (
    "blickets",
    "daxes",
    "wugs",
    "feps",
    "zibs",
    "grelks",
    "snarps",
    "plims",
    "drobs",
    "lorps",
    "tazzies",
    "lazzies",
    "zoobs",
    "gribs",
    "fleens",
    "vorns",
    "kefts",
    "murps",
    "nibbets",
    "pluffs",
    "quivs",
    "rimbles",
    "skorps",
    "trazzles",
    "voffs",
    "wembles",
    "yorbs",
    "zemps",
    "bleems",
    "dulps",
    "fraddles",
    "glemps",
    "hestles",
    "jorbs",
    "klorbs",
    "mizzets",
    "norps",
    "prindles",
    "sprilks",
    "tovs",
    "venks",
    "wuzzles",
    "zindles",
    "brops",
    "cheggs",
    "drellies",
    "femmets",
    "gazzles",
    "jindles",
    "lumbets",
    "pobbles",
    "rozzies",
    "splenks",
    "tribbets",
    "vundles",
    "yurbs",
    "zoffles",
    "crobs",
    "dweems",
    "frimps",
)


def generate(seed: int) -> pd.DataFrame:
    """Valid and invalid forms share every quantifier pattern, which is dealt independently of the label,
    so the words all/no/some/not say nothing about the answer; only which term sits where does."""
    rng = random.Random(seed)
    groups = syllogism_forms()
    seen: set[str] = set()

    def draw(label: int, pattern: tuple[str, str, str]) -> tuple:
        form = rng.choice(groups[pattern][1 - label])
        words = rng.sample(NONSENSE_WORDS, 3)
        while len({word[0] for word in words}) < 3:  # distinct first letters keep the words easy to tell apart
            words = rng.sample(NONSENSE_WORDS, 3)
        terms = dict(zip("ABC", words))
        premises = " ".join(f"{statement(q, terms[x], terms[y])}." for q, x, y in form[:2])
        q, x, y = form[2]
        text = f"{premises} Does it follow that {statement(q, terms[x], terms[y]).lower()}?"
        shape = "|".join(f"{q}:{x}{y}" for q, x, y in form)  # which term sits where: the control's type
        return text, label, "-".join(pattern), shape

    rows = [
        _unique(draw, seen, label, pattern) for label, pattern in zip(_dealt_labels(rng), _spread(sorted(groups), rng))
    ]
    return _frame(rows, ["text", "label", "quantifiers", "form"], rng)
