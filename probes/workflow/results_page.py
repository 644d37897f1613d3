"""The results page, rendered from the summary tables, so that no result number is typed by hand.

The ``result_tables`` rule writes one markdown file per table under ``results/tables/markdown/``, every
estimate with its interval, and ``results.md``: all of them as one page whose header names the commit, date
and machine of the run. ``python -m probes.workflow.results_page`` copies that page to ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd


def interval(frame: pd.Series | dict, name: str, digits: int = 2) -> str:
    """``value [lo, hi]`` of a column with ``_lo`` / ``_hi`` siblings; an en dash where the value is undefined."""
    value = frame[name]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    lo, hi = frame.get(f"{name}_lo"), frame.get(f"{name}_hi")
    text = f"{value:.{digits}f}"
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return text
    return f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _verdict(row) -> str:
    return "yes" if row["decodable"] else f"no (p = {row['null_p_value']:.2f})"


def concept_depth_table(summary: pd.DataFrame, weights: str) -> str:
    """Every model x task on its own weights and clean inputs: decodability, depths, accuracy, control, MDL."""
    from probes.models.perturbations import unperturbed

    rows = summary[unperturbed(summary, weights)]
    body = []
    for _, row in rows.iterrows():
        body.append(
            [
                row["model"],
                f"{row['dataset']} ({row['level']})",
                _verdict(row),
                interval(row, "half_rise_depth"),
                interval(row, "best_accuracy"),
                interval(row, "converging_depth"),
                _control(row),
                interval(row, "max_selectivity"),
                interval(row, "max_mdl_compression", 1) if pd.notna(row.get("max_mdl_compression")) else "–",
            ]
        )
    header = [
        "model",
        "task",
        "decodable",
        "half-rise layer / L",
        "best accuracy",
        "converging layer / L",
        "control (type control: max over layers; else the strongest shortcut)",
        "selectivity (max)",
        "MDL compression, row by row (max)",
    ]
    return markdown(header, body)


def shortcut_audit_table(audit: pd.DataFrame, summary: pd.DataFrame, weights: str) -> str:
    """Per task: what words, length and each model's input embeddings reach under the task's folds, beside the
    model's best layer probe."""
    from probes.models.perturbations import unperturbed

    layer_probes = summary[unperturbed(summary, weights)].set_index(["dataset", "model"])
    models = list(dict.fromkeys(layer_probes.index.get_level_values("model")))
    audit = audit.fillna({"model": ""}).set_index(["dataset", "shortcut", "model"])
    body = []
    for dataset in dict.fromkeys(audit.index.get_level_values("dataset")):
        level = layer_probes.loc[dataset, "level"].iloc[0]
        row = [f"{dataset} ({level})"]
        row += [interval(audit.loc[(dataset, name, "")], "accuracy") for name in ("bag_of_words", "length")]
        for model in models:
            row += [
                interval(audit.loc[(dataset, "embedding", model)], "accuracy"),
                interval(layer_probes.loc[(dataset, model)], "best_accuracy"),
            ]
        body.append(row)
    header = ["task", "bag of words", "length"]
    header += [f"{column} ({model})" for model in models for column in ("input embedding", "best layer")]
    return markdown(header, body)


def levels_table(levels: pd.DataFrame) -> str:
    """Each model's mean half-rise and converging depth over the decodable tasks of each level."""
    body = [
        [
            model,
            level,
            f"{int(rows['decodable'].sum())} of {len(rows)}",
            interval(rows.iloc[0], "level_mean_half_rise_depth"),
            interval(rows.iloc[0], "level_mean_converging_depth"),
        ]
        for (model, level), rows in levels.groupby(["model", "level"], sort=False)
    ]
    header = ["model", "level", "decodable tasks", "mean half-rise layer / L", "mean converging layer / L"]
    return markdown(header, body)


