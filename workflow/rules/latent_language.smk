# Latent language: tuned lenses per model (on the SAE corpus and cloze sentences), logit- and tuned-lens curves per
# experiment and for the dual-latent analysis (one job per model), summaries and figures.


rule train_tuned_lens:
    input:
        manifest=lambda wc: manifest_path(wc.model),
        languages=repo_path(LATENT["languages"]),
        words=[word_list_path(name, "words") for name in WORD_LISTS],
        cloze=[word_list_path(name, "cloze") for name in WORD_LISTS],
        corpus=[repo_path(path) for path in SAE["corpus"]["files"]],
        datasets=[dataset_path(dataset) for dataset in SAE_CONCEPT_DATASETS],
    output:
        lens="results/lens/{model}/tuned_lens.safetensors",
        start="results/lens/{model}/least_squares_lens.safetensors",
        kl="results/lens/{model}/tuned_lens_kl.parquet",
        text="results/lens/{model}/tuned_lens_text.parquet",
        provenance="results/provenance/train_tuned_lens/{model}.json",
    params:
        word_lists=WORD_LISTS,
        dataset_columns=[dataset_columns(dataset) for dataset in SAE_CONCEPT_DATASETS],
        settings=probes.workflow.config.tuned_lens_settings(config),
        corpus_settings=probes.workflow.config.token_cache_settings(config),
        hf_dataset=SAE["corpus"]["hf_dataset"],
        seed=config["seed"],
        ci=config["concept_depth"]["ci"],
        n_boot=config["concept_depth"]["n_boot"],
    log:
        "logs/train_tuned_lens/{model}.log",
    threads: 8
    resources:
        mem_mb=12000,
        runtime=60,
        gpu=GPU,
    run:
        run_stage(
            probes.workflow.stages.latent_language.train_tuned_lens,
            input,
            output,
            params,
            log,
            threads,
            **wildcards,
        )


rule latent_language:
    input:
        manifest=lambda wc: manifest_path(wc.model),
        languages=repo_path(LATENT["languages"]),
        words=[word_list_path(name, "words") for name in WORD_LISTS],
        cloze=[word_list_path(name, "cloze") for name in WORD_LISTS],
        tuned_lens=rules.train_tuned_lens.output.lens if LATENT["tuned_lens"] else [],
    output:
        curves="results/latent_language/{model}/{word_list}/{task}_{src}-{tgt}.parquet",
        prompts="results/latent_language/{model}/{word_list}/{task}_{src}-{tgt}.prompts.parquet",
        meta="results/latent_language/{model}/{word_list}/{task}_{src}-{tgt}.meta.json",
        tensors="results/activations/{model}/latent_language/{word_list}/{task}_{src}-{tgt}.safetensors",
        provenance="results/provenance/latent_language/{model}/{word_list}/{task}_{src}-{tgt}.json",
    params:
        shots=LATENT["shots"],
        max_concepts=LATENT["max_concepts"],
        settings=probes.workflow.config.extraction_settings(config),
        word_lists=WORD_LISTS,
        train_concepts=probes.workflow.config.tuned_lens_settings(config)["train_concepts"],
        seed=config["seed"],
    log:
        "logs/latent_language/{model}/{word_list}/{task}_{src}-{tgt}.log",
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    run:
        run_stage(
            probes.workflow.stages.latent_language.latent_language, input, output, params, log, threads, **wildcards
        )


rule dual_latent:
    input:
        manifest=lambda wc: manifest_path(wc.model),
        languages=repo_path(LATENT["languages"]),
        words=[word_list_path(name, "words") for name in WORD_LISTS],
        cloze=[word_list_path(name, "cloze") for name in WORD_LISTS],
    output:
        curves="results/latent_language/{model}/dual_latent.parquet",
        prompts="results/latent_language/{model}/dual_latent.prompts.parquet",
        meta="results/latent_language/{model}/dual_latent.meta.json",
        provenance="results/provenance/dual_latent/{model}.json",
    params:
        word_list=DUAL["word_list"],
        targets=DUAL["targets"],
        related=DUAL["related"],
        shots=LATENT["shots"],
        max_concepts=DUAL["max_concepts"],
        settings=probes.workflow.config.extraction_settings(config),
        word_lists=WORD_LISTS,
        train_concepts=probes.workflow.config.tuned_lens_settings(config)["train_concepts"],
        seed=config["seed"],
    log:
        "logs/dual_latent/{model}.log",
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    run:
        run_stage(
            probes.workflow.stages.latent_language.dual_latent, input, output, params, log, threads, **wildcards
        )


