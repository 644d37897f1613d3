"""SAE stages on the tiny random model: token cache, SAELens training and loading, metrics, sparse probing."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from probes.activations import site_hooks
from probes.html import top_latents_page
from probes.probing import ProbeSettings, cv_splits
from probes.sae import (
    SAESettings,
    loss_recovered,
    mean_difference_order,
    reconstruction_metrics,
    sae_trainer,
    select_layers,
    sparse_probe,
    top_latents,
    train_sae,
    training_sae,
)
from probes.stages.sae import train_sae as train_sae_stage
from probes.token_cache import TokenCache, TokenCacheSettings, cache_token_activations, split_documents

WORDS = [
    "the",
    "city",
    "of",
    "lyon",
    "is",
    "in",
    "france",
    "a",
    "coin",
    "heads",
    "up",
    "alice",
    "flips",
    "loved",
    "film",
    "acting",
    "was",
    "wonderful",
]


def corpus(n: int = 80, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_cache(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("token_cache")
    settings = TokenCacheSettings(context=32, heldout_fraction=0.2, shard_tokens=128, batch_size=8)
    cache_token_activations(tiny_model, corpus(), [1, 3], "resid", path, settings, seed=0, progress=False)
    return TokenCache(path)


def test_select_layers_spreads_over_depth_and_checks_configured_layers():
    assert select_layers(30, "resid") == [5, 10, 15, 20, 25]
    assert select_layers(18, "resid", count=4) == [4, 7, 11, 14]
    assert select_layers(30, "resid", [3, 3, 30]) == [3, 30]
    with pytest.raises(ValueError, match="outside the resid layers 0..30"):
        select_layers(30, "resid", [31])
    with pytest.raises(ValueError, match="outside the mlp_out layers 1..30"):
        select_layers(30, "mlp_out", [0])


def test_token_cache_rows_are_the_models_activations(tiny_model, tiny_cache):
    meta = tiny_cache.meta
    assert sum(meta["train_shards"]) == meta["n_train_tokens"] and max(meta["train_shards"]) == 128
    tokens = tiny_cache.heldout_tokens()
    assert set(tokens["document"].tolist()) == set(tokens["sequence_documents"].tolist())
    sequences = tiny_cache.heldout_sequences()
    assert len(sequences) == meta["n_heldout_documents"]
    expected = {layer: [] for layer in (1, 3)}
    for sequence in sequences:
        _, cache = tiny_model.run_with_cache(sequence[None])
        for layer in expected:
            expected[layer].append(cache[site_hooks("resid", 3)[layer]][0, 1:])  # BOS excluded
    for layer, rows in expected.items():
        stored = tiny_cache.load(layer, "heldout")
        by_document = dict(zip(tokens["sequence_documents"].tolist(), rows))
        rebuilt = torch.cat(
            [by_document[int(d)][int(p) - 1][None] for d, p in zip(tokens["document"], tokens["position"])]
        )
        torch.testing.assert_close(stored, rebuilt, atol=1e-4, rtol=1e-4)
    assert tokens["token"].tolist() == [
        int(sequences[list(tokens["sequence_documents"]).index(d)][p])
        for d, p in zip(tokens["document"], tokens["position"])
    ]


def test_train_and_heldout_documents_are_disjoint_and_seeded(tiny_model, tmp_path):
    texts = corpus()
    token_lists = [tiny_model.to_tokens(text, move_to_device=False, truncate=False)[0][:32] for text in texts]
    settings = TokenCacheSettings(context=32, heldout_fraction=0.2, shard_tokens=128, batch_size=8)
    everything = set(range(len(texts)))

    # the split itself: disjoint, covering the corpus, 20% held out, a function of the seed
    splits = {seed: split_documents(token_lists, settings, seed) for seed in (0, 1)}
    for train, heldout in splits.values():
        assert not set(train) & set(heldout) and set(train) | set(heldout) == everything
        assert len(train) == len(set(train)) and len(heldout) == round(0.2 * len(texts))
    assert split_documents(token_lists, settings, 0) == splits[0] and set(splits[0][1]) != set(splits[1][1])
    capped = TokenCacheSettings(context=32, heldout_fraction=0.2, max_tokens=100, batch_size=8)
    capped_train, capped_heldout = split_documents(token_lists, capped, 0)
    assert capped_heldout == splits[0][1] and set(capped_train) < set(splits[0][0])  # max_tokens trims train only
    assert 100 <= sum(len(token_lists[i]) for i in capped_train) < 100 + 32

    # what the caches hold: held-out rows of held-out documents only, train rows of the other documents only
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cache_token_activations(tiny_model, texts, [2], "resid", tmp_path / name, settings, seed=seed, progress=False)
        runs.append(TokenCache(tmp_path / name))
    heldout = [set(run.heldout_tokens()["sequence_documents"].tolist()) for run in runs]
    assert heldout[0] == heldout[1] != heldout[2]
    assert heldout[0] == set(splits[0][1]) and heldout[2] == set(splits[1][1])
    torch.testing.assert_close(runs[0].load(2, "train"), runs[1].load(2, "train"), rtol=0, atol=0)
    hook = site_hooks("resid", 3)[2]
    with torch.inference_mode():
        rows_of = [tiny_model.run_with_cache(tokens[None], names_filter=hook)[1][hook][0, 1:] for tokens in token_lists]
    for run, held in zip(runs[1:], heldout[1:]):
        meta, tokens = run.meta, run.heldout_tokens()
        train = everything - held
        assert meta["n_train_documents"] == len(train) and meta["n_heldout_documents"] == len(held)
        assert meta["n_train_documents"] + meta["n_heldout_documents"] == meta["n_documents"] == len(texts)
        assert set(tokens["document"].tolist()) == held
        assert meta["n_train_tokens"] == sum(len(token_lists[i]) - 1 for i in train)  # BOS excluded
        assert meta["n_heldout_tokens"] == sum(len(token_lists[i]) - 1 for i in held)
        # every cached train row is a row of a train document (rows that held-out documents alone have are absent)
        cached = run.load(2, "train")
        candidates = torch.cat([rows_of[i] for i in sorted(train)])
        assert distance_to_nearest(cached, candidates).max() < 1e-4
        only_heldout = torch.cat([rows_of[i] for i in sorted(held)])
        only_heldout = only_heldout[distance_to_nearest(only_heldout, candidates) > 1e-2]
        assert len(only_heldout) > 0 and distance_to_nearest(only_heldout, cached).min() > 1e-2


def distance_to_nearest(rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Each row's Euclidean distance to its nearest candidate, computed exactly (not via a matrix product)."""
    return torch.cdist(rows.double(), candidates.double(), compute_mode="donot_use_mm_for_euclid_dist").min(1).values


