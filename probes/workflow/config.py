"""From the config file to what the rules need: validation, settings as dicts, paths, and the checks before any job.

The Snakefile calls :func:`validate_config` (the schema, ``workflow/schemas/config.schema.yaml``, fills in every
default, and every list of models a default leaves open is resolved against the declared models) and then these
functions; they live in the package, not in ``common.smk``, so fast unit tests reach them. Settings are plain
dicts, so Snakemake's params trigger sees every change (it ignores opaque objects).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from probes.activations.extraction import ExtractionSettings
from probes.activations.token_cache import TokenCacheSettings
from probes.depth_usage.contributions import DepthUsageSettings
from probes.dictionaries.sae import SAEEvalSettings, SAESettings
from probes.dictionaries.transcoders import TranscoderSettings
from probes.interventions.settings import CausalSettings
from probes.lenses.tuned import TunedLensSettings
from probes.probing.settings import ProbeSettings

Config = dict[str, Any]
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
MAX_ERRORS = 5


class ConfigError(ValueError):
    """A config that breaks the schema, reported in a few lines that name the file and the key."""


def validate_config(config: Config, sources: Sequence[str] = (), schema: str | Path = SCHEMA) -> Config:
    """Check ``config`` against the schema, fill in its defaults and resolve its model lists, in place.

    A broken config raises :class:`ConfigError` naming ``sources`` (the config files), each bad key's path and,
    for an unknown key, the closest valid one; the schema itself is never printed.
    """
    import yaml
    from jsonschema import Draft202012Validator, validators

    schema = yaml.safe_load(Path(schema).read_text(encoding="utf-8"))
    properties = Draft202012Validator.VALIDATORS["properties"]

    def with_defaults(validator, props, instance, node):
        for name, sub in props.items():
            if "default" in sub and isinstance(instance, dict):
                instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, node)

    validator = validators.extend(Draft202012Validator, {"properties": with_defaults})(schema)
    errors = sorted(validator.iter_errors(config), key=lambda error: [str(part) for part in error.absolute_path])
    if errors:
        where = ", ".join(map(str, sources)) or "the config"
        lines = [line for error in errors for line in _described(error)]
        more = f"\n  ... and {len(lines) - MAX_ERRORS} more" if len(lines) > MAX_ERRORS else ""
        raise ConfigError(
            f"{where}: {len(lines)} problem{'s' if len(lines) > 1 else ''}\n  "
            + "\n  ".join(lines[:MAX_ERRORS])
            + more
            + "\nEvery key is described in docs/configuration.md (from workflow/schemas/config.schema.yaml)."
        )
    resolve_models(config)
    return config


def _described(error: Any) -> list[str]:
    """One line per problem of a schema error: its key path, and for an unknown key the closest valid one."""
    path = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties" and "properties" in error.schema:
        valid = list(error.schema["properties"])
        lines = []
        for key in sorted(set(error.instance) - set(valid)):
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
            lines.append(f"{path + '.' if path else ''}{key}: unknown key; {hint}")
        return lines
    if error.validator == "contains" and "const" in error.validator_value:
        return [f"{path}: must include {error.validator_value['const']!r}"]
    message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    return [f"{path or '(top level)'}: {message}"]


def resolve_models(config: Config) -> None:
    """Every family's model list as the models it runs on: a default (null) is every declared model, and a
    family that ``families`` leaves out (perturbations: that list none) runs on none, so no default can name a
    model the user did not declare."""
    models, families = list(config["models"]), set(config["families"])

    def chosen(value: list[str] | None, family: str | None = None) -> list[str]:
        if family is not None and family not in families:
            return []
        return models if value is None else list(value)

    perturb = config["perturbations"]
    perturb["models"] = chosen(perturb["models"]) if perturb["weights"] or perturb["noise"] else []
    config["sae"]["models"] = chosen(config["sae"]["models"], "sae")
    transcoders = config["transcoders"]["models"]
    config["transcoders"]["models"] = config["sae"]["models"] if transcoders is None else chosen(transcoders, "sae")
    config["neurons"]["models"] = chosen(config["neurons"]["models"], "neurons")
    config["depth_usage"]["models"] = chosen(config["depth_usage"]["models"], "depth_usage")
    config["causal"]["models"] = chosen(config["causal"]["models"], "causal")
    latent = config["latent_language"]
    listed = latent["experiments"]
    latent["experiments"] = (
        {model: listed.get(model, latent["tasks"]) for model in [*models, *(m for m in listed if m not in models)]}
        if "latent_language" in families
        else {}
    )
    dual = latent["dual_latent"]
    dual["models"] = chosen(dual["models"], "latent_language") if dual["targets"] else []


def repo_path(path: str, basedir: str) -> str:
    """Relative paths are looked up in the working directory first, then in the repository (``basedir``)."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists() or not (Path(basedir) / candidate).exists():
        return str(candidate)
    return str(Path(basedir) / candidate)


def existing_path(path: str, basedir: str, key: str) -> str:
    """:func:`repo_path` of a file the config names, or an error that says where it was looked for."""
    found = repo_path(path, basedir)
    if not Path(found).is_file():
        places = [Path(path).expanduser().resolve()]
        if not Path(path).is_absolute():
            places.append((Path(basedir) / path).resolve())
        raise FileNotFoundError(f"{key}: file {path!r} not found; looked for {' and '.join(map(str, places))}")
    return found


def model_cache(config: Config) -> str:
    """The model cache folder, absolute: see the schema's ``model_cache``."""
    from probes.models.cache import model_cache_dir

    return str(model_cache_dir(config["model_cache"]))


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


