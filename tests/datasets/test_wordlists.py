"""The shipped multilingual word lists and the prompts built from them."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from helpers import REPO
from probes.datasets.concepts import DatasetError
from probes.datasets.wordlists import (
    BLANK,
    build_prompts,
    check_task,
    filled_cloze,
    load_languages,
    load_word_list,
    mention_pattern,
)

DATA = REPO / "data" / "latent_language"
LANGUAGES = DATA / "languages.csv"


@pytest.fixture(scope="module")
def everyday():
    return load_word_list("everyday", DATA / "everyday_words.csv", DATA / "everyday_cloze.csv", LANGUAGES)


def test_shipped_list_covers_the_required_languages_and_concepts(everyday):
    assert {"en", "fr", "de", "es", "zh", "ja", "ru"} <= set(everyday.languages)
    assert len(everyday.words) >= 100
    assert everyday.cloze.notna().all().all()  # a cloze sentence for every concept and language
    assert everyday.language_names["zh"] == "中文" and everyday.language_names["fr"] == "Français"


def test_cloze_sentences_blank_the_word_and_do_not_give_it_away(everyday):
    for concept, row in everyday.cloze.iterrows():
        for language, sentence in row.items():
            assert sentence.count(BLANK) == 1
            word, rest = everyday.words.at[concept, language], sentence.replace(BLANK, "")
            # Chinese and Japanese have no spaces: any occurrence gives the word away
            pattern = re.escape(word) if language in ("zh", "ja") else rf"\b{re.escape(word)}\b"
            assert not re.search(pattern, rest, flags=re.IGNORECASE), (concept, language)
    filled = filled_cloze(everyday)
    assert len(filled) == everyday.cloze.size and not filled["text"].str.contains(BLANK).any()


def test_translation_prompts_follow_the_method_and_are_seeded(everyday):
    concepts = list(everyday.words.index)
    prompts = build_prompts(everyday, "translation", "fr", "zh", concepts, shots=5, seed=0)
    assert len(prompts) == len(concepts)
    first = prompts[0]
    lines = first.text.split("\n")
    assert len(lines) == 6
    assert all(re.fullmatch(r'Français: "[^"]+" - 中文: "[^"]+"', line) for line in lines[:-1])
    assert lines[-1] == f'Français: "{everyday.words.at[first.concept, "fr"]}" - 中文: "'
    assert first.answer == everyday.words.at[first.concept, "zh"]
    assert all(f'"{everyday.words.at[p.concept, "zh"]}"' not in p.text for p in prompts)  # no shot is the query
    assert [p.text for p in build_prompts(everyday, "translation", "fr", "zh", concepts, 5, 0)] == [
        p.text for p in prompts
    ]
    assert [p.text for p in build_prompts(everyday, "translation", "fr", "zh", concepts, 5, 1)] != [
        p.text for p in prompts
    ]


def test_repetition_and_cloze_prompts(everyday):
    concepts = list(everyday.words.index)[:20]
    repetition = build_prompts(everyday, "repetition", "zh", "zh", concepts, shots=2, seed=0)[0]
    word = everyday.words.at[repetition.concept, "zh"]
    assert repetition.text.endswith(f'中文: "{word}" - 中文: "') and repetition.answer == word
    cloze = build_prompts(everyday, "cloze", "en", "fr", concepts, shots=2, seed=0)[0]
    assert cloze.text.split("\n")[-1] == f'{everyday.cloze.at[cloze.concept, "en"]} Français: "'
    assert cloze.answer == everyday.words.at[cloze.concept, "fr"]


@pytest.mark.parametrize(
    ("task", "src", "tgt", "message"),
    [
        ("translation", "fr", "fr", "two languages"),
        ("repetition", "fr", "zh", "one language"),
        ("translation", "fr", "it", "no language"),
        ("summarise", "fr", "zh", "not one of"),
    ],
)
def test_impossible_tasks_are_refused(everyday, task, src, tgt, message):
    with pytest.raises(ValueError, match=message):
        check_task(everyday, task, src, tgt)


def _write(tmp_path, words: str, cloze: str):
    (tmp_path / "words.csv").write_text(words)
    (tmp_path / "cloze.csv").write_text(cloze)
    return load_word_list("mine", tmp_path / "words.csv", tmp_path / "cloze.csv", LANGUAGES)


GOOD_WORDS = "concept,en,fr\ndog,dog,chien\ncat,cat,chat\n"
GOOD_CLOZE = "concept,language,sentence\ndog,en,The ___ barks.\ndog,fr,Le ___ aboie.\ncat,en,The ___ purrs.\n"


def test_a_user_list_with_missing_cloze_rows_loads(tmp_path):
    mine = _write(tmp_path, GOOD_WORDS, GOOD_CLOZE)
    assert mine.languages == ["en", "fr"]
    assert pd.isna(mine.cloze.at["cat", "fr"])


@pytest.mark.parametrize(
    ("words", "cloze", "where", "message"),
    [
        ("concept,fr\ndog,chien\n", GOOD_CLOZE, "words", r"missing column\(s\) \['en'\]"),
        ("concept,en,xx\ndog,dog,chien\n", GOOD_CLOZE, "words", r"\['xx'\] have no row in .*languages\.csv"),
        ("concept,en,fr\ndog,dog,chien\ndog,hound,chien\n", GOOD_CLOZE, "words", r"\['dog'\] appear more than once"),
        ("concept,en,fr\ndog,dog,chien\ncat,cat,\n", GOOD_CLOZE, "words", r"empty cell in column 'fr', data row 2"),
        ("concept,en,fr\ndog,dog,chien\ncat,dog,chat\n", GOOD_CLOZE, "words", r"same word \['dog'\]"),
        (
            GOOD_WORDS,
            "concept,language,sentence\ndog,en,The dog barks.\n",
            "cloze",
            r"data row 1 must contain the blank",
        ),
        (GOOD_WORDS, "concept,language,sentence\nemu,en,The ___ runs.\n", "cloze", r"\['emu'\] are not in"),
        (GOOD_WORDS, "concept,language,sentence\ndog,de,Der ___ bellt.\n", "cloze", r"\['de'\] are not columns"),
    ],
)
def test_malformed_word_lists_name_the_file_and_the_problem(tmp_path, words, cloze, where, message):
    with pytest.raises(DatasetError, match=message) as error:
        _write(tmp_path, words, cloze)
    assert str(error.value).startswith(str(tmp_path / f"{where}.csv"))


def test_languages_file_is_checked(tmp_path):
    (tmp_path / "languages.csv").write_text("code,name\nen,English\nen,Anglais\n")
    with pytest.raises(DatasetError, match=r"languages\.csv: language code\(s\) \['en'\]"):
        load_languages(tmp_path / "languages.csv")


def test_mention_pattern_finds_words_as_the_lens_split_needs(everyday):
    pattern = mention_pattern(["dog", "Hund", "狗", "eau"])
    for text in ["Two dogs ran.", "DOG!", "Die Hunde bellen.", "我的狗很可爱。", "Je bois de l'eau."]:
        assert pattern.search(text), text
    # a word inside another word, or with more than two letters after it, is a different word
    for text in ["A hotdog stand.", "Dogmatic views.", "Der Hundeführer.", "Le bureau."]:
        assert not pattern.search(text), text
    assert not mention_pattern([]).search("anything at all")
    # every filled-in sentence mentions its own word, so a held-out word cannot slip past the split
    filled = filled_cloze(everyday)
    for concept, language, text in filled.itertuples(index=False):
        assert mention_pattern([everyday.words.at[concept, language]]).search(text), (concept, language)
