"""The real DAG end to end: SmolLM2 through Snakemake on the small test config, then its caching."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import MODEL_CACHE, REPO

pytestmark = pytest.mark.slow


def snakemake(work: Path, *args: str, configfiles: tuple[str, ...] = ("test.yaml",), check: bool = True):
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
        "--cores", "2", "--configfile", *(str(work / name) for name in configfiles), *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=work)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_rules(work: Path, *args: str, configfiles: tuple[str, ...] = ("test.yaml",)) -> dict[str, int]:
    """Rule -> job count from Snakemake's own dry-run job table; empty when nothing is to be done."""
    output = snakemake(work, "--dry-run", *args, configfiles=configfiles).stdout
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M) if rule not in ("total", "all")}


def write_config(work: Path, name: str, **changes) -> None:
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["model_cache"] = str(MODEL_CACHE)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config.setdefault(section, {})[key] = value
    (work / name).write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2_manifest) -> Path:
    work = tmp_path_factory.mktemp("workflow")
    write_config(work, "test.yaml")
    snakemake(work)
    return work


def test_full_run_produces_tables_and_figures(run):
    for path in [
        "results/tables/concept_depth_summary.csv",
        "results/tables/probe_metrics.parquet",
        "results/figures/concept_depth_smollm2-135m.png",
        "results/figures/concept_depth_relative.png",
        "results/activations/smollm2-135m/cities/resid.safetensors",
        "results/activations/smollm2-135m/cities/resid.meta.json",
        "logs/extract_activations/smollm2-135m/cities.log",
    ]:
        assert (run / path).is_file(), path
    assert not list(run.rglob("*.pkl")) and not list(run.rglob("*.pickle"))


def test_factual_concept_is_decodable_and_control_is_not(run):
    metrics = pd.read_parquet(run / "results/tables/probe_metrics.parquet")
    assert {"model", "dataset", "layer", "seed", "fold", "metric", "value"} <= set(metrics.columns)
    curves = metrics.groupby(["dataset", "metric", "layer"])["value"].mean()
    assert curves["cities", "accuracy"].max() > 0.7  # 0.77 seen: SmolLM2-135M, 4-bit, knows many but not all cities
    assert curves["cities", "accuracy"].loc[0] < 0.6  # layer 0 at the final "." carries no information
    assert curves["cities", "control_accuracy"].between(0.35, 0.65).all()
    summary = pd.read_csv(run / "results/tables/concept_depth_summary.csv")
    assert set(summary["dataset"]) == {"cities", "coinflip"}
    assert summary["converging_layer"].between(0, 30).all()


def test_second_run_does_nothing(run):
    assert planned_rules(run) == {}


def test_changing_a_probe_setting_reruns_probes_and_figures_but_not_extraction(run):
    write_config(run, "changed.yaml", probe__C=0.5)
    planned = planned_rules(run, configfiles=("changed.yaml",))
    assert planned.get("probe_layers") == 2
    assert "summarise_concept_depth" in planned and "plot_concept_depth" in planned
    assert "extract_activations" not in planned and "convert_model" not in planned


def test_changing_a_plot_option_reruns_only_plots(run):
    write_config(run, "plots.yaml", figures__dpi=120)
    assert set(planned_rules(run, configfiles=("plots.yaml",))) == {"plot_concept_depth", "plot_concept_depth_relative"}


def test_user_dataset_added_as_csv(run):
    rows = [(f"The river number {i} is {'wide' if i % 2 else 'narrow'}.", "wide" if i % 2 else "narrow") for i in range(60)]
    pd.DataFrame(rows, columns=["sentence", "width"]).to_csv(run / "rivers.csv", index=False)
    (run / "user.yaml").write_text(yaml.safe_dump(
        {"datasets": {"rivers": {"path": "rivers.csv", "text_column": "sentence", "label_column": "width", "level": "other"}}}
    ))
    snakemake(run, configfiles=("test.yaml", "user.yaml"))
    summary = pd.read_csv(run / "results/tables/concept_depth_summary.csv")
    assert set(summary["dataset"]) == {"cities", "coinflip", "rivers"}
    assert summary.set_index("dataset").loc["rivers", "best_accuracy"] > 0.9


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ("text,truth\nA sentence.,1\nAnother one.,0\n", r"bad\.csv.*label"),
        ("text,label\nA sentence.,1\nAnother one.,1\nA third.,1\n", r"bad\.csv.*single class"),
    ],
)
def test_bad_dataset_is_a_clear_error_with_no_output_left(tmp_path, contents, message):
    (tmp_path / "bad.csv").write_text(contents)
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config.update(model_cache=str(MODEL_CACHE), datasets={"bad": {"path": "bad.csv", "level": "other"}})
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr)
    assert not (tmp_path / "results" / "activations").exists()


def test_unknown_model_and_schema_violations_fail_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config | {"models": {"no-such-model": {}}}))
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0 and "unknown model 'no-such-model'" in result.stdout + result.stderr
    config["probe"]["folds"] = 1
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0 and "folds" in result.stdout + result.stderr
