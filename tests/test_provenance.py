"""The provenance record every stage writes through the `stage` decorator."""

from __future__ import annotations

import re

import pytest

from probes.io import atomic_path, read_json, sha256_file, stage
from probes.provenance import git_commit, path_checksum


@stage
def copy_upper(source: str, folder: str, target: str, settings: dict, model: str, fail: bool = False) -> None:
    text = open(source).read()
    with atomic_path(target) as tmp:
        tmp.write_text(text.upper())
        if fail:
            raise RuntimeError("the stage failed")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "in.txt").write_text("hello")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.bin").write_bytes(b"a")
    return tmp_path


def test_record_holds_arguments_seeds_checksums_and_versions(files):
    record_path = files / "provenance" / "job.json"
    copy_upper(
        source=str(files / "in.txt"), folder=str(files / "folder"), target=str(files / "out.txt"),
        settings={"C": 1.0, "seeds": [0, 1], "inner": {"seed": 7}}, model="m", provenance=str(record_path),
    )
    record = read_json(record_path)
    assert record["stage"] == f"{__name__}.copy_upper"
    assert record["arguments"]["settings"] == {"C": 1.0, "seeds": [0, 1], "inner": {"seed": 7}}
    assert record["arguments"]["model"] == "m" and record["seeds"] == [0, 1, 7]
    assert record["inputs_sha256"] == {
        "source": sha256_file(files / "in.txt"), "folder": path_checksum(files / "folder"),
    }
    assert record["outputs_sha256"] == {"target": sha256_file(files / "out.txt")}
    assert record["versions"]["git_commit"] == git_commit() and record["versions"]["torch"]


def test_folder_checksum_follows_names_and_contents(files):
    before = path_checksum(files / "folder")
    (files / "folder" / "a.bin").write_bytes(b"b")
    changed = path_checksum(files / "folder")
    (files / "folder" / "a.bin").rename(files / "folder" / "b.bin")
    assert len({before, changed, path_checksum(files / "folder")}) == 3


def test_failed_stage_leaves_neither_output_nor_record(files):
    record_path = files / "job.json"
    with pytest.raises(RuntimeError, match="the stage failed"):
        copy_upper(
            source=str(files / "in.txt"), folder=str(files / "folder"), target=str(files / "out.txt"),
            settings={}, model="m", fail=True, provenance=str(record_path),
        )
    assert not record_path.exists() and not (files / "out.txt").exists()


def test_git_commit_names_a_commit_and_marks_uncommitted_changes():
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", git_commit())
