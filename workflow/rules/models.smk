# Models and activations: each model made loadable offline once, then per-layer activations of every task.


rule convert_model:
    output:
        manifest=f"{MODEL_CACHE}/{{model}}/manifest.json",
    params:
        source=lambda wc: model_source(wc.model),
        tl_name=lambda wc: config["models"][wc.model].get("tl_name"),
    log:
        "logs/convert_model/{model}.log",
    resources:
        mem_mb=8000,
        runtime=30,
    run:
        run_stage(probes.workflow.stages.models.convert_model, input, output, params, log, model=wildcards.model)


rule extract_activations:
    input:
        manifest=lambda wc: manifest_path(wc.model),
        dataset=lambda wc: dataset_path(wc.dataset),
    output:
        tensors=f"results/activations/{{model}}/{{weights}}/{{noise}}/{{dataset}}/{SITE}.safetensors",
        meta=f"results/activations/{{model}}/{{weights}}/{{noise}}/{{dataset}}/{SITE}.meta.json",
        mlp="results/activations/{model}/{weights}/{noise}/{dataset}/mlp.safetensors",
        provenance="results/provenance/extract_activations/{model}/{weights}/{noise}/{dataset}.json",
    params:
        settings=probes.workflow.config.extraction_settings(config),
        mlp_sites=lambda wc: mlp_sites_of(wc.model, wc.weights, wc.noise),
        mlp_dtype=config["neurons"]["dtype"],
        layers=lambda wc: layers_of(wc.model),
        columns=lambda wc: dataset_columns(wc.dataset),
        seed=config["seed"],
    log:
        "logs/extract_activations/{model}/{weights}/{noise}/{dataset}.log",
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    run:
        run_stage(
            probes.workflow.stages.models.extract_activations,
            input,
            output,
            params,
            log,
            threads,
            weights=wildcards.weights,
            noise=wildcards.noise,
        )