def test_batches_are_exact_endless_and_cover_every_row_each_epoch(tiny_cache):
    rows = tiny_cache.load(1, "train")
    batch_size = 50
    stream = tiny_cache.batches(1, batch_size, seed=0, buffer_shards=100)  # one buffer = one epoch
    per_epoch = len(rows) // batch_size
    batches = [next(stream) for _ in range(3 * per_epoch + 2)]
    assert {tuple(batch.shape) for batch in batches} == {(batch_size, rows.shape[1])}
    first_epoch = torch.cat(batches[:per_epoch])
    # the epoch is the cached rows reshuffled, less the remainder that carries over (rows can repeat: same prefix)
    key = lambda tensor: Counter(tuple(row) for row in tensor.numpy().round(5).tolist())  # noqa: E731
    assert not key(first_epoch) - key(rows) and len(rows) - len(first_epoch) < batch_size
    again = tiny_cache.batches(1, batch_size, seed=0, buffer_shards=100)
    torch.testing.assert_close(next(again), batches[0], rtol=0, atol=0)


def test_b_dec_starts_at_the_scaled_data_mean_and_saved_sae_loads_with_saelens(tiny_cache, tmp_path):
    from sae_lens import SAE

    settings = SAESettings(expansion=2, k=4, training_tokens=64 * 30, batch_size=64, lr=3e-3)
    mean, mean_norm = tiny_cache.mean_and_norm(3)
    rows = tiny_cache.load(3, "train")
    torch.testing.assert_close(mean, rows.mean(0), atol=1e-5, rtol=1e-5)
    assert mean_norm == pytest.approx(float(rows.norm(dim=1).mean()), rel=1e-5)
    # the trainer as built, before a step: its scale takes the shards' mean norm to sqrt(d_in), b_dec is the scaled mean
    scale = 32**0.5 / float(rows.double().norm(dim=1).mean())
    sae = training_sae(32, settings, tiny_cache.hook_names[3], "tiny", tiny_cache.meta["context"], seed=0)
    trainer = sae_trainer(sae, settings, mean, mean_norm, tiny_cache.batches(3, settings.batch_size, seed=0))
    assert trainer.sae is sae
    assert trainer.activation_scaler.scaling_factor == pytest.approx(scale, rel=1e-6)
    expected_b_dec = (rows.double().mean(0) * scale).float()
    assert expected_b_dec.norm() > 1.0  # the tiny model's residual mean is far from zero, so a zero b_dec cannot pass
    torch.testing.assert_close(sae.b_dec.detach(), expected_b_dec, atol=1e-5, rtol=1e-5)

    train_sae_stage(tiny_cache.path, tmp_path / "sae", tmp_path / "training.json", "tiny", 3, settings.__dict__, seed=0)
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert type(loaded).__name__ == "TopKSAE"
    assert loaded.cfg.d_in == 32 and loaded.cfg.d_sae == 64
    assert loaded.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    heldout = tiny_cache.load(3, "heldout")
    latents = loaded.encode(heldout)
    assert ((latents > 0).sum(1) <= 4).all()
    metrics = reconstruction_metrics(loaded, heldout)
    # independent recomputation on raw (unscaled) vectors: the saved SAE has the scale folded in
    recon = loaded.decode(latents).detach().double()
    x = heldout.double()
    assert metrics["fvu"] == pytest.approx(float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()), rel=1e-6)
    assert metrics["fvu"] < 0.9
    again = SAE.load_from_disk(tmp_path / "sae")
    torch.testing.assert_close(loaded.W_enc, again.W_enc)


