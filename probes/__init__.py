"""probes: layer-wise interpretability experiments as one reproducible Snakemake DAG."""

__version__ = "0.1.0"
