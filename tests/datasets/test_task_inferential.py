"""The inferential tasks (coinflip, syllogisms): every label re-derived from its text, every group a set of
minimal pairs with opposite answers, and no count, word, length or form that tells the answers apart."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import pandas as pd
import pytest

from probes.datasets.tasks import generate_dataset
from probes.datasets.tasks.coinflip import FLIPS, KEEPS, NAMES, PEOPLE, QUESTION
from probes.datasets.tasks.syllogisms import (
    NONSENSE_WORDS,
    QUANTIFIERS,
    TERMS,
    chain_forms,
    form_groups,
    syllogism_follows,
)

INFERENTIAL = ("coinflip", "syllogisms")
TYPE_COLUMNS = {"coinflip": "cell", "syllogisms": "figure"}
COLUMNS = {
    "coinflip": ["text", "label", "group", "cell", "n_people", "n_flips", "start"],
    "syllogisms": [
        *("text", "label", "group", "figure", "readings", "form", "quantifiers", "n_premises", "order", "phrasing")
    ],
}


@pytest.fixture(scope="module")
def frames(repo) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_csv(repo / "data" / "concepts" / f"{name}.csv", keep_default_na=False) for name in INFERENTIAL
    }


@pytest.mark.parametrize("name", INFERENTIAL)
def test_committed_file_is_what_the_generator_writes(repo, name):
    written = generate_dataset(name, 0).to_csv(index=False, lineterminator="\n")
    assert (repo / "data" / "concepts" / f"{name}.csv").read_bytes() == written.encode()


@pytest.mark.parametrize("name", INFERENTIAL)
def test_columns_sizes_and_lengths(frames, name):
    frame = frames[name]
    assert list(frame.columns) == COLUMNS[name]
    assert len(frame) == 800 and frame["label"].value_counts().to_dict() == {0: 400, 1: 400}
    assert not frame["text"].duplicated().any() and (frame != "").all().all()
    assert frame["text"].str.split().str.len().max() <= 130


@pytest.mark.parametrize("name", INFERENTIAL)
def test_the_type_column_crosses_groups_and_says_nothing_of_the_label(frames, name):
    """The type control labels types at random: a type must recur in held-out groups, and must not be
    the concept in disguise."""
    frame = frames[name]
    by_type = frame.groupby(TYPE_COLUMNS[name])
    assert by_type["group"].nunique().min() >= 5
    assert by_type["label"].mean().between(0.35, 0.65).all()


@pytest.mark.parametrize("name", INFERENTIAL)
def test_each_group_holds_both_answers_in_equal_numbers(frames, name):
    assert (frames[name].groupby("group")["label"].mean() == 0.5).all()


@pytest.mark.parametrize("name", INFERENTIAL)
def test_words_and_length_do_not_give_the_label_away_under_grouped_folds(frames, name):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    frame = frames[name]
    folds = StratifiedGroupKFold(5, shuffle=True, random_state=0)
    words = make_pipeline(
        CountVectorizer(ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b"), LogisticRegression(solver="liblinear")
    )
    accuracy = cross_val_score(words, frame["text"], frame["label"], groups=frame["group"], cv=folds).mean()
    assert accuracy <= 0.6, accuracy
    lengths = frame["text"].str.split().str.len()
    assert lengths[frame["label"] == 1].sort_values().tolist() == lengths[frame["label"] == 0].sort_values().tolist()


# --- coinflip -----------------------------------------------------------------------------------------

STEP = re.compile(rf"(\w+) ({'|'.join(FLIPS + KEEPS)})\.")


def parse_coinflip(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(start side, [(name, move), ...]) of a generated text, which must be nothing but these parts."""
    start, middle = re.fullmatch(rf"A coin is (heads|tails) up\. (.*) {re.escape(QUESTION)}", text).groups()
    steps = STEP.findall(middle)
    assert " ".join(f"{name} {move}." for name, move in steps) == middle, text
    return start, steps


def test_coinflip_labels_follow_from_the_text(frames):
    for row in frames["coinflip"].itertuples():
        start, steps = parse_coinflip(row.text)
        names = [name for name, _ in steps]
        assert len(set(names)) == len(names) == row.n_people and set(names) <= set(NAMES), row.text
        flips = [move in FLIPS for _, move in steps]
        assert sum(flips) == row.n_flips and row.start == start, row.text
        assert row.group == "".join("F" if flip else "N" for flip in flips), row.text
        assert row.cell == f"{row.n_people}p{row.n_flips}f"
        heads_now = (start == "heads") == (sum(flips) % 2 == 0)
        assert row.label == int(heads_now), row.text


