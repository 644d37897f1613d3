# Concept depth: linear probes per layer, the summary with intervals, and its figures.


rule probe_layers:
    input:
        tensors=rules.extract_activations.output.tensors,
        activations_meta=rules.extract_activations.output.meta,
    output:
        metrics="results/probes/{model}/{weights}/{noise}/{dataset}.parquet",
        predictions="results/probes/{model}/{weights}/{noise}/{dataset}.predictions.parquet",
        null="results/probes/{model}/{weights}/{noise}/{dataset}.null.parquet",
        refits="results/probes/{model}/{weights}/{noise}/{dataset}.refits.parquet",
        mdl="results/probes/{model}/{weights}/{noise}/{dataset}.mdl.parquet",
        metrics_meta="results/probes/{model}/{weights}/{noise}/{dataset}.meta.json",
        provenance="results/provenance/probe_layers/{model}/{weights}/{noise}/{dataset}.json",
    params:
        settings=lambda wc: probes.workflow.config.probe_settings(
            config, perturbed=(wc.weights, wc.noise) != (BASE_WEIGHTS, CLEAN)
        ),
        pooling=config["probe"]["pooling"],
        level=lambda wc: dataset_config(wc.dataset)["level"],
    log:
        "logs/probe_layers/{model}/{weights}/{noise}/{dataset}.log",
    threads: 8
    resources:
        mem_mb=6000,
        runtime=30,
        gpu=GPU,
    run:
        run_stage(probes.workflow.stages.concept_depth.probe_layers, input, output, params, log, threads, **wildcards)


rule audit_shortcuts:
    input:
        dataset=lambda wc: dataset_path(wc.dataset),
        tensors=lambda wc: expand(
            unperturbed(rules.extract_activations.output.tensors),
            model=MODELS,
            dataset=wc.dataset,
        ),
    output:
        predictions="results/shortcuts/{dataset}.parquet",
        provenance="results/provenance/audit_shortcuts/{dataset}.json",
    params:
        models=MODELS,
        settings=probes.workflow.config.probe_settings(config),
        pooling=config["probe"]["pooling"],
        columns=lambda wc: dataset_columns(wc.dataset),
    log:
        "logs/audit_shortcuts/{dataset}.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=20,
    run:
        run_stage(probes.workflow.stages.concept_depth.audit_shortcuts, input, output, params, log, threads)


rule summarise_concept_depth:
    input:
        metrics=condition_outputs(rules.probe_layers.output.metrics),
        predictions=condition_outputs(rules.probe_layers.output.predictions),
        null=condition_outputs(rules.probe_layers.output.null),
        refits=condition_outputs(rules.probe_layers.output.refits),
        mdl=condition_outputs(rules.probe_layers.output.mdl),
        metrics_meta=condition_outputs(rules.probe_layers.output.metrics_meta),
        shortcuts=expand(rules.audit_shortcuts.output.predictions, dataset=DATASETS),
    output:
        summary_csv="results/tables/concept_depth_summary.csv",
        summary_html=report(
            "results/tables/concept_depth_summary.html",
            caption="../report/concept_depth_summary.rst",
            category="Concept depth",
            labels={"model": "all", "figure": "summary table"},
        ),
        summary="results/tables/concept_depth_summary.parquet",
        metrics_table="results/tables/probe_metrics.parquet",
        curves="results/tables/concept_depth_curves.parquet",
        shortcuts_csv="results/tables/shortcut_audit.csv",
        shortcuts_html=report(
            "results/tables/shortcut_audit.html",
            caption="../report/shortcut_audit.rst",
            category="Concept depth",
            labels={"model": "all", "figure": "shortcut audit"},
        ),
        perturbations_csv="results/tables/concept_depth_perturbations.csv",
        perturbations_html=report(
            "results/tables/concept_depth_perturbations.html",
            caption="../report/concept_depth_perturbations_table.rst",
            category="Concept depth",
            labels={"model": "all", "figure": "perturbation table"},
        ),
        levels_csv="results/tables/concept_depth_by_level.csv",
        levels_html=report(
            "results/tables/concept_depth_by_level.html",
            caption="../report/concept_depth_levels_table.rst",
            category="Concept depth",
            labels={"model": "all", "figure": "by task level: table"},
        ),
        provenance="results/provenance/summarise_concept_depth.json",
    params:
        **config["concept_depth"],
        weights=BASE_WEIGHTS,
        seed=config["seed"],
    log:
        "logs/summarise_concept_depth.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.concept_depth.summarise_concept_depth, input, output, params, log)


rule plot_concept_depth:
    input:
        curves=rules.summarise_concept_depth.output.curves,
        summary=rules.summarise_concept_depth.output.summary,
    output:
        figures=report(
            figure_paths("concept_depth_{model}"),
            caption="../report/concept_depth_model.rst",
            category="Concept depth",
            labels={"model": "{model}", "figure": "per-task curves"},
        ),
        provenance="results/provenance/plot_concept_depth/{model}.json",
    params:
        weights=BASE_WEIGHTS,
        embedded=lambda wc: is_embedded(wc.model),
        ci=config["concept_depth"]["ci"],
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_concept_depth/{model}.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.concept_depth.plot_concept_depth, input, output, params, log, **wildcards)


rule plot_concept_depth_relative:
    input:
        curves=rules.summarise_concept_depth.output.curves,
        summary=rules.summarise_concept_depth.output.summary,
    output:
        figures=report(
            figure_paths("concept_depth_relative"),
            caption="../report/concept_depth_relative.rst",
            category="Concept depth",
            labels={"model": "all", "figure": "relative depth"},
        ),
        provenance="results/provenance/plot_concept_depth_relative.json",
    params:
        weights=BASE_WEIGHTS,
        ci=config["concept_depth"]["ci"],
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_concept_depth_relative.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.concept_depth.plot_concept_depth_relative, input, output, params, log)


rule plot_concept_depth_levels:
    input:
        levels=rules.summarise_concept_depth.output.levels_csv,
    output:
        figures=report(
            figure_paths("concept_depth_levels"),
            caption="../report/concept_depth_levels.rst",
            category="Concept depth",
            labels={"model": "all", "figure": "by task level"},
        ),
        provenance="results/provenance/plot_concept_depth_levels.json",
    params:
        ci=config["concept_depth"]["ci"],
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_concept_depth_levels.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.concept_depth.plot_concept_depth_levels, input, output, params, log)


rule plot_perturbations:
    input:
        summary=rules.summarise_concept_depth.output.summary,
    output:
        figures=report(
            figure_paths("concept_depth_perturbations_{model}"),
            caption="../report/concept_depth_perturbations.rst",
            category="Concept depth",
            labels={"model": "{model}", "figure": "under perturbation"},
        ),
        provenance="results/provenance/plot_perturbations/{model}.json",
    params:
        weights=BASE_WEIGHTS,
        embedded=lambda wc: is_embedded(wc.model),
        ci=config["concept_depth"]["ci"],
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_perturbations/{model}.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.concept_depth.plot_perturbations, input, output, params, log, **wildcards)