def test_training_is_deterministic_per_seed(tiny_cache):
    settings = SAESettings(expansion=2, k=4, training_tokens=64 * 10, batch_size=64)
    first, _ = train_sae(tiny_cache, 1, settings, "tiny", seed=3)
    second, _ = train_sae(tiny_cache, 1, settings, "tiny", seed=3)
    torch.testing.assert_close(first.W_dec, second.W_dec, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("architecture", "loaded_class"),
    [("topk", "TopKSAE"), ("batchtopk", "JumpReLUSAE"), ("jumprelu", "JumpReLUSAE"), ("standard", "StandardSAE")],
)
def test_every_architecture_trains_and_loads(tiny_cache, tmp_path, architecture, loaded_class):
    from sae_lens import SAE

    settings = SAESettings(architecture=architecture, expansion=2, k=4, training_tokens=64 * 6, batch_size=64)
    train_sae_stage(tiny_cache.path, tmp_path / "sae", tmp_path / "training.json", "tiny", 1, settings.__dict__)
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert type(loaded).__name__ == loaded_class
    assert torch.isfinite(loaded.decode(loaded.encode(tiny_cache.load(1, "heldout")))).all()


def test_unknown_saelens_option_is_a_clear_error():
    with pytest.raises(ValueError, match="sae.options .* TopKTrainingSAEConfig"):
        training_sae(8, SAESettings(options={"no_such_field": 1}), "blocks.0.hook_resid_post", "m", 16, 0)
    with pytest.raises(ValueError, match="architecture must be one of"):
        SAESettings(architecture="gated")


def exact_sae(d: int):
    """A standard SAE with W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x, a perfect reconstruction."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_reconstruction_metrics_on_a_known_sae():
    x = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, 0.0], [-1.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
    metrics = reconstruction_metrics(exact_sae(3), x, dense_threshold=0.5)
    assert metrics["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["l0"] == pytest.approx(2.0)  # every row has two nonzero coordinates
    # latents: +x0 fires 3/4, +x1 3/4, +x2 never, -x0 1/4, -x1 1/4, -x2 never
    assert metrics["dead_fraction"] == pytest.approx(2 / 6)
    assert metrics["dense_fraction"] == pytest.approx(2 / 6)


def test_loss_recovered_is_one_for_an_exact_sae_and_matches_the_models_loss(tiny_model):
    sequences = [tiny_model.to_tokens(text, truncate=False)[0] for text in corpus(6, seed=5)]
    out = loss_recovered(tiny_model, exact_sae(32), sequences, "blocks.1.hook_resid_post", batch_size=4)
    assert out["ce_sae"] == pytest.approx(out["ce_clean"], abs=1e-4)
    assert out["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert out["kl_sae"] == pytest.approx(0.0, abs=1e-4)
    assert out["ce_zero"] != pytest.approx(out["ce_clean"], abs=1e-2)  # a random model: ablation changes the loss
    with torch.no_grad():
        per_token = torch.cat([tiny_model(seq[None], return_type="loss", loss_per_token=True)[0] for seq in sequences])
    assert out["ce_clean"] == pytest.approx(float(per_token.mean()), rel=1e-4)
    assert out["n_loss_tokens"] == len(per_token)


def test_sparse_probe_picks_the_informative_feature_with_the_dense_probes_folds():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    X = rng.normal(size=(120, 20))
    X[:, 7] += 3.0 * y
    settings = ProbeSettings(folds=4, seeds=(0, 1))
    for _, _, train in cv_splits(y, settings):
        assert mean_difference_order(X, y, train)[0] == 7
    scores = sparse_probe(X, y, settings, ks=(1, 20))
    assert len(scores) == 2 * 4 * 2
    assert list(scores[["seed", "fold"]].drop_duplicates().itertuples(index=False, name=None)) == [
        (seed, fold) for seed, fold, _ in cv_splits(y, settings)
    ]
    means = scores.groupby("k")["accuracy"].mean()
    assert means[1] > 0.85
    noise = sparse_probe(rng.normal(size=(120, 20)), y, settings, ks=(1,))
    assert abs(noise["accuracy"].mean() - 0.5) < 0.15


def test_top_latents_lists_separating_latents_with_examples():
    y = np.array([0, 0, 1, 1])
    latents = np.array([[0.0, 1.0, 0.2], [0.0, 1.0, 0.0], [2.0, 1.0, 0.0], [3.0, 1.0, 0.1]])
    rows = top_latents(latents, y, ["a", "b", "c<d", "e"], ["no", "yes"], n_top=2, n_examples=2)
    assert [row["latent"] for row in rows] == [0, 2]
    assert rows[0]["favours"] == "yes" and rows[1]["favours"] == "no"
    assert rows[0]["task_examples"][0] == ("e", "yes", 3.0)
    page = top_latents_page("Top", ["no", "yes"], {"Layer 1": rows})
    assert page.index("<td>0</td>\n      <td>yes</td>") < page.index("<td>2</td>\n      <td>no</td>")
    assert "c&lt;d (yes, 2.00)" in page  # task text escaped, not read as markup
