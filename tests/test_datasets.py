"""Built-in concept datasets: deterministic, balanced, factually right, no label cues; user datasets: clear errors."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from probes.datasets import LEVELS, DatasetError, load_dataset
from probes.tasks import BUILTIN_TASKS, generate_dataset, write_builtin_datasets
from probes.tasks.cities import COUNTRY_CITIES, NAMESAKES
from probes.tasks.comparisons import QUANTITIES
from probes.tasks.syllogisms import syllogism_follows


@pytest.fixture(scope="module")
def concepts(repo) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(repo / "data" / "concepts" / f"{name}.csv") for name in BUILTIN_TASKS}


def test_committed_files_are_what_the_generators_write(repo, tmp_path):
    paths = write_builtin_datasets(tmp_path, seed=0)
    assert [p.name for p in paths] == [f"{name}.csv" for name in BUILTIN_TASKS]
    for path in paths:
        assert path.read_bytes() == (repo / "data" / "concepts" / path.name).read_bytes(), path.name


def test_command_line_writes_the_committed_files(repo, tmp_path):
    """The command data/README.md gives for regenerating the files writes the same bytes."""
    run = subprocess.run(
        [sys.executable, "-m", "probes.tasks", "--out", str(tmp_path)],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.splitlines() == [str(tmp_path / f"{name}.csv") for name in BUILTIN_TASKS]
    committed = sorted((repo / "data" / "concepts").glob("*.csv"))
    assert sorted(path.name for path in tmp_path.iterdir()) == [path.name for path in committed]
    for path in committed:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_another_seed_gives_other_data():
    for name in BUILTIN_TASKS:
        assert not generate_dataset(name, seed=1)["text"].equals(generate_dataset(name, seed=0)["text"]), name


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_builtin_tasks_are_balanced_and_unique(concepts, name):
    frame = concepts[name]
    assert list(frame.columns[:2]) == ["text", "label"]
    assert len(frame) >= 400
    assert frame["label"].value_counts().to_dict() == {0: len(frame) // 2, 1: len(frame) // 2}
    assert not frame["text"].duplicated().any()
    assert frame["text"].str.split().str.len().max() <= 50  # short: a 135M model runs over them on a CPU
    assert BUILTIN_TASKS[name].level in LEVELS


def test_three_levels_are_covered():
    assert sorted({task.level for task in BUILTIN_TASKS.values()}) == sorted(LEVELS)


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_length_does_not_give_the_label_away(concepts, name):
    frame = concepts[name]
    words = frame["text"].str.split().str.len()
    assert abs(words[frame["label"] == 1].mean() - words[frame["label"] == 0].mean()) < 1.0


@pytest.mark.parametrize("name", ["cities", "comparisons", "syllogisms"])
def test_words_alone_do_not_give_the_label_away(concepts, name):
    """A bag-of-words probe stays near chance: the label lies in how the words relate, not in which occur."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    frame = concepts[name]
    words = CountVectorizer(token_pattern=r"[A-Za-z'-]+").fit_transform(frame["text"])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    accuracy = cross_val_score(LogisticRegression(max_iter=2000), words, frame["label"], cv=folds).mean()
    assert 0.4 < accuracy < 0.6, accuracy


def test_city_statements_name_the_right_country(concepts):
    frame = concepts["cities"]
    country_of = {city: country for country, cities in COUNTRY_CITIES.items() for city in cities}
    for city, country in [
        ("Lyon", "France"),
        ("Osaka", "Japan"),
        ("Cusco", "Peru"),
        ("Toronto", "Canada"),
        ("Nairobi", "Kenya"),
        ("Mumbai", "India"),
        ("Munich", "Germany"),
        ("Seville", "Spain"),
    ]:
        assert country_of[city] == country
    assert len(country_of) >= 150 and len(COUNTRY_CITIES) >= 40
    assert not frame["city"].duplicated().any()  # a city in both a true and a false row invites memorising
    for row in frame.itertuples():
        assert row.city in row.text and row.text.rstrip(".").endswith(row.country)
        assert row.label == int(country_of[row.city] == row.country), row.text
        assert row.country not in NAMESAKES.get(row.city, ()), row.text


