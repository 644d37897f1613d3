"""What produced an output: package versions, the git commit, and the run-info table built from the job records.

The records themselves are written by :func:`probes.stages.recorded` around every rule's stage.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

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
# The versions the run-info table shows, one column each.
TABLE_PACKAGES = ("torch", "transformer-lens", "sae-lens", "scikit-learn")


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


def _short(checksums: Mapping[str, str | list[str]]) -> str:
    return ", ".join(
        f"{name}={' '.join(sum_[:12] for sum_ in sums) if isinstance(sums, list) else sums[:12]}"
        for name, sums in sorted(checksums.items())
    )


def run_info_table(records: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per job from its provenance record (keyed by the record's path, results/provenance/<rule>/<job>)."""
    import pandas as pd

    rows = []
    for path, record in records.items():
        parts = Path(path).with_suffix("").parts
        where = len(parts) - 1 - parts[::-1].index("provenance")
        versions = record["versions"]
        rows.append(
            {
                "rule": parts[where + 1],
                "job": "/".join(parts[where + 2 :]),
                "seeds": " ".join(map(str, record["seeds"])),
                "git_commit": versions.get("git_commit"),
                **{package: versions.get(package) for package in TABLE_PACKAGES},
                "settings": json.dumps(record["arguments"], sort_keys=True, separators=(",", ":")),
                "inputs_sha256": _short(record["inputs_sha256"]),
                "outputs_sha256": _short(record["outputs_sha256"]),
                "record": str(path),
            }
        )
    return pd.DataFrame(rows)
