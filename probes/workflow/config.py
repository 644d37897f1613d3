"""From the validated config to what the rules need: settings as dicts, paths, and the checks made before any job.

The Snakefile validates the config against ``workflow/schemas/config.schema.yaml`` (which fills in every
default) and calls these functions; they live in the package, not in ``common.smk``, so fast unit tests reach
them. Settings are plain dicts, so Snakemake's params trigger sees every change (it ignores opaque objects).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from probes.activations.extraction import ExtractionSettings
from probes.activations.token_cache import TokenCacheSettings
from probes.depth_usage.contributions import DepthUsageSettings
from probes.dictionaries.sae import SAEEvalSettings, SAESettings
from probes.dictionaries.transcoders import TranscoderSettings
from probes.lenses.tuned import TunedLensSettings
from probes.probing.settings import ProbeSettings

Config = dict[str, Any]


def repo_path(path: str, basedir: str) -> str:
    """Relative paths are looked up in the working directory first, then in the repository (``basedir``)."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists() or not (Path(basedir) / candidate).exists():
        return str(candidate)
    return str(Path(basedir) / candidate)


def model_source(config: Config, model: str) -> str:
    return config["models"][model].get("source", model)


def dataset_config(config: Config, dataset: str) -> dict[str, Any]:
    defaults = {"text_column": "text", "label_column": "label", "group_column": None, "type_column": None}
    return defaults | config["datasets"][dataset]


def dataset_columns(config: Config, dataset: str) -> dict[str, str | None]:
    """The ``<role>_column`` arguments of :func:`probes.datasets.concepts.load_dataset` for one configured dataset."""
    from probes.datasets.concepts import DATASET_ROLES

    columns = dataset_config(config, dataset)
    return {f"{role}_column": columns[f"{role}_column"] for role in DATASET_ROLES}


def experiments(config: Config) -> list[tuple[str, str, str, str, str]]:
    """(model, word_list, task, src, tgt) of every configured latent-language experiment."""
    return [
        (model, run["word_list"], run["task"], run["src"], run["tgt"])
        for model, runs in config["latent_language"]["experiments"].items()
        for run in runs
    ]


def sae_layers(config: Config, model: str) -> list[int]:
    from probes.dictionaries.sae import select_layers
    from probes.models.loading import model_depth

    sae = config["sae"]
    depth = model_depth(model_source(config, model), config["models"][model].get("tl_name"))
    return select_layers(depth, config["activations"]["site"], sae["layers"], sae["n_layers"])


def extraction_settings(config: Config) -> dict[str, Any]:
    activations = config["activations"]
    return asdict(
        ExtractionSettings(
            site=activations["site"],
            poolings=tuple(activations["poolings"]),
            batch_size=activations["batch_size"],
            max_tokens=activations["max_tokens"],
            device=config["device"],
            dtype=config["dtype"],
        )
    )


def probe_settings(config: Config, perturbed: bool = False) -> dict[str, Any]:
    """The probe protocol; a perturbed run skips MDL, which its comparison with the unperturbed run does not use."""
    probe = config["probe"]
    names = {field.name for field in fields(ProbeSettings)} - {"device", "dtype"}
    values = {key: tuple(probe[key]) if isinstance(probe[key], list) else probe[key] for key in names if key in probe}
    if perturbed:
        values["mdl"] = False
    return asdict(ProbeSettings(**values, device=config["device"]))


def tuned_lens_settings(config: Config) -> dict[str, Any]:
    return asdict(TunedLensSettings(**config["tuned_lens"], device=config["device"], dtype=config["dtype"]))


def token_cache_settings(config: Config) -> dict[str, Any]:
    corpus = config["sae"]["corpus"]
    names = {field.name for field in fields(TokenCacheSettings)} - {"device", "dtype"}
    return asdict(
        TokenCacheSettings(**{key: corpus[key] for key in names}, device=config["device"], dtype=config["dtype"])
    )


def sae_settings(config: Config) -> dict[str, Any]:
    names = {field.name for field in fields(SAESettings)} - {"device"}
    return asdict(SAESettings(**{key: config["sae"][key] for key in names}, device=config["device"]))


def sae_eval_settings(config: Config) -> dict[str, Any]:
    return asdict(SAEEvalSettings(**config["sae"]["eval"], device=config["device"]))


def transcoder_settings(config: Config) -> dict[str, Any]:
    """The transcoders' own keys, with the SAEs' learning-rate schedule and dead-latent window."""
    sae, own = config["sae"], config["transcoders"]
    shared = {"lr_warm_up_fraction", "lr_decay_fraction", "dead_feature_window"}
    return asdict(
        TranscoderSettings(
            **{key: own[key] for key in ("expansion", "k", "training_tokens", "batch_size", "lr")},
            **{key: sae[key] for key in shared},
            device=config["device"],
        )
    )


