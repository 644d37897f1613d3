rule convert_model:
    output:
        manifest=f"{config['model_cache']}/{{model}}/manifest.json",
    params:
        source=lambda wc: model_source(wc.model),
        tl_name=lambda wc: config["models"][wc.model].get("tl_name"),
    log:
        "logs/convert_model/{model}.log",
    resources:
        mem_mb=8000,
        runtime=30,
    run:
        probes.models.convert_model(**wildcards, **params, **output, log=log[0])
