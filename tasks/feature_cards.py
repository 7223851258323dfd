"""Feature cards as a cached task: one per feature audit (original SAE x compressed model).

Reads the audit's stored outputs (its table, and the top-activating positions and histograms it
recorded in its single pass) and the audit's held-out token windows, re-runs both models on only
the few windows the selected cards show, and stores (``sae_core.feature_cards``):
- ``feature_cards/<key>.json``: status, message, selection;
- ``feature_cards/<key>.parquet``: one row per card (written last: it commits).
The manifest has no ``rows_key``: the report renders it (``render_cards``), the metric table skips it.
"""

from __future__ import annotations

from prefect import task

from sae_core.datasets import token_batch
from sae_core.hashing import config_hash
from sae_core.model_ref import compression_label, model_key
from sae_core.storage import Storage
from tasks.common import ARTIFACT_TASK_OPTIONS, code_fingerprint, compute_lock, load_model_ref, load_stored_sae, ml_stack

KIND = "feature_cards"


@task(name="feature-cards", **ARTIFACT_TASK_OPTIONS)
def feature_cards(audit_result: dict, original: dict, dense: dict, compressed: dict, audit: dict, dataset: str, storage_url: str,
                  device: str = "cpu", dtype: str = "float32") -> dict:
    """The feature cards of one ``feature-fidelity`` result (``audit_result``; the other arguments are the ones it was given)."""
    from sae_core.feature_cards import SELECTION

    storage = Storage(storage_url)
    key = config_hash(KIND, audit_result["table_key"], audit_result.get("topk_key"), SELECTION, code_fingerprint(__name__))
    cards_key, meta_key = f"{KIND}/{key}.parquet", f"{KIND}/{key}.json"
    if not storage.exists(cards_key):
        _build_and_store(storage, audit_result, original, dense, compressed, audit, dataset, device, dtype, cards_key, meta_key)
    meta = storage.get_json(meta_key)
    return {"kind": KIND, "status": meta["status"], "message": meta["message"], "cards_key": cards_key, "uri": storage.uri(cards_key),
            "n_cards": meta["n_cards"], "hook": audit_result["hook"], "sae_prefix": audit_result["sae_prefix"],
            "model_prefix": model_key(compressed), "compression": compression_label(compressed),
            "audit_table_key": audit_result["table_key"]}


def _build_and_store(storage, audit_result, original, dense, compressed, audit, dataset, device, dtype, cards_key, meta_key) -> None:
    import pandas as pd

    from sae_core.activations import special_token_ids
    from sae_core.feature_audit import histogram_edges
    from sae_core.feature_cards import CARD_COLUMNS, SELECTION, Cards, build_cards, empty_reason

    table = storage.get_parquet(audit_result["table_key"])
    reason = empty_reason(table)
    if reason is None and not (audit_result.get("topk_key") and storage.exists(audit_result["topk_key"])):
        reason = "this feature audit recorded no top-activating contexts (it predates the feature cards)"
    if reason is not None:  # no model is loaded for an audit without cards
        cards = Cards(pd.DataFrame(columns=CARD_COLUMNS), "empty", reason)
    else:
        ml_stack()
        topk, histograms = storage.get_parquet(audit_result["topk_key"]), storage.get_parquet(audit_result["histogram_key"])
        dense_model = load_model_ref(storage, dense, device, dtype)
        compressed_model = load_model_ref(storage, compressed, device, dtype)
        sae = load_stored_sae(storage, original["prefix"], device)
        # The audit's windows, in its order, up to the last one a card shows (the same stream, so the same windows).
        last = int(topk["window"].max()) if len(topk) else 0
        tokens = token_batch(dense_model.tokenizer, dataset, last + 1, audit["seq_len"], skip_sequences=audit["skip_sequences"])
        processing = original.get("processing", {})
        with compute_lock():
            cards = build_cards(dense_model.hooked(processing), compressed_model.hooked(processing), sae, dense_model.tokenizer, tokens,
                                original["hook"], table, topk, histograms, histogram_edges(),
                                exclude_ids=special_token_ids(dense_model.tokenizer))
    storage.put_json(meta_key, {"status": cards.status, "message": cards.message, "n_cards": int(len(cards.frame)),
                                "selection": SELECTION, "audit_table_key": audit_result["table_key"]})
    storage.put_parquet(cards_key, cards.frame)  # last: it commits
