# The results page and its tables, rendered from the summary tables (python -m probes.workflow.results_page
# copies the page to docs/results.md).


rule result_tables:
    input:
        **result_table_inputs(),
        concept_depth=rules.summarise_concept_depth.output.summary,
        levels=rules.summarise_concept_depth.output.levels_csv,
        perturbations=rules.summarise_concept_depth.output.perturbations_csv,
        shortcuts=rules.summarise_concept_depth.output.shortcuts_csv,
        run_info=rules.run_info.output.table,
    output:
        **result_table_outputs(),
        concept_depth_md="results/tables/markdown/concept_depth.md",
        concept_depth_by_level_md="results/tables/markdown/concept_depth_by_level.md",
        concept_depth_perturbations_md="results/tables/markdown/concept_depth_perturbations.md",
        shortcut_audit_md="results/tables/markdown/shortcut_audit.md",
        mdl_md="results/tables/markdown/mdl.md",
        results_page="results/tables/markdown/results.md",
        provenance="results/provenance/result_tables.json",
    params:
        weights=BASE_WEIGHTS,
    log:
        "logs/result_tables.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.result_tables.result_tables, input, output, params, log)
