"""The shortcut audit: planted shortcuts are found, grouped folds hide forms, and the built-in tasks have none."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from probes.datasets.concepts import load_dataset
from probes.probing.settings import ProbeSettings
from probes.probing.shortcuts import audit_shortcuts, shortcut_columns, summarise_shortcuts, text_shortcut_predictions
from probes.workflow.config import dataset_columns

SETTINGS = ProbeSettings(seeds=(0, 1))
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


def _accuracy(predictions: pd.DataFrame) -> dict[str, float]:
    return predictions.groupby("shortcut")["correct"].mean().to_dict()


def test_a_planted_word_and_a_planted_length_are_found():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 100)
    filler = [" ".join(rng.choice(WORDS, 6)) for _ in y]
    lexical = [f"{text} {'good' if label else 'bad'}" for text, label in zip(filler, y)]
    found = _accuracy(text_shortcut_predictions(lexical, y, SETTINGS))
    assert found["bag_of_words"] > 0.98 and found["length"] < 0.65
    long_or_short = [" ".join(rng.choice(WORDS, 9 if label else 5)) for label in y]
    found = _accuracy(text_shortcut_predictions(long_or_short, y, SETTINGS))
    assert found["length"] > 0.98


def test_grouped_folds_hide_a_form_that_decides_the_label():
    """Forms (templates) with a constant label are a shortcut in ungrouped CV and none once forms are held out."""
    rng = np.random.default_rng(1)
    forms = [" ".join(rng.choice(WORDS, 3)) + f" form{k}" for k in range(40)]
    form = np.repeat(np.arange(40), 5)
    y = form % 2
    texts = [f"{forms[k]} item{i}" for i, k in enumerate(form)]
    assert _accuracy(text_shortcut_predictions(texts, y, SETTINGS))["bag_of_words"] > 0.95
    assert _accuracy(text_shortcut_predictions(texts, y, SETTINGS, groups=form))["bag_of_words"] < 0.65


def test_embedding_shortcut_and_summary():
    rng = np.random.default_rng(2)
    y = np.tile([0, 1], 100)
    texts = [" ".join(rng.choice(WORDS, 5)) for _ in y]
    planted = rng.normal(size=(len(y), 16)) + 3.0 * y[:, None] * np.eye(16)[0]
    noise = rng.normal(size=(len(y), 16))
    predictions = audit_shortcuts(texts, y, {"planted": planted, "noise": noise}, SETTINGS)
    assert set(predictions["model"]) == {"", "planted", "noise"}
    assert len(predictions) == 4 * len(y) * len(SETTINGS.seeds)  # bag of words, length, two embeddings
    summary = summarise_shortcuts(predictions, n_boot=200, seed=0, ci=0.95).set_index(["shortcut", "model"])
    assert summary.loc[("embedding", "planted"), "accuracy"] > 0.9
    noise_row = summary.loc[("embedding", "noise")]
    assert noise_row["accuracy"] < 0.65 and 0.05 < noise_row["accuracy_hi"] - noise_row["accuracy_lo"] < 0.2
    assert (summary["accuracy_lo"] <= summary["accuracy"]).all() and (
        summary["accuracy"] <= summary["accuracy_hi"]
    ).all()

    audit = summary.reset_index().assign(dataset="toy")
    wide = shortcut_columns(audit, pd.DataFrame({"model": ["planted", "noise"], "dataset": "toy"})).set_index("model")
    assert wide.loc["planted", "embedding_accuracy"] > 0.9
    assert wide.loc["planted", "bag_of_words_accuracy"] == wide.loc["noise", "bag_of_words_accuracy"]


def test_mismatched_embeddings_are_refused():
    y = np.tile([0, 1], 20)
    with pytest.raises(ValueError, match="tiny: 10 embedding rows for 40 texts"):
        audit_shortcuts(["a b"] * 40, y, {"tiny": np.zeros((10, 4))}, SETTINGS)


@pytest.fixture(scope="module")
def default_tasks(repo):
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    validate(config, str(repo / "workflow" / "schemas" / "config.schema.yaml"))  # fills in the schema defaults
    return {
        name: (entry["level"], load_dataset(repo / entry["path"], **dataset_columns(config, name)))
        for name, entry in config["datasets"].items()
    }


def test_builtin_tasks_cannot_be_solved_by_words_or_length(default_tasks):
    """The issue's bound: under each task's own grouped folds, words and length stay at or below 0.60, except on
    the explicitly lexical baseline (which words must solve, or it is no baseline)."""
    settings = ProbeSettings()
    for name, (level, data) in default_tasks.items():
        assert data.groups is not None, f"{name} declares no group column"
        found = _accuracy(text_shortcut_predictions(data.texts, data.labels, settings, data.groups))
        assert found["length"] <= 0.60, (name, found)
        if level == "affective-lexical":
            assert found["bag_of_words"] > 0.9, (name, found)
        else:
            assert found["bag_of_words"] <= 0.60, (name, found)
