"""Activation caching as a task: shards in storage, a manifest as the result."""

from __future__ import annotations

from prefect import task

from sae_core.activation_spec import ActivationCacheSpec
from sae_core.hashing import config_hash
from sae_core.model_ref import model_identity
from sae_core.storage import Storage
from tasks.common import ARTIFACT_TASK_OPTIONS, code_fingerprint, compute_lock, load_model_ref, ml_stack
from tasks.progress import report_progress


def activation_prefix(model: dict, spec: ActivationCacheSpec, processing: dict) -> str:
    return f"activations/{config_hash(model_identity(model), spec, processing, code_fingerprint(__name__))}"


@task(name="cache-activations", **ARTIFACT_TASK_OPTIONS)
def cache_activations_task(model: dict, spec: ActivationCacheSpec, processing: dict, storage_url: str,
                           device: str = "cpu", dtype: str = "float32") -> dict:
    ml_stack()
    storage = Storage(storage_url)
    prefix = activation_prefix(model, spec, processing)
    if not storage.is_committed(prefix):
        from sae_core.activations import cache_activations

        loaded = load_model_ref(storage, model, device, dtype, only=True)
        with compute_lock(), report_progress():
            # residual hooks through the HF model's own forward; the TransformerLens view (built only
            # for other hooks) with ``processing``: the same activations either way
            cache_activations(loaded, loaded.tokenizer, spec, storage, prefix, processing=processing,
                              extra_manifest={"model": model, "processing": processing})
    manifest = storage.manifest(prefix)
    return {"kind": "activations", "prefix": prefix, "uri": storage.uri(prefix), "n_tokens": manifest["n_tokens"],
            "d_in": manifest["d_in"], "hook_name": spec.hook_name, "spec": spec.model_dump(), "processing": processing}
