# Config validation and the functions that turn the config into target lists.
import re
from dataclasses import asdict
from pathlib import Path

from snakemake.utils import validate

import probes.activations
import probes.datasets
import probes.figures
import probes.models
import probes.probing
from probes.activations import ExtractionSettings
from probes.probing import ProbeSettings


validate(config, schema="../schemas/config.schema.yaml")

MODELS = list(config["models"])
DATASETS = list(config["datasets"])
SITE = config["activations"]["site"]
FORMATS = config["figures"]["formats"]


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    dataset="|".join(map(re.escape, DATASETS)),


def model_source(model):
    return config["models"][model].get("source", model)


def dataset_config(dataset):
    return {"text_column": "text", "label_column": "label"} | config["datasets"][dataset]


def dataset_path(dataset):
    """Relative paths are looked up in the working directory first, then in the repository."""
    path = Path(dataset_config(dataset)["path"])
    if path.is_absolute() or path.exists() or not (Path(workflow.basedir) / path).exists():
        return str(path)
    return str(Path(workflow.basedir) / path)


def check_inputs():
    """Fail before any job runs on a model we cannot load or a dataset a probe cannot use."""
    for model in MODELS:
        probes.models.resolve_source(model_source(model), config["models"][model].get("tl_name"))
    for dataset in DATASETS:
        columns = dataset_config(dataset)
        probes.datasets.load_dataset(dataset_path(dataset), columns["text_column"], columns["label_column"])


def extraction_settings():
    """A plain dict, so Snakemake's params trigger sees every change (it ignores opaque objects)."""
    return asdict(ExtractionSettings(
        site=SITE,
        poolings=tuple(config["activations"]["poolings"]),
        batch_size=config["activations"]["batch_size"],
        max_tokens=config["activations"]["max_tokens"],
        device=config["device"],
        dtype=config["dtype"],
    ))


def probe_settings():
    probe = config["probe"]
    return asdict(ProbeSettings(
        folds=probe["folds"],
        seeds=tuple(probe["seeds"]),
        C=probe["C"],
        tol=probe["tol"],
        max_iter=probe["max_iter"],
        control=probe["control"],
        device=config["device"],
    ))


def manifest_path(model):
    return f"{config['model_cache']}/{model}/manifest.json"


def figure_paths(stem):
    return expand(f"results/figures/{stem}.{{ext}}", ext=FORMATS, allow_missing=True)


def all_targets():
    return [
        "results/tables/concept_depth_summary.csv",
        "results/tables/probe_metrics.parquet",
        *figure_paths("concept_depth_relative"),
        *(path for model in MODELS for path in figure_paths(f"concept_depth_{model}")),
    ]


check_inputs()
