"""The schema and the package agree: every choice list and default exists once, and the config builders use it."""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields

import pytest
import yaml

from helpers import REPO
from probes.activations import extraction as activations
from probes.activations import token_cache
from probes.datasets import concepts as datasets
from probes.datasets import wordlists
from probes.dictionaries import features, neurons, sae, transcoders
from probes.lenses import curves
from probes.lenses import tuned as lens
from probes.models import loading as models
from probes.models import perturbations
from probes.plotting import style as figures
from probes.probing import depth
from probes.probing import settings as probing
from probes.workflow import config
from probes.workflow.stages import concept_depth as concept_depth_stages
from probes.workflow.stages import latent_language as latent_language_stages
from probes.workflow.stages import models as models_stages
from probes.workflow.stages import neurons as neuron_stages
from probes.workflow.stages import sae as sae_stages

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def node(path: str) -> dict:
    """The schema of a dotted key: ``probe.pooling``, ``perturbations.noise[].kind``, ``activations.poolings[]``."""
    current = SCHEMA
    for part in path.split("."):
        items = part.endswith("[]")
        current = current["properties"][part.removesuffix("[]")]
        if items:
            current = current["items"]
        if "$ref" in current:
            current = SCHEMA["$defs"][current["$ref"].removeprefix("#/$defs/")]
    return current


def dataclass_defaults(cls) -> dict:
    return {
        field.name: field.default if field.default is not MISSING else field.default_factory() for field in fields(cls)
    }