rule summarise_dual_latent:
    input:
        curves=expand(rules.dual_latent.output.curves, model=DUAL_MODELS),
        metas=expand(rules.dual_latent.output.meta, model=DUAL_MODELS),
    output:
        intervals="results/tables/dual_latent_intervals.parquet",
        summary_csv="results/tables/dual_latent_summary.csv",
        summary_html=report(
            "results/tables/dual_latent_summary.html",
            caption="../report/dual_latent_summary.rst",
            category="Latent language",
            labels={"model": "all", "figure": "dual latent table"},
        ),
        provenance="results/provenance/summarise_dual_latent.json",
    params:
        related=DUAL["related"],
        middle=DUAL["middle"],
        min_prob=DUAL["min_prob"],
        ci=config["concept_depth"]["ci"],
        n_boot=config["concept_depth"]["n_boot"],
        seed=config["seed"],
    log:
        "logs/summarise_dual_latent.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.latent_language.summarise_dual_latent, input, output, params, log)


rule plot_dual_latent:
    input:
        intervals=rules.summarise_dual_latent.output.intervals,
        summary=rules.summarise_dual_latent.output.summary_csv,
    output:
        figures=report(
            figure_paths("dual_latent"),
            caption="../report/dual_latent.rst",
            category="Latent language",
            labels={"model": "all", "figure": "dual latent"},
        ),
        provenance="results/provenance/plot_dual_latent.json",
    params:
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_dual_latent.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.latent_language.plot_dual_latent, input, output, params, log)


rule summarise_latent_language:
    input:
        curves=experiment_outputs(rules.latent_language.output.curves),
        metas=experiment_outputs(rules.latent_language.output.meta),
        kl=(
            expand(rules.train_tuned_lens.output.kl, model=sorted({e[0] for e in EXPERIMENTS}))
            if LATENT["tuned_lens"]
            else []
        ),
    output:
        table="results/tables/latent_language.parquet",
        intervals="results/tables/latent_language_intervals.parquet",
        summary_csv="results/tables/latent_language_summary.csv",
        summary_html=report(
            "results/tables/latent_language_summary.html",
            caption="../report/latent_language_summary.rst",
            category="Latent language",
            labels={"model": "all", "figure": "summary table"},
        ),
        kl_table="results/tables/tuned_lens_kl.parquet",
        provenance="results/provenance/summarise_latent_language.json",
    params:
        ci=config["concept_depth"]["ci"],
        n_boot=config["concept_depth"]["n_boot"],
        seed=config["seed"],
    log:
        "logs/summarise_latent_language.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.latent_language.summarise_latent_language, input, output, params, log)


rule plot_latent_language:
    input:
        curves=rules.latent_language.output.curves,
    output:
        figures=report(
            figure_paths("latent_language_{model}_{word_list}_{task}_{src}-{tgt}"),
            caption="../report/latent_language_pair.rst",
            category="Latent language",
            labels={"model": "{model}", "figure": "{task} {src}→{tgt}"},
        ),
        provenance="results/provenance/plot_latent_language/{model}_{word_list}_{task}_{src}-{tgt}.json",
    params:
        dpi=config["figures"]["dpi"],
        ci=config["concept_depth"]["ci"],
        n_boot=config["concept_depth"]["n_boot"],
        seed=config["seed"],
    log:
        "logs/plot_latent_language/{model}_{word_list}_{task}_{src}-{tgt}.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.latent_language.plot_latent_language, input, output, params, log, **wildcards)


rule plot_latent_language_relative:
    input:
        intervals=rules.summarise_latent_language.output.intervals,
    output:
        figures=report(
            figure_paths("latent_language_relative"),
            caption="../report/latent_language_relative.rst",
            category="Latent language",
            labels={"model": "all", "figure": "relative depth"},
        ),
        provenance="results/provenance/plot_latent_language_relative.json",
    params:
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_latent_language_relative.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.latent_language.plot_latent_language_relative, input, output, params, log)


rule plot_tuned_lens_kl:
    input:
        kl_table=rules.summarise_latent_language.output.kl_table,
    output:
        figures=report(
            figure_paths("tuned_lens_kl"),
            caption="../report/tuned_lens_kl.rst",
            category="Latent language",
            labels={"model": "all", "figure": "tuned-lens KL"},
        ),
        provenance="results/provenance/plot_tuned_lens_kl.json",
    params:
        dpi=config["figures"]["dpi"],
    log:
        "logs/plot_tuned_lens_kl.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.latent_language.plot_tuned_lens_kl, input, output, params, log)
