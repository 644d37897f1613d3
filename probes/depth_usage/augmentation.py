"""Seeded text augmentations: the two views whose InfoNCE measures invariance (docs/methods.md §6.6).

Skean et al.'s code draws each view with nlpaug's ``Sequential([SplitAug(), RandomCharAug(), KeyboardAug()])`` at
its defaults, unseeded. nlpaug is not a dependency here, so the three steps are written out with the same rules
and drawn from a seeded generator, one per (seed, text, view):

* split: ceil(0.3 n) of the text's n tokens (at least 1, at most 10), drawn among words of 4 or more characters,
  each cut in two at a uniform position that leaves at least one character on the left and two on the right;
* random characters: as many words (4 or more characters) each get ceil(0.3 m) of their m characters (1 to 10)
  replaced by a uniform draw from letters, digits and ``!@#$%^&*()_+``;
* keyboard: as many words again each get as many characters replaced by a QWERTY neighbour (either case).

Tokens are runs of word characters and single other characters, spaces dropped; each step re-tokenises the
previous step's output and joins tokens with spaces, closing them up before ``.,:;?!%`` and inside brackets.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"(\W)")
_CLOSE_UP = (
    (re.compile(r" ([.,:;?!%]+)(?= |$)"), r"\1"),
    (re.compile(r"([(\[{<]) "), r"\1"),
    (re.compile(r" ([)\]}>])"), r"\1"),
)
_RANDOM_CHARACTERS = string.ascii_letters + string.digits + "!@#$%^&*()_+"
_QWERTY = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")
_ROW_OFFSETS = (0.0, 0.5, 0.75, 1.25)  # where each row starts, in key widths, on a staggered keyboard
_SHIFTED = dict(zip("1234567890", "!@#$%^&*()", strict=True))
_AUGMENTATION_STREAM = 0x5A  # mixed into every seed, so no other seeded stream of the run is reused
MIN_CHARACTERS, SHARE, MOST = 4, 0.3, 10
NAME = "split + random characters + keyboard (nlpaug's defaults, seeded)"


def _keyboard_neighbours() -> dict[str, list[str]]:
    """Each letter and digit's neighbours on a staggered QWERTY layout (same row +-1 key, rows above and below
    within 3/4 of a key), shifted symbols of neighbouring digits and both cases; upper-case keys map alike."""
    places = {
        key: (row, offset + col)
        for row, (keys, offset) in enumerate(zip(_QWERTY, _ROW_OFFSETS))
        for col, key in enumerate(keys)
    }
    neighbours = {}
    for key, (row, x) in places.items():
        near = [
            other
            for other, (other_row, other_x) in places.items()
            if other != key
            and (
                (other_row == row and abs(other_x - x) == 1) or (abs(other_row - row) == 1 and abs(other_x - x) <= 0.75)
            )
        ]
        near += [_SHIFTED[other] for other in near if other in _SHIFTED]
        cased = sorted(set(near) | {other.upper() for other in near})
        neighbours[key] = cased
        neighbours[key.upper()] = cased
    return neighbours


KEYBOARD = _keyboard_neighbours()


def _tokens(text: str) -> list[str]:
    return [token for token in _TOKEN.split(text) if token.strip()]


def _joined(tokens: Sequence[str]) -> str:
    text = " ".join(tokens)
    for pattern, replacement in _CLOSE_UP:
        text = pattern.sub(replacement, text)
    return text.strip()


def _count(size: int) -> int:
    return min(max(math.ceil(SHARE * size), 1), MOST)


def _chosen(rng: np.random.Generator, candidates: Sequence[int], size: int) -> list[int]:
    """``_count(size)`` of ``candidates`` (all of them if fewer), drawn without replacement."""
    k = min(_count(size), len(candidates))
    return sorted(int(i) for i in rng.choice(candidates, size=k, replace=False)) if k else []


def _split(text: str, rng: np.random.Generator) -> str:
    tokens = _tokens(text)
    eligible = [i for i, token in enumerate(tokens) if len(token) >= MIN_CHARACTERS]
    picked, out = set(_chosen(rng, eligible, len(tokens))), []
    for i, token in enumerate(tokens):
        if i in picked:
            cut = int(rng.integers(1, len(token) - 1))
            out += [token[:cut], token[cut:]]
        else:
            out.append(token)
    return _joined(out)


def _substitute(text: str, rng: np.random.Generator, replacements) -> str:
    """Chosen words' characters replaced by a draw from ``replacements(character)``; a character with none is
    never chosen."""
    tokens = _tokens(text)
    eligible = [i for i, token in enumerate(tokens) if len(token) >= MIN_CHARACTERS]
    for i in _chosen(rng, eligible, len(tokens)):
        chars = list(tokens[i])
        for j in _chosen(rng, [j for j, c in enumerate(chars) if replacements(c)], len(chars)):
            options = replacements(chars[j])
            chars[j] = options[int(rng.integers(len(options)))]
        tokens[i] = "".join(chars)
    return _joined(tokens)


def augment(text: str, rng: np.random.Generator) -> str:
    """One augmented view of ``text``: split, then random characters, then keyboard typos."""
    text = _split(text, rng)
    text = _substitute(text, rng, lambda c: _RANDOM_CHARACTERS)
    return _substitute(text, rng, lambda c: KEYBOARD.get(c, []))


def augmented_views(texts: Sequence[str], n_views: int, seed: int) -> list[list[str]]:
    """``n_views`` independent augmentations of every text, ``[view][text]``; each from its own seeded stream."""
    return [
        [augment(text, np.random.default_rng([seed, _AUGMENTATION_STREAM, view, i])) for i, text in enumerate(texts)]
        for view in range(n_views)
    ]
