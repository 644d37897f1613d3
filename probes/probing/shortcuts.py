"""The shortcut audit: how far a task can be solved without the concept, under the task's own folds.

A probe that reaches 0.9 on a task says little if the words alone, the text length, or the average of
the input embeddings (no contextual processing at all) reach 0.9 as well. Three reference classifiers
run under exactly the folds of the layer probes (:func:`probes.probing.protocol.cv_splits`, grouped where the
dataset declares groups), so their out-of-fold accuracy is the floor the layer curves must clear:

- ``bag_of_words``: logistic regression on unigram and bigram counts of the text;
- ``length``: a depth-4 decision tree on the text's length in characters and in words;
- ``embedding``: the layer probe itself on the mean of the model's input embeddings (layer 0 of the
  residual stream, BOS excluded), one per model.

Accuracy intervals come from the same bootstrap over examples (groups) as the concept-depth intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from probes.probing.protocol import cv_splits, probe_layers
from probes.probing.settings import ProbeSettings
from probes.resampling import bootstrap_weights, percentile_interval, resampled_means

TEXT_SHORTCUTS = ("bag_of_words", "length")
SHORTCUTS = (*TEXT_SHORTCUTS, "embedding")
TREE_DEPTH, TREE_MIN_LEAF = 4, 20  # enough to read any length threshold or band, too little to memorise rows


def text_shortcut_predictions(
    texts: Sequence[str], y: np.ndarray, settings: ProbeSettings, groups: np.ndarray | None = None
) -> pd.DataFrame:
    """Out-of-fold correctness of the text-only shortcuts: (shortcut, seed, example, correct)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    texts = pd.Series(list(texts), dtype=object)
    y = np.asarray(y)
    lengths = np.c_[texts.str.len(), texts.str.split().str.len()].astype(np.float64)
    frames = []
    for seed, _, train in cv_splits(y, settings, groups):
        vectoriser = CountVectorizer(lowercase=True, ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b")
        words = vectoriser.fit_transform(texts[train])
        bag = LogisticRegression(C=settings.C, max_iter=5000).fit(words, y[train])
        tree = DecisionTreeClassifier(max_depth=TREE_DEPTH, min_samples_leaf=TREE_MIN_LEAF, random_state=seed)
        tree.fit(lengths[train], y[train])
        held_out = np.flatnonzero(~train)
        for name, predicted in (
            ("bag_of_words", bag.predict(vectoriser.transform(texts[~train]))),
            ("length", tree.predict(lengths[~train])),
        ):
            frames.append(
                pd.DataFrame({"shortcut": name, "seed": seed, "example": held_out, "correct": predicted == y[~train]})
            )
    return pd.concat(frames, ignore_index=True)


def embedding_shortcut_predictions(
    embeddings: np.ndarray, y: np.ndarray, settings: ProbeSettings, groups: np.ndarray | None = None
) -> pd.DataFrame:
    """Out-of-fold correctness of the layer probe on mean input embeddings (n, d_model): (seed, example, correct)."""
    probe = replace(settings, null_permutations=0, mdl=False, control="shortcut", refits=0)
    predictions = probe_layers(np.asarray(embeddings)[:, None, :], y, probe, groups).predictions
    return pd.DataFrame(
        {
            "shortcut": "embedding",
            "seed": predictions["seed"].to_numpy(),
            "example": predictions["example"].to_numpy(),
            "correct": (predictions["decision"].to_numpy() > 0) == predictions["label"].to_numpy().astype(bool),
        }
    )


def audit_shortcuts(
    texts: Sequence[str],
    y: np.ndarray,
    embeddings: Mapping[str, np.ndarray],
    settings: ProbeSettings,
    groups: np.ndarray | None = None,
) -> pd.DataFrame:
    """Every shortcut's out-of-fold correctness (shortcut, model, seed, example, group, label, correct).

    ``embeddings`` maps each model to its (n, d_model) mean input embeddings; the text shortcuts have
    model ``""``.
    """
    y = np.asarray(y)
    frames = [text_shortcut_predictions(texts, y, settings, groups).assign(model="")]
    for model, vectors in embeddings.items():
        if len(vectors) != len(y):
            raise ValueError(f"{model}: {len(vectors)} embedding rows for {len(y)} texts")
        frames.append(embedding_shortcut_predictions(vectors, y, settings, groups).assign(model=model))
    frame = pd.concat(frames, ignore_index=True)
    row_groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    frame["group"] = row_groups[frame["example"].to_numpy()]
    frame["label"] = y[frame["example"].to_numpy()]
    return frame[["shortcut", "model", "seed", "example", "group", "label", "correct"]]


def summarise_shortcuts(predictions: pd.DataFrame, n_boot: int, seed: int, ci: float) -> pd.DataFrame:
    """Accuracy of each shortcut (and model), mean over CV seeds, with a bootstrap interval over examples (groups)."""
    rows = []
    for (shortcut, model), frame in predictions.groupby(["shortcut", "model"], sort=False):
        correct = frame.pivot_table(index="example", columns="seed", values="correct", aggfunc="first")
        per_example = correct.to_numpy(dtype=np.float64).mean(1)
        groups = frame.drop_duplicates("example").set_index("example").loc[correct.index, "group"].to_numpy()
        grouped = np.unique(groups).size < len(groups)
        weights = bootstrap_weights(len(per_example), n_boot, seed, groups if grouped else None)
        lo, hi = percentile_interval(resampled_means(weights, per_example), ci)
        rows.append(
            {
                "shortcut": shortcut,
                "model": model,
                "accuracy": float(per_example.mean()),
                "accuracy_lo": float(lo),
                "accuracy_hi": float(hi),
                "n_examples": len(per_example),
                "n_seeds": correct.shape[1],
            }
        )
    return pd.DataFrame(rows)


def shortcut_columns(audit: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """``{shortcut}_accuracy`` (with ``_lo``, ``_hi``) per (model, dataset) of ``summary``: the text shortcuts
    of the dataset and the model's own embedding shortcut, to sit beside the layer curves' numbers."""
    pairs = summary[["model", "dataset"]].drop_duplicates()
    values = ["accuracy", "accuracy_lo", "accuracy_hi"]
    text = audit[audit["model"] == ""].drop(columns="model").merge(pairs, on="dataset")
    own = audit[audit["model"] != ""].merge(pairs, on=["model", "dataset"])
    both = pd.concat([text, own], ignore_index=True)
    wide = both.pivot_table(index=["model", "dataset"], columns="shortcut", values=values, aggfunc="first")
    wide.columns = [f"{shortcut}_{value}" for value, shortcut in wide.columns]
    order = [f"{shortcut}_{value}" for shortcut in SHORTCUTS for value in values if f"{shortcut}_{value}" in wide]
    return wide[order].reset_index()