def neuron_models(config: Config) -> list[str]:
    models = config["neurons"]["models"]
    return list(config["models"]) if models is None else list(models)


def depth_usage_models(config: Config) -> list[str]:
    models = config["depth_usage"]["models"]
    return list(config["models"]) if models is None else list(models)


def depth_usage_settings(config: Config) -> dict[str, Any]:
    section = config["depth_usage"]
    return asdict(
        DepthUsageSettings(
            documents=section["documents"],
            context=section["context"],
            positions=section["positions"],
            skip_documents=section["skipping"]["documents"],
            skip_context=section["skipping"]["context"],
            train_tokens=section["shortcuts"]["train_tokens"],
            ridge=section["shortcuts"]["ridge"],
            batch_size=section["batch_size"],
            device=config["device"],
            dtype=config["dtype"],
        )
    )


def check_inputs(config: Config, basedir: str) -> None:
    """Fail before any job runs on a model we cannot load or a dataset, corpus or word list we cannot use."""
    from probes.datasets.concepts import load_dataset
    from probes.datasets.corpus import read_documents
    from probes.datasets.wordlists import check_task, load_word_list
    from probes.models.loading import resolve_source

    models, datasets = list(config["models"]), list(config["datasets"])
    for model in models:
        resolve_source(model_source(config, model), config["models"][model].get("tl_name"))
    for dataset in datasets:
        load_dataset(repo_path(dataset_config(config, dataset)["path"], basedir), **dataset_columns(config, dataset))
    if config["probe"]["control"] == "type":
        untyped = [dataset for dataset in datasets if dataset_config(config, dataset)["type_column"] is None]
        if untyped:
            raise ValueError(f"probe.control 'type': datasets {untyped} declare no type_column; use control auto")
    perturb = config["perturbations"]
    for key, known, names in (("models", models, perturb["models"]), ("datasets", datasets, perturb["datasets"] or [])):
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"perturbations.{key}: {unknown} not in `{key}` ({known})")
    sae = config["sae"]
    for model in sae["models"]:
        if model not in models:
            raise ValueError(f"sae.models: model {model!r} is not in `models` ({models})")
        sae_layers(config, model)
    unknown = sorted(set(neuron_models(config)) - set(models))
    if unknown:
        raise ValueError(f"neurons.models: {unknown} not in `models` ({models})")
    unknown = sorted(set(config["transcoders"]["models"]) - set(sae["models"]))
    if unknown:
        raise ValueError(f"transcoders.models: {unknown} not in sae.models ({sae['models']}); they share its layers")
    if config["transcoders"]["models"]:
        transcoder_settings(config)
    depth = config["depth_usage"]
    unknown = sorted(set(depth_usage_models(config)) - set(models))
    if unknown:
        raise ValueError(f"depth_usage.models: {unknown} not in `models` ({models})")
    if depth_usage_models(config):
        if depth["context"] >= sae["corpus"]["context"]:
            raise ValueError(
                f"depth_usage.context ({depth['context']}) must be below sae.corpus.context "
                f"({sae['corpus']['context']}), which also holds the BOS"
            )
        if depth["layer_maps"]["pooling"] not in config["activations"]["poolings"]:
            raise ValueError(
                f"depth_usage.layer_maps.pooling {depth['layer_maps']['pooling']!r} is not in "
                f"activations.poolings {config['activations']['poolings']}"
            )
        depth_usage_settings(config)
    if sae["models"] or depth_usage_models(config):
        corpus = sae["corpus"]
        for path in corpus["files"]:
            read_documents(repo_path(path, basedir))
        if not (corpus["files"] or corpus["concept_texts"] or corpus["hf_dataset"]):
            raise ValueError("sae.corpus names no text: give files, concept_texts: true or an hf_dataset")
    runs = experiments(config)
    if not runs:
        return
    latent = config["latent_language"]
    word_lists = {
        name: load_word_list(
            name,
            repo_path(paths["words"], basedir),
            repo_path(paths["cloze"], basedir),
            repo_path(latent["languages"], basedir),
        )
        for name, paths in latent["word_lists"].items()
    }
    for model, word_list, task, src, tgt in runs:
        where = f"latent_language.experiments.{model}"
        if model not in models:
            raise ValueError(f"{where}: model {model!r} is not in `models` ({models})")
        if word_list not in word_lists:
            raise ValueError(
                f"{where}: word list {word_list!r} is not in latent_language.word_lists ({list(word_lists)})"
            )
        try:
            check_task(word_lists[word_list], task, src, tgt)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
