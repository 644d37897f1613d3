"""SAE stages on the tiny random model: token cache, SAELens training and loading, metrics, sparse probing."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import corpus, exact_sae
from probes.activations.extraction import site_hooks
from probes.activations.token_cache import TokenCache, TokenCacheSettings, cache_token_activations, split_documents
from probes.dictionaries.sae import (
    LOSS_STATISTICS,
    SAESettings,
    document_losses,
    loss_recovered,
    metrics_frame,
    reconstruction_metrics,
    sae_trainer,
    select_layers,
    sparse_accuracy,
    sparse_probe,
    sparse_summary,
    standardised_difference_order,
    train_sae,
    training_sae,
)
from probes.probing.protocol import cv_splits
from probes.probing.settings import ProbeSettings
from probes.resampling import bootstrap_weights, percentile_interval
from probes.workflow.stages.sae import train_sae as train_sae_stage


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


def test_reconstruction_metrics_on_a_known_sae():
    x = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, 0.0], [-1.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
    metrics = reconstruction_metrics(exact_sae(3), x, dense_threshold=0.5)
    assert metrics["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["l0"] == pytest.approx(2.0)  # every row has two nonzero coordinates
    # latents: +x0 fires 3/4, +x1 3/4, +x2 never, -x0 1/4, -x1 1/4, -x2 never
    assert metrics["dead_fraction"] == pytest.approx(2 / 6)
    assert metrics["dense_fraction"] == pytest.approx(2 / 6)


def zero_sae(d: int):
    """A standard SAE whose decoder is zero: its reconstruction is the zero ablation."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    return sae


def test_loss_recovered_is_exactly_one_for_an_exact_sae_and_zero_for_a_zero_sae(tiny_model):
    """The SAE and zero runs splice the same positions (all real ones but the BOS), so both ends hold exactly."""
    sequences = [tiny_model.to_tokens(text, truncate=False)[0] for text in corpus(7, seed=5)]
    assert len({len(sequence) for sequence in sequences}) > 1  # batches are padded
    saes = {
        "blocks.1.hook_resid_post": exact_sae(32),
        "blocks.2.hook_mlp_out": exact_sae(32),
        "blocks.0.hook_resid_pre": zero_sae(32),
    }
    documents = document_losses(tiny_model, saes, sequences, batch_size=3)
    assert len(documents) == 3 * len(sequences)
    summary = loss_recovered(documents).set_index("hook_name")
    for hook in ("blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"):
        rows = documents[documents["hook_name"] == hook]
        assert (rows["ce_sae"] == rows["ce_clean"]).all() and (rows["kl_sae"] == 0).all()
        assert summary.loc[hook, "loss_recovered"] == 1.0
    zero = documents[documents["hook_name"] == "blocks.0.hook_resid_pre"]
    assert (zero["ce_sae"] == zero["ce_zero"]).all() and (zero["kl_sae"] == zero["kl_zero"]).all()
    assert summary.loc["blocks.0.hook_resid_pre", "loss_recovered"] == 0.0
    assert ((summary["ce_zero"] - summary["ce_clean"]).abs() > 1e-3).all()  # a random model: ablation changes it

    # counted predictions: a spliced position (after the BOS) predicting the next real token
    for _, rows in documents.groupby("hook_name"):
        assert rows["n_tokens"].tolist() == [len(sequence) - 2 for sequence in sequences]
    with torch.no_grad():
        per_token = [tiny_model(seq[None], return_type="loss", loss_per_token=True)[0, 1:] for seq in sequences]
    clean = documents[documents["hook_name"] == "blocks.1.hook_resid_post"]["ce_clean"].to_numpy()
    np.testing.assert_allclose(clean, [float(t.double().sum()) for t in per_token], rtol=1e-5)

    # the zero run, rebuilt one document at a time from the tokens with the BOS kept clean; ablating the BOS
    # too (what the SAE run never does) gives another loss, so the two runs could not be compared
    def zero_loss(sequence: torch.Tensor, hook: str, keep_bos: bool) -> float:
        def ablate(activation, hook):  # noqa: ARG001
            activation = activation.clone()
            activation[:, int(keep_bos) :] = 0
            return activation

        with torch.no_grad():
            loss = tiny_model.run_with_hooks(
                sequence[None], return_type="loss", loss_per_token=True, fwd_hooks=[(hook, ablate)]
            )
        return float(loss[0, 1:].double().sum())

    hook = "blocks.1.hook_resid_post"
    rows = documents[documents["hook_name"] == hook]
    rebuilt = [zero_loss(sequence, hook, keep_bos=True) for sequence in sequences]
    np.testing.assert_allclose(rows["ce_zero"], rebuilt, rtol=1e-5)
    everywhere = [zero_loss(sequence, hook, keep_bos=False) for sequence in sequences]
    assert abs(sum(everywhere) - sum(rebuilt)) > 0.01 * sum(rebuilt)