def test_coinflip_groups_are_minimal_pairs_of_start_states(frames):
    """A flip pattern is told twice, word for word, once from heads up and once from tails up."""
    for pattern, rows in frames["coinflip"].groupby("group"):
        assert sorted(rows["start"]) == ["heads", "tails"] and sorted(rows["label"]) == [0, 1], pattern
        heads, tails = (rows.loc[rows["start"] == side, "text"].item() for side in ("heads", "tails"))
        assert heads.replace("A coin is heads up.", "A coin is tails up.", 1) == tails


def test_coinflip_counts_are_balanced_within_every_cell(frames):
    frame = frames["coinflip"]
    assert set(frame["n_people"]) == set(PEOPLE)
    assert frame["n_people"].value_counts().between(112, 118).all()
    assert (frame["n_flips"] >= 1).all() and (frame["n_flips"] < frame["n_people"]).all()
    cells = frame.groupby(["n_people", "n_flips"])
    assert len(cells) == sum(n - 1 for n in PEOPLE) and (cells["label"].mean() == 0.5).all()
    # the start state alone, or the parity of the flips alone, is near chance: the answer needs both
    assert frame.groupby("start")["label"].mean().between(0.4, 0.6).all()
    assert frame.groupby(frame["n_flips"] % 2)["label"].mean().eq(0.5).all()


def test_coinflip_moves_and_words_occur_equally_in_both_answers(frames):
    frame = frames["coinflip"]
    assert frame["text"].str.endswith(f" {QUESTION}").all()
    moves = {
        label: Counter(move for text in rows for _, move in parse_coinflip(text)[1])
        for label, rows in frame.groupby("label")["text"]
    }
    assert moves[0] == moves[1] and set(moves[0]) == set(FLIPS + KEEPS)
    assert min(moves[0].values()) > 0.25 * max(moves[0].values())
    nots = frame["text"].str.count(r"\bnot\b")
    assert nots[frame["label"] == 1].sum() == nots[frame["label"] == 0].sum()


# --- syllogisms ---------------------------------------------------------------------------------------

SENTENCE = re.compile(r"(all|no|some|not all) (\w+) are (not )?(\w+)")


def parse_syllogism(text: str) -> tuple[tuple[str, str, str], ...]:
    """The propositions of a generated text, premises then conclusion, over its own words."""
    premises, conclusion = re.fullmatch(r"(.*)\. Does it follow that (.*)\?", text).groups()
    propositions = []
    for sentence in (*premises.split(". "), conclusion):
        q, x, negated, y = SENTENCE.fullmatch(sentence[0].lower() + sentence[1:]).groups()
        assert (negated is None) or q == "some", text
        propositions.append(("some_not" if negated or q == "not all" else q, x, y))
    return tuple(propositions)


def with_letters(propositions: tuple) -> tuple:
    """The same form over the terms A, B, ... (in order of first appearance), as syllogism_follows takes."""
    letters: dict[str, str] = {}
    for _, *pair in propositions:
        for word in pair:
            if word not in letters:
                letters[word] = TERMS[len(letters)]
    return tuple((q, letters[x], letters[y]) for q, x, y in propositions)


def form_of(propositions: tuple) -> tuple[str, str]:
    """(form name, readings) of a parsed text: the premises followed along the chain from the conclusion's
    subject, quantifier letters and F/B for a premise read forward/backward, as the generator names them."""
    *premises, (qc, subject, predicate) = propositions
    letters = dict(zip(QUANTIFIERS, "AEIO"))
    mood, readings, term, left = "", "", subject, list(premises)
    while left:
        (q, x, y) = next(p for p in left if term in p[1:])
        left.remove((q, x, y))
        mood, readings, term = mood + letters[q], readings + "FB"[y == term], y if x == term else x
    assert term == predicate
    return f"{mood}{letters[qc]}-{readings}", readings


def test_syllogism_labels_are_validity(frames):
    for row in frames["syllogisms"].itertuples():
        propositions = parse_syllogism(row.text)
        words = {word for _, *pair in propositions for word in pair}
        assert len(words) == row.n_premises + 1 == len(propositions) and words <= set(NONSENSE_WORDS), row.text
        form = with_letters(propositions)
        assert row.label == syllogism_follows(form) == syllogism_follows(form, existential_import=False), row.text
        assert form_of(propositions) == (row.form, row.readings), row.text
        assert row.figure == row.readings[0] + row.readings[-1], row.text
        assert row.quantifiers == "-".join(q for q, _, _ in propositions), row.text
        phrasing = "not all" if "not all" in row.text.lower() else "some-not" if " not " in row.text else "-"
        assert row.phrasing == phrasing, row.text