def test_comparison_truth_matches_the_quantities(concepts):
    frame = concepts["comparisons"]
    everest, blanc = QUANTITIES["height_m"].values["Mount Everest"], QUANTITIES["height_m"].values["Mont Blanc"]
    assert everest > blanc and QUANTITIES["length_km"].values["the Nile"] > QUANTITIES["length_km"].values["the Thames"]
    assert QUANTITIES["weight_kg"].clearly_greater("an elephant", "a mouse")
    assert QUANTITIES["area_km2"].clearly_greater("Russia", "Belgium")
    assert QUANTITIES["year"].clearly_greater("the Eiffel Tower", "the Colosseum")  # newer
    pairs = set()
    for row in frame.itertuples():
        scale = QUANTITIES[row.quantity]
        relation = scale.more if f" {scale.more} " in row.text else scale.less
        first, second = row.text[:-1].split(f" {relation} ")
        lookup = {item.lower(): item for item in scale.values}
        first, second = lookup[first.lower()], lookup[second.lower()]
        bigger, smaller = (first, second) if scale.clearly_greater(first, second) else (second, first)
        assert scale.clearly_greater(bigger, smaller), row.text  # never a close call
        assert row.label == int((bigger == first) == (relation == scale.more)), row.text
        pairs.add(frozenset((first, second)))
    assert len(pairs) == len(frame)


def test_coinflip_labels_follow_from_the_text(concepts):
    frame = concepts["coinflip"]
    for row in frame.itertuples():
        steps = re.findall(r"(\w+) (flips|does not flip) the coin\.", row.text)
        assert row.text.startswith("A coin is heads up. ") and row.text.endswith(" Is the coin still heads up?")
        assert 1 <= len(steps) == row.n_people <= 5
        assert len({name for name, _ in steps}) == len(steps)  # distinct people
        flips = sum(action == "flips" for _, action in steps)
        assert row.label == int(flips % 2 == 0), row.text
    assert frame["n_people"].value_counts().to_dict() == dict.fromkeys(range(1, 6), 80)


def parse_syllogism(text: str) -> tuple:
    """The form of a generated syllogism, with its three words renamed to the terms A, B, C."""
    *premises, conclusion = re.match(r"(.*?)\. (.*?)\. Does it follow that (.*)\?$", text).groups()
    propositions = []
    for sentence in (*premises, conclusion):
        q, x, y = re.fullmatch(r"(all|no|some) (\w+) are (not )?(\w+)", sentence.lower()).group(1, 2, 4)
        propositions.append(("some_not" if " not " in sentence else q, x, y))
    terms = dict(zip(propositions[2][1:], "AC"))
    middle = ({x for _, *pair in propositions[:2] for x in pair} - set(terms)).pop()
    terms[middle] = "B"
    return tuple((q, terms[x], terms[y]) for q, x, y in propositions)


def test_syllogism_checker_knows_the_classical_forms():
    barbara = (("all", "A", "B"), ("all", "B", "C"), ("all", "A", "C"))
    ferio = (("no", "B", "C"), ("some", "A", "B"), ("some_not", "A", "C"))
    undistributed_middle = (("all", "A", "B"), ("all", "C", "B"), ("all", "A", "C"))
    converted = (("all", "A", "B"), ("all", "B", "C"), ("all", "C", "A"))
    barbari = (("all", "A", "B"), ("all", "B", "C"), ("some", "A", "C"))
    assert syllogism_follows(barbara) and syllogism_follows(ferio)
    assert not syllogism_follows(undistributed_middle) and not syllogism_follows(converted)
    assert syllogism_follows(barbari) and not syllogism_follows(barbari, existential_import=False)


def test_syllogism_labels_are_validity(concepts):
    frame = concepts["syllogisms"]
    for row in frame.itertuples():
        form = parse_syllogism(row.text)
        assert row.label == syllogism_follows(form) == syllogism_follows(form, existential_import=False), row.text
    # every quantifier pattern occurs with both answers, so all/no/some/not give nothing away
    assert (frame.groupby("quantifiers")["label"].nunique() == 2).all()


@pytest.mark.parametrize("name", ["sentiment", "reviews"])
def test_affective_topics_occur_with_both_labels(concepts, name):
    frame = concepts[name]
    column = frame.columns[2]
    counts = pd.crosstab(frame[column], frame["label"])
    assert (counts >= 5).all().all(), counts


