"""Inferential task ``syllogisms``: categorical syllogisms and three-premise chains over nonsense words, valid
or not, as minimal pairs: the same sentences with the same words, one term pair moved, opposite answers."""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Sequence

import numpy as np
import pandas as pd

from probes.datasets.tasks._common import HALF, _capitalise, _frame

Proposition = tuple[str, str, str]  # (quantifier, subject term, predicate term) over terms "A", "B", "C", ...
Form = tuple[Proposition, ...]  # premises, then the conclusion

TERMS = "ABCD"
QUANTIFIERS = ("all", "no", "some", "some_not")
LETTERS = dict(zip(QUANTIFIERS, "AEIO"))  # the traditional vowels of a mood
STATEMENTS = {"all": "all {} are {}", "no": "no {} are {}", "some": "some {} are {}", "some_not": "some {} are not {}"}
NOT_ALL = "not all {} are {}"  # the other phrasing of some_not, for half of the minimal pairs


def statement(q: str, x: str, y: str, not_all: bool = False) -> str:
    return (NOT_ALL if not_all and q == "some_not" else STATEMENTS[q]).format(x, y)


@functools.cache
def _venn(n_terms: int) -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    """Every Venn model of ``n_terms`` terms: bit r of a model says whether region r (a membership tuple) is
    occupied. 2^8 models for three terms, 2^16 for four."""
    regions = tuple(itertools.product((0, 1), repeat=n_terms))
    return np.arange(2 ** len(regions), dtype=np.int64), regions


@functools.cache
def _holds(q: str, i: int, j: int, n_terms: int) -> np.ndarray:
    """For every model, whether "q X are Y" is true in it (X, Y the terms at indices i, j)."""
    models, regions = _venn(n_terms)
    wanted = {"all": (1, 0), "no": (1, 1), "some": (1, 1), "some_not": (1, 0)}[q]
    mask = sum(1 << r for r, member in enumerate(regions) if (member[i], member[j]) == wanted)
    occupied = (models & mask) != 0
    return occupied if q in ("some", "some_not") else ~occupied


@functools.cache
def _inhabited(n_terms: int) -> np.ndarray:
    """For every model, whether each of its terms names something (has an occupied region)."""
    models, regions = _venn(n_terms)
    masks = [sum(1 << r for r, member in enumerate(regions) if member[i]) for i in range(n_terms)]
    return np.logical_and.reduce([(models & mask) != 0 for mask in masks])


def syllogism_follows(form: Form, existential_import: bool = True) -> bool:
    """Brute-force validity over every Venn model of the form's terms (2^8 occupancy patterns for "A".."C",
    2^16 with "D"): the conclusion follows when no model makes the premises true and it false.

    With existential import every term names something, as in classical logic; without it (modern logic)
    terms may be empty.
    """
    n_terms = 1 + max(TERMS.index(term) for _, *pair in form for term in pair)
    truth = [_holds(q, TERMS.index(x), TERMS.index(y), n_terms) for q, x, y in form]
    counterexample = np.logical_and.reduce([*truth[:-1], ~truth[-1]] + [_inhabited(n_terms)] * existential_import)
    return not counterexample.any()


# A chain form: premise l links terms l and l + 1 ("A"-"B", "B"-"C", ...) with quantifier qs[l], read
# backward (second term first) where backward[l]; the conclusion has quantifier qc and runs from "A" to the
# last term. Two premises are the classical syllogism; three are a chain (sorites) over four terms.
Chain = tuple[tuple[str, ...], tuple[int, ...], str]


def chain_form(chain: Chain) -> Form:
    qs, backward, qc = chain
    premises = tuple((q, TERMS[l + b], TERMS[l + 1 - b]) for l, (q, b) in enumerate(zip(qs, backward)))
    return (*premises, (qc, "A", TERMS[len(qs)]))


def readings(chain: Chain) -> str:
    """F where a premise names its term nearer the conclusion's subject first, B where it is read backward."""
    return "".join("FB"[b] for b in chain[1])


def figure(chain: Chain) -> str:
    """The readings of the premises that hold the conclusion's subject and its predicate, i.e. where the two
    end terms sit: FF, FB, BF and BB are the classical figures 1, 2, 3 and 4, for chains as for syllogisms."""
    return readings(chain)[0] + readings(chain)[-1]


def form_name(chain: Chain) -> str:
    """Quantifier letters along the chain from the conclusion's subject (the minor premise first, so a
    classical mood with its first two letters swapped), the conclusion's, then the readings: Ferio is
    IEO-FF, Fresison IEO-BB."""
    qs, _, qc = chain
    return "".join(LETTERS[q] for q in (*qs, qc)) + "-" + readings(chain)


