"""Feature descriptions: the top features of a task, what a direction writes, and the one page renderer."""

from __future__ import annotations

import copy
import re

import numpy as np
import torch

from probes.dictionaries.features import feature_writes, top_features, unembedded_directions, writes_frame
from probes.workflow.report import feature_page


def test_top_features_rank_separating_features_with_examples_and_histograms():
    y = np.array([0, 0, 1, 1])
    values = np.array([[0.0, 1.0, 0.2], [0.0, 1.0, 0.0], [2.0, 1.0, 0.0], [3.0, 1.0, 0.1]])
    corpus = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.7], [1.0, 0.0, 0.0]])
    tokens = {"document": torch.tensor([7, 7, 8]), "position": torch.tensor([1, 2, 1])}
    str_tokens = {7: ["<bos>", "a", "b"], 8: ["<bos>", "c"]}
    rows = top_features(values, y, ["a", "b", "c<d", "e"], ["no", "yes"], corpus, tokens, str_tokens, 2, 2, bins=4)
    assert [row["feature"] for row in rows] == [0, 2]
    assert rows[0]["favours"] == "yes" and rows[1]["favours"] == "no"
    assert rows[0]["task_examples"][0] == ("e", "yes", 3.0)
    assert rows[0]["corpus_examples"] == [(["<bos>", "a", "b"], 1, 5.0), (["<bos>", "c"], 1, 1.0)]
    edges = rows[0]["histogram"]["edges"]
    assert edges[0] == 0.0 and edges[-1] == 5.0 and len(edges) == 5
    densities = rows[0]["histogram"]["densities"]
    assert set(densities) == {"no", "yes", "held-out corpus"}
    for series in densities.values():  # densities integrate to one over the shared bins
        assert abs(np.sum(np.array(series) * np.diff(edges)) - 1) < 1e-9


def test_writes_are_the_direction_times_the_unembedding_as_by_hand(tiny_model):
    """RMSNorm: W_out row @ W_U exactly; LayerNorm: the direction is centred first (the folded norm)."""
    neuron = tiny_model.W_out[1][5].detach()
    logits = unembedded_directions(tiny_model, neuron[None])[0]
    torch.testing.assert_close(logits, neuron @ tiny_model.W_U)
    written = feature_writes(tiny_model, neuron[None], 4)[0]
    by_hand = (neuron @ tiny_model.W_U).detach()
    top_ids = by_hand.topk(4).indices.tolist()
    assert [token for token, _ in written["top"]] == [tiny_model.tokenizer.decode([i]) for i in top_ids]
    assert written["bottom"][0][1] == float(by_hand.min()) and written["top"][0][1] == float(by_hand.max())
    layer_norm = copy.deepcopy(tiny_model)
    layer_norm.cfg.normalization_type = "LNPre"
    centred = unembedded_directions(layer_norm, neuron[None])[0]
    torch.testing.assert_close(centred, (neuron - neuron.mean()) @ tiny_model.W_U)
    frame = writes_frame([{"kind": "neuron", "layer": 2, "feature": 5, "writes": written}], {"model": "tiny"})
    assert len(frame) == 8 and set(frame["end"]) == {"top", "bottom"} and frame["rank"].max() == 3


def test_feature_page_renders_every_kind_escaped_with_histograms():
    y = np.array([0, 0, 1, 1])
    values = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    rows = top_features(values, y, ["a", "b", "c<d", "e"], ["no", "yes"], n_top=1)
    writes = {"top": [("<tok>", 1.5)], "bottom": [("x", -2.0)]}
    sections = {
        "Layer 1: neuron, sae": [
            rows[0] | {"kind": "neuron", "layer": 1, "writes": writes},
            rows[0] | {"kind": "sae", "layer": 1, "writes": writes},
        ]
    }
    page = feature_page("Features", ["no", "yes"], sections)
    assert page.count("<svg") == 2 and "<h2>Layer 1: neuron, sae</h2>" in page
    assert "&lt;tok&gt;</code> +1.50" in page and "c&lt;d (yes, 2.00)" in page
    assert re.search(r"<td>neuron</td>\s*<td>0</td>\s*<td>yes</td>", page)
