"""Controls beside the SAE comparison: how far the compressed model is from reading the dense model's activations."""

from __future__ import annotations

from prefect import task

from sae_core.datasets import token_batch
from sae_core.hashing import config_hash
from sae_core.model_ref import compression_label, compression_strength, model_identity
from sae_core.storage import Storage
from tasks.common import ARTIFACT_TASK_OPTIONS, code_fingerprint, compute_lock, load_model_ref, ml_stack


@task(name="dense-patch-control", **ARTIFACT_TASK_OPTIONS)
def dense_patch_control(dense: dict, llm: dict, held_out: dict, quality: dict, dataset: str, storage_url: str,
                        device: str = "cpu", dtype: str = "float32") -> dict:
    """ΔCE = CE(compressed LM, dense activations patched in at the hook) − CE(compressed LM), on the variants' CE windows."""
    ml_stack()
    from sae_core.activations import hook_activations
    from sae_core.sae_quality import dense_patched_ce

    storage = Storage(storage_url)
    hook = held_out["hook_name"]
    key = f"controls/{config_hash('dense-patch', model_identity(dense), model_identity(llm), held_out['prefix'], quality, code_fingerprint(__name__))}.json"
    if not storage.exists(key):
        processing, spec = held_out.get("processing", {}), held_out["spec"]
        # One model in memory at a time: the dense model's activations first (small: ce_sequences
        # windows at one hook), then the compressed model, which the metric tasks after this one use.
        dense_model = load_model_ref(storage, dense, device, dtype, only=True)
        # the same windows as the variants' spliced CE (tasks/saes.py _quality); compression keeps the tokenizer
        tokens = token_batch(dense_model.tokenizer, dataset, quality["ce_sequences"], spec["seq_len"], skip_sequences=spec["skip_sequences"])
        with compute_lock():
            dense_activations = hook_activations(dense_model.hooked(processing), tokens, hook, batch_size=8)
        del dense_model
        pruned = load_model_ref(storage, llm, device, dtype, only=True)
        with compute_lock():
            result = dense_patched_ce(pruned.hooked(processing), dense_activations, tokens, hook)
        storage.put_json(key, {"hook": hook, "model_prefix": llm.get("prefix"), "compression": compression_label(llm),
                               "strength": compression_strength(llm), **result})
    return {"kind": "control", "key": key, "compression": compression_label(llm), **storage.get_json(key)}
