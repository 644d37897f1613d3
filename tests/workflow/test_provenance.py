"""The provenance record every rule writes through `run_stage`, from the paths the rule declares."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from probes.io import atomic_path, path_checksum, read_json, sha256_file
from probes.versions import git_commit
from probes.workflow.stages import run_stage


def copy_upper(source: str, folder: str, target: str, settings: dict, model: str, fail: bool = False) -> dict:
    text = Path(source).read_text()
    with atomic_path(target) as tmp:
        tmp.write_text(text.upper())
        if fail:
            raise RuntimeError("the stage failed")
    return {"n_characters": len(text)}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "in.txt").write_text("hello")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.bin").write_bytes(b"a")
    return tmp_path


def run_copy(files, record_path, **params):
    return run_stage(
        copy_upper,
        {"source": str(files / "in.txt"), "folder": str(files / "folder")},
        {"target": str(files / "out.txt"), "provenance": str(record_path)},
        {"settings": {"C": 1.0, "seeds": [0, 1], "inner": {"seed": 7}}, **params},
        [str(files / "job.log")],
        model="m",
    )


def test_record_holds_declared_paths_arguments_seeds_checksums_and_versions(files):
    record_path = files / "provenance" / "job.json"
    run_copy(files, record_path)
    record = read_json(record_path)
    assert record["stage"] == f"{__name__}.copy_upper"
    assert record["arguments"] == {"settings": {"C": 1.0, "seeds": [0, 1], "inner": {"seed": 7}}, "model": "m"}
    assert record["seeds"] == [0, 1, 7]
    assert record["inputs"] == {"source": str(files / "in.txt"), "folder": str(files / "folder")}
    assert record["outputs"] == {"target": str(files / "out.txt")}
    assert record["inputs_sha256"] == {
        "source": sha256_file(files / "in.txt"),
        "folder": path_checksum(files / "folder"),
    }
    assert record["outputs_sha256"] == {"target": sha256_file(files / "out.txt")}
    assert record["details"] == {"n_characters": 5}
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
        run_copy(files, record_path, fail=True)
    assert not record_path.exists() and not (files / "out.txt").exists()
    assert "the stage failed" in (files / "job.log").read_text()


def test_git_commit_is_the_head_commit_and_dirty_only_with_changed_tracked_files(tmp_path):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "tracked.txt").write_text("one")
    git("add", "tracked.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    assert git_commit(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("new")
    assert git_commit(tmp_path) == head  # untracked files do not make a checkout dirty
    (tmp_path / "tracked.txt").write_text("two")
    assert git_commit(tmp_path) == f"{head}-dirty"
    assert git_commit(tmp_path.parent / "no-such-dir") == "unknown"