def test_ce_and_kl_scores_equal_saelens_evaluation_on_the_same_documents(tiny_model):
    """SAELens's own evaluation (``get_downstream_reconstruction_metrics``, one document per batch: it has no padding)
    on a random SAE: the field's scores zero every position, BOS included, while loss recovered keeps the BOS
    clean in both runs; explained variance is SAELens's corrected calculator's."""
    from sae_lens.evals import ExplainedVarianceCalculator, get_downstream_reconstruction_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    hook = "blocks.1.hook_resid_post"
    torch.manual_seed(3)
    sae = exact_sae(32)
    sae.cfg.metadata.hook_name = hook  # where SAELens's evaluation splices it
    with torch.no_grad():
        sae.W_dec.add_(0.5 * torch.randn_like(sae.W_dec))  # a dictionary that reconstructs part of the stream
    sequences = [tiny_model.to_tokens(text, truncate=False)[0] for text in corpus(6, seed=9)]
    documents = document_losses(tiny_model, {hook: sae}, sequences, batch_size=4)
    ours = loss_recovered(documents).iloc[0]

    class Documents:  # SAELens reads batches from an activation store; this one hands out our documents in turn
        def __init__(self) -> None:
            self.next = iter(sequences)

        def get_batch_tokens(self, _: int) -> torch.Tensor:
            return next(self.next)[None]

    reference = get_downstream_reconstruction_metrics(
        sae,
        tiny_model,
        Documents(),
        ActivationScaler(),
        compute_kl=True,
        compute_ce_loss=True,
        n_batches=len(sequences),
        eval_batch_size_prompts=1,
        ignore_tokens=[tiny_model.tokenizer.bos_token_id],
    )
    for ours_name, theirs in (
        ("ce_clean", "ce_loss_without_sae"),
        ("ce_sae", "ce_loss_with_sae"),
        ("ce_loss_with_ablation", "ce_loss_with_ablation"),
        ("kl_div_with_sae", "kl_div_with_sae"),
        ("kl_div_with_ablation", "kl_div_with_ablation"),
        ("ce_loss_score", "ce_loss_score"),
        ("kl_div_score", "kl_div_score"),
    ):
        assert ours[ours_name] == pytest.approx(float(reference[theirs]), rel=1e-4, abs=1e-6), ours_name
    assert 0 < ours["ce_loss_score"] < 1
    assert abs(ours["loss_recovered"] - ours["ce_loss_score"]) > 1e-3  # ablating the BOS moves the baseline

    rows = torch.cat([tiny_model.run_with_cache(seq[None], names_filter=hook)[1][hook][0] for seq in sequences])
    calculator = ExplainedVarianceCalculator()
    with torch.no_grad():
        calculator.add_batch(sae.decode(sae.encode(rows)), rows)
    assert reconstruction_metrics(sae, rows)["explained_variance"] == pytest.approx(
        float(calculator.compute()), rel=1e-6
    )


