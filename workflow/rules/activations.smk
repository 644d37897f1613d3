rule extract_activations:
    input:
        manifest=lambda wc: manifest_path(wc.model),
        dataset=lambda wc: dataset_path(wc.dataset),
    output:
        tensors=f"results/activations/{{model}}/{{weights}}/{{noise}}/{{dataset}}/{SITE}.safetensors",
        meta=f"results/activations/{{model}}/{{weights}}/{{noise}}/{{dataset}}/{SITE}.meta.json",
        provenance="results/provenance/extract_activations/{model}/{weights}/{noise}/{dataset}.json",
    params:
        settings=extraction_settings(),
        text_column=lambda wc: dataset_config(wc.dataset)["text_column"],
        label_column=lambda wc: dataset_config(wc.dataset)["label_column"],
        seed=config["seed"],
    log:
        "logs/extract_activations/{model}/{weights}/{noise}/{dataset}.log",
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1 if config["device"].startswith("cuda") else 0,
    run:
        probes.activations.extract_stage(
            **input, **output, **params, weights=wildcards.weights, noise=wildcards.noise, log=log[0], threads=threads
        )
