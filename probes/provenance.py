"""What produced an output: the stage's arguments, its inputs' checksums, package versions and the git commit."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from probes.io import read_json, sha256_file, stage, write_json

TRACKED_PACKAGES = (
    "probes",
    "torch",
    "transformer-lens",
    "transformers",
    "sae-lens",
    "scikit-learn",
    "numpy",
    "pandas",
    "safetensors",
    "snakemake",
)


@cache
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    versions["git_commit"] = git_commit()
    return versions


def git_commit() -> str:
    """The checkout's commit, suffixed '-dirty' when tracked files differ from it; 'unknown' outside a git work tree."""
    try:
        head, status = (
            subprocess.run(
                ["git", *command], cwd=Path(__file__).parent, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            for command in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if status else "")


def path_checksum(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(item for item in path.rglob("*") if item.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _paths(value: object) -> list[str] | None:
    """The path(s) an argument names: strings with a directory part, alone or in a list."""
    items = value if isinstance(value, list | tuple) else [value]
    if items and all(isinstance(item, str | os.PathLike) and os.sep in str(item) for item in items):
        return [str(item) for item in items]
    return None


def _checksums(arguments: Mapping[str, object]) -> dict[str, str | list[str]]:
    """Checksums of the path arguments whose paths all exist now."""
    checksums = {}
    for name, value in arguments.items():
        paths = _paths(value)
        if paths and all(os.path.exists(path) for path in paths):
            sums = [path_checksum(path) for path in paths]
            checksums[name] = sums if isinstance(value, list | tuple) else sums[0]
    return checksums


def _seeds(value: object) -> list[int]:
    """Every seed an argument tree names (``seed``, ``seeds``, nested in settings), in order."""
    found = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in ("seed", "seeds") and item is not None:
                found += [int(seed) for seed in (item if isinstance(item, list | tuple) else [item])]
            else:
                found += _seeds(item)
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def recorded(path: str | os.PathLike, stage_name: str, arguments: Mapping[str, object]) -> Iterator[None]:
    """Write ``path`` after the stage succeeds: what it was called with, what it read and wrote, and with what.

    Snakemake removes a job's outputs before running it, so the path arguments that exist beforehand are the
    inputs and those that exist only afterwards are the outputs.
    """
    inputs = _checksums(arguments)
    yield
    outputs = _checksums({name: value for name, value in arguments.items() if name not in inputs})
    write_json(
        path,
        {
            "stage": stage_name,
            "arguments": dict(arguments),
            "seeds": _seeds(arguments),
            "inputs_sha256": inputs,
            "outputs_sha256": outputs,
            "versions": package_versions(),
        },
    )


def _short(checksums: Mapping[str, str | list[str]]) -> str:
    return ", ".join(
        f"{name}={' '.join(sum_[:12] for sum_ in sums) if isinstance(sums, list) else sums[:12]}"
        for name, sums in sorted(checksums.items())
    )


@stage
def run_info_stage(
    records: Sequence[str | os.PathLike],
    table: str | os.PathLike,
    table_html: str | os.PathLike,
    config_json: str | os.PathLike,
    run_config: dict,
) -> None:
    """The ``run_info`` rule: one row per job, from the provenance record each stage wrote.

    A reader of a figure can then see which settings, seeds, commit, package versions and inputs produced
    every number; the run's whole (validated) config is stored beside the table.
    """
    import json

    import pandas as pd

    from probes.report import write_table

    rows = []
    for path in records:
        record = read_json(path)
        parts = Path(path).with_suffix("").parts
        where = len(parts) - 1 - parts[::-1].index("provenance")
        versions = record["versions"]
        settings = {name: value for name, value in record["arguments"].items() if _paths(value) is None}
        rows.append(
            {
                "rule": parts[where + 1],
                "job": "/".join(parts[where + 2 :]),
                "seeds": " ".join(map(str, record["seeds"])),
                "git_commit": versions.get("git_commit"),
                **{package: versions.get(package) for package in ("torch", "transformer-lens", "sae-lens", "scikit-learn")},
                "settings": json.dumps(settings, sort_keys=True, separators=(",", ":")),
                "inputs_sha256": _short(record["inputs_sha256"]),
                "outputs_sha256": _short(record["outputs_sha256"]),
                "record": str(path),
            }
        )
    frame = pd.DataFrame(rows)
    write_table(
        frame, table, table_html, "Run info: provenance of every job but the plots",
        "Settings are the stage's arguments that are not paths: the config slice and wildcards it ran with. "
        "Checksums are sha256, cut to 12 characters; the full record of each job is in the file named in the last column.",
        float_format=None,
    )
    write_json(config_json, run_config)
