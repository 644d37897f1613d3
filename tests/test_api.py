"""The public API (``import probes``): what a notebook calls is what the stages call, so its numbers are the
pipeline's on the same inputs; layers keep the model's numbers; every loader accepts what the docs say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import probes
from helpers import MODEL_CACHE, REPO, tiny_llama_checkpoint
from probes.io import read_json

TEXTS = [
    "The city of Lyon is in France.",
    "The city of Lyon is in Serbia.",
    "I loved the film, the acting was wonderful.",
    "I hated the film, the acting was dreadful.",
    "A coin is heads up. Alice flips the coin.",
    "A coin is tails up. Bob does not flip the coin.",
] * 4


def test_public_names_are_exported_and_documented():
    assert sorted(probes.__all__) == sorted(set(probes.__all__))
    for name in probes.__all__:
        assert getattr(probes, name).__doc__, f"probes.{name} has no docstring"


def test_chosen_layers_keep_their_numbers_and_values(tiny_model):
    every = probes.extract_activations(tiny_model, TEXTS, progress=False)
    chosen = probes.extract_activations(tiny_model, TEXTS, layers=[3, 0, 2], progress=False)
    assert every.layers == [0, 1, 2, 3] and chosen.layers == [0, 2, 3] and chosen.n_layers == 3
    assert chosen.hook_names == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    for pooling in ("last", "mean"):
        np.testing.assert_array_equal(chosen.vectors[pooling], every.vectors[pooling][:, [0, 2, 3]])
    inside = probes.extract_activations(tiny_model, TEXTS, layers=[2], site="mlp_out", progress=False)
    assert inside.layers == [2] and inside.hook_names == ["blocks.1.hook_mlp_out"]
    with pytest.raises(ValueError, match="layers \\[0\\] are not layers of site 'mlp_out'"):
        probes.extract_activations(tiny_model, TEXTS, layers=[0], site="mlp_out", progress=False)


def test_probing_activations_reports_the_models_layer_numbers(tiny_model):
    acts = probes.extract_activations(tiny_model, TEXTS, layers=[1, 3], progress=False)
    y = np.tile([1, 0], len(TEXTS) // 2)
    settings = probes.ProbeSettings(folds=3, seeds=(0,), null_permutations=0)
    result = probes.probe_layers(acts, y, settings, pooling="mean")
    assert result.layers == (1, 3) and result.n_layers == 3 and result.chance == 0.5
    for table in (result.metrics, result.predictions):
        assert sorted(table["layer"].unique()) == [1, 3]
    same = probes.probe_layers(acts.vectors["mean"], y, settings, layers=[1, 3], n_layers=3)
    pd.testing.assert_frame_equal(result.predictions, same.predictions)
    summary = probes.summarise_concept_depth(result, n_boot=50)
    assert summary.row["best_layer"] in (1, 3) and summary.row["best_depth"] == summary.row["best_layer"] / 3
    assert list(summary.table["best_accuracy"]) == [summary.row["best_accuracy"]]
    assert sorted(summary.curves["layer"].unique()) == [1, 3]
    with pytest.raises(ValueError, match="pooling 'median' was not extracted"):
        probes.probe_layers(acts, y, settings, pooling="median")


def test_logit_lens_at_the_last_layer_is_the_models_own_next_token_distribution(tiny_model):
    prompts = TEXTS[:3]
    readout = probes.read_lens(tiny_model, prompts, layers=[1, 3])
    assert readout.layers == [1, 3] and readout.log_probs.shape == (3, 2, tiny_model.cfg.d_vocab)
    for i, prompt in enumerate(prompts):
        with torch.inference_mode():
            logits = tiny_model(prompt)[0, -1]
        torch.testing.assert_close(readout.log_probs[i, 1], torch.log_softmax(logits, -1), atol=1e-5, rtol=1e-5)
    top = readout.top_tokens(k=2)
    assert len(top) == 3 * 2 * 2 and set(top["layer"]) == {1, 3}
    assert (top.groupby(["prompt", "layer"])["prob"].apply(lambda p: p.is_monotonic_decreasing)).all()


@pytest.fixture(scope="module")
def local_checkpoint(tmp_path_factory):
    """A tiny random-weight Llama saved as a Hugging Face directory, as a user's own checkpoint would be."""
    folder = tmp_path_factory.mktemp("checkpoint")
    tiny_llama_checkpoint(folder, TEXTS, "<|endoftext|>")
    return folder


def test_a_local_checkpoint_loads_by_path_converted_once_and_computes_what_hugging_face_computes(
    local_checkpoint, tmp_path
):
    from transformers import AutoModelForCausalLM

    model = probes.load_model(local_checkpoint, cache_dir=tmp_path)
    manifest = tmp_path / local_checkpoint.name / "manifest.json"
    assert read_json(manifest)["kind"] == "local"
    written = manifest.stat().st_mtime_ns
    again = probes.load_model(local_checkpoint, cache_dir=tmp_path)
    assert manifest.stat().st_mtime_ns == written  # the cached conversion is reused
    tokens = model.to_tokens(TEXTS[0])
    reference = AutoModelForCausalLM.from_pretrained(local_checkpoint).eval()
    with torch.inference_mode():
        ours, theirs = again(tokens), reference(tokens).logits
    torch.testing.assert_close(
        torch.log_softmax(ours, -1), torch.log_softmax(theirs, -1), atol=1e-4, rtol=1e-4
    )  # TransformerLens centres the logits; the distributions are the same
    assert probes.load_model(manifest).cfg.n_layers == 2  # the manifest itself loads too


