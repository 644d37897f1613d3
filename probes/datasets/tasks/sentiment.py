"""Affective task ``sentiment``: is the whole sentence good or bad news? Built so that no word says it.

Every sentence has content of one polarity (something looked forward to or dreaded, a good or a bad
prediction, quality or state of affairs) and an operator that confirms or reverses it: "Everyone told me
I would hate the cruise, and I did." / "..., but I didn't."; "The forecast was right / wrong when it said
it would rain all week."; "That has not / since changed."; "The honest answer is yes / no.". The label is
the XOR of the two,
``label = (polarity == "positive") != (operator is the template's reversing one)``.

Rows come in groups of four, one ``group`` per template and content: the positive and the negative
version of the content (which differ only in the polarity words: love / hate, quiet / noisy), each with
both operators. So every row has a minimal-pair twin of the opposite label that differs only in the
operator, and every word of a group, operator or polarity word, occurs in both labels. Groups keep the four
rows in one cross-validation fold. As the operator never stands next to a polarity word, every word and
every pair of adjacent words occurs exactly as often in label 1 as in label 0, in the file and in every
union of groups: a bag-of-words model is left with nothing to read.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from probes.datasets.tasks._common import HALF, _capitalise, _frame

TOPICS = (
    "commute",
    "holiday",
    "work",
    "home",
    "health",
    "family",
    "sport",
    "shopping",
    "school",
    "pets",
    "friends",
    "travel",
)

# Things one can expect to love or to hate, fit for "Before X, ... it" and "Everyone told me I would love X".
EXPERIENCES: dict[str, tuple[str, ...]] = {
    "commute": (
        "my first week of cycling to work",
        "taking the night bus home",
        "car-sharing with my neighbour",
        "the long commute to the new office",
    ),
    "holiday": ("the camping trip", "the cruise", "our week at the ski resort", "the guided walking tour"),
    "work": ("the new job", "the team away day", "the office party", "the training course"),
    "home": (
        "our first winter in the new house",
        "the kitchen renovation",
        "the house move",
        "our first year in the city",
    ),
    "health": ("the yoga class", "the new diet", "the fitness programme", "the swimming lessons"),
    "family": (
        "the family reunion",
        "Christmas at my in-laws'",
        "the weekend with my cousins",
        "my parents' anniversary party",
    ),
    "sport": ("the charity run", "the football season", "my first rowing lesson", "the cycling race"),
    "shopping": (
        "the January sales",
        "Christmas shopping in the city centre",
        "the antiques fair",
        "the farmers' market",
    ),
    "school": ("the maths course", "the school trip", "the new term", "the French exchange"),
    "pets": (
        "the puppy training class",
        "the dog show",
        "a week of looking after my sister's cat",
        "our first month with the new kitten",
    ),
    "friends": (
        "the reunion with my old classmates",
        "the board game night",
        "the karaoke evening",
        "my friend's wedding",
    ),
    "travel": ("the long-haul flight", "the overnight train", "the road trip", "the coach tour"),
}
# (positive, negative) verbs of liking; any positive one pairs with any negative one.
LIKING = (("love", "enjoy", "like"), ("hate", "dislike", "loathe"))

# (source, its pronoun, a good prediction, a bad prediction): the source is right or wrong about it.
PREDICTIONS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "commute": (
        ("the travel app", "it", "the train would arrive early", "the train would be cancelled"),
        ("my colleague", "she", "the new bus route would save me time", "the new bus route would add an hour"),
        ("the radio", "it", "the roads would be clear", "the roads would be jammed"),
    ),
    "holiday": (
        ("the forecast", "it", "we would have sunshine all week", "it would rain all week"),
        ("the travel agent", "she", "the hotel would be lovely", "the hotel would be a dump"),
        ("the guidebook", "it", "the beach would be empty", "the beach would be packed"),
    ),
    "work": (
        ("my manager", "she", "I would get the promotion", "I would lose my job"),
        ("my mentor", "he", "the project would be a success", "the project would be a disaster"),
        ("the union", "it", "we would all get a pay rise", "we would all have our pay cut"),
    ),
    "home": (
        ("the builder", "he", "the new roof would last for decades", "the new roof would leak"),
        ("the estate agent", "she", "our house would sell quickly", "our house would take years to sell"),
        ("the plumber", "he", "the repair would fix the heating", "the heating would break again"),
    ),
    "health": (
        ("my doctor", "she", "my knee would heal quickly", "my knee would need surgery"),
        ("the nurse", "he", "the treatment would work", "the treatment would fail"),
        ("the specialist", "she", "my eyesight would improve", "my eyesight would get worse"),
    ),
    "family": (
        ("my mother", "she", "my brother would make it home for Christmas", "my brother would miss Christmas"),
        ("my aunt", "she", "the wedding would go perfectly", "the wedding would be a disaster"),
        ("my dad", "he", "the family would love my new partner", "the family would dislike my new partner"),
    ),
    "sport": (
        ("the coach", "he", "our team would win the final", "our team would lose the final"),
        ("my trainer", "she", "I would finish the marathon", "I would have to drop out of the marathon"),
        ("the captain", "she", "we would be promoted this season", "we would be relegated this season"),
    ),
    "shopping": (
        ("the shop", "it", "the sofa would arrive on time", "the sofa would arrive weeks late"),
        ("the salesman", "he", "the car would be reliable", "the car would keep breaking down"),
        ("the website", "it", "the parcel would come the next day", "the parcel would get lost"),
    ),
    "school": (
        ("my teacher", "he", "I would pass the exam easily", "I would fail the exam"),
        ("the head teacher", "she", "my son would settle in quickly", "my son would struggle to settle in"),
        ("my tutor", "she", "my essay would get top marks", "my essay would get a low mark"),
    ),
    "pets": (
        ("the vet", "she", "our old cat would make a full recovery", "our old cat would need an operation"),
        ("the breeder", "he", "the puppy would be easy to train", "the puppy would chew everything in sight"),
        ("the dog trainer", "she", "our dog would stop barking at night", "our dog would keep barking at night"),
    ),
    "friends": (
        ("my best friend", "she", "the party would be a huge success", "the party would be a total flop"),
        ("my flatmate", "he", "everyone would come to my birthday", "nobody would come to my birthday"),
        ("my old friend", "he", "we would stay close after the move", "we would drift apart after the move"),
    ),
    "travel": (
        ("the airline", "it", "our flight would leave on time", "our flight would be delayed for hours"),
        ("the tour guide", "he", "the views would be stunning", "the fog would hide the views"),
        ("the booking site", "it", "our room would have a sea view", "our room would face the car park"),
    ),
}

# (thing, a good quality, a bad quality): the thing turns out as good or as bad as expected, or far from it.
QUALITIES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "commute": (
        ("the new train", "fast", "slow"),
        ("the bus journey", "quick", "long"),
        ("the cycle path", "safe", "dangerous"),
        ("the drive to work", "easy", "stressful"),
    ),
    "holiday": (
        ("the hotel", "quiet", "noisy"),
        ("the beach", "peaceful", "crowded"),
        ("the weather", "sunny", "wet"),
        ("the apartment", "spacious", "cramped"),
    ),
    "work": (
        ("the new job", "rewarding", "stressful"),
        ("the workload", "manageable", "crushing"),
        ("the interview", "relaxed", "tough"),
        ("the office", "friendly", "unfriendly"),
    ),
    "home": (
        ("the new flat", "bright", "gloomy"),
        ("the garden", "lovely", "overgrown"),
        ("the neighbourhood", "safe", "rough"),
        ("the renovation", "cheap", "expensive"),
    ),
    "health": (
        ("the operation", "painless", "painful"),
        ("my recovery", "quick", "slow"),
        ("the treatment", "gentle", "harsh"),
        ("the injection", "painless", "painful"),
    ),
    "family": (
        ("the family dinner", "cheerful", "tense"),
        ("my sister's wedding", "joyful", "awkward"),
        ("the visit from my in-laws", "pleasant", "stressful"),
        ("the drive to grandma's", "easy", "exhausting"),
    ),
    "sport": (
        ("the match", "exciting", "boring"),
        ("the race", "easy", "gruelling"),
        ("the new coach", "encouraging", "harsh"),
        ("the training session", "fun", "exhausting"),
    ),
    "shopping": (
        ("the new laptop", "fast", "slow"),
        ("the sofa", "comfortable", "uncomfortable"),
        ("the repair bill", "small", "large"),
        ("the new phone", "reliable", "buggy"),
    ),
    "school": (
        ("the exam", "easy", "hard"),
        ("the new teacher", "kind", "strict"),
        ("my report card", "good", "bad"),
        ("the homework", "light", "heavy"),
    ),
    "pets": (
        ("the new puppy", "gentle", "naughty"),
        ("the rescue cat", "affectionate", "grumpy"),
        ("the vet bill", "low", "high"),
        ("our dog's recovery", "fast", "slow"),
    ),
    "friends": (
        ("the reunion", "fun", "dull"),
        ("my friend's new partner", "charming", "rude"),
        ("the barbecue", "lively", "dull"),
        ("the surprise party", "fun", "awkward"),
    ),
    "travel": (
        ("the flight", "smooth", "bumpy"),
        ("the delay", "short", "long"),
        ("the airport", "calm", "chaotic"),
        ("the taxi driver", "friendly", "rude"),
    ),
}
# What I had expected of a good quality / of a bad one; "expected" goes with either.
EXPECTATIONS = (("hoped", "been promised", "expected"), ("feared", "been warned", "expected"))

# (a good state of affairs, a bad one) some time ago, which has or has not changed since.
STATES: dict[str, tuple[tuple[str, str], ...]] = {
    "commute": (
        ("my bus came on time every morning", "my bus was late every morning"),
        ("my journey to work took ten minutes", "my journey to work took two hours"),
        ("the roads near us were quiet", "the roads near us were jammed every day"),
    ),
    "holiday": (
        ("we spent every summer by the sea", "we spent every summer stuck at home"),
        ("our village was peaceful in August", "our village was overrun by tourists in August"),
        ("we had a week away every spring", "we had to work through every spring"),
    ),
    "work": (
        ("I loved going to work", "I dreaded going to work"),
        ("my boss treated me fairly", "my boss treated me badly"),
        ("my job was secure", "my job was at risk"),
    ),
    "home": (
        ("our flat was warm and dry", "our flat was cold and damp"),
        ("our neighbours were quiet and friendly", "our neighbours played loud music every night"),
        ("the heating worked perfectly", "the heating broke down every week"),
    ),
    "health": (
        ("I could run ten miles without stopping", "I could barely walk to the shops"),
        ("I slept well every night", "I lay awake every night"),
        ("my back felt strong", "my back hurt every morning"),
    ),
    "family": (
        ("my brother and I got on well", "my brother and I argued constantly"),
        ("my parents were in good health", "my parents were in poor health"),
        ("the whole family met up every Sunday", "half the family refused to speak to the other half"),
    ),
    "sport": (
        ("our team won almost every match", "our team lost almost every match"),
        ("I was the fastest runner in my club", "I was the slowest runner in my club"),
        ("our local pool was open all year", "our local pool was closed for repairs"),
    ),
    "shopping": (
        ("I had plenty of money saved", "I was deep in debt"),
        ("our high street was full of busy shops", "our high street was full of empty shops"),
        ("food was cheap", "food was expensive"),
    ),
    "school": (
        ("my son loved his school", "my son was bullied at school"),
        ("I was top of my class", "I was bottom of my class"),
        ("my daughter had lots of friends at school", "my daughter was lonely at school"),
    ),
    "pets": (
        ("our dog was healthy and full of energy", "our dog was too ill to go for walks"),
        ("our cat was friendly to everyone", "our cat hissed at everyone"),
        ("the puppy slept through the night", "the puppy cried all night"),
    ),
    "friends": (
        ("I had a close group of friends", "I had hardly any friends"),
        ("my best friend lived next door", "my best friend lived far away"),
        ("our book club was thriving", "our book club was falling apart"),
    ),
    "travel": (
        ("flights to my home town were cheap", "flights to my home town were expensive"),
        ("the trains to the coast were reliable", "the trains to the coast were always cancelled"),
        ("our local airport was calm", "our local airport was chaotic"),
    ),
}
WHEN = ("Last year", "A year ago", "Two years ago", "Five years ago")


@dataclass(frozen=True)
class Template:
    """A sentence with a content slot set and an ``{op}`` slot: ``operators[0]`` keeps the content's polarity,
    ``operators[1]`` reverses it."""

    name: str
    construction: str
    text: str
    operators: tuple[str, str]


# (name, construction, sentence, (confirming operator, reversing operator)). The operator never stands next to
# a polarity word: words that both versions share come between them (one in comparison, two or more elsewhere).
DID, AS = ("and I did", "but I didn't"), ("every bit", "nowhere near")
_TEMPLATES = (
    ("expect-before", "expectation", "Before {thing}, I was sure I would {verb} every minute of it, {op}.", DID),
    ("expect-told", "expectation", "Everyone told me I would {verb} {thing}, {op}.", DID),
    ("predict-when", "prediction", "{Source} was {op} when {pronoun} said {claim}.", ("right", "wrong")),
    ("predict-said", "prediction", "When {source} said {claim}, {pronoun} was {op}.", ("right", "wrong")),
    ("compare-had", "comparison", "{Thing} was {op} as {quality} as I had {expected}.", AS),
    ("compare-said", "comparison", "{Thing} was {op} as {quality} as everyone had said.", AS),
    ("change-changed", "change", "{when}, {state}. That has {op} changed.", ("not", "since")),
    ("change-case", "change", "{when}, {state}. That is {op} the case.", ("still", "no longer")),
    ("answer-was", "answer", "Was {thing} {quality}? The honest answer is {op}.", ("yes", "no")),
    ("answer-ask", "answer", "If you ask me whether {thing} was {quality}, the answer is {op}.", ("yes", "no")),
)
TEMPLATES = tuple(Template(*fields) for fields in _TEMPLATES)
REVERSING = {template.operators[1] for template in TEMPLATES}


def _contents(template: Template, topic: str, rng: random.Random) -> tuple[dict[str, str], dict[str, str]]:
    """Fillers for every slot but ``{op}``, drawn from ``topic``'s lists: (positive, negative), the same but
    for the polarity words."""
    if template.construction == "expectation":
        thing = rng.choice(EXPERIENCES[topic])
        return tuple({"thing": thing, "verb": rng.choice(verbs)} for verbs in LIKING)
    if template.construction == "prediction":
        source, pronoun, *claims = rng.choice(PREDICTIONS[topic])
        return tuple({"source": source, "Source": _capitalise(source), "pronoun": pronoun, "claim": c} for c in claims)
    if template.construction in ("comparison", "answer"):
        thing, *qualities = rng.choice(QUALITIES[topic])
        expected = rng.randrange(len(EXPECTATIONS[0]))
        return tuple(
            {"thing": thing, "Thing": _capitalise(thing), "quality": quality, "expected": expectations[expected]}
            for quality, expectations in zip(qualities, EXPECTATIONS)
        )
    when, states = rng.choice(WHEN), rng.choice(STATES[topic])
    return tuple({"when": when, "state": state} for state in states)


def _new_contents(template: Template, topic: str, seen: set[str], rng: random.Random) -> tuple[dict, dict]:
    """Draw until neither version's text (without the operator) is in ``seen``, then add both."""
    while True:
        fills = _contents(template, topic, rng)
        keys = {template.text.format(op="", **fill) for fill in fills}
        if len(keys) == 2 and seen.isdisjoint(keys):
            seen |= keys
            return fills


