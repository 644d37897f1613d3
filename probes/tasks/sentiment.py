"""Affective task ``sentiment``: everyday sentences about good or bad events, positive or negative."""

from __future__ import annotations

import random

import pandas as pd

from probes.tasks._common import _capitalise, _dealt_labels, _frame, _spread, _unique

# topic: (good things that happened, bad things that happened), written in parallel.
EVENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "commute": (
        (
            "the train arrived early",
            "I got a seat by the window",
            "the bus driver waited for me",
            "I reached the office with time to spare",
        ),
        (
            "the train was cancelled again",
            "I had to stand squashed against the doors",
            "the bus drove off right in front of me",
            "I reached the office an hour late",
        ),
    ),
    "holiday": (
        (
            "the cottage was even prettier than the photos",
            "we saw dolphins from the boat",
            "the sun shone from dawn to dusk",
            "we found a hidden beach all to ourselves",
        ),
        (
            "the cottage smelled of mould",
            "we got seasick on the boat",
            "it poured from dawn to dusk",
            "someone stole our bags on the beach",
        ),
    ),
    "work": (
        (
            "my boss praised my report in front of everyone",
            "I finally got the promotion",
            "the meeting finished early",
            "my colleagues helped me meet the deadline",
        ),
        (
            "my boss blamed me for her own mistake",
            "I was passed over for promotion again",
            "the meeting dragged on for three hours",
            "my colleagues left me to meet the deadline alone",
        ),
    ),
    "picnic": (
        (
            "the sun came out for our picnic",
            "the kids played happily in the park",
            "we found a shady spot under the trees",
            "a kind stranger shared his strawberries with us",
        ),
        (
            "a storm ruined our picnic",
            "the kids fought all afternoon",
            "wasps swarmed around our food",
            "a dog ran off with our sandwiches",
        ),
    ),
    "home": (
        (
            "I finally fixed the leaking tap",
            "the new sofa arrived on time",
            "the plumber got the heating working again",
            "the neighbours brought us homemade bread",
        ),
        (
            "a pipe burst under the sink",
            "the new sofa arrived badly scratched",
            "the heating broke in the middle of winter",
            "the neighbours played loud music until dawn",
        ),
    ),
    "health": (
        (
            "the doctor said my scan was clear",
            "my cough finally went away",
            "I slept a full eight hours",
            "my knee did not hurt at all",
        ),
        (
            "the doctor found something worrying on my scan",
            "my cough kept me awake all night",
            "I barely slept at all",
            "my knee hurt with every step",
        ),
    ),
    "family": (
        (
            "my sister called with great news",
            "the whole family came home for dinner",
            "my daughter read her first book aloud",
            "grandma taught me her secret recipe",
        ),
        (
            "I had a bitter argument with my sister",
            "nobody came home for dinner",
            "my daughter cried all the way to school",
            "grandma broke her hip in a fall",
        ),
    ),
    "sport": (
        (
            "our team won in the last minute",
            "I ran my fastest race ever",
            "the coach picked me for the first team",
            "we celebrated the win all evening",
        ),
        (
            "our team lost in the last minute",
            "I twisted my ankle halfway through the race",
            "the coach left me on the bench",
            "we trudged home in silence after the defeat",
        ),
    ),
    "shopping": (
        (
            "the parcel arrived a day early",
            "the shop gave me a big discount",
            "a stranger returned the wallet I had lost",
            "I found the perfect gift for my mother",
        ),
        (
            "the parcel arrived smashed",
            "the shop charged me twice",
            "someone stole my wallet on the bus",
            "I could not find a gift anywhere",
        ),
    ),
    "school": (
        (
            "I passed my driving test first time",
            "the exam was easier than I feared",
            "my teacher wrote me a kind note",
            "I got top marks in maths",
        ),
        (
            "I failed my driving test again",
            "the exam was far harder than I feared",
            "my teacher shouted at me in front of the class",
            "I got the lowest mark in maths",
        ),
    ),
    "pets": (
        (
            "the puppy learned to sit in one afternoon",
            "the vet said our old cat was healthy",
            "the dog greeted me at the door",
            "the kitten curled up on my lap",
        ),
        (
            "the puppy chewed up my new shoes",
            "our old cat got very sick",
            "the dog ran away during the storm",
            "the kitten scratched my arm badly",
        ),
    ),
    "friends": (
        (
            "my best friend surprised me at the station",
            "old friends came over for a barbecue",
            "my friends threw me a surprise party",
            "we laughed until our sides hurt",
        ),
        (
            "my best friend forgot my birthday",
            "my friends cancelled on me at the last minute",
            "nobody turned up to my party",
            "we argued the whole way home",
        ),
    ),
    "travel": (
        (
            "our flight was upgraded for free",
            "we landed half an hour early",
            "our bags came out first",
            "a taxi was waiting for us at the airport",
        ),
        (
            "our flight was delayed by nine hours",
            "the airline lost our bags",
            "we missed our connecting flight",
            "there was no taxi anywhere at the airport",
        ),
    ),
}
# How it felt, (positive, negative) with the same subject and an intensifier slot.
REACTIONS = (
    ("I was {i} happy", "I was {i} upset"),
    ("we were {i} thrilled", "we were {i} sad"),
    ("I felt {i} grateful", "I felt {i} miserable"),
    ("it was {i} wonderful", "it was {i} horrible"),
    ("the day felt {i} special", "the day felt {i} awful"),
    ("I felt {i} lucky", "I felt {i} unlucky"),
)
INTENSIFIERS = ("really", "so", "truly", "incredibly")
WHEN = (
    ("Yesterday", "yesterday"),
    ("Last weekend", "last weekend"),
    ("On Friday", "on Friday"),
    ("On Saturday", "on Saturday"),
    ("Last week", "last week"),
    ("Today", "today"),
    ("On my birthday", "on my birthday"),
    ("On Sunday", "on Sunday"),
)
# Sentence frames over two events e1, e2 of one topic, a time (W capitalised, w not) and a reaction r.
SENTENCE_FRAMES = (
    "{W}, {e1} and {e2}.",
    "{E1} and {e2}, so {r}.",
    "{E1} {w}, and {r}.",
    "{R} because {e1}.",
    "{W}, {e1}. {R}.",
)


def generate(seed: int) -> pd.DataFrame:
    """Positive and negative sentences draw topic, frame, time, reaction slot and intensifier from the same
    lists, so only what happened and how it felt carries the label."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(label: int, frame: str) -> tuple:
        topic = rng.choice(list(EVENTS))
        e1, e2 = rng.sample(EVENTS[topic][1 - label], 2)
        W, w = rng.choice(WHEN)
        r = rng.choice(REACTIONS)[1 - label].format(i=rng.choice(INTENSIFIERS))
        text = frame.format(W=W, w=w, e1=e1, e2=e2, E1=_capitalise(e1), r=r, R=_capitalise(r))
        return text, label, topic

    rows = [
        _unique(draw, seen, label, frame) for label, frame in zip(_dealt_labels(rng), _spread(SENTENCE_FRAMES, rng))
    ]
    return _frame(rows, ["text", "label", "topic"], rng)