@pytest.mark.slow
def test_evaluate_sae_scores_every_layer_of_smollm2_on_the_same_documents(smollm2, smollm2_manifest, tmp_path):
    """The stage: one job for every SAE layer of a model, per-document sums beside the metrics, a clear error
    when the held-out split is too small for loss_documents."""
    from probes.io import read_json, write_json
    from probes.workflow.stages.sae import evaluate_sae

    settings = TokenCacheSettings(context=32, heldout_fraction=0.25, batch_size=8)
    cache_token_activations(smollm2, corpus(24, seed=1), [5, 15], "resid", tmp_path / "cache", settings, progress=False)
    exact_sae(576).save_model(tmp_path / "sae_5")
    write_json(tmp_path / "training_5.json", {"architecture": "standard", "training_tokens": 0})
    trained = SAESettings(expansion=2, k=8, training_tokens=64 * 4, batch_size=64)
    train_sae_stage(tmp_path / "cache", tmp_path / "sae_15", tmp_path / "training_15.json", "s", 15, trained.__dict__)
    arguments = {
        "manifest": smollm2_manifest,
        "cache": tmp_path / "cache",
        "saes": [tmp_path / "sae_5", tmp_path / "sae_15"],
        "sae_metas": [tmp_path / "training_5.json", tmp_path / "training_15.json"],
        "metrics": tmp_path / "metrics.json",
        "documents": tmp_path / "documents.parquet",
        "model": "smollm2-135m",
        "layers": [5, 15],
    }
    details = evaluate_sae(**arguments, settings={"loss_documents": 6, "batch_size": 4})
    records = {record["layer"]: record for record in read_json(tmp_path / "metrics.json")}
    assert records[5]["loss_recovered"] == 1.0 and records[5]["ce_sae"] == records[5]["ce_clean"]
    assert records[5]["hook_name"] == "blocks.4.hook_resid_post" and records[5]["fvu"] < 1e-10
    assert records[15]["ce_clean"] == records[5]["ce_clean"] < records[15]["ce_zero"]
    assert records[15]["ce_sae"] > records[15]["ce_clean"] and math.isfinite(records[15]["loss_recovered"])
    documents = pd.read_parquet(tmp_path / "documents.parquet")
    heldout = TokenCache(tmp_path / "cache").heldout_tokens()["sequence_documents"].tolist()
    assert details["n_loss_documents"] == 6 and len(heldout) == 6
    for _, rows in documents.groupby("layer"):
        assert rows["document"].tolist() == heldout and (rows["model"] == "smollm2-135m").all()
    frame = metrics_frame(list(records.values()), documents, n_boot=200, ci=0.9, seed=0)
    assert (frame["loss_recovered_lo"] <= frame["loss_recovered"]).all()
    assert (frame["loss_recovered"] <= frame["loss_recovered_hi"]).all()
    with pytest.raises(ValueError, match="6 held-out documents, fewer than sae.eval.loss_documents = 7"):
        evaluate_sae(**arguments, settings={"loss_documents": 7})


