"""Affective task ``reviews``: short reviews of films, food, gadgets, hotels and books, positive or negative."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from probes.tasks._common import _capitalise, _dealt_labels, _frame, _spread, _unique


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
    ("excellent", "poor"),
    ("brilliant", "terrible"),
    ("outstanding", "mediocre"),
    ("first-rate", "disappointing"),
    ("impressive", "dismal"),
)
REVIEW_OPENERS = ("", "Honestly, ", "Overall, ", "In short, ")
REVIEW_ADVERBS = ("", "truly ", "simply ", "really ")
# Frames over an opener o, item, remark, aspects a1/a2 with adjectives j1/j2, adverb d and a verdict v.
REVIEW_FRAMES = (
    "{o}{a1} is {d}{j1}.",
    "{o}{a1} is {j1} and {a2} is {j2}.",
    "{o}{item} {remark}. {v}",
    "{o}{a1} is {j1}, and {item} {remark}.",
    "{v} {A1} is {d}{j1}.",
    "{o}{item} {remark}.",
)


def generate(seed: int) -> pd.DataFrame:
    """As for ``sentiment``: both labels draw domain, frame, aspects, opener and adverb from the same lists,
    so only the evaluative words carry the label."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(label: int, frame: str) -> tuple:
        name = rng.choice(list(REVIEW_DOMAINS))
        domain, polarity = REVIEW_DOMAINS[name], 1 - label
        a1, a2 = rng.sample(domain.aspects, 2)
        j1, j2 = (adjectives[polarity] for adjectives in rng.sample(REVIEW_ADJECTIVES, 2))
        text = frame.format(
            o=rng.choice(REVIEW_OPENERS),
            d=rng.choice(REVIEW_ADVERBS),
            item=rng.choice(domain.items),
            a1=a1,
            a2=a2,
            A1=_capitalise(a1),
            j1=j1,
            j2=j2,
            remark=rng.choice(domain.remarks[polarity]),
            v=rng.choice(domain.verdicts[polarity]),
        )
        return _capitalise(text), label, name

    rows = [_unique(draw, seen, label, frame) for label, frame in zip(_dealt_labels(rng), _spread(REVIEW_FRAMES, rng))]
    return _frame(rows, ["text", "label", "domain"], rng)
