"""Multilingual word lists and the few-shot prompts built from them (docs/methods.md §3).

A word list is a pair of CSVs: ``concept,<lang>,<lang>,...`` with one word per language, and
``concept,language,sentence`` with one cloze sentence per concept and language, the word blanked as
``___``. Languages are named in their own script, with their answer cue (``Réponse :``), from
``languages.csv`` (``code,name,english_name,answer``), so a user adds a language by adding a column, its
cloze rows and one row there.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from probes.datasets.concepts import DatasetError
from probes.io import sha256_file

TASKS = ("translation", "repetition", "cloze", "cloze_crosslingual")
# Solved examples per prompt in Wendler et al.'s notebooks: translation samples k = 5 rows (4 solved, the
# query last), the cloze 2; the cross-lingual cloze, which they do not have, follows the cloze.
CLOZE_TASKS = ("cloze", "cloze_crosslingual")  # tasks that need the source's cloze sentence
REFERENCE_SHOTS = {"translation": 4, "repetition": 4, "cloze": 2, "cloze_crosslingual": 2}
BLANK = "___"
# Kana and CJK ideographs: scripts written without spaces, where a word is found anywhere in the text.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
INFLECTION_LETTERS = 2  # a spaced word also counts with up to this many letters after it (dogs, Hunde, perros)


@dataclass(frozen=True)
class WordList:
    name: str
    words: pd.DataFrame  # index: concept; one column per language
    cloze: pd.DataFrame  # index: concept; one column per language, NaN where a sentence is missing
    language_names: dict[str, str]  # code -> name in its own script
    answer_cues: dict[str, str]  # code -> the cloze's answer cue in that language ("Réponse :")
    checksums: dict[str, str]

    @property
    def languages(self) -> list[str]:
        return list(self.words.columns)


@dataclass(frozen=True)
class Prompt:
    concept: str
    text: str
    answer: str


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as error:  # pandas raises many parser error types
        raise DatasetError(f"{path}: cannot be parsed as CSV ({error})") from error
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; the file has columns {list(frame.columns)}")
    if frame.empty:
        raise DatasetError(f"{path}: the file has no rows")
    empty = frame.apply(lambda column: column.str.strip() == "")
    if empty.any().any():
        row, column = next((r, c) for c in frame.columns for r in frame.index[empty[c]])
        raise DatasetError(f"{path}: empty cell in column {column!r}, data row {row + 1}")
    return frame


def _duplicates(values: pd.Series) -> list[str]:
    return sorted(values[values.duplicated()].unique().tolist())


def load_languages(path: str | os.PathLike) -> pd.DataFrame:
    """``languages.csv`` indexed by code: ``name`` (in its own script) and ``answer`` (the cloze's answer cue)."""
    frame = _read_csv(Path(path), ["code", "name", "answer"])
    if duplicates := _duplicates(frame["code"]):
        raise DatasetError(f"{path}: language code(s) {duplicates} appear more than once")
    return frame.set_index("code")


def load_word_list(
    name: str, words: str | os.PathLike, cloze: str | os.PathLike, languages: str | os.PathLike
) -> WordList:
    """Read and check a word list, refusing anything that would make prompts silently wrong."""
    words, cloze = Path(words), Path(cloze)
    names = load_languages(languages)
    table = _read_csv(words, ["concept", "en"])
    if duplicates := _duplicates(table["concept"]):
        raise DatasetError(f"{words}: concept(s) {duplicates[:5]} appear more than once")
    codes = [column for column in table.columns if column != "concept"]
    if unknown := [code for code in codes if code not in names.index]:
        raise DatasetError(f"{words}: language column(s) {unknown} have no row in {languages}")
    for code in codes:
        if duplicates := _duplicates(table[code]):
            raise DatasetError(f"{words}: column {code!r} gives the same word {duplicates[:3]} to several concepts")
        if spaced := table.loc[table[code] != table[code].str.strip(), code].tolist():
            raise DatasetError(f"{words}: column {code!r} has words with surrounding spaces {spaced[:3]}")
    sentences = _read_csv(cloze, ["concept", "language", "sentence"])
    if unknown := sorted(set(sentences["concept"]) - set(table["concept"])):
        raise DatasetError(f"{cloze}: concept(s) {unknown[:5]} are not in {words}")
    if unknown := sorted(set(sentences["language"]) - set(codes)):
        raise DatasetError(f"{cloze}: language(s) {unknown} are not columns of {words}")
    duplicated = sentences.duplicated(["concept", "language"])
    if duplicated.any():
        first = sentences[duplicated].iloc[0]
        raise DatasetError(f"{cloze}: more than one sentence for {first['concept']!r} in {first['language']!r}")
    blanks = sentences["sentence"].str.count(BLANK)
    if (blanks != 1).any():
        row = int((blanks != 1).idxmax())
        raise DatasetError(f"{cloze}: data row {row + 1} must contain the blank {BLANK!r} exactly once")
    return WordList(
        name=name,
        words=table.set_index("concept")[codes],
        cloze=sentences.pivot(index="concept", columns="language", values="sentence").reindex(
            index=table["concept"], columns=codes
        ),
        language_names={code: names.at[code, "name"] for code in codes},
        answer_cues={code: names.at[code, "answer"] for code in codes},
        checksums={str(words): sha256_file(words), str(cloze): sha256_file(cloze)},
    )


def check_task(word_list: WordList, task: str, src: str, tgt: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    if unknown := [code for code in dict.fromkeys((src, tgt)) if code not in word_list.languages]:
        raise ValueError(f"word list {word_list.name!r} has no language(s) {unknown}; it has {word_list.languages}")
    if task == "repetition" and src != tgt:
        raise ValueError(f"repetition repeats a word in one language; got src={src!r}, tgt={tgt!r}")
    if task == "translation" and src == tgt:
        raise ValueError(f"translation needs two languages; got {src!r} twice (use repetition)")
    if task == "cloze" and src != tgt:
        raise ValueError(
            f"cloze is monolingual, the sentence and its answer in one language; got src={src!r}, tgt={tgt!r} "
            "(use cloze_crosslingual)"
        )


def _monolingual_cloze_line(word_list: WordList, language: str, concept: str, answer: str | None) -> str:
    """Wendler et al.'s cloze line, all in one language: ``Un "___" est … Réponse : "sac".``

    Scripts written without spaces (zh, ja) join the cue without spaces and end on ``。``, as the reference's
    Chinese lines do (``"_"用来阅读故事。答案："书"。``).
    """
    cue = word_list.answer_cues[language]
    space, stop = ("", "。") if _UNSPACED.search(cue) else (" ", ".")
    sentence = word_list.cloze.at[concept, language].replace(BLANK, f'"{BLANK}"')
    return f'{sentence}{space}{cue}{space}"' + ("" if answer is None else f'{answer}"{stop}')


def _line(word_list: WordList, task: str, src: str, tgt: str, concept: str, answer: str | None) -> str:
    if task == "cloze":
        return _monolingual_cloze_line(word_list, tgt, concept, answer)
    names, words = word_list.language_names, word_list.words
    tail = f'{names[tgt]}: "' + ("" if answer is None else f'{answer}"')
    if task == "cloze_crosslingual":
        return f"{word_list.cloze.at[concept, src]} {tail}"
    return f'{names[src]}: "{words.at[concept, src]}" - {tail}'


def build_prompts(
    word_list: WordList,
    task: str,
    src: str,
    tgt: str,
    concepts: Sequence[str],
    shots: int | None,
    seed: int,
) -> list[Prompt]:
    """One few-shot prompt per concept, cut just after the opening quote of the answer.

    Shots are other concepts from ``concepts``, drawn by a generator seeded per task and pair, so the
    same config always gives the same prompts and adding a pair leaves other pairs' prompts unchanged;
    ``shots=None`` takes the reference's count for the task (:data:`REFERENCE_SHOTS`).
    """
    check_task(word_list, task, src, tgt)
    shots = REFERENCE_SHOTS[task] if shots is None else shots
    if len(concepts) <= shots:
        raise ValueError(f"{task} {src}->{tgt}: {len(concepts)} usable concepts cannot give {shots} shots each")
    rng = random.Random(f"{seed}:{word_list.name}:{task}:{src}:{tgt}")
    prompts = []
    for concept in concepts:
        examples = rng.sample([c for c in concepts if c != concept], shots)
        lines = [_line(word_list, task, src, tgt, c, word_list.words.at[c, tgt]) for c in examples]
        lines.append(_line(word_list, task, src, tgt, concept, None))
        prompts.append(Prompt(concept, "\n".join(lines), word_list.words.at[concept, tgt]))
    return prompts


def filled_cloze(word_list: WordList) -> pd.DataFrame:
    """Cloze sentences with their word put back: natural text in every language, for training lenses."""
    long = word_list.cloze.stack().rename("sentence").reset_index()
    long.columns = ["concept", "language", "sentence"]
    words = word_list.words.stack()
    long["text"] = [
        sentence.replace(BLANK, words[(concept, language)])
        for concept, language, sentence in long[["concept", "language", "sentence"]].itertuples(index=False)
    ]
    return long[["concept", "language", "text"]]


def mention_pattern(words: Iterable[str]) -> re.Pattern[str]:
    """A pattern that finds any of ``words`` in a text, ignoring case (docs/methods.md §3.6).

    A word with kana or CJK ideographs (zh, ja) is found anywhere, those scripts having no spaces; any
    other word is found at a word start, whole or followed by at most ``INFLECTION_LETTERS`` letters, so
    plurals and case endings (dogs, Hunde, perros) count as the word too.
    """
    words = sorted(set(words), key=lambda word: (-len(word), word))  # longest first: alternation is ordered
    unspaced = [re.escape(word) for word in words if _UNSPACED.search(word)]
    spaced = [re.escape(word) for word in words if not _UNSPACED.search(word)]
    parts = unspaced + ([rf"(?<!\w)(?:{'|'.join(spaced)})\w{{0,{INFLECTION_LETTERS}}}(?!\w)"] if spaced else [])
    return re.compile("|".join(parts) if parts else r"(?!)", flags=re.IGNORECASE)
