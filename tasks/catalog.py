"""What is already in storage: every SAE variant that was evaluated on a compressed model."""

from __future__ import annotations

from prefect import task

from sae_core.model_ref import compression_of, model_key
from sae_core.report import current_columns
from sae_core.storage import Storage
from tasks.common import retry_transient


@task(name="stored-variants", retries=3, retry_delay_seconds=[2, 8, 30], retry_condition_fn=retry_transient)
def stored_variants(storage_url: str) -> list[dict]:
    """Variant manifests rebuilt from ``variants/*.parquet`` rows and the checkpoints' manifests.

    Never cached: the point is to see checkpoints that appeared since the last run.
    """
    storage = Storage(storage_url)
    found: dict[tuple, dict] = {}
    for key in storage.list("variants"):
        if not key.endswith(".parquet"):
            continue
        row = current_columns(storage.get_parquet(key)).iloc[0].to_dict()  # rows from before the rename too
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        sae_prefix, model_prefix = row["sae_prefix"], row["model_prefix"]
        if not storage.is_committed(sae_prefix):
            continue  # a checkpoint deleted since: nothing to evaluate
        identity = (sae_prefix, model_prefix)
        if identity in found:
            continue
        sae_manifest = storage.manifest(sae_prefix)
        llm = {"kind": "model", "prefix": model_prefix} if storage.is_committed(model_prefix) else {"kind": "model", "hub_id": model_prefix}
        if llm.get("prefix"):
            model_manifest = storage.manifest(model_prefix)
            llm.update(compression=compression_of(model_manifest), base_model=model_manifest.get("base_model_name"),
                       content_hash=model_manifest.get("content_hash"))
        # What the row says it is (rows from before variant specs get theirs from their label: current_columns).
        found[identity] = {"kind": "sae_variant", "sae_prefix": sae_prefix, "sae_uri": storage.uri(sae_prefix),
                           "variant": row["sae_variant"], "spec": row["variant_spec"], "method": row["variant_method"],
                           "rule": row["sae_scoring_rule"] or None,
                           "sparsity": row["sae_sparsity"] if row["variant_method"] == "prune" else None, "hook": row["hook"],
                           "llm": llm, "row": row, "row_uri": storage.uri(key), "processing": sae_manifest.get("processing", {})}
    return sorted(found.values(), key=lambda v: (v["hook"], v["sae_prefix"], model_key(v["llm"]) or ""))
