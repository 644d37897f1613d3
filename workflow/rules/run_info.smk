# Run info: the provenance record of every job as one table, with the run's config.


rule run_info:
    input:
        records=run_info_inputs(),
    output:
        table="results/tables/run_info.csv",
        table_html=report(
            "results/tables/run_info.html",
            caption="../report/run_info.rst",
            category="Run info",
            labels={"model": "all", "figure": "provenance of every stage"},
        ),
        config_json="results/tables/run_info.config.json",
        provenance="results/provenance/run_info.json",
    params:
        # every key but plotting options, so that redrawing figures never reruns this
        run_config={key: value for key, value in config.items() if key != "figures"},
    log:
        "logs/run_info.log",
    localrule: True
    run:
        run_stage(probes.workflow.stages.run_info.run_info, input, output, params, log)
