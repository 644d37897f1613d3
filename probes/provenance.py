"""What produced an output: package versions and the code's git commit, recorded in every meta.json."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from probes.io import atomic_path, read_json, stage, write_json

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
    """The checkout's commit, or 'unknown' outside a git work tree (e.g. an installed copy)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip()


@stage
def run_info_stage(
    metas: Sequence[str | os.PathLike], table: str | os.PathLike, config_json: str | os.PathLike, run_config: dict
) -> None:
    """The ``run_info`` rule: one row per model-touching output, from the metadata each stage wrote beside it.

    A reader of a figure can then see which commit, seeds, package versions and input checksums produced
    every number; the run's whole (validated) config is stored beside the table.
    """
    import pandas as pd

    rows = []
    for path in metas:
        meta = read_json(path)
        versions = meta.get("versions", {})
        checksums = {key: value for key, value in meta.items() if key.endswith("sha256") and isinstance(value, str)}
        rows.append(
            {
                "metadata": str(path),
                "model": meta.get("model"),
                "dataset": meta.get("dataset", meta.get("word_list")),
                "seed": meta.get("seed"),
                "git_commit": versions.get("git_commit"),
                **{package: versions.get(package) for package in ("torch", "transformer-lens", "sae-lens", "scikit-learn")},
                "checksums": ", ".join(f"{key}={value[:12]}" for key, value in sorted(checksums.items())),
            }
        )
    with atomic_path(table) as tmp:
        pd.DataFrame(rows).astype({"seed": "Int64"}).to_csv(tmp, index=False)
    write_json(config_json, run_config)
