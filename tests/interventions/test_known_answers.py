"""The causal checks on a tiny random-weight model with the answer planted: the edited passes equal full passes,
the readout reads a planted concept, erasure removes it (and finds it again where a later layer re-derives it),
steering moves the readout monotonically, and deactivating a planted neuron changes only its task."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from probes.interventions.editing import CorpusCost, Edit, ReadoutPasses, neuron_hook, residual_hook
from probes.interventions.effects import paired_effect
from probes.interventions.erasure import fit_eraser, random_eraser
from probes.interventions.readout import answer_logodds, pair_auc, readout_skill, threshold_folds
from probes.resampling import bootstrap_weights

POSITIVE, NEGATIVE = [50], [51]


def full_logodds(model, tokens, hook=None, fn=None, from_position=None, only=True):
    """The readout of one full forward pass, the edit applied by hand at ``from_position`` (and after)."""

    def edit(activation, hook):
        activation = activation.clone()
        if only:
            activation[:, from_position] = fn(activation[:, from_position])
        else:
            activation[:, from_position:] = fn(activation[:, from_position:])
        return activation

    with torch.inference_mode():
        final = model.run_with_hooks(
            tokens[None], fwd_hooks=[(hook, edit)] if hook else [], stop_at_layer=model.cfg.n_layers
        )
        return float(answer_logodds(model, final[:, -1], POSITIVE, NEGATIVE))


@pytest.fixture(scope="module")
def texts():
    """Token lists of four lengths, so padded batches mix them."""
    rng = np.random.default_rng(0)
    return [torch.tensor([1, *rng.integers(20, 200, size=n)]) for n in (3, 3, 6, 9, 6, 4, 9, 3)]


def test_edited_passes_equal_full_passes(tiny_model, texts):
    suffix = torch.tensor([5, 6, 7])
    passes = ReadoutPasses(tiny_model, texts, suffix, POSITIVE, NEGATIVE, starts=[1, 2], batch_size=3)
    vector = torch.randn(tiny_model.cfg.d_model)
    neurons = torch.tensor([3, 17, 40])

    def silence(x):
        x = x.clone()
        x[..., neurons] = 0
        return x

    edited, read = passes.run(Edit(1, lambda x: x + vector), read_layers=[2, 3])
    silenced, _ = passes.run(Edit(2, silence, neuron_hook(3), from_read=True))
    for row, text in enumerate(texts):
        sequence, read_position = torch.cat([text, suffix]), len(text) - 1
        assert passes.clean_logodds[row] == pytest.approx(full_logodds(tiny_model, sequence), abs=1e-4)
        added = full_logodds(tiny_model, sequence, residual_hook(1), lambda x: x + vector, read_position)
        assert edited[row] == pytest.approx(added, abs=1e-4)
        zeroed = full_logodds(tiny_model, sequence, neuron_hook(3), silence, read_position, only=False)
        assert silenced[row] == pytest.approx(zeroed, abs=1e-4)
        _, cache = tiny_model.run_with_cache(
            sequence[None], names_filter=[residual_hook(1), residual_hook(2)], stop_at_layer=2
        )
        # the clean residual the passes start from is the full pass's, at the read position
        clean_start = next(chunk.clean[1] for chunk in passes.chunks if row in chunk.rows)
        index = int(np.flatnonzero(next(chunk.rows for chunk in passes.chunks if row in chunk.rows) == row)[0])
        assert torch.allclose(clean_start[index, 0], cache[residual_hook(1)][0, read_position], atol=1e-5)
    assert read[2].shape == (len(texts), tiny_model.cfg.d_model)


def test_the_readout_pass_reads_the_extracted_vectors(tiny_model):
    from probes.activations.extraction import ExtractionSettings, pooled_activations, tokenize

    strings = ["The city of Lyon is in France.", "I loved the film.", "A coin is heads up."]
    pooled, _ = pooled_activations(tiny_model, strings, ExtractionSettings(poolings=("last",)), progress=False)
    token_lists, _ = tokenize(tiny_model, strings, 64)
    passes = ReadoutPasses(tiny_model, token_lists, torch.tensor([5]), POSITIVE, NEGATIVE, starts=[0, 2])
    for chunk in passes.chunks:
        for layer in (0, 2):
            assert torch.allclose(chunk.clean[layer][:, 0], pooled["last"][chunk.rows, layer], atol=1e-5)


def planted(model, seed=0, copies_at=None):
    """The model made an identity on the residual (every block writes nothing), the concept planted along ŵ in
    the embeddings of tokens 10..29 (label 1) and 30..49 (label 0), and a readout that reads ŵ at the read
    position (an empty question). ``copies_at``: block 1 gets one attention head that copies the ŵ component
    of every token into the position that attends to it, so a later layer can re-derive an erased concept."""
    model = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    d = model.cfg.d_model
    w = torch.tensor(rng.standard_normal(d), dtype=torch.float32)
    w /= w.norm()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.zero_()
            block.attn.b_O.zero_()
            block.mlp.W_out.zero_()
            block.mlp.b_out.zero_()
        embedding = model.W_E
        # tokens spread in every other direction more than the concept does, as in a real residual stream, so a
        # random edit as large as the concept's eraser need not be the concept's
        embedding.copy_(2.0 * torch.randn(embedding.shape, generator=torch.Generator().manual_seed(seed)))
        embedding -= torch.outer(embedding @ w, w)  # no token but the planted ones carries ŵ
        embedding[10:30] += 2.0 * w
        embedding[30:50] -= 2.0 * w
        model.W_U[:, POSITIVE[0]] = 4.0 * w
        model.W_U[:, NEGATIVE[0]] = -4.0 * w
        model.b_U[POSITIVE + NEGATIVE] = 0
        if copies_at is not None:
            attention = model.blocks[copies_at].attn
            attention.W_V.zero_()
            attention.W_V[0, :, 0] = w
            attention.W_O[0, 0] = 8.0 * w
    return model, w.numpy()


def planted_texts(n=80, seed=1, label_twice=False):
    """Random texts ending in a label token; pairs of opposite labels share a group."""
    rng = np.random.default_rng(seed)
    labels = np.tile([1, 0], n // 2)
    token_lists = []
    for label in labels:
        mark = int(rng.integers(10, 30) if label else rng.integers(30, 50))
        filler = rng.integers(60, 200, size=int(rng.integers(3, 7))).tolist()
        token_lists.append(torch.tensor([1, *([mark] if label_twice else []), *filler, mark]))
    return token_lists, labels, np.arange(n) // 2


def clean_vectors(passes, layer):
    out = np.empty((passes.n, passes.model.cfg.d_model), dtype=np.float32)
    for chunk in passes.chunks:
        out[chunk.rows] = chunk.clean[layer][:, 0].numpy()
    return out


def test_the_readout_knows_the_planted_answer_and_not_an_orthogonal_one(tiny_model):
    model, w = planted(tiny_model)
    token_lists, y, groups = planted_texts()
    empty = torch.zeros(0, dtype=torch.long)
    passes = ReadoutPasses(model, token_lists, empty, POSITIVE, NEGATIVE, starts=[1])
    weights = bootstrap_weights(len(y), 200, 0, groups)
    folds = threshold_folds(y, groups, 5, 0)
    skill = readout_skill(passes.clean_logodds, y, groups, folds, weights, 0.95, 0.6)
    assert skill.auc == 1.0 and skill.can_do and skill.accuracy == 1.0
    with torch.no_grad():  # answers that read a direction the concept does not touch
        other = torch.tensor(np.linalg.qr(np.stack([w, np.random.default_rng(5).standard_normal(len(w))], 1))[0][:, 1])
        model.W_U[:, POSITIVE[0]] = 4.0 * other.float()
        model.W_U[:, NEGATIVE[0]] = -4.0 * other.float()
    blind = ReadoutPasses(model, token_lists, empty, POSITIVE, NEGATIVE, starts=[1])
    skill = readout_skill(blind.clean_logodds, y, groups, folds, weights, 0.95, 0.6)
    assert not skill.can_do and abs(skill.auc - 0.5) < 0.15


def test_pair_auc_ignores_biases_constant_within_a_group():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y, groups = np.tile([1, 0], 50), np.arange(100) // 2
    scores = rng.standard_normal(100) + 0.5 * y
    shifted = scores + 7.0 + 3.0 * rng.standard_normal(50)[groups]  # a constant, and one per group
    assert pair_auc(shifted, y, groups) == pytest.approx(pair_auc(scores, y, groups))
    assert pair_auc(scores, y, None) == pytest.approx(roc_auc_score(y, scores))
    ties = np.zeros(100)
    assert pair_auc(ties, y, groups) == 0.5


def probe_accuracy(X, y, groups):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score

    return cross_val_score(LogisticRegression(max_iter=2000), X, y, groups=groups, cv=GroupKFold(5)).mean()


def test_erasure_removes_a_planted_concept_the_control_does_not(tiny_model):
    model, _ = planted(tiny_model)
    token_lists, y, groups = planted_texts(120)
    empty = torch.zeros(0, dtype=torch.long)
    passes = ReadoutPasses(model, token_lists, empty, POSITIVE, NEGATIVE, starts=[1])
    X = clean_vectors(passes, 1)
    eraser = fit_eraser(X, y)
    control, ratio = random_eraser(X, eraser.edit_size, seed=0)
    assert eraser.rank == control.rank == 1 and 0.8 <= ratio <= 1.25
    erased, read = passes.run(Edit(1, eraser), read_layers=[2, 3])
    controlled, read_control = passes.run(Edit(1, control), read_layers=[2, 3])
    signs = 2.0 * y - 1
    margin_lost = -signs * (erased - passes.clean_logodds)
    control_lost = -signs * (controlled - passes.clean_logodds)
    effect = paired_effect(margin_lost, control_lost, bootstrap_weights(len(y), 400, 0, groups), 0.95)
    assert effect["effect_lo"] > 0 and abs(effect["control"]) < 0.2 * effect["real"]
    assert pair_auc(erased, y, groups) <= 0.65  # the readout no longer tells the classes apart
    assert probe_accuracy(clean_vectors(passes, 1), y, groups) >= 0.95
    for layer in (2, 3):  # nothing re-derives it: the later layers' probes stay at chance
        assert probe_accuracy(read[layer], y, groups) <= 0.65
        assert probe_accuracy(read_control[layer], y, groups) >= 0.9


def test_a_later_layer_that_re_derives_the_concept_brings_it_back(tiny_model):
    model, _ = planted(tiny_model, copies_at=1)
    token_lists, y, groups = planted_texts(120, label_twice=True)  # the label also sits at position 1
    empty = torch.zeros(0, dtype=torch.long)
    passes = ReadoutPasses(model, token_lists, empty, POSITIVE, NEGATIVE, starts=[1])
    eraser = fit_eraser(clean_vectors(passes, 1), y)
    _, read = passes.run(Edit(1, eraser), read_layers=[2, 3])
    erased_here = eraser(torch.as_tensor(clean_vectors(passes, 1))).numpy()
    assert probe_accuracy(erased_here, y, groups) <= 0.65
    assert probe_accuracy(read[2], y, groups) >= 0.9  # block 1 copied it back from position 1


def test_steering_moves_the_readout_monotonically_and_as_computed_by_hand(tiny_model):
    model, w = planted(tiny_model)
    token_lists, y, _ = planted_texts(40)
    empty = torch.zeros(0, dtype=torch.long)
    passes = ReadoutPasses(model, token_lists, empty, POSITIVE, NEGATIVE, starts=[1])
    X = clean_vectors(passes, 1)
    direction = torch.tensor(w)
    scale = float(np.linalg.norm(X, axis=1).mean())
    shifts = []
    for strength in (0.0, 0.25, 0.5, 1.0):
        push = strength * scale * direction
        steered, _ = passes.run(Edit(1, lambda x, v=push: x + v))
        with torch.no_grad():
            by_hand = answer_logodds(model, torch.as_tensor(X) + push, POSITIVE, NEGATIVE).numpy()
        np.testing.assert_allclose(steered, by_hand, atol=1e-5)
        shifts.append(float((steered - passes.clean_logodds).mean()))
    assert shifts[0] == pytest.approx(0, abs=1e-6) and np.all(np.diff(shifts) > 0)
    windows = torch.randint(60, 200, (3, 12))
    windows[:, 0] = 1
    cost = CorpusCost(model, windows, [1], np.array([2, 6, 11]))
    kls = [cost.kl_bits(Edit(1, lambda x, v=s * scale * direction: x + v)).mean() for s in (0.0, 0.5, 1.0)]
    assert kls[0] == pytest.approx(0, abs=1e-5) and kls[1] < kls[2]


def test_deactivating_a_planted_neuron_changes_only_its_task(tiny_model):
    from probes.interventions.deactivation import matched_random_neurons, top_neurons

    model, w = planted(tiny_model)
    d = model.cfg.d_model
    rng = np.random.default_rng(3)
    other = np.linalg.qr(np.stack([w, rng.standard_normal(d)], 1))[0][:, 1].astype(np.float32)
    planted_neurons = [5, 6, 7, 8]
    with torch.no_grad():
        mlp = model.blocks[1].mlp
        mlp.W_in[:, planted_neurons] = 6.0 * torch.tensor(w)[:, None]  # fire for label 1 only
        mlp.b_in[planted_neurons] = -1.0
        mlp.W_out[planted_neurons] = 2.0 * torch.tensor(w)  # and push the answer further
    token_lists, y, groups = planted_texts(120)
    empty = torch.zeros(0, dtype=torch.long)
    own = ReadoutPasses(model, token_lists, empty, POSITIVE, NEGATIVE, starts=[1])
    # the other task reads another direction with answers of its own
    with torch.no_grad():
        model.W_U[:, 52] = 4.0 * torch.tensor(other)
        model.W_U[:, 53] = -4.0 * torch.tensor(other)
    rows = torch.tensor(rng.integers(60, 200, size=(120, 6)))
    other_lists = [torch.cat([torch.tensor([1]), row]) for row in rows]
    elsewhere = ReadoutPasses(model, other_lists, empty, [52], [53], starts=[1])
    # rank the neurons as the stage does, from the pooled MLP activations at the read position
    _, cache = model.run_with_cache(torch.nn.utils.rnn.pad_sequence(token_lists, batch_first=True))
    lengths = torch.tensor([len(t) for t in token_lists])
    acts = cache[neuron_hook(2)][torch.arange(120), lengths - 1].numpy()
    chosen = top_neurons(acts, y, 4, "f_statistic")
    assert set(chosen.tolist()) == set(planted_neurons)
    random = matched_random_neurons(acts, chosen, 1, seed=0)[0]
    assert not set(random.tolist()) & set(planted_neurons)

    def zero(indices):
        index = torch.as_tensor(indices)

        def edit(x):
            x = x.clone()
            x[..., index] = 0
            return x

        return edit

    silenced, _ = own.run(Edit(1, zero(chosen), neuron_hook(2), from_read=True))
    controlled, _ = own.run(Edit(1, zero(random), neuron_hook(2), from_read=True))
    lost = -(2.0 * y - 1) * (silenced - own.clean_logodds)
    assert lost.mean() > 0.5 and np.abs(controlled - own.clean_logodds).max() < 1e-5
    # the other task moves only as the final norm's scale does: a few percent of the own task's loss
    silenced, _ = elsewhere.run(Edit(1, zero(chosen), neuron_hook(2), from_read=True))
    assert np.abs(silenced - elsewhere.clean_logodds).mean() < 0.05 * lost.mean()


def test_an_answer_that_is_not_one_token_is_refused_by_name(tiny_model):
    from probes.interventions.readout import TaskReadout, verbaliser_ids

    readout = TaskReadout("\nQuestion: yes or no?\nAnswer:", (" affirmatively",), (" no",))
    with pytest.raises(ValueError, match="' affirmatively' is [0-9]+ tokens"):
        verbaliser_ids(tiny_model, readout)
    with pytest.raises(ValueError, match="both positive and negative"):
        TaskReadout("\nAnswer:", (" yes",), (" yes",))