def layers_of(config: Config, model: str) -> list[int] | None:
    """The layers a model's extraction keeps (None: all): ``activations.layers`` and the model's SAE layers."""
    from probes.activations.extraction import site_hooks
    from probes.models.loading import model_depth

    chosen = config["activations"]["layers"]
    if chosen is None:
        return None
    depth = model_depth(model_source(config, model), config["models"][model].get("tl_name"))
    available = sorted(site_hooks(config["activations"]["site"], depth))
    if isinstance(chosen, int):
        chosen = [*available[::chosen], available[-1]]
    layers = set(chosen) | (set(sae_layers(config, model)) if model in config["sae"]["models"] else set())
    missing = sorted(layers - set(available))
    if missing:
        raise ValueError(
            f"activations.layers: {missing} are not layers of {model} at site {config['activations']['site']!r}, "
            f"which has {available[0]}..{available[-1]}"
        )
    return sorted(layers)


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


def causal_settings(config: Config) -> dict[str, Any]:
    section = config["causal"]
    return asdict(
        CausalSettings(
            depths=tuple(section["depths"]),
            n_eval=section["n_eval"],
            folds=section["folds"],
            min_auc=section["min_auc"],
            probe_layers=section["probe_layers"],
            erasure_controls=section["erasure"]["controls"],
            size_band=section["erasure"]["size_band"],
            steering_vector=section["steering"]["vector"],
            strengths=tuple(section["steering"]["strengths"]),
            steering_controls=section["steering"]["controls"],
            steering_positions=section["steering"]["positions"],
            deactivation_depths=tuple(section["deactivation"]["depths"]),
            k=section["deactivation"]["k"],
            ablations=tuple(section["deactivation"]["ablations"]),
            criterion=section["deactivation"]["criterion"],
            deactivation_controls=section["deactivation"]["controls"],
            deactivation_positions=section["deactivation"]["positions"],
            kl_documents=section["kl"]["documents"],
            kl_context=section["kl"]["context"],
            kl_positions=section["kl"]["positions"],
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
        path = existing_path(dataset_config(config, dataset)["path"], basedir, f"datasets.{dataset}.path")
        load_dataset(path, **dataset_columns(config, dataset))
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
    for model in models:
        layers_of(config, model)
    if config["activations"]["layers"] is not None and config["depth_usage"]["models"]:
        raise ValueError(
            "depth_usage compares every layer, but activations.layers keeps only some: set activations.layers "
            "to null, or leave depth_usage out of `families`"
        )
    unknown = sorted(set(config["neurons"]["models"]) - set(models))
    if unknown:
        raise ValueError(f"neurons.models: {unknown} not in `models` ({models})")
    unknown = sorted(set(config["transcoders"]["models"]) - set(sae["models"]))
    if unknown:
        raise ValueError(f"transcoders.models: {unknown} not in sae.models ({sae['models']}); they share its layers")
    if config["transcoders"]["models"]:
        transcoder_settings(config)
    depth = config["depth_usage"]
    unknown = sorted(set(depth["models"]) - set(models))
    if unknown:
        raise ValueError(f"depth_usage.models: {unknown} not in `models` ({models})")
    if depth["models"]:
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
    if sae["models"] or depth["models"]:
        corpus = sae["corpus"]
        for path in corpus["files"]:
            read_documents(existing_path(path, basedir, "sae.corpus.files"))
        if not (corpus["files"] or corpus["concept_texts"] or corpus["hf_dataset"]):
            raise ValueError("sae.corpus names no text: give files, concept_texts: true or an hf_dataset")
    runs = experiments(config)
    latent = config["latent_language"]
    dual = latent["dual_latent"]
    if not runs and not dual["models"]:
        return
    word_lists = {
        name: load_word_list(
            name,
            existing_path(paths["words"], basedir, f"latent_language.word_lists.{name}.words"),
            existing_path(paths["cloze"], basedir, f"latent_language.word_lists.{name}.cloze"),
            existing_path(latent["languages"], basedir, "latent_language.languages"),
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
    if dual["models"]:
        _check_dual_latent(dual, models, word_lists)


def _check_dual_latent(dual: dict[str, Any], models: list[str], word_lists: dict[str, Any]) -> None:
    from probes.datasets.wordlists import check_task

    if unknown := sorted(set(dual["models"]) - set(models)):
        raise ValueError(f"latent_language.dual_latent.models: {unknown} not in `models` ({models})")
    if dual["word_list"] not in word_lists:
        raise ValueError(
            f"latent_language.dual_latent.word_list: {dual['word_list']!r} is not in latent_language.word_lists "
            f"({list(word_lists)})"
        )
    word_list = word_lists[dual["word_list"]]
    if "en" in dual["targets"]:
        raise ValueError("latent_language.dual_latent.targets: en is the latent language compared, not a target")
    for tgt in dual["targets"]:
        try:
            check_task(word_list, "cloze", tgt, tgt)
        except ValueError as error:
            raise ValueError(f"latent_language.dual_latent.targets: {error}") from None
    if unknown := sorted({*dual["related"].values()} - set(word_list.languages)):
        raise ValueError(f"latent_language.dual_latent.related: {unknown} are not languages of {word_list.name!r}")
    if not 0 <= dual["middle"][0] < dual["middle"][1] <= 1:
        raise ValueError(f"latent_language.dual_latent.middle: {dual['middle']} must be [low, high] with low < high")
