"""Which software made a file: package versions and the git commit, recorded in model manifests and job records."""

from __future__ import annotations

import os
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


def git_commit(directory: str | os.PathLike | None = None) -> str:
    """The commit of the checkout holding ``directory`` (default: this package), suffixed '-dirty' when tracked
    files differ from it; 'unknown' outside a git work tree."""
    try:
        head, status = (
            subprocess.run(
                ["git", *command],
                cwd=directory or Path(__file__).parent,
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
            for command in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if status else "")
