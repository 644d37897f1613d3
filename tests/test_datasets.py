"""Built-in concept datasets: deterministic, balanced, factually right; user datasets: clear errors."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from probes.datasets import (
    BUILTIN_TASKS,
    COUNTRY_CITIES,
    INVALID_FORMS,
    LEVELS,
    VALID_FORMS,
    DatasetError,
    load_dataset,
    syllogism_follows,
    write_builtin_datasets,
)


def test_committed_files_are_what_the_generators_write(repo, tmp_path):
    for path in write_builtin_datasets(tmp_path, seed=0):
        assert path.read_bytes() == (repo / "data" / "concepts" / path.name).read_bytes(), path.name


def test_another_seed_gives_other_data(tmp_path):
    write_builtin_datasets(tmp_path, seed=1)
    assert (tmp_path / "cities.csv").read_bytes() != write_builtin_datasets(tmp_path / "s0", seed=0)[0].read_bytes()


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_builtin_tasks_are_balanced_and_unique(repo, name):
    frame = pd.read_csv(repo / "data" / "concepts" / f"{name}.csv")
    assert len(frame) >= 400
    assert frame["label"].value_counts().to_dict() == {0: len(frame) // 2, 1: len(frame) // 2}
    assert not frame["text"].duplicated().any()
    assert BUILTIN_TASKS[name].level in LEVELS


def test_three_levels_are_covered():
    assert sorted({task.level for task in BUILTIN_TASKS.values()}) == sorted(LEVELS)


def test_city_statements_name_the_right_country(repo):
    frame = pd.read_csv(repo / "data" / "concepts" / "cities.csv")
    country_of = {city: country for country, cities in COUNTRY_CITIES.items() for city in cities}
    assert country_of["Lyon"] == "France" and country_of["Osaka"] == "Japan" and country_of["Cusco"] == "Peru"
    for row in frame.itertuples():
        assert row.city in row.text and row.country in row.text
        assert row.label == int(country_of[row.city] == row.country)


def test_coinflip_labels_follow_from_the_text(repo):
    frame = pd.read_csv(repo / "data" / "concepts" / "coinflip.csv")
    for row in frame.itertuples():
        flips = len(re.findall(r"\b\w+ flips the coin", row.text))
        assert row.label == int(flips % 2 == 0), row.text
    balance = frame.groupby("n_people")["label"].mean()
    assert (balance == 0.5).all() and set(balance.index) == {1, 2, 3, 4, 5}


def test_syllogism_forms_are_labelled_by_validity():
    assert all(syllogism_follows(form) for form in VALID_FORMS)
    assert not any(syllogism_follows(form) for form in INVALID_FORMS)


def test_comparison_truth_matches_the_quantities(repo):
    frame = pd.read_csv(repo / "data" / "concepts" / "comparisons.csv")
    from probes.datasets import QUANTITIES

    for row in frame.itertuples():
        (more, less), values = QUANTITIES[row.quantity]
        relation = more if f" {more} " in row.text else less
        first, second = row.text[:-1].split(f" {relation} ")
        lookup = {k.lower(): v for k, v in values.items()}
        bigger = lookup[first.lower()] > lookup[second.lower()]
        assert row.label == int(bigger == (relation == more)), row.text


@pytest.mark.parametrize(
    ("name", "contents", "kwargs", "message"),
    [
        ("no_label.csv", "text,truth\na,1\nb,0\n", {}, r"no_label\.csv: missing column\(s\) \['label'\].*'truth'"),
        ("one_class.csv", "text,label\na,1\nb,1\n", {}, r"one_class\.csv: label column 'label' has a single class"),
        ("three.csv", "text,label\na,x\nb,y\nc,z\n", {}, r"three\.csv: .*3 classes.*binary"),
        ("empty_text.csv", "text,label\na,1\n,0\n", {}, r"empty_text\.csv: 1 empty text.*rows \[2\]"),
        ("no_rows.csv", "text,label\n", {}, r"no_rows\.csv: the dataset has no rows"),
        ("data.parquet", "x", {}, r"data\.parquet: unsupported file type"),
        ("broken.jsonl", "{not json\n", {}, r"broken\.jsonl: cannot be parsed"),
        ("custom.csv", "s,y\na,1\nb,0\n", {"text_column": "sentence", "label_column": "y"}, r"custom\.csv: missing column\(s\) \['sentence'\]"),
    ],
)
def test_bad_datasets_are_refused_naming_the_file(tmp_path, name, contents, kwargs, message):
    path = tmp_path / name
    path.write_text(contents)
    with pytest.raises(DatasetError, match=message):
        load_dataset(path, **kwargs)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere\.csv: dataset file not found"):
        load_dataset(tmp_path / "nowhere.csv")


def test_string_and_boolean_labels_map_deterministically(tmp_path):
    path = tmp_path / "strings.jsonl"
    path.write_text('{"t": "good film", "y": "pos"}\n{"t": "bad film", "y": "neg"}\n{"t": "fine", "y": "pos"}\n')
    data = load_dataset(path, "t", "y")
    assert data.classes == ["neg", "pos"] and data.labels.tolist() == [1, 0, 1]
    path = tmp_path / "bools.csv"
    path.write_text("text,label\na,True\nb,False\n")
    assert load_dataset(path).labels.tolist() == [1, 0]
    assert len(load_dataset(path).checksum) == 64
