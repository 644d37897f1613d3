rule plot_concept_depth:
    input:
        metrics_table=rules.summarise_concept_depth.output.metrics_table,
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
        probes.figures.plot_concept_depth(**input, **output, **params, **wildcards, log=log[0])


rule plot_concept_depth_relative:
    input:
        metrics_table=rules.summarise_concept_depth.output.metrics_table,
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
        probes.figures.plot_concept_depth_relative(**input, **output, **params, log=log[0])


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
        probes.figures.plot_concept_depth_levels(**input, **output, **params, log=log[0])


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
        probes.figures.plot_perturbations(**input, **output, **params, **wildcards, log=log[0])
