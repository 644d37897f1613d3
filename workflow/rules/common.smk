# Config validation and the functions that turn the config into target lists.
import re

import probes.activations.extraction
import probes.workflow.config
import probes.models.loading
import probes.models.perturbations
import probes.activations.token_cache
import probes.datasets.wordlists
from probes.workflow.stages import run_stage
import probes.workflow.stages.causal
import probes.workflow.stages.concept_depth
import probes.workflow.stages.depth_usage
import probes.workflow.stages.latent_language
import probes.workflow.stages.models
import probes.workflow.stages.neurons
import probes.workflow.stages.result_tables
import probes.workflow.stages.run_info
import probes.workflow.stages.sae

probes.workflow.config.validate_config(config, workflow.overwrite_configfiles or workflow.configfiles)

MODELS = list(config["models"])
MODEL_CACHE = probes.workflow.config.model_cache(config)
DATASETS = list(config["datasets"])
SITE = config["activations"]["site"]
FORMATS = config["figures"]["formats"]
LATENT = config["latent_language"]
WORD_LISTS = list(LATENT["word_lists"])
SAE = config["sae"]
SAE_MODELS = SAE["models"]
SAE_CONCEPT_DATASETS = DATASETS if SAE["corpus"]["concept_texts"] else []
PERTURB = config["perturbations"]
BASE_WEIGHTS = probes.models.perturbations.format_name(config["dtype"])
CLEAN = probes.models.perturbations.CLEAN
NOISES = [probes.models.perturbations.InputNoise(**entry).name for entry in PERTURB["noise"]]
EXPERIMENTS = probes.workflow.config.experiments(config)
DUAL = LATENT["dual_latent"]
DUAL_MODELS = DUAL["models"]
NEURONS = config["neurons"]
NEURON_MODELS = config["neurons"]["models"]
TRANSCODER_MODELS = config["transcoders"]["models"]
CAUSAL = config["causal"]
CAUSAL_MODELS = CAUSAL["models"]
# their extractions also pool the MLP sites (the causal checks deactivate neurons)
MLP_MODELS = sorted(set(NEURON_MODELS) | set(SAE_MODELS) | set(CAUSAL_MODELS))
DEPTH = config["depth_usage"]
DEPTH_MODELS = config["depth_usage"]["models"]
GPU = 1 if config["device"].startswith("cuda") else 0


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    dataset="|".join(map(re.escape, DATASETS)),
    word_list="|".join(map(re.escape, WORD_LISTS)),
    task="|".join(probes.datasets.wordlists.TASKS),
    src="[A-Za-z0-9_]+",
    tgt="[A-Za-z0-9_]+",
    layer="[0-9]+",
    weights="|".join(probes.models.perturbations.WEIGHT_FORMATS),
    noise=rf"{probes.models.perturbations.CLEAN}|[a-z]+-[a-z]+-[0-9.e+-]+",


def model_source(model):
    return probes.workflow.config.model_source(config, model)


def dataset_config(dataset):
    return probes.workflow.config.dataset_config(config, dataset)


def dataset_columns(dataset):
    return probes.workflow.config.dataset_columns(config, dataset)


def repo_path(path):
    return probes.workflow.config.repo_path(path, workflow.basedir)


def is_embedded(model):
    """Whether a model is one of the embedded 4-bit GGUF models, whose float weights are dequantised."""
    return model_source(model) in probes.models.loading.EMBEDDED_MODELS


def conditions(model, dataset):
    """(weights, noise) of every probe run of a model on a task: its own weights on clean inputs first,
    then, where the config perturbs it, one perturbation at a time."""
    runs = [(BASE_WEIGHTS, CLEAN)]
    if model in PERTURB["models"] and (PERTURB["datasets"] is None or dataset in PERTURB["datasets"]):
        runs += [(weights, CLEAN) for weights in PERTURB["weights"] if weights != BASE_WEIGHTS]
        runs += [(BASE_WEIGHTS, noise) for noise in NOISES]
    return runs


def condition_outputs(template, models=None):
    """``template`` for every model (of ``models``), task and perturbation condition of this config."""
    return [
        path
        for model in models or MODELS
        for dataset in DATASETS
        for weights, noise in conditions(model, dataset)
        for path in expand(template, model=model, dataset=dataset, weights=weights, noise=noise)
    ]


def mlp_sites_of(model, weights, noise):
    """The MLP sites an extraction pools: all of them for a neuron or SAE model's own weights on clean inputs."""
    unperturbed_run = (weights, noise) == (BASE_WEIGHTS, CLEAN)
    return list(probes.activations.extraction.MLP_SITES) if model in MLP_MODELS and unperturbed_run else []


