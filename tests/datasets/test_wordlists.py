"""The shipped multilingual word lists and the prompts built from them."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from helpers import REPO
from probes.datasets.concepts import DatasetError
from probes.datasets.wordlists import (
    BLANK,
    REFERENCE_SHOTS,
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


def test_repetition_and_crosslingual_cloze_prompts(everyday):
    concepts = list(everyday.words.index)[:20]
    repetition = build_prompts(everyday, "repetition", "zh", "zh", concepts, shots=2, seed=0)[0]
    word = everyday.words.at[repetition.concept, "zh"]
    assert repetition.text.endswith(f'中文: "{word}" - 中文: "') and repetition.answer == word
    cloze = build_prompts(everyday, "cloze_crosslingual", "en", "fr", concepts, shots=2, seed=0)[0]
    assert cloze.text.split("\n")[-1] == f'{everyday.cloze.at[cloze.concept, "en"]} Français: "'
    assert cloze.answer == everyday.words.at[cloze.concept, "fr"]


# Lines of Wendler et al.'s data/langs/{fr,de,ru,zh}/clean.csv (blank_prompt_translation_masked; the Chinese
# file blanks with one underscore, "_", where every other file and this project use three), and the query their
# Cloze.ipynb cuts from one: row[key].split(":")[0] + ': "'.
REFERENCE_LINES = {
    "fr": 'Un "___" est utilisé pour transporter des objets. Réponse : "sac".',
    "de": 'Ein "___" wird verwendet, um Geschichten zu lesen. Antwort: "Buch".',
    "ru": '"___" используется для чтения историй. Ответ: "книга".',
    "zh": '"___"用来阅读故事。答案："书"。',
}


@pytest.mark.parametrize("language", sorted(REFERENCE_LINES))
def test_monolingual_cloze_is_built_as_the_reference_builds_it(tmp_path, language):
    """A word list holding the reference's own sentence gives the reference's line, and its query stops where
    the reference's does (the Chinese query keeps the full-width colon its solved lines use)."""
    line = REFERENCE_LINES[language]
    word = line.rsplit('"', 2)[-2]
    sentence = line.split(everyday_cue(language))[0].rstrip().replace('"___"', "___")
    pd.DataFrame({"concept": ["thing", "other"], "en": ["thing", "other"], language: [word, "x" + word]}).to_csv(
        tmp_path / "words.csv", index=False
    )
    cloze = pd.DataFrame({"concept": ["thing", "other"], "language": language, "sentence": sentence})
    cloze.to_csv(tmp_path / "cloze.csv", index=False)
    mine = load_word_list("mine", tmp_path / "words.csv", tmp_path / "cloze.csv", LANGUAGES)
    prompts = build_prompts(mine, "cloze", language, language, ["thing", "other"], shots=1, seed=0)
    solved, query = prompts[1].text.split("\n")
    assert solved == line
    assert prompts[1].answer == "x" + word and query == line[: line.rindex('"', 0, -2) + 1]
    if language != "zh":
        assert query == line.split(":")[0] + ': "'  # the reference's own cut


def everyday_cue(language: str) -> str:
    return load_languages(LANGUAGES).at[language, "answer"]


def test_monolingual_cloze_prompts_are_all_in_the_target_language(everyday):
    concepts = list(everyday.words.index)
    for language in ("en", "fr", "ja"):
        prompts = build_prompts(everyday, "cloze", language, language, concepts, shots=None, seed=0)
        first = prompts[0]
        lines = first.text.split("\n")
        assert len(lines) == 3  # the reference's two solved lines, then the query
        cue = everyday.answer_cues[language]
        query = everyday.cloze.at[first.concept, language].replace(BLANK, f'"{BLANK}"')
        assert lines[-1].startswith(query) and lines[-1].endswith(f'{cue}"' if language == "ja" else f'{cue} "')
        assert first.answer == everyday.words.at[first.concept, language]
        names = [name for code, name in everyday.language_names.items() if code != language]
        assert not any(name in first.text for name in names)  # no other language's name, no English cue
    english = build_prompts(everyday, "cloze", "en", "en", concepts, shots=None, seed=0)[0].text
    assert all(line.count(BLANK) == 1 and "Answer: " in line for line in english.split("\n"))
    assert all(
        everyday.answer_cues["en"] not in p.text
        for p in build_prompts(everyday, "cloze", "fr", "fr", concepts, None, 0)
    )


def test_reference_shot_counts_by_default(everyday):
    concepts = list(everyday.words.index)[:10]
    counts = {task: REFERENCE_SHOTS[task] for task in ("translation", "cloze", "cloze_crosslingual")}
    assert counts == {"translation": 4, "cloze": 2, "cloze_crosslingual": 2}
    for task, (src, tgt) in (
        ("translation", ("fr", "zh")),
        ("cloze", ("de", "de")),
        ("cloze_crosslingual", ("en", "de")),
    ):
        prompt = build_prompts(everyday, task, src, tgt, concepts, shots=None, seed=0)[0]
        assert prompt.text.count("\n") == counts[task]


@pytest.mark.parametrize(
    ("task", "src", "tgt", "message"),
    [
        ("translation", "fr", "fr", "two languages"),
        ("repetition", "fr", "zh", "one language"),
        ("translation", "fr", "it", "no language"),
        ("summarise", "fr", "zh", "not one of"),
        ("cloze", "en", "fr", "cloze is monolingual"),
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
    (tmp_path / "languages.csv").write_text("code,name,answer\nen,English,Answer:\nen,Anglais,Réponse :\n")
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