@functools.cache
def chain_forms(n_premises: int) -> tuple[tuple[Chain, ...], frozenset[Chain]]:
    """(valid, invalid) forms with ``n_premises`` premises, every quantifier and reading of each, only those
    whose validity does not depend on existential import (so classical and modern logic agree)."""
    valid, invalid = [], []
    for qs in itertools.product(QUANTIFIERS, repeat=n_premises):
        for backward in itertools.product((0, 1), repeat=n_premises):
            for qc in QUANTIFIERS:
                chain = (qs, backward, qc)
                follows = syllogism_follows(chain_form(chain))
                if follows == syllogism_follows(chain_form(chain), existential_import=False):
                    (valid if follows else invalid).append(chain)
    return tuple(valid), frozenset(invalid)


def edited(chain: Chain, edit: str) -> Chain:
    """The form after an edit that keeps every word and the quantifier of every sentence: ``flip<l>``
    reads premise l the other way round, ``swap<l><m>`` exchanges the term pairs of premises l and m (so
    their quantifiers change places along the chain)."""
    qs, backward, qc = chain
    if edit.startswith("flip"):
        l = int(edit[4])
        return qs, backward[:l] + (1 - backward[l],) + backward[l + 1 :], qc
    if edit.startswith("swap"):
        l, m = int(edit[4]), int(edit[5])
        swapped = list(qs)
        swapped[l], swapped[m] = qs[m], qs[l]
        return tuple(swapped), backward, qc
    raise ValueError(f"unknown edit {edit!r}")


# Valid forms without a partner of the same readings (or whose only one another form needs) are paired by
# reading one premise the other way round. Two such pairs whose readings mirror each other share a group, so
# that every group has as many valid as invalid rows of each reading: a held-out group then leaves the
# training rows of every figure balanced, and a probe that reads the figure stays at chance, not below it.
CROSSED = (
    (("AAA-FF", "flip1"), ("EAE-FB", "flip1")),  # Barbara -> AAA-FB, Camestres -> EAE-FF
    (("AEE-FB", "flip0"), ("AII-BB", "flip0")),  # Cesare -> AEE-BB, Dimaris -> AII-FB
    (("AII-BF", "flip0"), ("AEE-FF", "flip0")),  # Disamis -> AII-FF, Celarent -> AEE-BF
    (("IAI-BF", "flip1"), ("EAE-BB", "flip1")),  # Datisi -> IAI-BB, Camenes -> EAE-BF
    (("IAI-FF", "flip1"), ("OAO-FB", "flip1")),  # Darii -> IAI-FB, Baroco -> OAO-FF
    (("AAAA-FFF", "flip0"), ("AIAI-BFF", "flip0")),
    (("AAII-BBB", "flip0"), ("AEAE-FBB", "flip0")),
    (("AEAE-FFB", "flip0"), ("AOAO-BFB", "flip0")),
    (("AIAI-BBF", "flip2"), ("EAAE-BBB", "flip2")),
)


def _swaps(n_premises: int) -> list[str]:
    return [f"swap{l}{m}" for l, m in itertools.combinations(range(n_premises), 2)]


def _matching(options: dict) -> dict:
    """A partner for every key, no partner twice: augmenting paths (Kuhn), keys and options in their order."""
    holder: dict = {}

    def place(key, visited: set) -> bool:
        for option in options[key]:
            if option[1] not in visited:
                visited.add(option[1])
                if option[1] not in holder or place(holder[option[1]][0], visited):
                    holder[option[1]] = (key, option)
                    return True
        return False

    for key in options:
        if not place(key, set()):
            raise RuntimeError(f"no partner left for {key}")
    return dict(holder.values())