def mdl_table(summary: pd.DataFrame, weights: str) -> str:
    """Every model x task's online codes: the highest compression of the task sent row by row, with the layer it is
    reached at, of the task sent by whole groups and of the type control's labels, each with its interval. Where the
    highest compression's interval reaches 1, no layer compresses the labels and the layer is not given."""
    from probes.models.perturbations import unperturbed

    rows = summary[unperturbed(summary, weights)]
    body = []
    for _, row in rows.iterrows():
        if pd.isna(row.get("max_mdl_compression")):
            continue
        layer = (
            f"{row['max_mdl_compression_depth']:.2f} "
            f"[{row['max_mdl_compression_layer_lo'] / row['n_layers']:.2f}, "
            f"{row['max_mdl_compression_layer_hi'] / row['n_layers']:.2f}]"
            if row["max_mdl_compression_lo"] > 1
            else "–"
        )
        optional = [
            interval(row, name, 2) if pd.notna(row.get(name)) else "–"
            for name in ("max_mdl_grouped_compression", "max_mdl_control_compression")
        ]
        body.append(
            [row["model"], f"{row['dataset']} ({row['level']})", interval(row, "max_mdl_compression", 2), layer]
            + optional
        )
    header = [
        "model",
        "task",
        "compression, row by row (max)",
        "at layer / L",
        "by whole groups (max)",
        "control task (max)",
    ]
    return markdown(header, body)


def perturbations_table(effects: pd.DataFrame) -> str:
    """Each perturbed run against the unperturbed one: the shifts with their paired intervals."""
    body = [
        [
            row["model"],
            f"{row['dataset']} ({row['level']})",
            row["weights"] if row["noise"] == "clean" else f"noise {row['noise']}",
            "yes" if row["decodable"] else "no",
            interval(row, "half_rise_depth_shift"),
            interval(row, "converging_depth_shift"),
            interval(row, "best_accuracy_shift"),
        ]
        for _, row in effects.iterrows()
    ]
    header = [
        "model",
        "task",
        "perturbation",
        "decodable",
        "half-rise depth shift",
        "converging depth shift",
        "best accuracy shift",
    ]
    return markdown(header, body)


def latent_language_table(summary: pd.DataFrame, lens: str = "logit") -> str:
    """Per model and pair, through one lens: P(target) and the shared tokens at the output, what leads before
    the takeover, English."""
    rows = summary[summary["lens"] == lens]
    body = []
    for _, row in rows.iterrows():
        pair = row["src"] if row["task"] == "repetition" else f"{row['src']}→{row['tgt']}"
        takeover = interval(row, "target_takeover_layer", 0)
        before = row["top_language_before_takeover"]
        body.append(
            [
                row["model"],
                f"{row['task']} {pair}",
                int(row["n_concepts"]),
                interval(row, "p_target_final"),
                interval(row, "p_shared_final") if "p_shared_final" in row else "–",
                "–" if pd.isna(before) else before,
                "–" if row["tgt"] == "en" else interval(row, "p_en_max_intermediate"),
                f"{takeover} of {int(row['n_layers'])}" if takeover != "–" else "never",
            ]
        )
    header = [
        "model",
        "task",
        "concepts",
        "P(target) at the output",
        "P(shared tokens) at the output",
        "top language before the takeover",
        "P(English), highest at layers 1 to L−1",
        "target takes over at layer",
    ]
    return markdown(header, body)


def dual_latent_table(summary: pd.DataFrame, lens: str = "logit") -> str:
    """Per model and target, through one lens: the middle layers' P(English), P(target), P(related) and their
    latent language(s)."""
    rows = summary[summary["lens"] == lens]
    body = []
    for _, row in rows.iterrows():
        related = row["related"] if isinstance(row["related"], str) else None
        body.append(
            [
                row["model"],
                row["tgt"] + (f" ({related})" if related else ""),
                int(row["n_concepts"]),
                f"{int(row['window_first'])}–{int(row['window_last'])} of {int(row['n_layers'])}",
                interval(row, "p_en", 3),
                interval(row, "p_target", 3),
                interval(row, "p_related", 3) if related else "–",
                interval(row, "p_shared", 3),
                (
                    f"{row['latent']} ({row['dominant_share']:.2f})"
                    if row["latent"] != "none"
                    else f"none; {row['dominant']} leads ({row['dominant_share']:.2f})"
                ),
            ]
        )
    header = [
        "model",
        "target (related)",
        "concepts",
        "middle layers",
        "P(English)",
        "P(target)",
        "P(related)",
        "P(shared tokens)",
        "latent language(s) (share of resamples led by the first)",
    ]
    return markdown(header, body)


