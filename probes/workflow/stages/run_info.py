"""Stage of ``workflow/rules/run_info.smk``: the provenance of every job as one table, with the run's config."""

from __future__ import annotations

import os
from collections.abc import Sequence

from probes.io import read_json, write_json
from probes.workflow.stages import write_table


def run_info(
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
    from probes.workflow.provenance import run_info_table

    frame = run_info_table({str(path): read_json(path) for path in records})
    write_table(
        frame,
        table,
        table_html,
        "Run info: provenance of every job but the plots",
        "Settings are the job's params and wildcards: the config slice it ran with. Checksums are sha256 of the "
        "inputs and outputs its rule declares, cut to 12 characters; the full record of each job is in the file "
        "named in the last column.",
        float_format=None,
    )
    write_json(config_json, run_config)
