"""Multi-epoch SAE training (config ``epochs``, seeded reshuffle per epoch) and the training curve
(sae_core.sae_train's report["curve"], stored beside each trained SAE and drawn by sae_core.training_report).

Random activations in a file:// storage; every training run is a few hundred steps of a 64-latent SAE.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sae_core.activations import ActivationShards
from sae_core.config import build_config
from sae_core.sae_io import new_sae
from sae_core.sae_train import CURVE_COLUMNS, train_sae
from sae_core.storage import Storage
from sae_core.training_report import PLOT_NAME, TRAINING_CURVE, training_curve_plot, training_curve_plots, training_curves

D_IN = 16
HOOK = "blocks.1.hook_resid_post"
PREFIX = "activations/fake"


@pytest.fixture()
def storage(tmp_path) -> Storage:
    """A committed activation cache of 3 shards x 100 rows; row i has value i in its first column."""
    store = Storage(f"file://{tmp_path}/store")
    rows = torch.randn(300, D_IN, generator=torch.Generator().manual_seed(0))
    rows[:, 0] = torch.arange(300, dtype=torch.float32)
    shards = []
    for i in range(3):
        key = f"{PREFIX}/shard_{i}.safetensors"
        store.put_tensors(key, {"activations": rows[100 * i:100 * (i + 1)]})
        shards.append({"key": key, "n_tokens": 100})
    store.put_json(f"{PREFIX}/manifest.json", {"kind": "activations", "n_tokens": 300, "d_in": D_IN, "shards": shards})
    return store


def _order(source) -> list[int]:
    return torch.cat(list(source))[:, 0].long().tolist()


# ------------------------------------------------------------------ epochs: a fresh, seeded order per epoch
def test_each_epoch_reads_every_token_once_in_a_new_order_that_the_seed_fixes(storage):
    source = ActivationShards(storage, PREFIX, batch_size=64, shuffle=True, seed=3)
    epochs = [_order(source) for _ in range(3)]
    assert all(sorted(e) == list(range(300)) for e in epochs)  # every cached token once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled between epochs
    again = ActivationShards(storage, PREFIX, batch_size=64, shuffle=True, seed=3)
    assert [_order(again) for _ in range(3)] == epochs  # the same seed: the same orders, epoch by epoch
    other = ActivationShards(storage, PREFIX, batch_size=64, shuffle=True, seed=4)
    assert _order(other) != epochs[0]


def _train(storage, seed: int, epochs: int, per_epoch: int | None = 300, **kw):
    from tasks.saes import _training_budget

    total, per = _training_budget({"train_tokens": per_epoch or 300, "epochs": epochs})
    blank = new_sae("topk", D_IN, 64, HOOK, k=4, seed=seed)
    source = ActivationShards(storage, PREFIX, batch_size=64, shuffle=True, seed=seed, max_tokens=per)
    return train_sae(blank, source, total, lr=3e-3, batch_size=50, seed=seed, progress=False, **kw)


def test_epochs_train_that_many_passes_deterministically_from_the_seed(storage):
    sae, report = _train(storage, seed=1, epochs=4)
    assert report["tokens_used"] == 1200 and report["steps"] == 24 and report["data_passes"] == 4
    twin, _ = _train(storage, seed=1, epochs=4)
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), twin.state_dict().values()))
    other, _ = _train(storage, seed=2, epochs=4)
    assert not torch.equal(sae.W_dec, other.W_dec)


def test_training_budget_is_tokens_times_epochs_and_one_epoch_keeps_the_old_meaning():
    from tasks.saes import _training_budget

    assert _training_budget({"train_tokens": 150_000, "epochs": 5}) == (750_000, 150_000)
    assert _training_budget({"train_tokens": 120_000, "epochs": 1}) == (120_000, None)  # whole cache, repeated if larger
    assert _training_budget({"train_tokens": 120_000}) == (120_000, None)  # sections written before epochs existed


# ------------------------------------------------------------------ config validation, before any work
def test_config_epochs_default_to_one_and_the_budget_is_checked_against_the_cache():
    config = build_config("toy")
    assert config.original_sae.train.epochs == 1 and config.retrained_sae.epochs == 1
    cached = config.activations.n_tokens
    with pytest.raises(ValueError, match=rf"original_sae.train: epochs=3 .*activations.n_tokens={cached}"):
        build_config("toy", {"original_sae": {"train": {"epochs": 3, "train_tokens": cached + 1}}})
    with pytest.raises(ValueError, match=r"retrained_sae: epochs=2 .*lower train_tokens to at most"):
        build_config("toy", {"retrained_sae": {"epochs": 2, "train_tokens": cached * 2}})
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        build_config("toy", {"retrained_sae": {"epochs": 0}})
    with pytest.raises(ValueError, match=r"train_tokens x epochs = 100 is less than one batch"):
        build_config("toy", {"retrained_sae": {"train_tokens": 100}})
    # a disabled retrain is not checked; one epoch may still ask for more than the cache (repeated passes)
    build_config("toy", {"retrained_sae": {"enabled": False, "epochs": 9, "train_tokens": cached * 2}})
    build_config("toy", {"retrained_sae": {"train_tokens": cached * 2}})
    ok = build_config("toy", {"retrained_sae": {"epochs": 5, "train_tokens": cached}})
    assert ok.variant_settings(ok.variants[-1])["train"]["epochs"] == 5  # part of the trained variants' keys


def test_gemma_preset_trains_several_epochs_over_its_cache():
    config = build_config("gemma-3-270m")
    train, retrain = config.original_sae.train, config.retrained_sae
    assert train.epochs > 1 and train.train_tokens <= config.activations.n_tokens
    assert (retrain.train_tokens, retrain.epochs, retrain.lr, retrain.batch_size) == (train.train_tokens, train.epochs, train.lr,
                                                                                     train.batch_size)  # the same budget
    assert train.dead_feature_window is not None and retrain.dead_feature_window == train.dead_feature_window


# ------------------------------------------------------------------ the training curve
def test_train_sae_reports_a_training_curve_per_step_outside_the_saes_metadata(storage):
    sae, report = _train(storage, seed=0, epochs=4)
    curve = pd.DataFrame(report["curve"])
    assert list(curve.columns) == list(CURVE_COLUMNS)
    assert curve["step"].tolist() == list(range(1, 25)) and curve["tokens"].iloc[-1] == report["tokens_used"]
    assert curve["loss"].notna().all() and (curve["loss"] > 0).all()
    assert curve["explained_variance"].iloc[-1] > curve["explained_variance"].iloc[0]
    assert (curve["l0"] <= 4).all() and (curve["silent_latents"] >= 0).all() and (curve["dead_latents"] >= 0).all()
    assert curve["mse"].iloc[-10:].mean() == pytest.approx(report["final_mse"], rel=1e-9)  # the same last 10 batches
    assert report["dead_feature_window"] == 1000 and report["silent_window_steps"] == 1  # sae-lens' default; 5% of 24
    assert "curve" not in sae.cfg.metadata.sae_transfer_training


def test_curve_points_thin_the_curve_and_zero_switches_it_off(storage):
    _, thin = _train(storage, seed=0, epochs=4, curve_points=5)
    assert thin["curve"]["step"] == [5, 10, 15, 20, 24]  # every ceil(24 / 5) steps, and the last
    _, none = _train(storage, seed=0, epochs=4, curve_points=0)
    assert none["curve"]["step"] == []
    with pytest.raises(ValueError, match="curve_points"):
        _train(storage, seed=0, epochs=1, curve_points=-1)


def _rows(*prefixes: tuple[str, str, int]) -> pd.DataFrame:
    return pd.DataFrame([{"sae_prefix": p, "variant_method": m, "variant_spec": m, "sae_variant": m, "seed": s,
                          "hook": HOOK, "compression": "wanda:0.5"} for p, m, s in prefixes])


def test_stored_curves_are_read_per_sae_and_drawn_once_per_sae_and_seed(storage):
    curve = pd.DataFrame({c: [1.0, 2.0] for c in CURVE_COLUMNS}).assign(step=[1, 2])
    storage.put_parquet(f"saes/original/a/{TRAINING_CURVE}", curve)
    storage.put_parquet(f"saes/retrained/b/{TRAINING_CURVE}", curve)
    rows = _rows(("saes/original/a", "transfer", 0), ("saes/retrained/b", "retrain", 0), ("saes/pruned/c", "prune", 0),
                 ("saes/original/a", "transfer", 0))  # the original twice (two compressed models); the pruned has no curve
    curves = training_curves(storage, rows)
    assert list(curves) == ["original (dense), seed 0", "retrain, seed 0"]
    plots = training_curve_plots(storage, rows)
    assert list(plots) == [PLOT_NAME] and plots[PLOT_NAME].startswith(b"\x89PNG")
    assert training_curve_plots(storage, _rows(("saes/pruned/c", "prune", 0))) == {}
    assert training_curve_plot({}) is None


def test_a_trained_variant_stores_its_curve_beside_the_checkpoint_not_in_the_manifest(storage):
    """retrain / finetune hand the curve up in their details; the task stores it as a table."""
    from sae_core.variants import VariantInputs, VariantSpec, method_for
    from tasks.saes import _store_training_curve

    original, _ = _train(storage, seed=0, epochs=1)
    batches = ActivationShards(storage, PREFIX, batch_size=64, shuffle=True, seed=0)
    for text in ("retrain", "finetune:0.5"):
        inputs = VariantInputs(compressed=batches, train={"train_tokens": 600, "lr": 1e-3, "batch_size": 50}, seed=0, progress=False)
        _, report = method_for(VariantSpec.model_validate(text)).build(original, inputs)
        summary = report.summary()
        curve = summary["details"].pop("training_curve")
        _store_training_curve(storage, f"saes/x/{text}", curve)
        assert "training_curve" not in summary["details"]
        stored = storage.get_parquet(f"saes/x/{text}/{TRAINING_CURVE}")
        assert stored["step"].iloc[-1] == report.gradient_steps
