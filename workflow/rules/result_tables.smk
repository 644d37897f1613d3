# The README's result tables, rendered from the summary tables (python -m probes.result_tables puts them in).


def optional_tables():
    """(inputs, outputs) of the result tables of the experiments this config runs besides concept depth."""
    inputs, outputs = {}, {}
    if EXPERIMENTS:
        inputs["latent_language"] = rules.summarise_latent_language.output.summary_csv
        outputs["latent_language_md"] = "results/tables/markdown/latent_language.md"
    if SAE_MODELS:
        inputs["sae_metrics"] = rules.summarise_sae.output.metrics_table
        inputs["sparse_probing"] = rules.summarise_sae.output.sparse_summary_table
        outputs["sae_metrics_md"] = "results/tables/markdown/sae_metrics.md"
        outputs["sparse_probing_md"] = "results/tables/markdown/sparse_probing.md"
    return inputs, outputs


rule result_tables:
    input:
        **optional_tables()[0],
        concept_depth=rules.summarise_concept_depth.output.summary,
        levels=rules.summarise_concept_depth.output.levels_csv,
        perturbations=rules.summarise_concept_depth.output.perturbations_csv,
    output:
        **optional_tables()[1],
        concept_depth_md="results/tables/markdown/concept_depth.md",
        concept_depth_by_level_md="results/tables/markdown/concept_depth_by_level.md",
        concept_depth_perturbations_md="results/tables/markdown/concept_depth_perturbations.md",
        provenance="results/provenance/result_tables.json",
    params:
        weights=BASE_WEIGHTS,
    log:
        "logs/result_tables.log",
    localrule: True
    run:
        run_stage(probes.stages.result_tables.result_tables, input, output, params, log)
