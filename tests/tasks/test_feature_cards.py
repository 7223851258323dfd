"""The ``feature-cards`` task: from a stored feature audit to stored, rendered cards, cached."""

from __future__ import annotations

import copy
import time

import pytest
import torch

HOOK = "blocks.1.hook_resid_post"
DATASET = "toy-corpus:1"
AUDIT = {"n_tokens": 3000, "seq_len": 64, "batch_sequences": 16, "subsets": 3, "skip_sequences": 400}


@pytest.fixture(scope="module")
def stored_world(toy_world, toy_model, tmp_path_factory):
    """Storage with the toy model (dense), a magnitude-pruned copy, a TopK SAE and a ReLU SAE that never fires."""
    from sae_core.sae_io import new_sae
    from sae_core.storage import Storage
    from tasks.common import store_sae

    root = tmp_path_factory.mktemp("cards")
    storage = Storage(f"file://{root / 'store'}")
    storage.upload_dir(toy_world.model_dir, "dense_model", {"kind": "model", "content_hash": "dense"})
    hf = copy.deepcopy(toy_model.hf_model)
    with torch.no_grad():  # magnitude-prune a third of every block matrix, by hand
        for name, p in hf.named_parameters():
            if p.ndim == 2 and ".h." in name:
                p[p.abs() <= p.abs().flatten().kthvalue(p.numel() // 3).values] = 0
    hf.save_pretrained(root / "pruned", safe_serialization=True)
    toy_model.tokenizer.save_pretrained(root / "pruned")
    storage.upload_dir(root / "pruned", "pruned_model", {"kind": "model", "content_hash": "pruned"})
    store_sae(storage, new_sae("topk", 64, 96, HOOK, k=8, seed=0), "saes/original/x", {"variant": "original", "hook": HOOK, "processing": {}})
    silent = new_sae("standard", 64, 32, HOOK, seed=0)
    with torch.no_grad():
        silent.b_enc.fill_(-1e6)  # never fires: an audit with no active latent
    store_sae(storage, silent, "saes/original/silent", {"variant": "original", "hook": HOOK, "processing": {}})
    return {"storage": storage, "dense": {"kind": "model", "prefix": "dense_model", "content_hash": "dense", "dense": True},
            "compressed": {"kind": "model", "prefix": "pruned_model", "content_hash": "pruned", "dense": False, "base_model": "toy",
                           "compression": {"spec": "magnitude_matrix:0.33", "method": "magnitude_matrix", "strength": 0.33}},
            "original": {"kind": "sae", "prefix": "saes/original/x", "hook": HOOK, "processing": {}},
            "silent": {"kind": "sae", "prefix": "saes/original/silent", "hook": HOOK, "processing": {}}}


def test_cards_task_stores_cards_per_the_contract_and_serves_a_second_call_from_storage(stored_world, monkeypatch):
    import tasks.feature_cards as cards_module
    from sae_core import feature_cards as fc
    from tasks.feature_audit import feature_fidelity

    w = stored_world
    storage = w["storage"]
    started = time.perf_counter()
    audit = feature_fidelity.fn(w["original"], w["dense"], w["compressed"], AUDIT, DATASET, "test", storage.url)
    audit_seconds = time.perf_counter() - started
    assert storage.exists(audit["topk_key"]) and storage.exists(audit["histogram_key"])
    assert audit["topk_key"].startswith("feature_audit/") and audit["table_key"].removesuffix(".parquet") in audit["topk_key"]
    started = time.perf_counter()
    manifest = cards_module.feature_cards.fn(audit, w["original"], w["dense"], w["compressed"], AUDIT, DATASET, storage.url)
    cards_seconds = time.perf_counter() - started
    print(f"feature-fidelity {audit_seconds:.2f} s, feature-cards {cards_seconds:.2f} s")
    assert manifest["kind"] == "feature_cards" and manifest["status"] == "ok" and "rows_key" not in manifest
    assert manifest["cards_key"].startswith("feature_cards/") and manifest["cards_key"].endswith(".parquet")
    assert manifest["hook"] == HOOK and manifest["sae_prefix"] == "saes/original/x"
    assert manifest["model_prefix"] == "pruned_model" and manifest["compression"] == "magnitude_matrix:0.33"
    frame = storage.get_parquet(manifest["cards_key"])
    assert list(frame.columns) == fc.CARD_COLUMNS and len(frame) == manifest["n_cards"] > 0
    assert set(frame["card_class"]) <= set(fc.CARD_CLASSES)
    table = storage.get_parquet(audit["table_key"]).set_index("feature")
    for card in frame.to_dict(orient="records"):
        assert table.loc[card["feature"], "active"]
        assert card["r"] == pytest.approx(table.loc[card["feature"], "r"])
        assert len(card["ctx_tokens"]) >= 1 and len(card["promoted_dense"]) == fc.PROMOTED_K
    page = fc.render_cards(storage, manifest)
    assert page.count('<section class="fc-card"') == len(frame)

    def no_work(*args, **kwargs):
        raise AssertionError("the cards were built again")

    monkeypatch.setattr(cards_module, "_build_and_store", no_work)
    assert cards_module.feature_cards.fn(audit, w["original"], w["dense"], w["compressed"], AUDIT, DATASET, storage.url) == manifest


def test_an_audit_with_no_active_latent_gives_an_empty_manifest_not_a_crash(stored_world):
    from sae_core import feature_cards as fc
    from tasks.feature_audit import feature_fidelity
    from tasks.feature_cards import feature_cards

    w = stored_world
    storage = w["storage"]
    audit = feature_fidelity.fn(w["silent"], w["dense"], w["compressed"], AUDIT, DATASET, "test", storage.url)
    assert audit["summary"]["n_active"] == 0
    manifest = feature_cards.fn(audit, w["silent"], w["dense"], w["compressed"], AUDIT, DATASET, storage.url)
    assert manifest["status"] == "empty" and "no active latent" in manifest["message"] and manifest["n_cards"] == 0
    assert storage.get_parquet(manifest["cards_key"]).empty
    page = fc.render_cards(storage, manifest)
    assert '<p class="fc-message">' in page and "no active latent" in page and '<section class="fc-card"' not in page


def test_an_audit_stored_before_the_cards_gives_an_empty_manifest(stored_world):
    """An audit manifest without the top-K file (an older root): a message, no model is loaded."""
    from tasks.feature_audit import feature_fidelity
    from tasks.feature_cards import feature_cards

    w = stored_world
    audit = feature_fidelity.fn(w["original"], w["dense"], w["compressed"], AUDIT, DATASET, "test", w["storage"].url)
    old = {k: v for k, v in audit.items() if k not in ("topk_key", "histogram_key")}
    manifest = feature_cards.fn(old, w["original"], w["dense"], w["compressed"], AUDIT, DATASET, w["storage"].url)
    assert manifest["status"] == "empty" and "no top-activating contexts" in manifest["message"]
