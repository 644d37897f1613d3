"""Affective-lexical task ``reviews``: short reviews of films, food, gadgets, hotels and books, positive or
negative.

Lexical on purpose: the label is carried by evaluative words ("superb" / "dreadful", "Five stars." / "One
star."), so a bag-of-words classifier solves it. It is the baseline for ``sentiment``, whose label no word
gives away: it shows what looking up words alone achieves."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from probes.datasets.tasks._common import _capitalise, _dealt_labels, _frame, _spread, _unique


@dataclass(frozen=True)
class ReviewDomain:
    items: tuple[str, ...]  # what is reviewed, as the subject of a remark
    aspects: tuple[str, ...]  # parts judged with an adjective
    remarks: tuple[tuple[str, ...], tuple[str, ...]]  # (positive, negative), in parallel
    verdicts: tuple[tuple[str, ...], tuple[str, ...]]


REVIEW_DOMAINS: dict[str, ReviewDomain] = {
    "film": ReviewDomain(
        ("the film", "this movie"),
        ("the plot", "the acting", "the soundtrack", "the ending", "the dialogue", "the camera work"),
        (
            (
                "kept me hooked until the credits",
                "had the whole audience laughing",
                "is beautifully shot",
                "is the best I have seen this year",
            ),
            (
                "put half the audience to sleep",
                "had the whole audience groaning",
                "is badly shot",
                "is the worst I have seen this year",
            ),
        ),
        (
            ("Five stars.", "A must-see.", "I would watch it again."),
            ("One star.", "Do not bother.", "I walked out halfway."),
        ),
    ),
    "restaurant": ReviewDomain(
        ("this restaurant", "the place"),
        ("the pasta", "the service", "the dessert", "the wine list", "the steak", "the seafood"),
        (
            (
                "serves the best food in town",
                "was packed for good reason",
                "gets every detail right",
                "is worth the trip across town",
            ),
            (
                "serves the worst food in town",
                "was empty for good reason",
                "gets every detail wrong",
                "is not worth the trip across town",
            ),
        ),
        (
            ("We will be back.", "Book a table now.", "You will not regret it."),
            ("We will not be back.", "Eat somewhere else.", "Avoid this place."),
        ),
    ),
    "gadget": ReviewDomain(
        ("this phone", "this laptop"),
        ("the battery", "the screen", "the sound quality", "the build quality", "the charger", "the camera"),
        (
            (
                "still works like new after a year",
                "does everything it promises",
                "charges in minutes",
                "is worth every penny",
            ),
            (
                "stopped working after a week",
                "does nothing it promises",
                "takes all night to charge",
                "is not worth a penny",
            ),
        ),
        (
            ("Buy it.", "Highly recommended.", "You will not regret it."),
            ("Avoid it.", "Sent it straight back.", "A waste of money."),
        ),
    ),
    "hotel": ReviewDomain(
        ("the hotel", "this resort"),
        ("the room", "the breakfast", "the pool", "the bed", "the front desk", "the view"),
        (
            (
                "made us feel at home",
                "was spotless from top to bottom",
                "has the friendliest staff we have met",
                "was peaceful all night",
            ),
            (
                "made us feel unwelcome",
                "was filthy from top to bottom",
                "has the rudest staff we have met",
                "was noisy all night",
            ),
        ),
        (
            ("We will stay again.", "Highly recommended.", "Book it now."),
            ("We will never stay again.", "Stay elsewhere.", "Avoid this place."),
        ),
    ),
    "book": ReviewDomain(
        ("this novel", "the book"),
        ("the story", "the main character", "the writing", "the final chapter", "the translation", "the pacing"),
        (
            (
                "kept me reading until dawn",
                "has an ending I never saw coming",
                "is beautifully written",
                "stayed with me for weeks",
            ),
            (
                "sent me to sleep every night",
                "has an ending anyone could see coming",
                "is badly written",
                "bored me within a few pages",
            ),
        ),
        (
            ("I could not put it down.", "A real page-turner.", "Read it."),
            ("I gave up halfway through.", "A real chore to finish.", "Skip it."),
        ),
    ),
}
# Evaluative adjectives that fit any aspect, (positive, negative) in parallel.
REVIEW_ADJECTIVES = (
    ("superb", "dreadful"),
    ("excellent", "appalling"),
    ("brilliant", "terrible"),
    ("outstanding", "mediocre"),
    ("first-rate", "disappointing"),
    ("impressive", "lacklustre"),
)
REVIEW_OPENERS = ("", "Honestly, ", "Overall, ", "In short, ")
REVIEW_ADVERBS = ("", "truly ", "simply ", "really ")
# Frames over an opener o, item, remark, aspects a1/a2 with adjectives j1/j2, adverb d and a verdict v. The
# subject of each frame (``a1`` or ``item``) names its rows' group.
REVIEW_FRAMES = (
    ("{o}{a1} is {d}{j1}.", "a1"),
    ("{o}{a1} is {j1} and {a2} is {j2}.", "a1"),
    ("{o}{item} {remark}. {v}", "item"),
    ("{o}{a1} is {j1}, and {item} {remark}.", "a1"),
    ("{v} {A1} is {d}{j1}.", "a1"),
    ("{o}{item} {remark}.", "item"),
)


def generate(seed: int) -> pd.DataFrame:
    """Labels, frames and domains are dealt independently; both labels then draw aspects, items, opener and
    adverb from the same lists, so only the evaluative words carry the label. A group is one frame with one
    subject (``film/3/the plot``): the rows of a group differ only in their evaluative words and fillers."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(label: int, frame: int, name: str) -> tuple:
        domain, polarity = REVIEW_DOMAINS[name], 1 - label
        a1, a2 = rng.sample(domain.aspects, 2)
        j1, j2 = (adjectives[polarity] for adjectives in rng.sample(REVIEW_ADJECTIVES, 2))
        fill = {
            "o": rng.choice(REVIEW_OPENERS),
            "d": rng.choice(REVIEW_ADVERBS),
            "item": rng.choice(domain.items),
            "a1": a1,
            "a2": a2,
            "A1": _capitalise(a1),
            "j1": j1,
            "j2": j2,
            "remark": rng.choice(domain.remarks[polarity]),
            "v": rng.choice(domain.verdicts[polarity]),
        }
        text, subject = REVIEW_FRAMES[frame]
        return _capitalise(text.format(**fill)), label, f"{name}/{frame}/{fill[subject]}", name, frame

    frames = _spread(range(len(REVIEW_FRAMES)), rng)
    domains = _spread(list(REVIEW_DOMAINS), rng)
    rows = [_unique(draw, seen, *dealt) for dealt in zip(_dealt_labels(rng), frames, domains)]
    return _frame(rows, ["text", "label", "group", "domain", "frame"], rng)