def decided_by_regions(form: tuple, existential_import: bool) -> bool:
    """Validity by another route: the premises plus the conclusion's negation forbid some Venn regions
    (universal statements) and ask for some to be inhabited (particular ones, and every term under
    existential import). Inhabiting every region not forbidden satisfies all that can be satisfied, so the
    form is valid exactly when some request meets only forbidden regions."""
    n_terms = 1 + max(TERMS.index(t) for _, *pair in form for t in pair)
    regions = list(itertools.product((0, 1), repeat=n_terms))
    forbidden, requests = set(), []
    for k, (q, x, y) in enumerate(form):
        i, j = TERMS.index(x), TERMS.index(y)
        if k == len(form) - 1:  # negate the conclusion
            q = {"all": "some_not", "some_not": "all", "no": "some", "some": "no"}[q]
        cells = {r for r in regions if r[i] and (r[j] if q in ("no", "some") else not r[j])}
        if q in ("all", "no"):
            forbidden |= cells
        else:
            requests.append(cells)
    if existential_import:
        requests += [{r for r in regions if r[i]} for i in range(n_terms)]
    return any(request <= forbidden for request in requests)


def test_brute_force_validity_agrees_with_the_region_argument():
    barbara = (("all", "A", "B"), ("all", "B", "C"), ("all", "A", "C"))
    barbari = (("all", "A", "B"), ("all", "B", "C"), ("some", "A", "C"))
    chain = (("all", "A", "B"), ("all", "B", "C"), ("no", "C", "D"), ("no", "A", "D"))
    broken = (("all", "A", "B"), ("some", "B", "C"), ("all", "C", "D"), ("some", "A", "D"))
    assert syllogism_follows(barbara) and syllogism_follows(chain) and not syllogism_follows(broken)
    assert syllogism_follows(barbari) and not syllogism_follows(barbari, existential_import=False)
    for n_premises in (2, 3):
        valid, invalid = chain_forms(n_premises)
        for quantifiers in itertools.product(QUANTIFIERS, repeat=n_premises + 1):
            for backward in itertools.product((0, 1), repeat=n_premises):
                chain = (quantifiers[:-1], backward, quantifiers[-1])
                form = tuple((q, TERMS[i + b], TERMS[i + 1 - b]) for i, (q, b) in enumerate(zip(*chain[:2])))
                form += ((chain[2], "A", TERMS[n_premises]),)
                follows, modern = decided_by_regions(form, True), decided_by_regions(form, False)
                assert (chain in valid, chain in invalid) == (follows and modern, not follows and not modern)
    assert (len(chain_forms(2)[0]), len(chain_forms(3)[0])) == (15, 28)  # the 15 unconditional classical moods


def test_syllogism_groups_are_minimal_pairs_of_forms(frames):
    """A group is one valid form and its invalid partner (or two such pairs), each form in one group only;
    every valid text has a partner with the same words, in sentences with the same quantifiers."""
    frame = frames["syllogisms"]
    forms = frame.groupby("group")["form"].nunique()
    assert set(forms) == {2, 4} and frame.groupby("form")["group"].nunique().eq(1).all()
    assert frame["form"].nunique() == 86 and frame["group"].nunique() == len(form_groups()) == 34
    assert (frame.groupby("form")["label"].nunique() == 1).all() and frame.groupby("form").size().between(9, 10).all()
    for group, rows in frame.groupby("group"):
        bags = {
            label: sorted(
                (*sorted(re.findall(r"\w+", text.lower())), q) for text, q in zip(part["text"], part["quantifiers"])
            )
            for label, part in rows.groupby("label")
        }
        assert bags[0] == bags[1], group


def test_syllogism_figures_moods_and_orders_are_balanced(frames):
    """Each figure, reading, sentence-quantifier sequence and phrasing has as many valid rows as invalid
    ones, so "two particular premises" or "two negatives" (which never occur) and figure heuristics say
    nothing."""
    frame = frames["syllogisms"]
    for column in ("figure", "readings", "quantifiers", "phrasing", "n_premises"):
        # within every group, so a held-out group leaves the training rows of each value balanced too
        assert (frame.groupby(["group", column])["label"].mean() == 0.5).all(), column
    assert frame.groupby("order")["label"].mean().between(0.4, 0.6).all()
    for quantifiers in frame["quantifiers"]:
        premises = quantifiers.split("-")[:-1]
        assert (
            sum(q in ("some", "some_not") for q in premises) <= 1
            and sum(q in ("no", "some_not") for q in premises) <= 1
        )