def test_unknown_models_and_non_sae_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        probes.load_model("no-such-model", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not an SAE folder"):
        probes.load_sae(tmp_path)


# --- against the pipeline's own run -------------------------------------------------------------------------


def cities(run):
    config = read_json(run / "results/tables/run_info.config.json")
    columns = {key: value for key, value in config["datasets"]["cities"].items() if key.endswith("_column")}
    return probes.load_dataset(REPO / config["datasets"]["cities"]["path"], **columns)


@pytest.mark.slow
def test_a_notebook_reproduces_the_pipelines_activations_and_summary(run):
    """Load, extract, probe with groups and types, summarise: the numbers of the pipeline's table, to the bit.

    Same texts and extraction settings give the same activations; the batch size matters only in the last float32
    digits (texts are batched by length), so the notebook uses the run's settings as a user would copy them.
    """
    data = cities(run)
    stored = probes.load_activations(
        run / "results/activations/smollm2-135m/fp32/clean/cities/resid.safetensors", "last"
    )
    model = probes.load_model("smollm2-135m", cache_dir=MODEL_CACHE)
    extraction = read_json(run / "results/provenance/extract_activations/smollm2-135m/fp32/clean/cities.json")
    settings = probes.ExtractionSettings(**extraction["arguments"]["settings"])
    acts = probes.extract_activations(model, data.texts, settings, progress=False)
    np.testing.assert_array_equal(acts.vectors["last"], stored.vectors)
    np.testing.assert_array_equal(data.labels, stored.labels)

    probing = read_json(run / "results/provenance/probe_layers/smollm2-135m/fp32/clean/cities.json")["arguments"]
    settings = probes.ProbeSettings(**probing["settings"])
    result = probes.probe_layers(acts, data.labels, settings, groups=data.groups, types=data.types)
    summarising = read_json(run / "results/provenance/summarise_concept_depth.json")["arguments"]
    options = ("converging_rise", "jump_min", "n_boot", "seed", "ci", "alpha")
    audit = pd.read_parquet(run / "results/shortcuts/cities.parquet")  # selectivity is against its strongest shortcut
    shortcuts = audit[audit["model"].isin(["", "smollm2-135m"])]
    summary = probes.summarise_concept_depth(result, shortcuts, **{key: summarising[key] for key in options})

    table = pd.read_parquet(run / "results/tables/concept_depth_summary.parquet")  # the CSV is rounded for reading
    row = table.query("model == 'smollm2-135m' and weights == 'fp32' and noise == 'clean' and dataset == 'cities'")
    compared = ["best_accuracy", "best_accuracy_lo", "best_accuracy_hi", "half_rise_layer", "converging_layer"]
    compared += ["null_p_value", "max_selectivity", "max_mdl_compression", "f1", "roc_auc_lo"]
    for column in compared:
        assert summary.row[column] == pytest.approx(row[column].iloc[0], rel=1e-12, abs=1e-12), column


@pytest.mark.slow
def test_the_stored_lenses_reload_as_tuned_lenses_and_reproduce_their_held_out_kl(run, smollm2):
    from tuned_lens.nn.lenses import TunedLens

    from probes.activations.token_cache import TokenCacheSettings, tokenised_corpus
    from probes.lenses.tuned import TunedLensSettings, heldout_kl, token_residuals, unembed_of
    from probes.workflow.stages.sae import corpus_texts

    folder = run / "results/lens/smollm2-135m"
    lenses = {
        "logit": None,
        "linear": probes.load_tuned_lens(folder / "least_squares_lens.safetensors", smollm2),
        "tuned": probes.load_tuned_lens(folder / "tuned_lens.safetensors", smollm2),
    }
    for lens in (lenses["linear"], lenses["tuned"]):
        assert isinstance(lens, TunedLens) and len(lens.layer_translators) == smollm2.cfg.n_layers

    provenance = read_json(run / "results/provenance/train_tuned_lens/smollm2-135m.json")
    arguments, inputs = provenance["arguments"], provenance["inputs"]
    settings = TunedLensSettings(**arguments["settings"])
    texts = corpus_texts(
        [run / path for path in inputs["corpus"]],
        [run / path for path in inputs["datasets"]],
        arguments["dataset_columns"],
        arguments["hf_dataset"],
    )
    corpus_settings = TokenCacheSettings(**arguments["corpus_settings"])
    token_lists, _, heldout_documents, _ = tokenised_corpus(smollm2, texts, corpus_settings, arguments["seed"])
    text = pd.read_parquet(folder / "tuned_lens_text.parquet")
    documents = text.query("source == 'corpus' and role == 'heldout'")["document"].to_numpy()
    assert set(documents) <= set(heldout_documents) and not set(documents) & set(
        text.query("role == 'train'")["document"]
    )
    windows = [token_lists[document][: 1 + settings.context] for document in documents]
    residuals, owner = token_residuals(smollm2, windows, settings.batch_size, progress=False, with_text=True)
    kept = slice(0, settings.heldout_tokens)
    options = {key: arguments[key] for key in ("ci", "n_boot", "seed")}
    recomputed = heldout_kl(smollm2, unembed_of(smollm2), lenses, residuals[kept], documents[owner[kept]], **options)
    stored = pd.read_parquet(folder / "tuned_lens_kl.parquet").drop(columns=["model", "bytes_per_token"])
    pd.testing.assert_frame_equal(recomputed.reset_index(drop=True), stored, check_exact=False, rtol=1e-5, atol=1e-6)
