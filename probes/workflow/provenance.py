"""What produced an output: package versions, the git commit, and the run-info table built from the job records.

The records themselves are written by :func:`probes.workflow.stages.recorded` around every rule's stage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# The versions the run-info table shows, one column each.
TABLE_PACKAGES = ("torch", "transformer-lens", "sae-lens", "scikit-learn")


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