@functools.cache
def form_groups() -> tuple[tuple[tuple[Chain, Chain, str], ...], ...]:
    """The CV groups: each a tuple of (valid form, invalid partner, edit), covering every valid form with
    two or three premises once. A partner has the same words and sentence quantifiers as its valid form,
    and no form is in two pairs. Most groups are one pair whose partner exchanges two premises' term pairs
    (a matching gives each form its own); the rest are the two pairs of a ``CROSSED`` entry."""
    named = {form_name(chain): chain for n_premises in (2, 3) for chain in chain_forms(n_premises)[0]}
    invalid = chain_forms(2)[1] | chain_forms(3)[1]
    crossed = [tuple((named[name], edited(named[name], edit), edit) for name, edit in pairs) for pairs in CROSSED]
    used = {partner for pairs in crossed for _, partner, _ in pairs}
    paired = {name for pairs in CROSSED for name, _ in pairs}
    options = {
        chain: [(edit, edited(chain, edit)) for edit in _swaps(len(chain[0])) if edited(chain, edit) in invalid]
        for name, chain in named.items()
        if name not in paired
    }
    options = {
        chain: [(edit, partner) for edit, partner in edits if partner not in used] for chain, edits in options.items()
    }
    partner_of = _matching(options)
    single = [((chain, partner_of[chain][1], partner_of[chain][0]),) for chain in options]
    used |= {partner for _, partner in partner_of.values()}
    groups = tuple(single + crossed)
    for group in groups:
        if not all(partner in invalid for _, partner, _ in group) or sorted(readings(v) for v, _, _ in group) != sorted(
            readings(i) for _, i, _ in group
        ):
            raise RuntimeError(f"group {group} has a valid partner or unbalanced readings")
    if len(used) != len(named) or sum(map(len, groups)) != len(named):
        raise RuntimeError("every valid form needs its own partner")
    return groups


def layout(edit: str, order: Sequence[int], words: Sequence[str]) -> tuple[list[int], list[str]]:
    """Where the partner's premises and terms go so that its text keeps the valid form's words, and every
    sentence its quantifier: only the edited term pair moves."""
    order, words = list(order), list(words)
    if edit.startswith("swap"):
        l, m = int(edit[4]), int(edit[5])
        return [{l: m, m: l}.get(link, link) for link in order], words
    return order, words


def render(chain: Chain, order: Sequence[int], words: Sequence[str], not_all: bool) -> str:
    """The premises in ``order`` (premise indices along the chain), then the question."""
    form = chain_form(chain)
    terms = dict(zip(TERMS, words))
    premises = " ".join(
        f"{_capitalise(statement(q, terms[x], terms[y], not_all))}." for q, x, y in (form[i] for i in order)
    )
    q, x, y = form[-1]
    return f"{premises} Does it follow that {statement(q, terms[x], terms[y], not_all)}?"


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
    """400 minimal pairs, nine or ten for each of the 43 valid forms and its invalid partner: both texts have the
    same words, premise order and sentence quantifiers, and opposite answers, so neither the words
    all/no/some/not, nor the length, nor the mood, nor (group by group) the figure says anything about the
    answer; only which term sits where does. The ``group`` is the pair of forms (two pairs for ``CROSSED``)."""
    rng = random.Random(seed)
    pairs = [(group, pair) for group in form_groups() for pair in group]
    counts = [HALF // len(pairs)] * len(pairs)
    single = [i for i, (group, _) in enumerate(pairs) if len(group) == 1]
    for i in rng.sample(single, HALF - sum(counts)):  # pairs that share a group keep equal counts
        counts[i] += 1
    rows, seen = [], set()
    for (group, (valid, invalid, edit)), count in zip(pairs, counts):
        n_premises = len(valid[0])
        name = "+".join(f"{form_name(v)}/{form_name(i)}" for v, i, _ in group)
        orders = list(itertools.permutations(range(n_premises)))
        rng.shuffle(orders)
        orders = [orders[i % len(orders)] for i in range(count)]  # each premise order as often as can be
        for order in orders:
            while True:
                words = rng.sample(NONSENSE_WORDS, n_premises + 1)
                not_all = rng.random() < 0.5
                partner_order, partner_words = layout(edit, order, words)
                texts = render(valid, order, words, not_all), render(invalid, partner_order, partner_words, not_all)
                # distinct first letters keep the words easy to tell apart
                if len({word[0] for word in words}) == len(words) and not seen.intersection(texts):
                    break
            seen.update(texts)
            phrasing = ("not all" if not_all else "some-not") if "some_not" in (*valid[0], valid[2]) else "-"
            for label, chain, text, at in ((1, valid, texts[0], order), (0, invalid, texts[1], partner_order)):
                quantifiers = "-".join(chain[0][i] for i in at) + "-" + chain[2]  # in the order of the text
                at_text = "".join(str(i + 1) for i in at)  # which premise along the chain each sentence states
                shape = (figure(chain), readings(chain), form_name(chain), quantifiers, n_premises, at_text, phrasing)
                rows.append((text, label, name, *shape))
    columns = ["text", "label", "group", "figure", "readings", "form", "quantifiers", "n_premises", "order", "phrasing"]
    return _frame(rows, columns, rng)
