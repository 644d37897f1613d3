"""probes: layer-wise interpretability experiments on language models.

The public API, the same functions the pipeline's stages call, so a notebook's numbers equal the pipeline's on
the same inputs::

    import probes

    model = probes.load_model("smollm2-135m")
    data = probes.load_dataset("data/concepts/cities.csv", group_column="group", type_column="country")
    acts = probes.extract_activations(model, data.texts, layers=range(0, 31, 5))
    result = probes.probe_layers(acts, data.labels, groups=data.groups, types=data.types)
    summary = probes.summarise_concept_depth(result)

Subpackages, one concern each: :mod:`probes.models` (loading and converting models, perturbations),
:mod:`probes.datasets` (concept tasks, word lists, corpora), :mod:`probes.activations` (extraction and token
caches), :mod:`probes.probing` (the probe protocol, its solver, MDL, depth summaries, shortcut audit),
:mod:`probes.lenses` (logit and tuned lens, latent-language curves), :mod:`probes.dictionaries` (SAEs,
transcoders, neurons, feature pages), :mod:`probes.depth_usage` (what each layer does),
:mod:`probes.interventions` (is what a probe finds used: readout, erasure, steering, deactivation),
:mod:`probes.plotting`
(one module of figures per family) and, never imported by the others, :mod:`probes.workflow` (the Snakemake
stages, config, provenance, report and result tables).
"""

from probes.activations.extraction import Activations, ExtractionSettings, extract_activations
from probes.activations.storage import StoredActivations, load_activations
from probes.datasets.concepts import load_dataset
from probes.dictionaries.scoring import load_sae, score_sae
from probes.interventions.checks import CausalResults, CausalTask, causal_checks
from probes.interventions.settings import CausalSettings
from probes.lenses.readout import LensReadout, read_lens
from probes.lenses.tuned import load_tuned_lens
from probes.models.cache import load_model
from probes.probing.depth import DepthSummary, summarise_concept_depth
from probes.probing.protocol import LayerProbes, probe_layers
from probes.probing.settings import ProbeSettings

__all__ = [
    "Activations",
    "CausalResults",
    "CausalSettings",
    "CausalTask",
    "DepthSummary",
    "ExtractionSettings",
    "LayerProbes",
    "LensReadout",
    "ProbeSettings",
    "StoredActivations",
    "causal_checks",
    "extract_activations",
    "load_activations",
    "load_dataset",
    "load_model",
    "load_sae",
    "load_tuned_lens",
    "probe_layers",
    "read_lens",
    "score_sae",
    "summarise_concept_depth",
]