def unperturbed(template):
    """``template`` with the run's own weights on clean inputs filled in; other wildcards left open."""
    return expand(template, weights=BASE_WEIGHTS, noise=CLEAN, allow_missing=True)[0]


def dataset_path(dataset):
    return repo_path(dataset_config(dataset)["path"])


def word_list_path(word_list, kind):
    return repo_path(LATENT["word_lists"][word_list][kind])


def sae_layers(model):
    return probes.workflow.config.sae_layers(config, model)


def sae_outputs(template, model):
    return expand(template, model=model, layer=sae_layers(model))


def transcoder_outputs(template, model):
    """``template`` at every SAE layer of a model that gets transcoders; none for the others."""
    return sae_outputs(template, model) if model in TRANSCODER_MODELS else []


def manifest_path(model):
    return f"{MODEL_CACHE}/{model}/manifest.json"


def layers_of(model):
    return probes.workflow.config.layers_of(config, model)


def figure_paths(stem):
    return expand(f"results/figures/{stem}.{{ext}}", ext=FORMATS, allow_missing=True)


def experiment_outputs(template):
    """A rule's output path for every configured latent-language experiment."""
    fields = (
        dict(zip(["model", "word_list", "task", "src", "tgt"], map(list, zip(*EXPERIMENTS)))) if EXPERIMENTS else {}
    )
    return expand(template, zip, **fields) if EXPERIMENTS else []


def experiment_stem(model, word_list, task, src, tgt):
    return f"{model}_{word_list}_{task}_{src}-{tgt}"


def latent_language_targets():
    targets = ["results/tables/dual_latent_summary.html", *figure_paths("dual_latent")] if DUAL_MODELS else []
    if not EXPERIMENTS:
        return targets
    targets += [
        "results/tables/latent_language_summary.html",
        *figure_paths("latent_language_relative"),
        *(
            path
            for experiment in EXPERIMENTS
            for path in figure_paths(f"latent_language_{experiment_stem(*experiment)}")
        ),
    ]
    if LATENT["tuned_lens"]:
        targets += figure_paths("tuned_lens_kl")
    return targets


def sae_targets():
    if not SAE_MODELS:
        return []
    return [
        "results/tables/sae_metrics.html",
        "results/tables/sae_vs_transcoder.html",
        "results/tables/sparse_probing_summary.html",
        *expand(rules.feature_pages.output.page, model=SAE_MODELS, dataset=DATASETS),
        *figure_paths("sae_metrics"),
        *(
            path
            for model in SAE_MODELS
            for dataset in DATASETS
            for path in figure_paths(f"sparse_probing_{model}_{dataset}")
        ),
    ]


def neuron_targets():
    if not NEURON_MODELS:
        return []
    return [
        "results/tables/neuron_probing_summary.html",
        "results/tables/best_neurons.html",
        *(
            path
            for model in NEURON_MODELS
            for dataset in DATASETS
            for path in figure_paths(f"neuron_probing_{model}_{dataset}")
        ),
    ]


def neuron_summary_of(model):
    """The neuron-probing summary where the config probes a model's neurons (its sparse-probing figure shows them)."""
    return rules.summarise_neurons.output.summary_table if model in NEURON_MODELS else []


def tuned_lens_of(model):
    """The model's tuned lens where the config trains one (the depth-usage shortcuts compare with it)."""
    trained = LATENT["tuned_lens"] and model in {experiment[0] for experiment in EXPERIMENTS}
    return expand(rules.train_tuned_lens.output.lens, model=model) if trained else []


def depth_usage_targets():
    if not DEPTH_MODELS:
        return []
    return [
        "results/tables/depth_usage_summary.html",
        *(
            path
            for stem in ("sublayers", "shortcuts", "quality", "quality_correlations", "layer_maps", "layer_matches")
            for path in figure_paths(f"depth_usage_{stem}")
        ),
        *(path for model in DEPTH_MODELS for path in figure_paths(f"depth_usage_skipping_{model}")),
    ]


def causal_targets():
    if not CAUSAL_MODELS:
        return []
    return [
        "results/tables/causal_summary.html",
        *figure_paths("causal_effects"),
        *(
            path
            for model in CAUSAL_MODELS
            for stem in ("erasure", "steering", "specificity")
            for path in figure_paths(f"causal_{stem}_{model}")
        ),
    ]


