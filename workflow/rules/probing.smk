rule probe_layers:
    input:
        tensors=rules.extract_activations.output.tensors,
        activations_meta=rules.extract_activations.output.meta,
    output:
        metrics="results/probes/{model}/{weights}/{noise}/{dataset}.parquet",
        metrics_meta="results/probes/{model}/{weights}/{noise}/{dataset}.meta.json",
        provenance="results/provenance/probe_layers/{model}/{weights}/{noise}/{dataset}.json",
    params:
        settings=probe_settings(),
        pooling=config["probe"]["pooling"],
        level=lambda wc: dataset_config(wc.dataset)["level"],
    log:
        "logs/probe_layers/{model}/{weights}/{noise}/{dataset}.log",
    threads: 8
    resources:
        mem_mb=6000,
        runtime=30,
    run:
        probes.probing.probe_stage(**input, **output, **params, **wildcards, log=log[0], threads=threads)


rule summarise_concept_depth:
    input:
        metrics=condition_outputs(rules.probe_layers.output.metrics),
        metrics_meta=condition_outputs(rules.probe_layers.output.metrics_meta),
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
        weights=BASE_WEIGHTS,
        seed=config["seed"],
        **config["concept_depth"],
    log:
        "logs/summarise_concept_depth.log",
    localrule: True
    run:
        probes.probing.summary_stage(**input, **output, **params, log=log[0])
