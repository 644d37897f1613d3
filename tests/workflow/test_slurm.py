"""The test config submitted through a real single-node SLURM cluster (slurmctld, slurmd, slurmdbd) on this machine.

The cluster is started by tests/slurm/local_cluster.sh, which records the daemons it starts and stops exactly
those. The run goes through the project's SLURM profile, as a user's would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from helpers import REPO, snakemake, write_config
from probes.io import read_json

pytestmark = pytest.mark.slow

HARNESS = REPO / "tests" / "slurm" / "local_cluster.sh"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld, slurmd and munged needs root")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(HARNESS), "start", str(state)], capture_output=True, text=True)
    try:
        assert started.returncode == 0, f"the local cluster did not start:\n{started.stderr[-4000:]}"
        yield state
    finally:
        stopped = subprocess.run(["bash", str(HARNESS), "stop", str(state)], capture_output=True, text=True)
        daemons = [line.split() for line in (state / "started.pids.stopped").read_text().splitlines()]
        assert stopped.returncode == 0 and {name for name, _ in daemons} >= {
            "slurmctld",
            "slurmd",
            "slurmdbd",
            "mariadbd",
        }
        assert not [name for name, pid in daemons if Path(f"/proc/{pid}").exists()], stopped.stderr
        assert not Path("/etc/slurm/slurm.conf").exists()  # the config it wrote is gone too


def test_test_config_runs_through_slurm_and_matches_a_local_run(cluster, run, tmp_path):
    work = tmp_path / "slurm-run"
    work.mkdir()
    write_config(work, "test.yaml")
    result = snakemake(
        work,
        "--workflow-profile",
        str(REPO / "profiles" / "slurm"),
        "--jobs",
        "4",
        "--max-threads",
        "2",
        "--slurm-init-seconds-before-status-checks",
        "5",
    )

    # every job but the local rules went through sbatch, and SLURM accounted for it
    accounting = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,JobName,State,Partition"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    submitted = {
        job: (state, partition)
        for job, name, state, partition in (line.split("|") for line in accounting.splitlines())
        if name != "wrap"
    }  # wrap: the harness's smoke test
    local_rules = set(
        re.findall(
            r"^rule (\w+):\n(?:    .*\n|\n)*?    localrule: True",
            "".join(path.read_text() for path in (REPO / "workflow" / "rules").glob("*.smk")),
            flags=re.M,
        )
    )
    records = sorted((work / "results/provenance").rglob("*.json"))
    remote = [
        path
        for path in records
        if path.relative_to(work / "results/provenance").with_suffix("").parts[0] not in local_rules
    ]
    assert (
        "run_info" in local_rules and len(remote) == 4 + 4 + 2 + 1 + 1 + 1 + 1 + 2 + 1 + 2 + 1 + 1 + 2 + 2 + 2 + 1
    )  # extract, probe, shortcut audit per task, lens, curves, dual-latent curves, SAEs (cache, train per layer, one
    # evaluation per model, sparse probing), depth usage per model, layer maps, transcoders (train per layer; evaluated
    # with the SAEs), feature pages and neuron probes per task, causal checks per model
    assert len(submitted) == len(remote) and set(submitted.values()) == {("COMPLETED", "debug")}, submitted
    reported = re.findall(r"has been submitted with SLURM jobid (\d+)", result.stdout + result.stderr)
    assert sorted(reported) == sorted(submitted)  # Snakemake's own account of what it submitted

    # the same numbers as the local run: every submitted job's outputs are byte-identical, and so are the tables
    for path in remote:
        assert read_json(path)["outputs_sha256"] == read_json(run / path.relative_to(work))["outputs_sha256"], path
    for table in ["concept_depth_summary", "latent_language_summary", "sae_metrics", "sparse_probing_summary"]:
        on_slurm, local = (pd.read_csv(root / f"results/tables/{table}.csv") for root in (work, run))
        keys = [
            column
            for column in ("model", "kind", "dataset", "word_list", "task", "src", "tgt", "lens", "layer", "k")
            if column in on_slurm
        ]
        local = local.merge(on_slurm[keys].drop_duplicates(), on=keys)  # later tests add tasks to the local run
        pd.testing.assert_frame_equal(*(frame.sort_values(keys).reset_index(drop=True) for frame in (on_slurm, local)))