def run_info_inputs():
    """The provenance record of every job of this config but the plots, so that redrawing never reruns run_info."""
    records = [
        *condition_outputs(rules.extract_activations.output.provenance),
        *condition_outputs(rules.probe_layers.output.provenance),
        *expand(rules.audit_shortcuts.output.provenance, dataset=DATASETS),
        rules.summarise_concept_depth.output.provenance,
    ]
    if EXPERIMENTS:
        records += [
            *experiment_outputs(rules.latent_language.output.provenance),
            rules.summarise_latent_language.output.provenance,
        ]
        if LATENT["tuned_lens"]:
            records += expand(rules.train_tuned_lens.output.provenance, model=sorted({e[0] for e in EXPERIMENTS}))
    if DUAL_MODELS:
        records += [
            *expand(rules.dual_latent.output.provenance, model=DUAL_MODELS),
            rules.summarise_dual_latent.output.provenance,
        ]
    if SAE_MODELS:
        records += [
            *expand(rules.cache_token_activations.output.provenance, model=SAE_MODELS),
            *(path for model in SAE_MODELS for path in sae_outputs(rules.train_sae.output.provenance, model)),
            *expand(rules.evaluate_sae.output.provenance, model=SAE_MODELS),
            *(
                path
                for model in SAE_MODELS
                for path in transcoder_outputs(rules.train_transcoder.output.provenance, model)
            ),
            *expand(rules.sparse_probing.output.provenance, model=SAE_MODELS, dataset=DATASETS),
            *expand(rules.feature_pages.output.provenance, model=SAE_MODELS, dataset=DATASETS),
            rules.summarise_sae.output.provenance,
        ]
    if NEURON_MODELS:
        records += [
            *expand(rules.probe_neurons.output.provenance, model=NEURON_MODELS, dataset=DATASETS),
            rules.summarise_neurons.output.provenance,
        ]
    if DEPTH_MODELS:
        records += [
            *expand(rules.depth_usage.output.provenance, model=DEPTH_MODELS),
            rules.layer_maps.output.provenance,
            rules.summarise_depth_usage.output.provenance,
        ]
    if CAUSAL_MODELS:
        records += [
            *expand(rules.causal_checks.output.provenance, model=CAUSAL_MODELS),
            rules.summarise_causal.output.provenance,
        ]
    return records


def figure_targets():
    """Every figure: `snakemake figures` redraws them from the cached tables alone."""
    return [path for path in all_targets() if path.startswith("results/figures/")]


def all_targets():
    return [
        "results/tables/concept_depth_summary.html",
        "results/tables/probe_metrics.parquet",
        *figure_paths("concept_depth_relative"),
        *figure_paths("concept_depth_levels"),
        *(path for model in PERTURB["models"] for path in figure_paths(f"concept_depth_perturbations_{model}")),
        *(path for model in MODELS for path in figure_paths(f"concept_depth_{model}")),
        *latent_language_targets(),
        *sae_targets(),
        *neuron_targets(),
        *depth_usage_targets(),
        *causal_targets(),
        "results/tables/run_info.html",
        "results/tables/markdown/concept_depth.md",
    ]


if workflow.is_main_process:  # jobs re-parse the Snakefile in their own process; check once
    probes.workflow.config.check_inputs(config, workflow.basedir)


def result_table_inputs():
    """The summaries behind the result tables of the experiments this config runs besides concept depth."""
    inputs = {}
    if EXPERIMENTS:
        inputs["latent_language"] = rules.summarise_latent_language.output.summary_csv
    if EXPERIMENTS and LATENT["tuned_lens"]:
        inputs["tuned_lens"] = rules.summarise_latent_language.output.kl_table
    if DUAL_MODELS:
        inputs["dual_latent"] = rules.summarise_dual_latent.output.summary_csv
    if SAE_MODELS:
        inputs["sae_metrics"] = rules.summarise_sae.output.metrics_table
        inputs["sparse_probing"] = rules.summarise_sae.output.sparse_summary_table
    if NEURON_MODELS:
        inputs["neuron_probing"] = rules.summarise_neurons.output.summary_table
        inputs["best_neurons"] = rules.summarise_neurons.output.best_table
    if DEPTH_MODELS:
        inputs["depth_usage"] = rules.summarise_depth_usage.output.summary
    if CAUSAL_MODELS:
        inputs["causal"] = rules.summarise_causal.output.summary_table
    return inputs


def result_table_outputs():
    names = ["latent_language"] if EXPERIMENTS else []
    names += ["tuned_lens"] if EXPERIMENTS and LATENT["tuned_lens"] else []
    names += ["dual_latent"] if DUAL_MODELS else []
    names += ["sae_metrics", "sparse_probing"] if SAE_MODELS else []
    names += ["neuron_probing"] if NEURON_MODELS else []
    names += ["depth_usage"] if DEPTH_MODELS else []
    names += ["causal"] if CAUSAL_MODELS else []
    return {f"{name}_md": f"results/tables/markdown/{name}.md" for name in names}