def synthetic_documents(n: int, seed: int = 0, layers: tuple[int, ...] = (1, 2)):
    rng = np.random.default_rng(seed)
    rows = []
    for layer in layers:
        n_tokens = rng.integers(20, 120, size=n)
        clean = n_tokens * rng.normal(2.0, 0.3, size=n)
        rows.append(
            pd.DataFrame(
                {
                    "model": "m",
                    "layer": layer,
                    "document": np.arange(n) * 3,
                    "n_tokens": n_tokens,
                    "ce_clean": clean,
                    "ce_sae": clean + n_tokens * rng.normal(0.5, 0.3, size=n),
                    "ce_zero": clean + n_tokens * rng.normal(5.0, 1.0, size=n),
                    "kl_sae": n_tokens * rng.gamma(2.0, 0.2, size=n),
                    "kl_zero": n_tokens * rng.gamma(2.0, 2.0, size=n),
                    "n_kl_tokens": n_tokens + 1,
                    "ce_loss_with_ablation": clean + n_tokens * rng.normal(4.0, 1.0, size=n),
                    "kl_div_with_sae": (n_tokens + 1) * rng.gamma(2.0, 0.2, size=n),
                    "kl_div_with_ablation": (n_tokens + 1) * rng.gamma(2.0, 1.5, size=n),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_document_bootstrap_interval_contains_the_estimate_and_narrows_with_more_documents():
    widths = []
    for n in (8, 32, 128):
        documents = synthetic_documents(n)
        summary = loss_recovered(documents, by=("model", "layer"), n_boot=500, ci=0.9, seed=0)
        for row in summary.itertuples():
            for name in ("loss_recovered", "ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero"):
                assert getattr(row, f"{name}_lo") <= getattr(row, name) <= getattr(row, f"{name}_hi")
        first = summary.iloc[0]
        widths.append(first["loss_recovered_hi"] - first["loss_recovered_lo"])
        # a ratio of sums over documents, resampled by document: recomputed from the same weights
        rows = documents[documents["layer"] == 1]
        sums = rows[["ce_clean", "ce_sae", "ce_zero"]].to_numpy()
        assert first["loss_recovered"] == pytest.approx(
            (sums[:, 2] - sums[:, 1]).sum() / (sums[:, 2] - sums[:, 0]).sum()
        )
        weights = bootstrap_weights(n, 500, 0)
        totals = weights @ sums
        lo, hi = percentile_interval((totals[:, 2] - totals[:, 1]) / (totals[:, 2] - totals[:, 0]), 0.9)
        assert (first["loss_recovered_lo"], first["loss_recovered_hi"]) == pytest.approx((lo, hi))
        assert first["n_loss_documents"] == n and first["n_loss_tokens"] == rows["n_tokens"].sum()
    assert widths[0] > widths[1] > widths[2] > 0
    assert widths[0] / widths[2] > 2.5  # about sqrt(128 / 8) = 4


def test_metrics_table_carries_the_document_intervals_beside_each_statistic():
    documents = synthetic_documents(16)
    means = loss_recovered(documents, by=("model", "layer"))
    records = [
        {"model": "m", "layer": int(row.layer), "n_layers": 4, "fvu": 0.1}
        | {name: getattr(row, name) for name in LOSS_STATISTICS}
        for row in means.itertuples()
    ]
    frame = metrics_frame(records, documents, n_boot=200, ci=0.95, seed=1)
    columns = list(frame.columns)
    for name in ("loss_recovered", "ce_loss_score", "kl_div_score"):
        at = columns.index(name)
        assert columns[at + 1 : at + 3] == [f"{name}_lo", f"{name}_hi"]
        assert (frame[f"{name}_lo"] <= frame[name]).all() and (frame[name] <= frame[f"{name}_hi"]).all()
    assert "loss_recovered_lo" not in metrics_frame(records)


def test_standardised_ranking_prefers_a_small_informative_dimension_to_a_huge_weak_one():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    X = rng.normal(size=(200, 6))
    X[:, 2] = 0.1 * rng.normal(size=200) + 0.3 * y  # small norm, classes 3 SD apart
    X[:, 4] = 100.0 * rng.normal(size=200) + 30.0 * y  # huge norm, classes 0.3 SD apart
    X[:, 5] = 7.0  # constant: last
    rows = np.ones(200, dtype=bool)
    raw = np.abs(X[y == 1].mean(0) - X[y == 0].mean(0))
    assert np.argmax(raw) == 4  # the raw mean difference picks the huge-norm dimension
    order = standardised_difference_order(X, y, rows)
    assert order[0] == 2 and order[-1] == 5
    # Cohen's d with the pooled within-class SD
    pooled = np.sqrt((X[y == 1].var(0, ddof=1) + X[y == 0].var(0, ddof=1)) / 2)
    expected = np.argsort(-np.where(pooled > 0, raw / np.where(pooled > 0, pooled, 1), 0), kind="stable")
    assert order.tolist() == expected.tolist()
    separating = np.column_stack([np.full(200, 1.0), y.astype(float), X[:, 2]])  # constant within each class
    assert standardised_difference_order(separating, y, rows).tolist() == [1, 2, 0]


def test_sparse_probe_predicts_every_example_out_of_fold_with_the_dense_probes_folds():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    X = rng.normal(size=(120, 20))
    X[:, 7] += 3.0 * y
    settings = ProbeSettings(folds=4, seeds=(0, 1))
    splits = cv_splits(y, settings)
    for _, _, train in splits:
        assert standardised_difference_order(X, y, train)[0] == 7
    scores = sparse_probe(X, y, settings, ks=(1, 20))
    assert list(scores.columns) == ["seed", "fold", "k", "example", "correct"]
    assert len(scores) == 2 * 2 * 120  # seeds x ks x examples
    for (seed, _), rows in scores.groupby(["seed", "k"]):
        assert rows["example"].tolist() == list(range(120))  # every example once per seed and k
        for split_seed, fold, train in splits:
            if split_seed == seed:
                assert set(rows.loc[rows["fold"] == fold, "example"]) == set(np.flatnonzero(~train))
    means = scores.groupby("k")["correct"].mean()
    assert means[1] > 0.85
    noise = sparse_probe(rng.normal(size=(120, 20)), y, settings, ks=(1,))
    assert abs(noise["correct"].mean() - 0.5) < 0.15


def test_sparse_probing_intervals_resample_examples_or_their_groups():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 100)
    groups = np.repeat(np.arange(20), 10)  # ten groups per class
    X = rng.normal(size=(200, 8))
    X[:, 0] += 1.0 * y + rng.normal(size=20)[groups]  # a group effect: rows of a group err together
    settings = ProbeSettings(folds=4, seeds=(0, 1, 2))
    frames = []
    for layer in (3, 6):
        frame = sparse_probe(X[:, : layer + 2], y, settings, ks=(1, 4), groups=groups)
        frames += [frame.assign(layer=layer, features=features) for features in ("sae", "residual")]
    predictions = pd.concat(frames, ignore_index=True)
    points = sparse_accuracy(predictions, n_boot=400, ci=0.95, seed=0)
    assert len(points) == 2 * 2 * 2 and (points["n_examples"] == 200).all()
    assert (points["accuracy_lo"] <= points["accuracy"]).all() and (points["accuracy"] <= points["accuracy_hi"]).all()
    # the point: mean over seeds of the out-of-fold accuracy; the interval: examples resampled, same draws everywhere
    one = predictions[(predictions["layer"] == 3) & (predictions["features"] == "sae") & (predictions["k"] == 1)]
    point = points.set_index(["features", "layer", "k"]).loc[("sae", 3, 1)]
    assert point["accuracy"] == pytest.approx(one.groupby("seed")["correct"].mean().mean())
    per_example = one.groupby("example")["correct"].mean().to_numpy()
    weights = bootstrap_weights(200, 400, 0)
    lo, hi = percentile_interval(weights @ per_example / weights.sum(1), 0.95)
    assert (point["accuracy_lo"], point["accuracy_hi"]) == pytest.approx((lo, hi))
    by_group = sparse_accuracy(predictions, n_boot=400, ci=0.95, seed=0, groups=groups)
    width = lambda frame: (frame["accuracy_hi"] - frame["accuracy_lo"]).mean()  # noqa: E731
    assert width(by_group) > 1.2 * width(points)  # rows of a group are not independent draws

    # the summary table: per task, both feature sets with their intervals, the dense probe beside them
    keys = {"model": "m", "dataset": "d", "level": "factual", "pooling": "last", "n_layers": 8}
    sparse = predictions.assign(**keys, group=pd.array(groups[predictions["example"].to_numpy()], dtype="Int64"))
    dense = pd.DataFrame(
        [
            {"model": "m", "dataset": "d", "layer": layer, "metric": "accuracy", "seed": 0, "fold": fold, "value": v}
            for layer in range(9)
            for fold, v in enumerate((0.8, 0.9))
        ]
    )
    summary = sparse_summary(sparse, dense, n_boot=400, ci=0.95, seed=0)
    assert len(summary) == 2 * 2
    for features in ("sae", "residual"):
        assert (summary[f"{features}_topk_accuracy_lo"] <= summary[f"{features}_topk_accuracy"]).all()
        assert (summary[f"{features}_topk_accuracy"] <= summary[f"{features}_topk_accuracy_hi"]).all()
    assert (summary["n_groups"] == 20).all() and summary["dense_accuracy"].tolist() == pytest.approx([0.85] * 4)
    assert "dense_accuracy_lo" not in summary
    grouped = by_group.set_index(["features", "layer", "k"])
    for row in summary.itertuples():
        assert row.sae_topk_accuracy_hi == pytest.approx(grouped.loc[("sae", row.layer, row.k), "accuracy_hi"])
    with_band = dense.assign(accuracy_lo=0.7, accuracy_hi=0.95)
    assert (sparse_summary(sparse, with_band, n_boot=50)["dense_accuracy_lo"] == 0.7).all()
    ungrouped = sparse_summary(sparse.assign(group=pd.array([None] * len(sparse), dtype="Int64")), dense, 400)
    assert ungrouped["n_groups"].isna().all()
    assert ungrouped["sae_topk_accuracy_hi"].tolist() == pytest.approx(
        points[points["features"] == "sae"].sort_values(["layer", "k"])["accuracy_hi"].tolist()
    )
