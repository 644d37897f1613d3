# probes: layer-wise interpretability experiments as one DAG. See README.md and config/config.yaml.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/probing.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/latent_language.smk"
include: "workflow/rules/sae.smk"
include: "workflow/rules/run_info.smk"


rule all:
    input:
        all_targets(),
    default_target: True


rule figures:
    input:
        figure_targets(),
