"""The workflow side, which the library never imports: the Snakemake stages (stages, one module per rule file),
config checks (config), provenance, the HTML report (report), the results page (results_page) and the
schema's reference page (schema_docs)."""
