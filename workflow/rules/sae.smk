# Sparse autoencoders and transcoders: token cache, training per layer, evaluation per model, sparse probing,
# feature pages, summary and figures.


rule cache_token_activations:
    input:
        manifest=lambda wc: manifest_path(wc.model),
        corpus=[repo_path(path) for path in SAE["corpus"]["files"]],
        datasets=[dataset_path(dataset) for dataset in SAE_CONCEPT_DATASETS],
    output:
        cache=directory("results/token_activations/{model}"),
        provenance="results/provenance/cache_token_activations/{model}.json",
    params:
        dataset_columns=[dataset_columns(dataset) for dataset in SAE_CONCEPT_DATASETS],
        layers=lambda wc: sae_layers(wc.model),
        site=SITE,
        settings=probes.workflow.config.token_cache_settings(config),
        hf_dataset=SAE["corpus"]["hf_dataset"],
        seed=config["seed"],
        streams=list(probes.activations.token_cache.MLP_STREAMS),
    log:
        "logs/cache_token_activations/{model}.log",
    threads: 8
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=GPU,
    run:
        run_stage(probes.workflow.stages.sae.cache_token_activations, input, output, params, log, threads)


rule train_sae:
    input:
        cache=rules.cache_token_activations.output.cache,
    output:
        sae=directory("results/sae/{model}/layer_{layer}/sae"),
        meta="results/sae/{model}/layer_{layer}/training.json",
        provenance="results/provenance/train_sae/{model}/layer_{layer}.json",
    params:
        settings=probes.workflow.config.sae_settings(config),
        seed=config["seed"],
    log:
        "logs/train_sae/{model}/layer_{layer}.log",
    threads: 8
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=GPU,
    run:
        run_stage(probes.workflow.stages.sae.train_sae, input, output, params, log, threads, **wildcards)


rule train_transcoder:
    input:
        cache=rules.cache_token_activations.output.cache,
    output:
        transcoder=directory("results/transcoders/{model}/layer_{layer}/transcoder"),
        meta="results/transcoders/{model}/layer_{layer}/training.json",
        provenance="results/provenance/train_transcoder/{model}/layer_{layer}.json",
    params:
        settings=probes.workflow.config.transcoder_settings(config),
        seed=config["seed"],
    log:
        "logs/train_transcoder/{model}/layer_{layer}.log",
    threads: 8
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=GPU,
    run:
        run_stage(probes.workflow.stages.sae.train_transcoder, input, output, params, log, threads, **wildcards)


rule evaluate_sae:
    input:
        manifest=lambda wc: manifest_path(wc.model),
        cache=rules.cache_token_activations.output.cache,
        saes=lambda wc: sae_outputs(rules.train_sae.output.sae, wc.model),
        sae_metas=lambda wc: sae_outputs(rules.train_sae.output.meta, wc.model),
        transcoders=lambda wc: transcoder_outputs(rules.train_transcoder.output.transcoder, wc.model),
        transcoder_metas=lambda wc: transcoder_outputs(rules.train_transcoder.output.meta, wc.model),
    output:
        metrics="results/sae/{model}/metrics.json",
        documents="results/sae/{model}/loss_documents.parquet",
        provenance="results/provenance/evaluate_sae/{model}.json",
    params:
        layers=lambda wc: sae_layers(wc.model),
        settings=probes.workflow.config.sae_eval_settings(config),
        dtype=config["dtype"],
    log:
        "logs/evaluate_sae/{model}.log",
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    run:
        run_stage(probes.workflow.stages.sae.evaluate_sae, input, output, params, log, threads, model=wildcards.model)


rule sparse_probing:
    input:
        tensors=unperturbed(rules.extract_activations.output.tensors),
        activations_meta=unperturbed(rules.extract_activations.output.meta),
        mlp=unperturbed(rules.extract_activations.output.mlp),
        saes=lambda wc: sae_outputs(rules.train_sae.output.sae, wc.model),
        transcoders=lambda wc: transcoder_outputs(rules.train_transcoder.output.transcoder, wc.model),
    output:
        scores="results/sae/{model}/sparse_probing/{dataset}.parquet",
        provenance="results/provenance/sparse_probing/{model}/{dataset}.json",
    params:
        task=lambda wc: wc.dataset,
        level=lambda wc: dataset_config(wc.dataset)["level"],
        layers=lambda wc: sae_layers(wc.model),
        pooling=config["probe"]["pooling"],
        probe_settings=probes.workflow.config.probe_settings(config),
        ks=SAE["sparse_probing"]["ks"],
    log:
        "logs/sparse_probing/{model}/{dataset}.log",
    threads: 8
    resources:
        mem_mb=6000,
        runtime=30,
        gpu=GPU,
    run:
        run_stage(probes.workflow.stages.sae.sparse_probing, input, output, params, log, threads, model=wildcards.model)


