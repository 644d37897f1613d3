# probes: layer-wise interpretability experiments as one DAG. See README.md and config/config.yaml.
from snakemake.utils import min_version

min_version("9.0")


if not workflow.overwrite_configfiles:  # a --configfile replaces the default experiment, never merges into it

    configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/concept_depth.smk"
include: "workflow/rules/latent_language.smk"
include: "workflow/rules/sae.smk"
include: "workflow/rules/neurons.smk"
include: "workflow/rules/depth_usage.smk"
include: "workflow/rules/causal.smk"
include: "workflow/rules/run_info.smk"
include: "workflow/rules/result_tables.smk"


rule all:
    default_target: True
    input:
        all_targets(),


rule figures:
    input:
        figure_targets(),