@pytest.mark.parametrize(
    ("name", "contents", "kwargs", "message"),
    [
        (
            "no_label.csv",
            "text,truth\na,1\nb,0\n",
            {},
            r"no_label\.csv: missing label column 'label'.*\['text', 'truth'\]",
        ),
        (
            "custom.csv",
            "s,y\na,1\nb,0\n",
            {"text_column": "sentence", "label_column": "y"},
            r"custom\.csv: missing text column 'sentence';",
        ),
        (
            "one_class.csv",
            "text,label\na,x\nb,x\n",
            {},
            r"one_class\.csv: label column 'label' has a single class 'x'; a probe needs at least two",
        ),
        ("three.csv", "text,label\na,x\nb,y\nc,z\n", {}, r"three\.csv: label column 'label' has 3 classes.*binary"),
        ("empty_text.csv", "text,label\na,1\n,0\n  ,1\nd,0\n", {}, r"empty_text\.csv: 2 empty text\(s\).*rows 2, 3$"),
        ("no_label_value.tsv", "text\tlabel\na\t1\nb\t\n", {}, r"no_label_value\.tsv: 1 missing label\(s\).*rows 2$"),
        ("no_rows.csv", "text,label\n", {}, r"no_rows\.csv: the dataset has no rows"),
        (
            "no_group.csv",
            "text,label\na,1\nb,0\n",
            {"group_column": "pair"},
            r"no_group\.csv: missing group column 'pair'",
        ),
        (
            "one_group.csv",
            "text,label,pair\na,1,p\nb,0,p\n",
            {"group_column": "pair"},
            r"one_group\.csv: group column 'pair' has a single group",
        ),
        (
            "type_gap.csv",
            "text,label,kind\na,1,x\nb,0,\n",
            {"type_column": "kind"},
            r"type_gap\.csv: 1 missing value\(s\) in type column 'kind', data rows 2$",
        ),
        ("blank.jsonl", "", {}, r"blank\.jsonl: the file is empty"),
        ("data.parquet", "x", {}, r"data\.parquet: unsupported file type '\.parquet'"),
        ("broken.jsonl", "{not json\n", {}, r"broken\.jsonl: cannot be parsed as JSONL"),
    ],
)
def test_bad_datasets_are_refused_naming_the_file(tmp_path, name, contents, kwargs, message):
    path = tmp_path / name
    path.write_text(contents)
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset(path, **kwargs)
    assert str(error.value).startswith(str(path))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere\.csv: dataset file not found"):
        load_dataset(tmp_path / "nowhere.csv")


@pytest.mark.parametrize(
    ("name", "contents", "classes", "labels"),
    [
        (
            "strings.jsonl",
            '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n{"text": "fine", "label": "pos"}\n',
            ["neg", "pos"],
            [1, 0, 1],
        ),
        ("truth.jsonl", '{"text": "a", "label": "true"}\n{"text": "b", "label": "false"}\n', ["false", "true"], [1, 0]),
        ("bools.csv", "text,label\na,True\nb,False\n", ["False", "True"], [1, 0]),
        ("ints.tsv", "text\tlabel\na\t0\nb\t1\nc\t1\n", ["0", "1"], [0, 1, 1]),
    ],
)
def test_labels_map_to_sorted_classes(tmp_path, name, contents, classes, labels):
    path = tmp_path / name
    path.write_text(contents)
    data = load_dataset(path)
    assert data.classes == classes and data.labels.tolist() == labels and data.labels.dtype == np.int64
    assert data.checksum == hashlib.sha256(path.read_bytes()).hexdigest()


def test_label_mapping_does_not_depend_on_row_order(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("text,label\nx,pos\ny,neg\n")
    second.write_text("text,label\ny,neg\nx,pos\n")
    a, b = load_dataset(first), load_dataset(second)
    assert a.classes == b.classes == ["neg", "pos"]
    assert dict(zip(a.texts, a.labels.tolist())) == dict(zip(b.texts, b.labels.tolist())) == {"x": 1, "y": 0}


def test_builtin_files_load(repo, concepts):
    data = load_dataset(repo / "data" / "concepts" / "cities.csv")
    assert data.texts == concepts["cities"]["text"].tolist()
    assert data.labels.tolist() == concepts["cities"]["label"].tolist() and data.classes == ["0", "1"]