rule feature_pages:
    input:
        manifest=lambda wc: manifest_path(wc.model),
        tensors=unperturbed(rules.extract_activations.output.tensors),
        activations_meta=unperturbed(rules.extract_activations.output.meta),
        mlp=unperturbed(rules.extract_activations.output.mlp),
        cache=rules.cache_token_activations.output.cache,
        saes=lambda wc: sae_outputs(rules.train_sae.output.sae, wc.model),
        transcoders=lambda wc: transcoder_outputs(rules.train_transcoder.output.transcoder, wc.model),
        dataset=lambda wc: dataset_path(wc.dataset),
    output:
        page=report(
            "results/features/{model}/{dataset}.html",
            caption="../report/feature_pages.rst",
            category="Sparse autoencoders",
            labels={"model": "{model}", "figure": "feature pages: {dataset}"},
        ),
        writes="results/features/{model}/{dataset}.writes.parquet",
        provenance="results/provenance/feature_pages/{model}/{dataset}.json",
    params:
        task=lambda wc: wc.dataset,
        columns=lambda wc: dataset_columns(wc.dataset),
        layers=lambda wc: sae_layers(wc.model),
        pooling=config["probe"]["pooling"],
        n_top=SAE["sparse_probing"]["top_latents"],
        n_examples=SAE["sparse_probing"]["examples"],
        n_tokens=NEURONS["logit_tokens"],
        device=config["device"],
        dtype=config["dtype"],
    log:
        "logs/feature_pages/{model}/{dataset}.log",
    threads: 8
    resources:
        mem_mb=6000,
        runtime=30,
        gpu=GPU,
    run:
        run_stage(probes.workflow.stages.sae.feature_pages, input, output, params, log, threads, model=wildcards.model)


rule summarise_sae:
    input:
        metrics=expand(rules.evaluate_sae.output.metrics, model=SAE_MODELS),
        loss_documents=expand(rules.evaluate_sae.output.documents, model=SAE_MODELS),
        scores=expand(rules.sparse_probing.output.scores, model=SAE_MODELS, dataset=DATASETS),
        curves=rules.summarise_concept_depth.output.curves,
    output:
        metrics_csv="results/tables/sae_metrics.csv",
        metrics_html=report(
            "results/tables/sae_metrics.html",
            caption="../report/sae_metrics_table.rst",
            category="Sparse autoencoders",
            labels={"model": "all", "figure": "SAE metrics table"},
        ),
        metrics_table="results/tables/sae_metrics.parquet",
        sparse_table="results/tables/sparse_probing.parquet",
        sparse_summary_csv="results/tables/sparse_probing_summary.csv",
        sparse_summary_html=report(
            "results/tables/sparse_probing_summary.html",
            caption="../report/sparse_probing_table.rst",
            category="Sparse autoencoders",
            labels={"model": "all", "figure": "sparse probing table"},
        ),
        sparse_summary_table="results/tables/sparse_probing_summary.parquet",
        comparison_csv="results/tables/sae_vs_transcoder.csv",
        comparison_html=report(
            "results/tables/sae_vs_transcoder.html",
            caption="../report/sae_vs_transcoder_table.rst",
            category="Sparse autoencoders",
            labels={"model": "all", "figure": "SAE vs transcoder table"},
        ),
        comparison_table="results/tables/sae_vs_transcoder.parquet",
        provenance="results/provenance/summarise_sae.json",
    params:
        weights=BASE_WEIGHTS,
        n_boot=config["concept_depth"]["n_boot"],
        ci=config["concept_depth"]["ci"],
        seed=config["seed"],
    log:
        "logs/summarise_sae.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.sae.summarise_sae, input, output, params, log)


rule plot_sae_metrics:
    input:
        table=rules.summarise_sae.output.metrics_table,
    output:
        figures=report(
            figure_paths("sae_metrics"),
            caption="../report/sae_metrics.rst",
            category="Sparse autoencoders",
            labels={"model": "all", "figure": "SAE metrics"},
        ),
        provenance="results/provenance/plot_sae_metrics.json",
    params:
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_sae_metrics.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.sae.plot_sae_metrics, input, output, params, log)


rule plot_sparse_probing:
    input:
        summary=rules.summarise_sae.output.sparse_summary_table,
        curves=rules.summarise_concept_depth.output.curves,
        neurons=lambda wc: neuron_summary_of(wc.model),
    output:
        figures=report(
            figure_paths("sparse_probing_{model}_{dataset}"),
            caption="../report/sparse_probing.rst",
            category="Sparse autoencoders",
            labels={"model": "{model}", "figure": "sparse probing: {dataset}"},
        ),
        provenance="results/provenance/plot_sparse_probing/{model}_{dataset}.json",
    params:
        weights=BASE_WEIGHTS,
        ci=config["concept_depth"]["ci"],
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_sparse_probing/{model}_{dataset}.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.sae.plot_sparse_probing, input, output, params, log, **wildcards)
