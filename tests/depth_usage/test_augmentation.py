"""The augmented views of representation quality's InfoNCE: seeded, offline, and nlpaug's rules."""

from __future__ import annotations

import math

import numpy as np

from probes.depth_usage.augmentation import KEYBOARD, MOST, SHARE, _split, augmented_views

TEXT = (
    "The river flows quietly past the old mill, where children gather every summer (mostly in July) to watch "
    "herons fishing between the stones. Nobody remembers when the wheel stopped turning."
)


def test_views_are_seeded_independent_and_differ_from_the_text() -> None:
    views = augmented_views([TEXT, TEXT], n_views=2, seed=0)
    assert views == augmented_views([TEXT, TEXT], n_views=2, seed=0)
    assert views != augmented_views([TEXT, TEXT], n_views=2, seed=1)
    (a, b), (c, _) = views
    assert len({a, b, c}) == 3  # every (text, view) has its own stream, even for equal texts
    assert TEXT not in {a, b, c}


def test_words_under_four_characters_are_never_touched_and_punctuation_is_closed_up() -> None:
    short = "A cat sat on a mat, and it was fun (a lot)."
    assert augmented_views([short], n_views=3, seed=0) == [[short]] * 3


def test_characters_are_substituted_never_added_or_lost() -> None:
    word = "abcdefghijklmnopqrst"  # spaces come from the split and around substituted symbols such as '('
    for seed in range(20):
        (view,) = augmented_views([word], n_views=1, seed=seed)[0]
        letters = "".join(view.split(" "))
        assert len(letters) == len(word) and letters != word


def test_a_split_cuts_a_share_of_the_words_at_most_ten_leaving_one_character_left_and_two_right() -> None:
    rng = np.random.default_rng(0)
    for n_words in (3, 20, 100):
        split = _split(" ".join(["window"] * n_words), rng).split(" ")
        assert len(split) == n_words + min(math.ceil(SHARE * n_words), MOST)
        assert {piece for piece in split if piece != "window"} <= {
            "w",
            "indow",
            "wi",
            "ndow",
            "win",
            "dow",
            "wind",
            "ow",
        }
    assert _split("a cat sat", rng) == "a cat sat"  # no word of 4 characters or more


def test_keyboard_neighbours_are_adjacent_keys_in_both_cases() -> None:
    assert set(KEYBOARD["g"]) == set("tyfhvbTYFHVB")
    assert KEYBOARD["G"] == KEYBOARD["g"]
    assert set(KEYBOARD["q"]) == set("12wa!@WA")
    for key, near in KEYBOARD.items():
        for other in near:
            if other.isalpha() and key.isalpha():
                assert key.lower() in KEYBOARD[other]  # adjacency is symmetric
