"""What produced an output: package versions and the code's git commit, recorded in every meta.json."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

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
