# Is what a probe finds used? The behavioural readout, erasure, steering and neuron deactivation per model, each
# against its control; the summary and its figures.


rule causal_checks:
    input:
        manifest=lambda wc: manifest_path(wc.model),
        tensors=expand(unperturbed(rules.extract_activations.output.tensors), dataset=DATASETS, allow_missing=True),
        mlp=expand(unperturbed(rules.extract_activations.output.mlp), dataset=DATASETS, allow_missing=True),
        datasets=[dataset_path(dataset) for dataset in DATASETS],
        corpus=[repo_path(path) for path in SAE["corpus"]["files"]],
        corpus_datasets=[dataset_path(dataset) for dataset in SAE_CONCEPT_DATASETS],
    output:
        readout="results/causal/{model}/readout.parquet",
        effects="results/causal/{model}/effects.parquet",
        probes="results/causal/{model}/probes.parquet",
        fits="results/causal/{model}/fits.parquet",
        rows="results/causal/{model}/rows.parquet",
        directions="results/causal/{model}/directions.safetensors",
        provenance="results/provenance/causal_checks/{model}.json",
    params:
        tasks=DATASETS,
        dataset_columns=[dataset_columns(dataset) for dataset in DATASETS],
        corpus_columns=[dataset_columns(dataset) for dataset in SAE_CONCEPT_DATASETS],
        readouts=[dataset_config(dataset).get("readout") for dataset in DATASETS],
        settings=probes.workflow.config.causal_settings(config),
        probe_settings=probes.workflow.config.probe_settings(config),
        corpus_settings=probes.workflow.config.token_cache_settings(config),
        pooling=config["probe"]["pooling"],
        max_tokens=config["activations"]["max_tokens"],
        hf_dataset=SAE["corpus"]["hf_dataset"],
        n_boot=config["concept_depth"]["n_boot"],
        ci=config["concept_depth"]["ci"],
        seed=config["seed"],
    log:
        "logs/causal_checks/{model}.log",
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    run:
        run_stage(
            probes.workflow.stages.causal.causal_checks,
            input,
            output,
            params,
            log,
            threads,
            model=wildcards.model,
        )


rule summarise_causal:
    input:
        readout=expand(rules.causal_checks.output.readout, model=CAUSAL_MODELS),
        effects=expand(rules.causal_checks.output.effects, model=CAUSAL_MODELS),
        probes=expand(rules.causal_checks.output.probes, model=CAUSAL_MODELS),
        fits=expand(rules.causal_checks.output.fits, model=CAUSAL_MODELS),
    output:
        readout_table="results/tables/causal_readout.parquet",
        readout_csv="results/tables/causal_readout.csv",
        readout_html=report(
            "results/tables/causal_readout.html",
            caption="../report/causal_readout_table.rst",
            category="Causal checks",
            labels={"model": "all", "figure": "readout table"},
        ),
        effects_table="results/tables/causal_effects.parquet",
        effects_csv="results/tables/causal_effects.csv",
        effects_html=report(
            "results/tables/causal_effects.html",
            caption="../report/causal_effects_table.rst",
            category="Causal checks",
            labels={"model": "all", "figure": "effects table"},
        ),
        probes_table="results/tables/causal_probes.parquet",
        probes_csv="results/tables/causal_probes.csv",
        probes_html=report(
            "results/tables/causal_probes.html",
            caption="../report/causal_probes_table.rst",
            category="Causal checks",
            labels={"model": "all", "figure": "probes after erasure table"},
        ),
        fits_table="results/tables/causal_fits.parquet",
        fits_csv="results/tables/causal_fits.csv",
        fits_html=report(
            "results/tables/causal_fits.html",
            caption="../report/causal_fits_table.rst",
            category="Causal checks",
            labels={"model": "all", "figure": "fits and control sizes"},
        ),
        summary_table="results/tables/causal_summary.parquet",
        summary_csv="results/tables/causal_summary.csv",
        summary_html=report(
            "results/tables/causal_summary.html",
            caption="../report/causal_summary_table.rst",
            category="Causal checks",
            labels={"model": "all", "figure": "summary table"},
        ),
        provenance="results/provenance/summarise_causal.json",
    params:
        ci=config["concept_depth"]["ci"],
    log:
        "logs/summarise_causal.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.causal.summarise_causal, input, output, params, log)


rule plot_causal_effects:
    input:
        effects=rules.summarise_causal.output.effects_table,
        readout=rules.summarise_causal.output.readout_table,
    output:
        figures=report(
            figure_paths("causal_effects"),
            caption="../report/causal_effects.rst",
            category="Causal checks",
            labels={"model": "all", "figure": "effects on relative depth"},
        ),
        provenance="results/provenance/plot_causal_effects.json",
    params:
        ci=config["concept_depth"]["ci"],
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_causal_effects.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.causal.plot_causal_effects, input, output, params, log)


rule plot_causal_model:
    input:
        probes=rules.summarise_causal.output.probes_table,
        effects=rules.summarise_causal.output.effects_table,
        readout=rules.summarise_causal.output.readout_table,
    output:
        erasure_figures=report(
            figure_paths("causal_erasure_{model}"),
            caption="../report/causal_erasure.rst",
            category="Causal checks",
            labels={"model": "{model}", "figure": "probes after erasure"},
        ),
        steering_figures=report(
            figure_paths("causal_steering_{model}"),
            caption="../report/causal_steering.rst",
            category="Causal checks",
            labels={"model": "{model}", "figure": "steering dose-response"},
        ),
        provenance="results/provenance/plot_causal_model/{model}.json",
    params:
        ci=config["concept_depth"]["ci"],
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_causal_model/{model}.log",
    localrule: True
    run:
        run_stage(
            probes.workflow.stages.causal.plot_causal_model, input, output, params, log, model=wildcards.model
        )


rule plot_causal_specificity:
    input:
        effects=rules.summarise_causal.output.effects_table,
        readout=rules.summarise_causal.output.readout_table,
    output:
        figures=report(
            figure_paths("causal_specificity_{model}"),
            caption="../report/causal_specificity.rst",
            category="Causal checks",
            labels={"model": "{model}", "figure": "deactivation specificity"},
        ),
        provenance="results/provenance/plot_causal_specificity/{model}.json",
    params:
        ci=config["concept_depth"]["ci"],
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_causal_specificity/{model}.log",
    localrule: True
    run:
        run_stage(
            probes.workflow.stages.causal.plot_causal_specificity, input, output, params, log, model=wildcards.model
        )