def tuned_lens_table(kl: pd.DataFrame) -> str:
    """Per model, over the layers before the last: where the tuned lens reads below its least-squares start and
    below the logit lens on held-out documents (a layer counts where the paired interval of the difference is
    above 0), and the mean KL of each lens."""
    body = []
    for model, frame in kl.groupby("model", sort=False):
        frame = frame[frame["layer"] < frame["layer"].max()]
        lenses = frame.set_index(["lens", "layer"])
        start, logit, tuned = (lenses.loc[name] for name in ("linear", "logit", "tuned"))
        below_start = start["kl_minus_tuned_lo"] > 0
        same = start.index[start["kl_minus_tuned"].abs() < 1e-9].tolist()
        body.append(
            [
                model,
                len(start),
                f"{int(below_start.sum())} of {len(start)}",
                f"{int((logit['kl_minus_tuned_lo'] > 0).sum())} of {len(logit)}",
                ", ".join(str(layer) for layer in same) or "–",
                f"{logit['kl_bits'].mean():.2f}",
                f"{start['kl_bits'].mean():.2f}",
                f"{tuned['kl_bits'].mean():.2f}",
                int(tuned["n_tokens"].iloc[0]),
            ]
        )
    header = [
        "model",
        "layers 0..L−1",
        "tuned below its least-squares start",
        "tuned below the logit lens",
        "layers that keep the start",
        "mean KL, logit lens (bits)",
        "least-squares start",
        "tuned lens",
        "held-out tokens",
    ]
    return markdown(header, body)


def sae_metrics_table(metrics: pd.DataFrame) -> str:
    """Per model, kind (SAE, transcoder) and layer: reconstruction, sparsity, dead and dense latents, SAELens's CE
    loss and KL scores (the ablation zeroes every position) and the loss recovered with the BOS kept clean."""
    body = [
        [
            row["model"],
            row.get("kind", "sae"),
            int(row["layer"]),
            f"{row['fvu']:.2f}",
            f"{row['l0']:.0f}",
            f"{100 * row['dead_fraction']:.1f}% / {100 * row['dense_fraction']:.1f}%",
            interval(row, "ce_loss_score"),
            interval(row, "kl_div_score"),
            interval(row, "loss_recovered"),
        ]
        for _, row in metrics.iterrows()
    ]
    header = [
        "model",
        "kind",
        "layer",
        "FVU",
        "L0",
        "dead / dense",
        "CE loss score",
        "KL score",
        "loss recovered, BOS kept",
    ]
    return markdown(header, body)


def depth_usage_table(summary: pd.DataFrame) -> str:
    """The depth-usage findings per model (or model pair), each with its interval."""
    body = [[row["model"], row["finding"], interval(row, "estimate")] for _, row in summary.iterrows()]
    return markdown(["model", "finding", f"estimate [{summary['ci'].iloc[0]:.0%} interval]"], body)


def sparse_probing_table(summary: pd.DataFrame) -> str:
    """Per model, task and SAE layer: one latent (SAE, transcoder) or residual dimension, the largest k of each,
    and the dense probe."""
    smallest, largest = summary["k"].min(), summary["k"].max()
    names = {"sae": "SAE", "transcoder": "transcoder", "residual": "residual"}
    sets = [features for features in names if summary.get(f"{features}_topk_accuracy", pd.Series()).notna().any()]
    body = []
    for (model, dataset, layer), rows in summary.groupby(["model", "dataset", "layer"], sort=False):
        by_k = rows.set_index("k")
        cells = [interval(by_k.loc[k], f"{features}_topk_accuracy") for k in (smallest, largest) for features in sets]
        body.append([model, dataset, int(layer), *cells, interval(by_k.loc[largest], "dense_accuracy")])
    header = ["model", "task", "layer", *(f"{names[f]} top-{k}" for k in (smallest, largest) for f in sets)]
    return markdown([*header, "dense probe"], body)