def function_defaults(function) -> dict:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def as_schema(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(
    ("path", "constant"),
    [
        ("dtype", models.DTYPES),
        ("activations.site", activations.SITES),
        ("activations.poolings[]", activations.POOLINGS),
        ("probe.pooling", activations.POOLINGS),
        ("probe.control", probing.CONTROLS),
        ("datasets", datasets.TASK_LEVELS),
        ("perturbations.weights[]", perturbations.WEIGHT_FORMATS),
        ("perturbations.noise[].kind", perturbations.NOISE_KINDS),
        ("perturbations.noise[].position", perturbations.NOISE_POSITIONS),
        ("latent_language.tasks[].task", wordlists.TASKS),
        ("sae.architecture", sae.ARCHITECTURES),
        ("neurons.dtype", neurons.STORAGE_DTYPES),
        ("neurons.criteria[]", neurons.CRITERIA),
        ("figures.formats[]", figures.FORMATS),
    ],
)
def test_schema_choice_lists_equal_the_package_constants(path, constant):
    schema = node(path)
    if path == "datasets":
        schema = schema["additionalProperties"]["properties"]["level"]
    assert schema["enum"] == list(constant)


# (schema section, dataclass, schema keys that configure something else, fields set from the top level or fixed)
SETTINGS = [
    ("activations", activations.ExtractionSettings, {"layers"}, {"device", "dtype"}),
    ("probe", probing.ProbeSettings, {"pooling"}, {"device", "dtype"}),  # dtype: the solver's, float32 always
    ("tuned_lens", lens.TunedLensSettings, set(), {"device", "dtype"}),
    ("sae.corpus", token_cache.TokenCacheSettings, {"files", "concept_texts", "hf_dataset"}, {"device", "dtype"}),
    ("sae", sae.SAESettings, {"models", "layers", "n_layers", "corpus", "eval", "sparse_probing"}, {"device"}),
    ("sae.eval", sae.SAEEvalSettings, set(), {"device"}),
    # the transcoders share the SAEs' schedule and dead-latent window (probes.workflow.config.transcoder_settings)
    (
        "transcoders",
        transcoders.TranscoderSettings,
        {"models"},
        {"device", "lr_warm_up_fraction", "lr_decay_fraction", "dead_feature_window"},
    ),
]


@pytest.mark.parametrize(("section", "cls", "elsewhere", "top_level"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_schema_defaults_equal_the_settings_defaults(section, cls, elsewhere, top_level):
    properties = node(section)["properties"]
    defaults = dataclass_defaults(cls)
    configured = set(properties) - elsewhere
    assert configured <= set(defaults), (
        f"{section}: schema keys {configured - set(defaults)} are no {cls.__name__} field"
    )
    assert set(defaults) - configured == top_level, f"{cls.__name__} fields the schema does not configure"
    for key in configured:
        assert properties[key]["default"] == as_schema(defaults[key]), f"{section}.{key}"
    assert defaults["device"] == SCHEMA["properties"]["device"]["default"]
    if "dtype" in top_level and cls is not probing.ProbeSettings:
        assert defaults["dtype"] == SCHEMA["properties"]["dtype"]["default"]


@pytest.mark.parametrize(
    ("section", "function", "renamed"),
    [
        ("concept_depth", concept_depth_stages.summarise_concept_depth, {}),
        ("concept_depth", depth.summarise_concept_depth, {}),
        ("sae.sparse_probing", sae_stages.sparse_probing, {"top_latents": None, "examples": None}),
        ("sae.sparse_probing", sae_stages.feature_pages, {"top_latents": "n_top", "examples": "n_examples"}),
        ("sae.sparse_probing", features.top_features, {"top_latents": "n_top", "examples": "n_examples", "ks": None}),
        ("neurons", neuron_stages.probe_neurons, {}),
        ("neurons", sae_stages.feature_pages, {"logit_tokens": "n_tokens", "dtype": None}),
        ("neurons", models_stages.extract_activations, {"dtype": "mlp_dtype"}),
        ("latent_language", latent_language_stages.latent_language, {"shots": None, "languages": None}),
        ("latent_language", latent_language_stages.dual_latent, {"shots": None, "languages": None}),
        ("latent_language.dual_latent", curves.dual_latent_summary, {}),
    ],
)
def test_schema_defaults_equal_the_function_defaults(section, function, renamed):
    properties = node(section)["properties"]
    defaults = function_defaults(function)
    checked = 0
    for key, schema in properties.items():
        name = renamed.get(key, key)
        if name in defaults and "default" in schema:
            assert schema["default"] == as_schema(defaults[name]), (
                f"{section}.{key} vs {function.__qualname__}({name}=)"
            )
            checked += 1
    assert checked, f"nothing of {section} compared with {function.__qualname__}"


def test_sparse_probing_ks_default_is_the_library_default():
    assert node("sae.sparse_probing.ks")["default"] == list(sae.SPARSE_KS)
    assert function_defaults(sae.sparse_probe)["ks"] == sae.SPARSE_KS


def validated(**changes) -> dict:
    """The test config with changes, validated and filled in by the schema, as the Snakefile does."""
    data = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    data.update(changes)
    return config.validate_config(data, ["test.yaml"])


def test_settings_builders_carry_the_config_and_its_device():
    cfg = validated(device="cuda", dtype="bfloat16")
    assert config.extraction_settings(cfg) | {} == {
        "site": "resid",
        "poolings": ("last", "mean"),
        "batch_size": 32,
        "max_tokens": 256,
        "device": "cuda",
        "dtype": "bfloat16",
    }
    assert config.probe_settings(cfg)["refits"] == 6 and config.probe_settings(cfg)["mdl"] is True
    for build in (
        config.probe_settings,
        config.tuned_lens_settings,
        config.token_cache_settings,
        config.sae_settings,
        config.sae_eval_settings,
    ):
        assert build(cfg)["device"] == "cuda", build.__name__
    assert config.token_cache_settings(cfg)["shard_tokens"] == 1024
    assert config.sae_settings(cfg)["training_tokens"] == 8192


def test_check_inputs_names_what_is_wrong():
    config.check_inputs(validated(), str(REPO))
    with pytest.raises(ValueError, match=r"perturbations.datasets: \['nope'\] not in `datasets`"):
        config.check_inputs(validated(perturbations={"models": [], "datasets": ["nope"]}), str(REPO))
    with pytest.raises(ValueError, match="sae.models: model 'other' is not in `models`"):
        config.check_inputs(validated(sae={"models": ["other"]}), str(REPO))
    with pytest.raises(ValueError, match=r"probe.control 'type': datasets \['coinflip'\] declare no type_column"):
        cities = {"path": "data/concepts/cities.csv", "level": "factual", "type_column": "country"}
        coinflip = {"path": "data/concepts/coinflip.csv", "level": "inferential"}
        config.check_inputs(
            validated(probe={"control": "type"}, datasets={"cities": cities, "coinflip": coinflip}), str(REPO)
        )
    with pytest.raises(FileNotFoundError, match="datasets.x.path: file 'missing.csv' not found; looked for /"):
        config.check_inputs(validated(datasets={"x": {"path": "missing.csv", "level": "other"}}), str(REPO))


def test_a_misspelt_key_names_the_file_the_key_and_the_closest_valid_key():
    with pytest.raises(config.ConfigError) as error:
        validated(probe={"seedz": [0]})
    message = str(error.value)
    assert message.startswith("test.yaml: 1 problem\n  probe.seedz: unknown key; did you mean 'seeds'?")
    assert len(message.splitlines()) <= 3 and "properties" not in message  # no schema dump
    with pytest.raises(config.ConfigError, match=r"(?s)2 problems.*dataset: unknown key; did you mean 'datasets'"):
        config.validate_config({"dataset": {}}, ["mine.yaml"])
    with pytest.raises(config.ConfigError, match="families: must include 'concept_depth'"):
        validated(families=["sae"])


def test_defaults_that_name_models_resolve_against_the_declared_models():
    def minimal(**changes):
        tasks = {"cities": {"path": "data/concepts/cities.csv", "level": "factual"}}
        return config.validate_config({"models": {"mine": {"source": "smollm2-135m"}}, "datasets": tasks, **changes})

    every = ["concept_depth", "latent_language", "sae", "neurons", "depth_usage"]
    resolved = minimal(families=every, perturbations={"weights": ["int8"]})
    for section in ("perturbations", "sae", "transcoders", "neurons", "depth_usage"):
        assert resolved[section]["models"] == ["mine"], section
    assert resolved["latent_language"]["experiments"] == {
        "mine": [{"task": "translation", "src": "fr", "tgt": "en", "word_list": "everyday"}]
    }
    assert resolved["latent_language"]["dual_latent"]["models"] == ["mine"]
    config.check_inputs(resolved, str(REPO))
    no_targets = minimal(families=every, latent_language={"dual_latent": {"targets": []}})
    assert no_targets["latent_language"]["dual_latent"]["models"] == []
    for dual, message in (
        ({"targets": ["en"]}, "en is the latent language"),
        ({"targets": ["it"]}, r"no language\(s\) \['it'\]"),
        ({"related": {"fr": "it"}}, r"\['it'\] are not languages"),
        ({"middle": [0.8, 0.4]}, "low < high"),
    ):
        with pytest.raises(ValueError, match=message):
            config.check_inputs(minimal(families=every, latent_language={"dual_latent": dual}), str(REPO))
    alone = minimal()
    assert alone["families"] == ["concept_depth"]
    assert [alone[s]["models"] for s in ("sae", "transcoders", "neurons", "depth_usage")] == [[]] * 4
    assert alone["latent_language"]["experiments"] == {} and alone["perturbations"]["models"] == []
    assert alone["latent_language"]["dual_latent"]["models"] == []
    narrowed = minimal(families=every, sae={"models": []}, latent_language={"experiments": {"mine": []}})
    assert narrowed["transcoders"]["models"] == [] and narrowed["latent_language"]["experiments"] == {"mine": []}


def test_layers_are_every_layer_a_list_or_a_stride_plus_the_sae_layers():
    resolved = validated(families=["concept_depth"])
    assert config.layers_of(resolved, "smollm2-135m") is None
    strided = validated(families=["concept_depth"], activations={"layers": 4})
    assert config.layers_of(strided, "smollm2-135m") == [*range(0, 30, 4), 30]
    with_saes = validated(families=["concept_depth", "sae"], activations={"layers": [3, 7]})
    assert config.layers_of(with_saes, "smollm2-135m") == [3, 7, 10, 20]  # the SAE layers of the test config
    with pytest.raises(ValueError, match=r"activations.layers: \[31\] are not layers of smollm2-135m"):
        config.check_inputs(validated(families=["concept_depth"], activations={"layers": [0, 31]}), str(REPO))
    with pytest.raises(ValueError, match="depth_usage compares every layer"):
        config.check_inputs(validated(activations={"layers": 2}), str(REPO))


def test_the_default_config_states_only_choices_each_with_its_reason():
    """config/config.yaml holds what the default experiment chooses, not the schema's defaults: every key in it
    carries a comment on its line (or the line above) saying why, and the settings builders see its values."""
    path = REPO / "config" / "config.yaml"
    lines = path.read_text().splitlines()
    defaults = config.validate_config({"datasets": {"x": {"path": "x.csv", "level": "other"}}})

    def keys(node, where=()):
        for key_node, value_node in node.value:
            key = (*where, key_node.value)
            schema = node_of(key)
            if isinstance(value_node, yaml.MappingNode) and "properties" in schema:
                yield from keys(value_node, key)
            else:
                yield key, key_node.start_mark.line

    def node_of(key):
        current = SCHEMA
        for part in key:
            current = current.get("properties", {}).get(part, {})
        return current

    checked = 0
    for key, line in keys(yaml.compose(path.read_text())):
        reason = "#" in lines[line] or lines[line - 1].lstrip().startswith("#")
        assert reason, f"config/config.yaml line {line + 1}: {'.'.join(key)} has no reason beside it"
        value = yaml.safe_load(path.read_text())
        default = defaults
        for part in key:
            value, default = value[part], default.get(part) if isinstance(default, dict) else None
        if key[0] not in ("models", "datasets", "families"):
            assert value != default, f"config/config.yaml: {'.'.join(key)} repeats the schema's default {default!r}"
        checked += 1
    assert checked >= 10