def generate(seed: int) -> pd.DataFrame:
    """Every template gets the same number of groups, spread over the topics as evenly as the count allows.
    A group is two twin pairs that share the template and the content but for the polarity words (the
    positive and the negative version), so each of the group's four rows has a twin of the opposite label,
    and every word of the group occurs in both labels."""
    rng = random.Random(seed)
    groups_per_template, remainder = divmod(HALF // 2, len(TEMPLATES))
    if remainder:
        raise ValueError(f"{HALF // 2} groups do not split evenly over {len(TEMPLATES)} templates")
    columns = ["text", "label", "group", "topic", "construction", "template", "polarity", "operator"]
    rows: list[tuple] = []
    for template in TEMPLATES:
        seen: set[str] = set()
        topics = rng.sample(TOPICS, len(TOPICS)) * (groups_per_template // len(TOPICS) + 1)
        for number, topic in enumerate(topics[:groups_per_template], 1):
            group = f"{template.name}-{number:02d}"
            for fill, polarity in zip(_new_contents(template, topic, seen, rng), ("positive", "negative")):
                for reverses, operator in enumerate(template.operators):
                    label = int((polarity == "positive") != bool(reverses))
                    text = template.text.format(op=operator, **fill)
                    rows.append((text, label, group, topic, template.construction, template.name, polarity, operator))
    return _frame(rows, columns, rng)
