"""Built-in concept datasets: deterministic, balanced, grouped; user datasets: clear errors. Each task's own checks
are in tests/datasets/test_task_*.py, the shortcut audit of all of them in tests/probing/test_shortcuts.py."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from probes.datasets.concepts import LEVELS, DatasetError, load_dataset
from probes.datasets.tasks import BUILTIN_TASKS, generate_dataset, write_builtin_datasets
from probes.datasets.tasks.syllogisms import syllogism_follows


@pytest.fixture(scope="module")
def concepts(repo) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(repo / "data" / "concepts" / f"{name}.csv") for name in BUILTIN_TASKS}


def test_committed_files_are_what_the_generators_write(repo, tmp_path):
    paths = write_builtin_datasets(tmp_path, seed=0)
    assert [p.name for p in paths] == [f"{name}.csv" for name in BUILTIN_TASKS]
    for path in paths:
        assert path.read_bytes() == (repo / "data" / "concepts" / path.name).read_bytes(), path.name


def test_command_line_writes_the_committed_files(repo, tmp_path):
    """The command data/README.md gives for regenerating the files writes the same bytes, by default in place."""
    from probes.datasets.tasks.__main__ import DEFAULT_OUT

    assert repo / "data" / "concepts" == DEFAULT_OUT
    run = subprocess.run(
        [sys.executable, "-m", "probes.datasets.tasks", "--out", str(tmp_path)],
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
    assert list(frame.columns[:3]) == ["text", "label", "group"]
    assert len(frame) == 800  # per-layer SE of accuracy at most 0.018
    assert frame["label"].value_counts().to_dict() == {0: len(frame) // 2, 1: len(frame) // 2}
    assert not frame["text"].duplicated().any()
    assert frame["text"].str.split().str.len().max() <= 130  # short: a 135M model runs over them on a CPU
    assert BUILTIN_TASKS[name].level in LEVELS


def test_every_level_is_covered():
    assert sorted({task.level for task in BUILTIN_TASKS.values()}) == sorted(LEVELS)


def test_syllogism_checker_knows_the_classical_forms():
    barbara = (("all", "A", "B"), ("all", "B", "C"), ("all", "A", "C"))
    ferio = (("no", "B", "C"), ("some", "A", "B"), ("some_not", "A", "C"))
    undistributed_middle = (("all", "A", "B"), ("all", "C", "B"), ("all", "A", "C"))
    converted = (("all", "A", "B"), ("all", "B", "C"), ("all", "C", "A"))
    barbari = (("all", "A", "B"), ("all", "B", "C"), ("some", "A", "C"))
    assert syllogism_follows(barbara) and syllogism_follows(ferio)
    assert not syllogism_follows(undistributed_middle) and not syllogism_follows(converted)
    assert syllogism_follows(barbari) and not syllogism_follows(barbari, existential_import=False)


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
