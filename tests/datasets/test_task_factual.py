"""The factual tasks (cities, comparisons): labels re-derived from the fact lists, every group made of minimal
pairs, and nothing but the fact tells a true statement from a false one."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from probes.datasets.tasks import generate_dataset
from probes.datasets.tasks.cities import CITY_TEMPLATES, COUNTRY_CITIES, COUNTRY_OF, MIN_CITIES, NAMESAKES
from probes.datasets.tasks.comparisons import QUANTITIES, comparison_pairs

FACTUAL = ("cities", "comparisons")
TYPE_COLUMNS = {"cities": "country", "comparisons": "quantity"}


@pytest.fixture(scope="module")
def frames(repo) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(repo / "data" / "concepts" / f"{name}.csv") for name in FACTUAL}


def _capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


@pytest.mark.parametrize("name", FACTUAL)
def test_committed_file_is_what_the_generator_writes(repo, name):
    written = generate_dataset(name, 0).to_csv(index=False, lineterminator="\n")
    assert (repo / "data" / "concepts" / f"{name}.csv").read_bytes() == written.encode()


def test_columns_sizes_and_lengths(frames):
    assert list(frames["cities"].columns) == ["text", "label", "group", "country", "city", "template"]
    assert list(frames["comparisons"].columns) == [
        *("text", "label", "group", "quantity", "pair", "relation", "first", "second")
    ]
    for frame in frames.values():
        assert len(frame) == 800 and frame["label"].value_counts().to_dict() == {0: 400, 1: 400}
        assert not frame["text"].duplicated().any() and frame.notna().all().all()
        assert frame["text"].str.split().str.len().max() <= 20


# --- cities -------------------------------------------------------------------------------------------


def test_city_lists_hold_the_known_facts():
    for city, country in [
        ("Lyon", "France"),
        ("Osaka", "Japan"),
        ("Cusco", "Peru"),
        ("Toronto", "Canada"),
        ("Nairobi", "Kenya"),
        ("Mumbai", "India"),
        ("Munich", "Germany"),
        ("Seville", "Spain"),
    ]:
        assert COUNTRY_OF[city] == country
    listed = [city for cities in COUNTRY_CITIES.values() for city in cities]
    assert len(listed) == len(set(listed)) >= 150 and len(COUNTRY_CITIES) >= 40  # no city in two countries
    assert min(len(cities) for cities in COUNTRY_CITIES.values()) >= MIN_CITIES
    for city, countries in NAMESAKES.items():
        assert city in COUNTRY_OF and COUNTRY_OF[city] not in countries and set(countries) <= set(COUNTRY_CITIES)


def test_city_statements_are_true_exactly_when_the_city_lies_in_the_country(frames):
    frame = frames["cities"]
    for row in frame.itertuples():
        assert row.template in CITY_TEMPLATES
        assert row.text == row.template.format(city=row.city, country=row.country)
        assert row.label == int(COUNTRY_OF[row.city] == row.country), row.text
        assert row.country not in NAMESAKES.get(row.city, ()), row.text  # no namesake makes a false row true
        assert not (row.city.endswith(" City") and row.text.startswith("The city of")), row.text
    assert (frame["city"].value_counts() == 2).all()  # each city in one true and one false row


def test_city_groups_are_two_cities_that_swap_countries(frames):
    """X in A (1), X in B (0), Y in B (1), Y in A (0), in one phrasing: two minimal pairs per group."""
    for group, rows in frames["cities"].groupby("group"):
        x, y = group.split("|")
        assert len(rows) == 4 and sorted(rows["city"].unique()) == [x, y] and x < y
        assert COUNTRY_OF[x] != COUNTRY_OF[y] and rows["template"].nunique() == 1
        for city, other in ((x, y), (y, x)):
            twins = rows[rows["city"] == city].set_index("label")
            assert sorted(twins.index) == [0, 1], group
            true, false = twins.loc[1], twins.loc[0]
            assert true["country"] == COUNTRY_OF[city] and false["country"] == COUNTRY_OF[other]
            # the twins differ only in the country slot at the end
            assert true["text"].removesuffix(f"{true['country']}.") == false["text"].removesuffix(
                f"{false['country']}."
            )


def test_city_countries_and_phrasings_balance_the_labels(frames):
    frame = frames["cities"]
    for column in ("country", "template"):
        counts = pd.crosstab(frame[column], frame["label"])
        assert (counts[0] == counts[1]).all(), column
    assert set(frame["country"]) == set(COUNTRY_CITIES)
    groups_per_template = frame.groupby("template")["group"].nunique()
    assert groups_per_template.max() - groups_per_template.min() <= 1


# --- comparisons --------------------------------------------------------------------------------------


def test_comparison_values_hold_the_known_facts():
    height, length = QUANTITIES["height_m"].values, QUANTITIES["length_km"].values
    assert height["Mount Everest"] > height["Mont Blanc"] and length["the Nile"] > length["the Thames"]
    assert QUANTITIES["weight_kg"].clearly_greater("an elephant", "a mouse")
    assert QUANTITIES["area_km2"].clearly_greater("Russia", "Belgium")
    assert QUANTITIES["year"].clearly_greater("the Eiffel Tower", "the Colosseum")  # newer
    assert not QUANTITIES["height_m"].clearly_greater("Mount Everest", "K2")  # a close call is never asked


def test_comparison_statements_are_true_exactly_when_the_order_fits_the_relation(frames):
    clear = {kind: set(comparison_pairs(scale)) for kind, scale in QUANTITIES.items()}
    assert sum(map(len, clear.values())) >= 1000
    for row in frames["comparisons"].itertuples():
        scale = QUANTITIES[row.quantity]
        assert {(row.first, row.second), (row.second, row.first)} & clear[row.quantity], row.text
        assert row.relation in (scale.more, scale.less), row.text
        assert row.text == _capitalised(f"{row.first} {row.relation} {row.second}.")
        first_bigger = scale.clearly_greater(row.first, row.second)
        assert first_bigger or scale.clearly_greater(row.second, row.first), row.text  # never a close call
        assert row.label == int(first_bigger == (row.relation == scale.more)), row.text
        assert row.pair == f"{row.quantity}:{'|'.join(sorted((row.first, row.second)))}"


def test_comparison_pairs_are_both_orders_under_both_relations(frames):
    frame = frames["comparisons"]
    assert frame["pair"].nunique() == 200
    for pair, rows in frame.groupby("pair"):
        scale = QUANTITIES[rows["quantity"].iloc[0]]
        items = set(rows["first"])
        assert len(rows) == 4 and rows["group"].nunique() == 1 and items == set(rows["second"]) and len(items) == 2
        assert sorted(rows["relation"]) == sorted([scale.more, scale.more, scale.less, scale.less]), pair
        for _, twins in rows.groupby("relation"):  # a minimal pair: the two items swapped, nothing else
            (a, b) = twins.itertuples()
            assert {a.label, b.label} == {0, 1} and (a.first, a.second) == (b.second, b.first), pair
            assert b.text == _capitalised(f"{a.second} {a.relation} {a.first}.")


def test_comparison_items_never_cross_groups(frames):
    """A group is a set of items of one quantity and holds every pair drawn among them, so a probe is
    always tested on items it was not trained on and cannot learn which side an item is usually on."""
    frame = frames["comparisons"]
    items = pd.concat([frame[["group", column]].set_axis(["group", "item"], axis=1) for column in ("first", "second")])
    assert (items.groupby("item")["group"].nunique() == 1).all()
    for group, rows in frame.groupby("group"):
        kind, listed = group.split(":", 1)
        assert (rows["quantity"] == kind).all() and set(rows["first"]) <= set(listed.split("|")), group


def test_comparison_items_relations_and_quantities_balance_the_labels(frames):
    frame = frames["comparisons"]
    for column in ("first", "second", "relation", "quantity"):
        counts = pd.crosstab(frame[column], frame["label"])
        assert (counts[0] == counts[1]).all(), column
    pairs = frame.groupby("quantity")["pair"].nunique()
    assert set(pairs.index) == set(QUANTITIES) and 25 <= pairs.min() <= pairs.max() <= 40, pairs.to_dict()


# --- both: no cue but the fact ------------------------------------------------------------------------


@pytest.mark.parametrize("name", FACTUAL)
def test_every_word_and_column_balances_the_labels_within_every_group(frames, name):
    """Within each group every word, every pair of adjacent words and every metadata value occurs as often
    in a true as in a false row, so a held-out group leaves the training rows balanced too: no bag of words
    or single column can learn a label, and true and false rows have the same lengths."""
    frame = frames[name]
    for group, rows in frame.groupby("group"):
        counts: dict[int, Counter] = {0: Counter(), 1: Counter()}
        for row in rows.itertuples():
            words = re.findall(r"\w+", row.text.lower())
            counts[row.label].update([*words, *zip(words, words[1:])])
            counts[row.label].update((column, getattr(row, column)) for column in frame.columns[3:])
        assert counts[0] == counts[1], group


@pytest.mark.parametrize("name", FACTUAL)
def test_type_column_crosses_groups_and_does_not_decide_the_label(frames, name):
    frame, column = frames[name], TYPE_COLUMNS[name]
    assert frame.groupby(column)["group"].nunique().min() >= 5
    assert frame.groupby(column)["label"].mean().between(0.4, 0.6).all()


@pytest.mark.parametrize("name", FACTUAL)
def test_words_and_lengths_stay_at_chance_under_grouped_folds(frames, name):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.tree import DecisionTreeClassifier

    frame = frames[name]
    y, text = frame["label"].to_numpy(), frame["text"]
    lengths = np.c_[text.str.len(), text.str.split().str.len()]
    predicted = {"words": np.zeros(len(y)), "length": np.zeros(len(y))}
    folds = StratifiedGroupKFold(5, shuffle=True, random_state=0).split(frame, y, frame["group"])
    for train, test in folds:
        words = CountVectorizer(ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b").fit(text.iloc[train])
        model = LogisticRegression(max_iter=2000).fit(words.transform(text.iloc[train]), y[train])
        predicted["words"][test] = model.predict(words.transform(text.iloc[test]))
        tree = DecisionTreeClassifier(max_depth=4, min_samples_leaf=20, random_state=0).fit(lengths[train], y[train])
        predicted["length"][test] = tree.predict(lengths[test])
    for kind, guess in predicted.items():
        assert (guess == y).mean() <= 0.55, kind
