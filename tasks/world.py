"""The base (dense) model as a manifest, by model source: a hub id, the toy world built and stored once,
or a packaged GGUF dequantized once into an HF folder in storage."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task

from sae_core.toy.world import TOY_MODEL
from sae_core.hashing import config_hash, folder_hash
from sae_core.model_sources import is_packaged_model
from sae_core.storage import Storage
from sae_core.toy.world import ToyWorldConfig
from tasks.common import ARTIFACT_TASK_OPTIONS, code_fingerprint, ml_stack
from tasks.progress import report_progress


@task(name="base-model", **ARTIFACT_TASK_OPTIONS)
def base_model(model: str, toy_world: ToyWorldConfig | None, storage_url: str) -> dict:
    """{'hub_id': ...} for hub models; the toy world or a packaged model: built once into storage."""
    ml_stack()
    if model == TOY_MODEL:
        return _toy_model(toy_world, Storage(storage_url))
    if is_packaged_model(model):
        return _packaged_model(model, Storage(storage_url))
    return {"kind": "model", "hub_id": model, "dense": True}


def _toy_model(toy_world: ToyWorldConfig | None, storage: Storage) -> dict:
    from sae_core.toy.world import build_toy_world

    if toy_world is None:
        raise ValueError("the toy model needs a toy_world config")
    key = config_hash(toy_world, code_fingerprint(__name__))
    prefix = f"toy_world/{key}/model"
    if not storage.is_committed(prefix):
        with tempfile.TemporaryDirectory() as tmp, report_progress():
            world = build_toy_world(Path(tmp), toy_world)
            storage.upload_dir(world.model_dir, prefix, {
                "kind": "model", "source": "toy_world", "toy_world": toy_world.model_dump(),
                "train_stats": world.train_stats, "content_hash": folder_hash(world.model_dir),
            })
    return _manifest_ref(storage, prefix)


def _packaged_model(model: str, storage: Storage) -> dict:
    from sae_core.model_sources import build_packaged_model, package_identity

    identity = package_identity(model)  # fails here, naming what to install, if the package is missing
    # Keyed by what the weights are (package version + file sha) and by the conversion code.
    prefix = f"models/{config_hash(identity, code_fingerprint(__name__))}"
    if not storage.is_committed(prefix):
        with tempfile.TemporaryDirectory() as tmp, report_progress():
            out, work = Path(tmp) / "model", Path(tmp) / "gguf"
            facts = build_packaged_model(model, out, work)
            # upload_dir writes the manifest last: a crash leaves nothing committed.
            storage.upload_dir(out, prefix, {"kind": "model", "name": model, **facts, "content_hash": folder_hash(out)})
    return _manifest_ref(storage, prefix)


def _manifest_ref(storage: Storage, prefix: str) -> dict:
    manifest = storage.manifest(prefix)
    ref = {"kind": "model", "prefix": prefix, "uri": storage.uri(prefix), "content_hash": manifest["content_hash"], "dense": True}
    if manifest.get("source") == "packaged_gguf":
        ref["name"] = manifest["name"]
        ref["provenance"] = {k: manifest[k] for k in ("name", "description", "package", "gguf_file", "gguf_sha256",
                                                      "quantization", "licence", "tl_name") if k in manifest}
    return ref
