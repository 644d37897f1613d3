# MLP neurons: k-sparse probes per model and task, their summary and figures (transcoders live in sae.smk).


rule probe_neurons:
    input:
        mlp=unperturbed(rules.extract_activations.output.mlp),
        tensors=unperturbed(rules.extract_activations.output.tensors),
        activations_meta=unperturbed(rules.extract_activations.output.meta),
    output:
        predictions="results/neurons/{model}/{dataset}.parquet",
        best="results/neurons/{model}/{dataset}.best.parquet",
        provenance="results/provenance/probe_neurons/{model}/{dataset}.json",
    params:
        task=lambda wc: wc.dataset,
        level=lambda wc: dataset_config(wc.dataset)["level"],
        pooling=config["probe"]["pooling"],
        probe_settings=probes.workflow.config.probe_settings(config),
        ks=NEURONS["ks"],
        criteria=NEURONS["criteria"],
    log:
        "logs/probe_neurons/{model}/{dataset}.log",
    threads: 8
    resources:
        mem_mb=6000,
        runtime=30,
        gpu=GPU,
    run:
        run_stage(
            probes.workflow.stages.neurons.probe_neurons, input, output, params, log, threads, model=wildcards.model
        )


rule summarise_neurons:
    input:
        predictions=expand(rules.probe_neurons.output.predictions, model=NEURON_MODELS, dataset=DATASETS),
        best=expand(rules.probe_neurons.output.best, model=NEURON_MODELS, dataset=DATASETS),
        curves=rules.summarise_concept_depth.output.curves,
    output:
        summary_csv="results/tables/neuron_probing_summary.csv",
        summary_html=report(
            "results/tables/neuron_probing_summary.html",
            caption="../report/neuron_probing_table.rst",
            category="Neurons",
            labels={"model": "all", "figure": "neuron probing table"},
        ),
        summary_table="results/tables/neuron_probing_summary.parquet",
        best_csv="results/tables/best_neurons.csv",
        best_html=report(
            "results/tables/best_neurons.html",
            caption="../report/best_neurons_table.rst",
            category="Neurons",
            labels={"model": "all", "figure": "best single neurons"},
        ),
        best_table="results/tables/best_neurons.parquet",
        provenance="results/provenance/summarise_neurons.json",
    params:
        weights=BASE_WEIGHTS,
        n_boot=config["concept_depth"]["n_boot"],
        ci=config["concept_depth"]["ci"],
        seed=config["seed"],
    log:
        "logs/summarise_neurons.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.neurons.summarise_neurons, input, output, params, log)


rule plot_neuron_probing:
    input:
        summary=rules.summarise_neurons.output.summary_table,
    output:
        figures=report(
            figure_paths("neuron_probing_{model}_{dataset}"),
            caption="../report/neuron_probing.rst",
            category="Neurons",
            labels={"model": "{model}", "figure": "neuron probing: {dataset}"},
        ),
        provenance="results/provenance/plot_neuron_probing/{model}_{dataset}.json",
    params:
        ci=config["concept_depth"]["ci"],
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_neuron_probing/{model}_{dataset}.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.neurons.plot_neuron_probing, input, output, params, log, **wildcards)
