"""The results page and its tables are rendered from the summaries and copied into the docs by one command."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from probes.workflow.results_page import concept_depth_table, interval, machine_description, results_page


def test_interval_formats_a_value_with_its_bounds_and_undefined_as_a_dash():
    row = {"x": 0.6234, "x_lo": 0.58, "x_hi": 0.661, "y": None, "z": 3.0}
    assert interval(row, "x") == "0.62 [0.58, 0.66]"
    assert interval(row, "y") == "–"
    assert interval(row, "z", 1) == "3.0"  # no bounds: the value alone


def test_concept_depth_table_says_which_tasks_are_not_decodable():
    common = {"model": "m", "weights": "fp32", "noise": "clean", "level": "factual", "control": "type"}
    values = {"best_accuracy": 0.7, "best_accuracy_lo": 0.65, "best_accuracy_hi": 0.75}
    values |= {"max_control_accuracy": 0.6, "max_selectivity": 0.1, "max_mdl_compression": 1.2}
    summary = pd.DataFrame(
        [
            common | values | {"dataset": "a", "decodable": True, "null_p_value": 0.05, "half_rise_depth": 0.25},
            common | values | {"dataset": "b", "decodable": False, "null_p_value": 0.4, "half_rise_depth": None},
        ]
    ).assign(half_rise_depth_lo=[0.2, None], half_rise_depth_hi=[0.3, None], converging_depth=[0.5, None])
    table = concept_depth_table(summary, "fp32")
    assert "| m | a (factual) | yes | 0.25 [0.20, 0.30] | 0.70 [0.65, 0.75] |" in table
    assert "| m | b (factual) | no (p = 0.40) | – |" in table


def test_the_results_page_names_commit_date_and_machine_and_holds_every_table_in_order(tmp_path):
    run_info = pd.DataFrame(
        {"git_commit": ["abc123", "abc123"], "torch": ["2.13.0", None], "sae-lens": ["6.54.0", "6.54.0"]}
    )
    tables = {"sae_metrics": "| s |\n|---|\n| 2 |\n", "concept_depth": "| c |\n|---|\n| 1 |\n"}
    page = results_page(tables, run_info, "2026-12-07 03:00 UTC", "some CPU, 2 cores")
    assert "- **commit**: `abc123`\n- **date**: 2026-12-07 03:00 UTC\n- **machine**: some CPU, 2 cores" in page
    assert "torch 2.13.0, SAELens 6.54.0" in page
    assert (
        page.index("## Concept depth")
        < page.index("| 1 |")
        < page.index("## SAEs and transcoders")
        < page.index("| 2 |")
    )
    assert "## Latent language" not in page  # a family this run did not run has no section
    assert "cores" in machine_description()

    rendered = tmp_path / "results.md"
    rendered.write_text(page, encoding="utf-8")
    docs = tmp_path / "docs.md"
    command = [sys.executable, "-m", "probes.workflow.results_page", "--page", str(rendered), "--docs", str(docs)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert docs.read_text(encoding="utf-8") == page and str(docs) in done.stdout
    missing = subprocess.run([*command[:4], str(tmp_path / "none.md"), *command[5:]], capture_output=True, text=True)
    assert missing.returncode != 0 and "run the pipeline" in missing.stderr


def test_latent_language_and_sae_tables_carry_their_intervals():
    from probes.workflow.results_page import (
        dual_latent_table,
        latent_language_table,
        sae_metrics_table,
        sparse_probing_table,
    )

    pair = {"model": "m", "word_list": "w", "task": "translation", "src": "fr", "tgt": "zh", "n_concepts": 40}
    values = {"p_target_final": 0.2, "p_target_final_lo": 0.1, "p_target_final_hi": 0.3, "n_layers": 18}
    values |= {"p_shared_final": 0.01, "p_shared_final_lo": 0.0, "p_shared_final_hi": 0.02}
    values |= {"top_language_before_takeover": None, "p_en_max_intermediate": 0.05, "target_takeover_layer": None}
    summary = pd.DataFrame([pair | values | {"lens": "logit"}, pair | values | {"lens": "tuned"}])
    table = latent_language_table(summary)
    expected = "| m | translation fr→zh | 40 | 0.20 [0.10, 0.30] | 0.01 [0.00, 0.02] | – | 0.05 | never |"
    assert table.count("\n") == 3 and expected in table and "top language before the takeover" in table
    taken = summary.assign(top_language_before_takeover="en", target_takeover_layer=12.0)
    assert "| 0.01 [0.00, 0.02] | en | 0.05 | 12 of 18 |" in latent_language_table(taken)
    dual = {"model": "m", "tgt": "ja", "related": "zh", "n_concepts": 30, "lens": "logit", "n_layers": 18}
    dual |= {"window_first": 8, "window_last": 14, "latent": "en+zh", "dominant_share": 0.61}
    for name, value in (("p_en", 0.2), ("p_target", 0.05), ("p_related", 0.19), ("p_shared", 0.01)):
        dual |= {name: value, f"{name}_lo": value - 0.01, f"{name}_hi": value + 0.01}
    dual |= {"dominant": "en"}
    none = {"tgt": "ru", "related": None, "p_related": float("nan"), "latent": "none"}
    dual_rows = pd.DataFrame(
        [dual, dual | {"tgt": "de", "related": None, "p_related": float("nan"), "latent": "en"}, dual | none]
    )
    rendered = dual_latent_table(dual_rows)
    assert "| m | ja (zh) | 30 | 8–14 of 18 | 0.200 [0.190, 0.210] | 0.050 [0.040, 0.060] |" in rendered
    assert "| 0.190 [0.180, 0.200] | 0.010 [0.000, 0.020] | en+zh (0.61) |" in rendered
    assert "| m | de | 30 | 8–14 of 18 |" in rendered and "| – | 0.010 [0.000, 0.020] | en (0.61) |" in rendered
    assert "| m | ru | 30 |" in rendered and "| none; en leads (0.61) |" in rendered
    metrics = (
        pd.DataFrame([{"model": "m", "layer": 5, "fvu": 0.1, "l0": 32.0, "dead_fraction": 0.01, "dense_fraction": 0.0}])
        .assign(
            loss_recovered=0.9,
            loss_recovered_lo=0.85,
            loss_recovered_hi=0.93,
            ce_loss_score=0.88,
            ce_loss_score_lo=0.86,
        )
        .assign(ce_loss_score_hi=0.9, kl_div_score=0.8, kl_div_score_lo=0.78, kl_div_score_hi=0.83)
    )
    row = "| m | sae | 5 | 0.10 | 32 | 1.0% / 0.0% | 0.88 [0.86, 0.90] | 0.80 [0.78, 0.83] | 0.90 [0.85, 0.93] |"
    assert row in sae_metrics_table(metrics)
    transcoder = metrics.assign(kind="transcoder")
    assert "| m | transcoder | 5 | 0.10 |" in sae_metrics_table(transcoder)
    sparse = pd.DataFrame(
        [
            {"model": "m", "dataset": "d", "layer": 5, "k": k, "sae_topk_accuracy": a, "residual_topk_accuracy": a}
            for k, a in ((1, 0.6), (32, 0.8))
        ]
    ).assign(dense_accuracy=0.9, dense_accuracy_lo=0.88, dense_accuracy_hi=0.92)
    table = sparse_probing_table(sparse)
    assert "SAE top-1" in table and "| m | d | 5 | 0.60 | 0.60 | 0.80 | 0.80 | 0.90 [0.88, 0.92] |" in table
    table = sparse_probing_table(sparse.assign(transcoder_topk_accuracy=0.7))
    assert "| transcoder top-1 |" in table and "| m | d | 5 | 0.60 | 0.70 | 0.60 | 0.80 | 0.70 | 0.80 |" in table


def test_neuron_table_reads_a_third_and_two_thirds_of_the_depth_with_the_best_neuron():
    from probes.workflow.results_page import neuron_probing_table

    summary = pd.DataFrame(
        [
            {"model": "m", "dataset": "d", "criterion": c, "layer": layer, "k": k, "n_layers": 30}
            | {"accuracy": 0.5 + layer / 100 + k / 1000, "accuracy_lo": 0.4, "accuracy_hi": 0.9, "dense_accuracy": 0.95}
            for c in ("mean_difference", "f_statistic")
            for layer in range(1, 31)
            for k in (1, 16)
        ]
    )
    best = pd.DataFrame(
        [
            {"model": "m", "dataset": "d", "criterion": "f_statistic", "layer": layer, "neuron": 7 * layer}
            | {"fold_agreement": 0.8, "f1": 0.7, "f1_lo": 0.6, "f1_hi": 0.8}
            for layer in range(1, 31)
        ]
    )
    table = neuron_probing_table(summary, best)
    assert table.count("\n") == 4 and "neurons top-16" in table
    assert (
        "| m | d | 10 | 0.60 [0.40, 0.90] | 0.62 [0.40, 0.90] | 0.95 | 70 (80% of folds) | 0.70 [0.60, 0.80] |" in table
    )
    assert "| m | d | 20 |" in table


def test_shortcut_audit_table_sets_each_model_beside_its_input_embedding():
    from probes.workflow.results_page import shortcut_audit_table

    audit = pd.DataFrame(
        [
            {"dataset": "a", "shortcut": "bag_of_words", "model": None, "accuracy": 0.5},
            {"dataset": "a", "shortcut": "length", "model": None, "accuracy": 0.52},
            {"dataset": "a", "shortcut": "embedding", "model": "m", "accuracy": 0.55},
        ]
    ).assign(accuracy_lo=0.45, accuracy_hi=0.6)
    summary = pd.DataFrame(
        [{"model": "m", "dataset": "a", "level": "factual", "weights": "fp32", "noise": "clean"}]
    ).assign(best_accuracy=0.8, best_accuracy_lo=0.75, best_accuracy_hi=0.85)
    table = shortcut_audit_table(audit, summary, "fp32")
    assert "| task | bag of words | length | input embedding (m) | best layer (m) |" in table
    assert "| a (factual) | 0.50 [0.45, 0.60] | 0.52 [0.45, 0.60] | 0.55 [0.45, 0.60] | 0.80 [0.75, 0.85] |" in table


def test_mdl_table_reads_each_code_and_the_layer_of_highest_compression():
    from probes.workflow.results_page import mdl_table

    row = {"model": "m", "dataset": "d", "level": "factual", "weights": "fp32", "noise": "clean", "n_layers": 20}
    row |= {"max_mdl_compression": 1.31, "max_mdl_compression_lo": 1.2, "max_mdl_compression_hi": 1.4}
    row |= {"max_mdl_compression_depth": 0.5, "max_mdl_compression_layer_lo": 8, "max_mdl_compression_layer_hi": 12}
    row |= {"max_mdl_grouped_compression": 1.5, "max_mdl_grouped_compression_lo": 1.4}
    row |= {"max_mdl_grouped_compression_hi": 1.6, "max_mdl_control_compression": None}
    off = row | {"dataset": "e", "max_mdl_compression": None}  # MDL off: no row
    flat = row | {"dataset": "f", "max_mdl_compression": 0.99, "max_mdl_compression_lo": 0.98}  # nothing compresses
    table = mdl_table(pd.DataFrame([row, off, flat]), "fp32")
    assert table.count("\n") == 4 and "| m | f (factual) | 0.99 [0.98, 1.40] | – |" in table
    assert "| m | d (factual) | 1.31 [1.20, 1.40] | 0.50 [0.40, 0.60] | 1.50 [1.40, 1.60] | – |" in table


def test_tuned_lens_table_counts_layers_where_the_tuned_lens_reads_below_each_other_lens():
    from probes.workflow.results_page import tuned_lens_table

    rows = []
    for layer in range(4):  # layer 3 is the output, left out; layer 2 keeps its start, layer 1's interval crosses 0
        tuned = 1.0
        start = {0: 3.0, 1: 1.2, 2: 1.0}.get(layer, 0.0)
        start_lo = {0: 1.5, 1: -0.1, 2: 0.0}.get(layer, 0.0)
        for lens, value, low in (("logit", 20.0, 15.0), ("linear", start, start_lo), ("tuned", tuned, 0.0)):
            value, low = (0.0, 0.0) if layer == 3 else (value, low)
            difference = value - (0.0 if layer == 3 else tuned) if lens != "tuned" else 0.0
            rows.append(
                {
                    "model": "m",
                    "lens": lens,
                    "layer": layer,
                    "kl_bits": value,
                    "kl_minus_tuned": difference,
                    "kl_minus_tuned_lo": low if lens != "tuned" else 0.0,
                    "n_tokens": 96,
                }
            )
    line = tuned_lens_table(pd.DataFrame(rows)).splitlines()[2]
    assert line == "| m | 3 | 1 of 3 | 3 of 3 | 2 | 20.00 | 1.73 | 1.00 | 96 |"
