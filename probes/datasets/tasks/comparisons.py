"""Factual task ``comparisons``: comparisons of well-known quantities, true or false."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pandas as pd

from probes.datasets.tasks._common import HALF, _capitalise, _frame


@dataclass(frozen=True)
class Scale:
    """Items with (low, high) values: a measured value has low == high; a range covers real variation
    (animal sizes, city versus metropolitan population, years of construction)."""

    more: str  # relation when the first item has the larger value
    less: str
    values: dict[str, tuple[float, float]]
    additive: bool = False  # years: compare by a gap in years, not by a ratio

    def clearly_greater(self, big: str, small: str) -> bool:
        """True only when every plausible value of ``big`` beats every plausible value of ``small`` by a margin."""
        (big_low, _), (_, small_high) = self.values[big], self.values[small]
        if self.additive:
            return big_low - small_high >= 100
        return big_low >= 1.5 * small_high


def _exact(values: dict[str, float]) -> dict[str, tuple[float, float]]:
    return {item: (value, value) for item, value in values.items()}


QUANTITIES: dict[str, Scale] = {
    "height_m": Scale(
        "is higher than",
        "is lower than",
        _exact(
            {
                "Mount Everest": 8849,
                "K2": 8611,
                "Kangchenjunga": 8586,
                "Aconcagua": 6961,
                "Denali": 6190,
                "Kilimanjaro": 5895,
                "Mount Elbrus": 5642,
                "Mount Kenya": 5199,
                "Mount Ararat": 5137,
                "Mont Blanc": 4806,
                "the Matterhorn": 4478,
                "Mount Whitney": 4421,
                "Mount Rainier": 4392,
                "Mount Kinabalu": 4095,
                "Mount Fuji": 3776,
                "Mount Etna": 3357,
                "the Zugspitze": 2962,
                "Mount Olympus": 2918,
                "Mount Kosciuszko": 2228,
                "Ben Nevis": 1345,
                "Mount Vesuvius": 1281,
                "Snowdon": 1085,
                "Scafell Pike": 978,
            }
        ),
    ),
    "length_km": Scale(
        "is longer than",
        "is shorter than",
        _exact(
            {
                "the Nile": 6650,
                "the Amazon": 6400,
                "the Yangtze": 6300,
                "the Congo": 4700,
                "the Mekong": 4350,
                "the Niger": 4180,
                "the Mississippi": 3730,
                "the Volga": 3530,
                "the Yukon": 3190,
                "the Indus": 3180,
                "the Danube": 2850,
                "the Euphrates": 2800,
                "the Zambezi": 2574,
                "the Ganges": 2525,
                "the Tigris": 1850,
                "the Rhine": 1230,
                "the Elbe": 1094,
                "the Loire": 1006,
                "the Seine": 777,
                "the Po": 652,
                "the Hudson": 507,
                "the Tiber": 406,
                "the Shannon": 360,
                "the Thames": 346,
            }
        ),
    ),
    "area_km2": Scale(
        "is larger than",
        "is smaller than",
        _exact(
            {
                "Russia": 17_098_000,
                "Canada": 9_985_000,
                "the United States": 9_834_000,
                "China": 9_597_000,
                "Brazil": 8_516_000,
                "Australia": 7_692_000,
                "India": 3_287_000,
                "Argentina": 2_780_000,
                "Kazakhstan": 2_725_000,
                "Saudi Arabia": 2_150_000,
                "Mexico": 1_964_000,
                "Indonesia": 1_905_000,
                "Peru": 1_285_000,
                "Egypt": 1_010_000,
                "Nigeria": 924_000,
                "Spain": 506_000,
                "Sweden": 450_000,
                "Japan": 378_000,
                "Germany": 357_000,
                "Poland": 313_000,
                "Italy": 301_000,
                "the United Kingdom": 243_000,
                "Greece": 132_000,
                "Iceland": 103_000,
                "Portugal": 92_000,
                "Austria": 84_000,
                "Ireland": 70_000,
                "the Netherlands": 41_500,
                "Switzerland": 41_300,
                "Belgium": 30_700,
                "Luxembourg": 2_590,
                "Singapore": 730,
                "Malta": 316,
                "Monaco": 2,
            }
        )
        | {"France": (551_000, 643_000), "Norway": (324_000, 385_000)},
    ),  # without / with overseas lands
    "weight_kg": Scale(
        "is heavier than",
        "is lighter than",
        {
            "a blue whale": (100_000, 190_000),
            "an elephant": (2_700, 7_000),
            "a hippopotamus": (1_300, 3_200),
            "a giraffe": (700, 1_900),
            "a cow": (400, 1_000),
            "a horse": (380, 1_000),
            "a grizzly bear": (130, 360),
            "a lion": (120, 250),
            "a gorilla": (70, 200),
            "an ostrich": (63, 145),
            "a sheep": (35, 160),
            "a wolf": (25, 80),
            "a fox": (3, 11),
            "a cat": (2.5, 7),
            "a chicken": (0.5, 5),
            "a pigeon": (0.25, 0.4),
            "a hamster": (0.03, 0.2),
            "a sparrow": (0.024, 0.04),
            "a mouse": (0.012, 0.03),
            "a bee": (0.00005, 0.0003),
        },
    ),
    "population": Scale(
        "has more inhabitants than",
        "has fewer inhabitants than",
        {  # millions: city, metro area
            "Tokyo": (9.7, 37.4),
            "Delhi": (11.0, 32.9),
            "Shanghai": (24.9, 29.2),
            "Sao Paulo": (11.5, 22.6),
            "Cairo": (10.0, 22.2),
            "London": (8.9, 14.8),
            "New York": (8.3, 20.1),
            "Madrid": (3.3, 6.8),
            "Berlin": (3.7, 6.2),
            "Rome": (2.75, 4.3),
            "Vienna": (2.0, 2.9),
            "Prague": (1.3, 2.7),
            "Oslo": (0.71, 1.6),
            "Edinburgh": (0.52, 0.9),
            "Florence": (0.36, 1.0),
            "Geneva": (0.2, 1.0),
            "Salzburg": (0.155, 0.36),
            "Reykjavik": (0.14, 0.24),
            "Bruges": (0.12, 0.2),
            "Oxford": (0.16, 0.2),
        },
    ),
    "year": Scale(
        "is newer than",
        "is older than",
        {  # years of construction; negative: BC
            "Stonehenge": (-3000, -1500),
            "the Great Pyramid of Giza": (-2600, -2560),
            "the Parthenon": (-447, -432),
            "the Colosseum": (70, 80),
            "Hagia Sophia": (532, 537),
            "Angkor Wat": (1113, 1150),
            "Notre-Dame de Paris": (1163, 1345),
            "the Leaning Tower of Pisa": (1173, 1372),
            "the Forbidden City": (1406, 1420),
            "Machu Picchu": (1420, 1470),
            "St Peter's Basilica": (1506, 1626),
            "the Taj Mahal": (1632, 1653),
            "Big Ben": (1843, 1859),
            "the Statue of Liberty": (1875, 1886),
            "the Eiffel Tower": (1887, 1889),
            "the Empire State Building": (1930, 1931),
            "the Golden Gate Bridge": (1933, 1937),
            "the Sydney Opera House": (1959, 1973),
            "the Burj Khalifa": (2004, 2010),
        },
        additive=True,
    ),
}


def comparison_pairs(scale: Scale) -> list[tuple[str, str]]:
    """(bigger, smaller) pairs whose order no plausible measurement could reverse."""
    return [(big, small) for big, small in itertools.permutations(scale.values, 2) if scale.clearly_greater(big, small)]


MIN_GROUPS = 5  # groups per quantity at least, so that the type control sees each quantity in training
ITEMS_PER_GROUP = 5  # about; more items per group give more pairs but fewer groups
SEARCH_STEPS = 500  # swaps tried per quantity to raise the number of clearly ordered pairs within groups


def _clear_pairs(scale: Scale, items: list[str]) -> list[tuple[str, str]]:
    """(bigger, smaller) for each clearly ordered pair of ``items``, in their order."""
    pairs = []
    for a, b in itertools.combinations(items, 2):
        if scale.clearly_greater(a, b):
            pairs.append((a, b))
        elif scale.clearly_greater(b, a):
            pairs.append((b, a))
    return pairs


def item_groups(scale: Scale, rng: random.Random) -> list[list[str]]:
    """The items of a quantity split into disjoint groups of about ITEMS_PER_GROUP (at least MIN_GROUPS
    groups), each holding items from across the whole range: the items are dealt band by band in value
    order, then random swaps between groups are kept unless they lose clearly ordered pairs."""
    items = sorted(scale.values, key=scale.values.__getitem__)
    n = max(MIN_GROUPS, round(len(items) / ITEMS_PER_GROUP))
    groups: list[list[str]] = [[] for _ in range(n)]
    for start in range(0, len(items), n):
        band = items[start : start + n]
        for item, g in zip(band, rng.sample(range(n), len(band))):
            groups[g].append(item)
    for _ in range(SEARCH_STEPS):
        a, b = rng.sample(range(n), 2)
        i, j = rng.randrange(len(groups[a])), rng.randrange(len(groups[b]))
        before = len(_clear_pairs(scale, groups[a])) + len(_clear_pairs(scale, groups[b]))
        groups[a][i], groups[b][j] = groups[b][j], groups[a][i]
        if len(_clear_pairs(scale, groups[a])) + len(_clear_pairs(scale, groups[b])) < before:
            groups[a][i], groups[b][j] = groups[b][j], groups[a][i]
    return groups


def _even_shares(capacity: dict[str, int], total: int) -> dict[str, int]:
    """``total`` spread over the keys as evenly as their capacities allow (one at a time, in key order)."""
    if sum(capacity.values()) < total:
        raise RuntimeError(f"only {sum(capacity.values())} clearly ordered pairs within groups, {total} needed")
    shares = dict.fromkeys(capacity, 0)
    while total:
        for key in capacity:
            if total and shares[key] < capacity[key]:
                shares[key] += 1
                total -= 1
    return shares


def generate(seed: int) -> pd.DataFrame:
    """200 clearly ordered pairs, four rows each: both orders under both relation words. "A is longer than
    B." (1) beside "B is longer than A." (0) is one minimal pair, "A is shorter than B." (0) beside "B is
    shorter than A." (1) the other.

    So every item, every relation word and which item comes first occur once with each label for every
    pair, and every word and word pair of a pair's rows as often in a true as in a false row; only the
    order of the items *under the relation* tells a true row from a false one. The cross-validation
    group is not the pair but a set of about five items of one quantity (:func:`item_groups`), and pairs
    are only drawn within a set: every item sits in one group, so no probe can learn from training rows
    which side of a comparison an item is usually on (with one group per pair, pairs sharing an item
    across folds let a classifier that knows only the first and second item and the relation score
    0.82) and every held-out comparison is about items the probe has never been trained on.
    """
    rng = random.Random(seed)
    candidates = {}
    for kind, scale in QUANTITIES.items():
        groups = item_groups(scale, rng)
        candidates[kind] = [(group, pair) for group in groups for pair in _clear_pairs(scale, group)]
    shares = _even_shares({kind: len(pairs) for kind, pairs in candidates.items()}, HALF // 2)
    rows = []
    for kind, scale in QUANTITIES.items():
        for items, (big, small) in rng.sample(candidates[kind], shares[kind]):
            group = f"{kind}:{'|'.join(sorted(items))}"
            pair = f"{kind}:{'|'.join(sorted((big, small)))}"
            for relation in (scale.more, scale.less):
                for first, second in ((big, small), (small, big)):
                    label = int((first == big) == (relation == scale.more))
                    text = _capitalise(f"{first} {relation} {second}.")
                    rows.append((text, label, group, kind, pair, relation, first, second))
    return _frame(rows, ["text", "label", "group", "quantity", "pair", "relation", "first", "second"], rng)
