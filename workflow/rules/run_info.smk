rule run_info:
    input:
        metas=run_info_inputs(),
    output:
        table=report(
            "results/tables/run_info.csv",
            caption="../report/run_info.rst",
            category="Run info",
            labels={"model": "all", "figure": "provenance of every stage"},
        ),
        config_json="results/tables/run_info.config.json",
    params:
        # every key but plotting options, so that redrawing figures never reruns this
        run_config={key: value for key, value in config.items() if key != "figures"},
    log:
        "logs/run_info.log",
    localrule: True
    run:
        probes.provenance.run_info_stage(**input, **output, **params, log=log[0])
