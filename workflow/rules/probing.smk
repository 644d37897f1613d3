rule probe_layers:
    input:
        tensors=rules.extract_activations.output.tensors,
        activations_meta=rules.extract_activations.output.meta,
    output:
        metrics="results/probes/{model}/{dataset}.parquet",
        metrics_meta="results/probes/{model}/{dataset}.meta.json",
        provenance="results/provenance/probe_layers/{model}/{dataset}.json",
    params:
        settings=probe_settings(),
        pooling=config["probe"]["pooling"],
        level=lambda wc: dataset_config(wc.dataset)["level"],
    log:
        "logs/probe_layers/{model}/{dataset}.log",
    threads: 8
    resources:
        mem_mb=6000,
        runtime=30,
    run:
        probes.probing.probe_stage(**input, **output, **params, **wildcards, log=log[0], threads=threads)


rule summarise_concept_depth:
    input:
        metrics=expand(rules.probe_layers.output.metrics, model=MODELS, dataset=DATASETS),
        metrics_meta=expand(rules.probe_layers.output.metrics_meta, model=MODELS, dataset=DATASETS),
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
        provenance="results/provenance/summarise_concept_depth.json",
    params:
        seed=config["seed"],
        **config["concept_depth"],
    log:
        "logs/summarise_concept_depth.log",
    localrule: True
    run:
        probes.probing.summary_stage(**input, **output, **params, log=log[0])