def neuron_probing_table(summary: pd.DataFrame, best: pd.DataFrame, criterion: str = "f_statistic") -> str:
    """Per model and task, at a third and two thirds of the depth: the top-1 and top-k neurons, the dense probe,
    and the best single neuron with its out-of-fold k = 1 F1."""
    summary, best = summary[summary["criterion"] == criterion], best[best["criterion"] == criterion]
    smallest, largest = summary["k"].min(), summary["k"].max()
    body = []
    for (model, dataset), rows in summary.groupby(["model", "dataset"], sort=False):
        n_layers = int(rows["n_layers"].iloc[0])
        for layer in sorted({round(n_layers / 3), round(2 * n_layers / 3)}):
            by_k = rows[rows["layer"] == layer].set_index("k")
            single = best[(best["model"] == model) & (best["dataset"] == dataset) & (best["layer"] == layer)].iloc[0]
            body.append(
                [
                    model,
                    dataset,
                    layer,
                    interval(by_k.loc[smallest], "accuracy"),
                    interval(by_k.loc[largest], "accuracy"),
                    interval(by_k.loc[largest], "dense_accuracy"),
                    f"{int(single['neuron'])} ({single['fold_agreement']:.0%} of folds)",
                    interval(single, "f1"),
                ]
            )
    header = ["model", "task", "layer", f"neurons top-{smallest}", f"neurons top-{largest}", "dense probe"]
    return markdown([*header, "best single neuron", "its k = 1 F1"], body)


def _at_depths(row: pd.Series, intervention: str, cell) -> str:
    """``depth: cell(d)`` at each of a row's depths d = 1, 2, ... of one intervention in the causal summary."""
    cells, d = [], 1
    while pd.notna(row.get(f"{intervention}_depth_d{d}")):
        cells.append(f"{row[f'{intervention}_depth_d{d}']:.2f}: {cell(d)}")
        d += 1
    return "; ".join(cells) or "–"


def _versus(row: pd.Series, name: str, edited: str = "real", digits: int = 2) -> str:
    """The edited value against the control's, and their paired difference: ``0.71 vs 0.93, −0.22 [−0.30, −0.15]``."""
    value = row.get(f"{name}_{edited}")
    if pd.isna(value):
        return "–"
    return f"{value:.{digits}f} vs {row[f'{name}_control']:.{digits}f}, {interval(row, name, digits)}"


def _off_target(row: pd.Series, name: str) -> str:
    """How many other tasks' readouts deactivating a task's neurons moves (interval excluding 0), and the mean."""
    if pd.isna(row.get(name)):
        return "–"
    return f"{int(row[f'{name}_moved'])} of {int(row[f'{name}_n'])} ({row[name]:.2f})"


def causal_table(summary: pd.DataFrame) -> str:
    """Per model and task: can the model do it, and at each relative depth what erasure, steering and neuron
    deactivation do to its own readout beyond an equal-size random edit, what probes read after erasure and what each
    edit costs on other text. Effects on a task's own readout read "skipped" where the model cannot do the task; its
    neurons are still read on the other tasks."""
    body = []
    for _, row in summary.iterrows():
        skip = None if row["behaviour"] == "measured" else f"skipped ({row['status']})"
        body.append(
            [
                row["model"],
                row["task"],
                f"{'yes' if row['can_do'] else 'no'}, AUC {interval(row, 'auc')}",
                skip or _at_depths(row, "erasure", lambda d: interval(row, f"erasure_margin_lost_d{d}")),
                _at_depths(row, "erasure", lambda d: _versus(row, f"erasure_relearnt_last_d{d}", "erased")),
                _at_depths(row, "erasure", lambda d: _versus(row, f"erasure_kl_bits_d{d}", digits=3)),
                skip or _at_depths(row, "steering", lambda d: interval(row, f"steering_shift_d{d}")),
                _at_depths(row, "steering", lambda d: _versus(row, f"steering_kl_bits_d{d}", digits=3)),
                skip or _at_depths(row, "deactivation", lambda d: interval(row, f"deactivation_margin_lost_d{d}")),
                _at_depths(row, "deactivation", lambda d: _off_target(row, f"deactivation_off_target_d{d}")),
            ]
        )
    strength = summary.get("steering_strength", pd.Series(dtype=float)).max()
    k = summary.get("deactivation_k", pd.Series(dtype=float)).max()
    ablation = summary.get("deactivation_setting", pd.Series(dtype=object)).dropna()
    header = [
        "model",
        "task",
        "can do (readout AUC)",
        "erasure: margin lost − control (nats), at each layer / L",
        "re-learnt probe at L after erasure: erased vs control, difference",
        "erasure KL (bits): real vs control, difference",
        f"steering at α = {strength:g}: shift − control (nats)",
        "steering KL (bits): real vs control, difference",
        f"deactivation (top-{k:g} neurons, {', '.join(dict.fromkeys(ablation)) or '–'} ablation): own-task margin "
        "lost − control",
        "other tasks moved (mean margin lost − control)",
    ]
    return markdown(header, body)


