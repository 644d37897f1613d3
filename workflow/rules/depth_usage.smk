# How depth is used: sublayers, layer skipping, linear shortcuts and representation quality per model; layer maps
# between and within models; the summary and its figures.


rule depth_usage:
    input:
        manifest=lambda wc: manifest_path(wc.model),
        corpus=[repo_path(path) for path in SAE["corpus"]["files"]],
        datasets=[dataset_path(dataset) for dataset in SAE_CONCEPT_DATASETS],
        tuned_lens=lambda wc: tuned_lens_of(wc.model),
    output:
        sublayers="results/depth_usage/{model}/sublayers.parquet",
        skipping="results/depth_usage/{model}/skipping.parquet",
        shortcuts="results/depth_usage/{model}/shortcuts.parquet",
        quality="results/depth_usage/{model}/quality.parquet",
        quality_replicates="results/depth_usage/{model}/quality_replicates.parquet",
        findings="results/depth_usage/{model}/findings.parquet",
        provenance="results/provenance/depth_usage/{model}.json",
    params:
        dataset_columns=[dataset_columns(dataset) for dataset in SAE_CONCEPT_DATASETS],
        settings=probes.workflow.config.depth_usage_settings(config),
        corpus_settings=probes.workflow.config.token_cache_settings(config),
        quality_settings=DEPTH["quality"],
        hf_dataset=SAE["corpus"]["hf_dataset"],
        n_boot=config["concept_depth"]["n_boot"],
        ci=config["concept_depth"]["ci"],
        seed=config["seed"],
    log:
        "logs/depth_usage/{model}.log",
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    run:
        run_stage(
            probes.workflow.stages.depth_usage.depth_usage,
            input,
            output,
            params,
            log,
            threads,
            model=wildcards.model,
        )


rule layer_maps:
    input:
        tensors=expand(unperturbed(rules.extract_activations.output.tensors), model=DEPTH_MODELS, dataset=DATASETS),
    output:
        r2="results/depth_usage/layer_maps/r2.parquet",
        best="results/depth_usage/layer_maps/best.parquet",
        diagonal="results/depth_usage/layer_maps/diagonal.parquet",
        provenance="results/provenance/layer_maps.json",
    params:
        models=DEPTH_MODELS,
        datasets=DATASETS,
        pooling=DEPTH["layer_maps"]["pooling"],
        texts=DEPTH["layer_maps"]["texts"],
        folds=DEPTH["layer_maps"]["folds"],
        n_boot=config["concept_depth"]["n_boot"],
        ci=config["concept_depth"]["ci"],
        seed=config["seed"],
    log:
        "logs/layer_maps.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    run:
        run_stage(probes.workflow.stages.depth_usage.layer_maps, input, output, params, log, threads)


rule summarise_depth_usage:
    input:
        sublayers=expand(rules.depth_usage.output.sublayers, model=DEPTH_MODELS),
        skipping=expand(rules.depth_usage.output.skipping, model=DEPTH_MODELS),
        shortcuts=expand(rules.depth_usage.output.shortcuts, model=DEPTH_MODELS),
        quality=expand(rules.depth_usage.output.quality, model=DEPTH_MODELS),
        quality_replicates=expand(rules.depth_usage.output.quality_replicates, model=DEPTH_MODELS),
        findings=expand(rules.depth_usage.output.findings, model=DEPTH_MODELS),
        predictions=expand(unperturbed(rules.probe_layers.output.predictions), model=DEPTH_MODELS, dataset=DATASETS),
        diagonal=rules.layer_maps.output.diagonal,
    output:
        sublayers_table="results/tables/depth_usage_sublayers.parquet",
        skipping_table="results/tables/depth_usage_skipping.parquet",
        shortcuts_table="results/tables/depth_usage_shortcuts.parquet",
        quality_table="results/tables/depth_usage_quality.parquet",
        correlations="results/tables/depth_usage_correlations.parquet",
        summary="results/tables/depth_usage_summary.parquet",
        summary_csv="results/tables/depth_usage_summary.csv",
        summary_html=report(
            "results/tables/depth_usage_summary.html",
            caption="../report/depth_usage_summary.rst",
            category="Depth usage",
            labels={"model": "all", "figure": "summary table"},
        ),
        provenance="results/provenance/summarise_depth_usage.json",
    params:
        models=DEPTH_MODELS,
        datasets=DATASETS,
        n_boot=config["concept_depth"]["n_boot"],
        ci=config["concept_depth"]["ci"],
        seed=config["seed"],
    log:
        "logs/summarise_depth_usage.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.depth_usage.summarise_depth_usage, input, output, params, log)


rule plot_depth_usage:
    input:
        sublayers=rules.summarise_depth_usage.output.sublayers_table,
        shortcuts=rules.summarise_depth_usage.output.shortcuts_table,
        quality=rules.summarise_depth_usage.output.quality_table,
        correlations=rules.summarise_depth_usage.output.correlations,
        r2=rules.layer_maps.output.r2,
        best=rules.layer_maps.output.best,
    output:
        sublayers_figure=report(
            figure_paths("depth_usage_sublayers"),
            caption="../report/depth_usage_sublayers.rst",
            category="Depth usage",
            labels={"model": "all", "figure": "sublayer contributions"},
        ),
        shortcuts_figure=report(
            figure_paths("depth_usage_shortcuts"),
            caption="../report/depth_usage_shortcuts.rst",
            category="Depth usage",
            labels={"model": "all", "figure": "linear shortcuts"},
        ),
        quality_figure=report(
            figure_paths("depth_usage_quality"),
            caption="../report/depth_usage_quality.rst",
            category="Depth usage",
            labels={"model": "all", "figure": "representation quality"},
        ),
        correlations_figure=report(
            figure_paths("depth_usage_quality_correlations"),
            caption="../report/depth_usage_quality_correlations.rst",
            category="Depth usage",
            labels={"model": "all", "figure": "quality vs concept depth"},
        ),
        layer_maps_figure=report(
            figure_paths("depth_usage_layer_maps"),
            caption="../report/depth_usage_layer_maps.rst",
            category="Depth usage",
            labels={"model": "all", "figure": "layer maps"},
        ),
        matches_figure=report(
            figure_paths("depth_usage_layer_matches"),
            caption="../report/depth_usage_layer_matches.rst",
            category="Depth usage",
            labels={"model": "all", "figure": "best-matching layers"},
        ),
        provenance="results/provenance/plot_depth_usage.json",
    params:
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_depth_usage.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.depth_usage.plot_depth_usage, input, output, params, log)


rule plot_layer_skipping:
    input:
        skipping=rules.summarise_depth_usage.output.skipping_table,
    output:
        figures=report(
            figure_paths("depth_usage_skipping_{model}"),
            caption="../report/depth_usage_skipping.rst",
            category="Depth usage",
            labels={"model": "{model}", "figure": "layer skipping"},
        ),
        provenance="results/provenance/plot_layer_skipping/{model}.json",
    params:
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_layer_skipping/{model}.log",
    localrule: True
    run:
        run_stage(
            probes.workflow.stages.depth_usage.plot_layer_skipping,
            input,
            output,
            params,
            log,
            model=wildcards.model,
        )
