"""A newcomer's run: the README's own-experiment config, exactly as printed, with a CSV of ours and the real
SmolLM2, through the real DAG from a working directory of its own."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from helpers import MODEL_CACHE, REPO, snakemake

MAMMALS = "whale dolphin bat horse cow dog cat mouse lion tiger elephant giraffe rabbit bear wolf fox deer goat"
OTHERS = "trout salmon shark eagle sparrow crow snake lizard frog toad crocodile turtle penguin owl parrot bee ant crab"
TEMPLATES = ("A {} is a mammal.", "The {} is a kind of mammal.")
CONCEPT_DEPTH_JOBS = {
    "extract_activations": 1,
    "probe_layers": 1,
    "audit_shortcuts": 1,
    "summarise_concept_depth": 1,
    "plot_concept_depth": 1,
    "plot_concept_depth_levels": 1,
    "plot_concept_depth_relative": 1,
    "run_info": 1,
    "result_tables": 1,
    "all": 1,
}


def readme_experiment() -> tuple[str, str, list[str]]:
    """The README's own-experiment config (its file name and text) and the command line that runs it."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    marker = re.search(r"<!-- your experiment: (\S+) -->\n```yaml\n(.*?)```\n(.*?)```bash\n(.*?)```", readme, re.S)
    assert marker, "README.md: no config block marked <!-- your experiment: <file> -->"
    name, config, _, command = marker.groups()
    argv = command.split()
    assert argv[0] == ".venv/bin/snakemake" and argv[-2:] == ["--configfile", name], command
    return name, config, argv[1:-2]


def write_mammals(path: Path) -> None:
    """A CSV as a user would write one: is each animal a mammal, in two phrasings, grouped by animal."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "animal"])
        for label, animals in ((1, MAMMALS), (0, OTHERS)):
            for animal in animals.split():
                writer.writerows([template.format(animal), label, animal] for template in TEMPLATES)


def jobs(dry_run_output: str) -> Counter:
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)})


@pytest.mark.slow
def test_the_readme_config_runs_concept_depth_alone_on_the_shared_model_cache(tmp_path):
    name, config, options = readme_experiment()
    assert len(config.strip().splitlines()) <= 10
    assert options == ["--directory", "results/mammals"]
    work = tmp_path / "results" / "mammals"
    work.mkdir(parents=True)
    (work / name).write_text(config, encoding="utf-8")
    write_mammals(work / "mammals.csv")
    env = {"PROBES_MODEL_CACHE": str(MODEL_CACHE)}  # the tests' cache, wherever PROBES_TEST_MODEL_CACHE puts it

    planned = snakemake(work, "--dry-run", configfiles=(name,), env=env)
    assert jobs(planned.stdout) == CONCEPT_DEPTH_JOBS  # no conversion, no other family

    snakemake(work, configfiles=(name,), env=env)
    summary = pd.read_csv(work / "results" / "tables" / "concept_depth_summary.csv")
    assert summary[["model", "dataset"]].values.tolist() == [["smollm2-135m", "mammals"]]
    assert summary["decodable"].item() and summary["best_accuracy_lo"].item() > 0.6
    curves = pd.read_parquet(work / "results" / "tables" / "probe_metrics.parquet")
    assert sorted(curves["layer"].unique()) == list(range(31))  # every layer by default
    figures = {path.name for path in (work / "results" / "figures").iterdir()}
    assert {"concept_depth_smollm2-135m.png", "concept_depth_levels.png", "concept_depth_relative.png"} <= figures
    assert not any(name.startswith(("sae", "neuron", "depth_usage", "latent")) for name in figures)
    assert not (work / "results" / "models").exists()  # the shared cache, not one per experiment