# (table name, section title, what the table shows), in the page's order
SECTIONS = (
    ("concept_depth", "Concept depth", "Every model and task on its own weights and clean inputs."),
    ("shortcut_audit", "Shortcut audit", "Each task solved without the concept, under the task's own folds."),
    ("concept_depth_by_level", "Depth by task level", "Half-rise and converging depth grouped by task level."),
    ("concept_depth_perturbations", "Perturbations", "Shifts against the unperturbed run, paired resamples."),
    (
        "mdl",
        "MDL",
        "Online codes (Voita & Titov): the task sent row by row (the mean of its transmission orders), by "
        "whole groups, and the type control's labels; the layer of highest compression as a fraction of the depth.",
    ),
    (
        "latent_language",
        "Latent language",
        "Each language's probability per layer under the logit lens, on its tokens that spell no other compared "
        "language's word; the shared tokens apart.",
    ),
    (
        "tuned_lens",
        "Tuned lens",
        "KL to the model's output on held-out corpus documents, layers before the last: a layer counts where the "
        "paired interval of the difference is above 0.",
    ),
    (
        "dual_latent",
        "Dual latent languages",
        "Monolingual cloze, logit lens: the middle layers' mean probability of English, the target and its related "
        "language; latent language(s): the leader and any candidate not separable from it.",
    ),
    (
        "sae_metrics",
        "SAEs and transcoders",
        "Reconstruction and loss scores on held-out text: SAELens's CE loss and KL scores zero every position, "
        "the BOS too; loss recovered keeps the BOS clean.",
    ),
    ("sparse_probing", "Sparse probing", "Top-k latents, neurons and residual dimensions against the dense probe."),
    ("neuron_probing", "Neurons", "k-sparse neuron probes and the best single neuron."),
    ("depth_usage", "Depth usage", "What each layer does: contributions, skipping, shortcuts, layer maps."),
    (
        "causal",
        "Causal checks",
        "Is what the probe finds used? LEACE erasure, steering and neuron deactivation at each relative depth, each "
        "against an equal-size random edit (paired intervals over examples, documents for KL).",
    ),
)


def machine_description() -> str:
    """CPU model, cores, memory and OS of this machine, for the page header (numbers move between machines)."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else math.nan
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.release()}"


def results_page(tables: dict[str, str], run_info: pd.DataFrame, date: str, machine: str) -> str:
    """One markdown page of every rendered table, headed by the commit(s), date and machine of the run."""
    commits = sorted(run_info["git_commit"].dropna().astype(str).unique())
    versions = {package: sorted(run_info[package].dropna().astype(str).unique()) for package in ("torch", "sae-lens")}
    lines = [
        "# Results of the default run",
        "",
        "Rendered by the `result_tables` rule from the summary tables of one run; every estimate carries its 95%",
        "interval (bootstrap over examples, groups, concepts or documents, as each table's page in the report says).",
        "Another machine or library build may move the last digits.",
        "",
        f"- **commit**: {', '.join(f'`{commit}`' for commit in commits) or 'unknown'}",
        f"- **date**: {date}",
        f"- **machine**: {machine}",
        f"- **versions**: torch {', '.join(versions['torch'])}, SAELens {', '.join(versions['sae-lens'])}",
        "",
    ]
    for name, title, what in SECTIONS:
        if name in tables:
            lines += [f"## {title}", "", what, "", tables[name].rstrip("\n"), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Copy the default run's rendered results page into the docs.")
    parser.add_argument("--page", default="results/tables/markdown/results.md")
    parser.add_argument("--docs", default="docs/results.md")
    args = parser.parse_args()
    page = Path(args.page)
    if not page.is_file():
        raise SystemExit(f"{page} does not exist: run the pipeline (its result_tables rule renders it) first")
    Path(args.docs).write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"{args.docs}: the results page of {page}")


if __name__ == "__main__":
    main()


def _control(row: pd.Series) -> str:
    """What selectivity is measured against: the type control's best accuracy, or the strongest shortcut's."""
    if row["control"] == "type":
        return f"type control: {interval(row, 'max_control_accuracy')}"
    return f"{row['control_baseline']}: {interval(row, 'baseline_accuracy')}"
