"""The base (dense) model as a manifest: a hub id, or the toy world built and stored once."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task

from sae_core.config import TOY_MODEL
from sae_core.toy.world import ToyWorldConfig
from sae_core.hashing import config_hash, folder_hash
from sae_core.storage import Storage
from tasks.common import ARTIFACT_TASK_OPTIONS, code_fingerprint
from tasks.progress import report_progress


@task(name="base-model", **ARTIFACT_TASK_OPTIONS)
def base_model(model: str, toy_world: ToyWorldConfig | None, storage_url: str) -> dict:
    """{'hub_id': ...} for hub models; for the toy preset, build the world once and store it."""
    if model != TOY_MODEL:
        return {"kind": "model", "hub_id": model, "dense": True}
    from sae_core.toy.world import build_toy_world

    if toy_world is None:
        raise ValueError("the toy model needs a toy_world config")

    storage = Storage(storage_url)
    key = config_hash(toy_world, code_fingerprint("toy.world", "toy.corpus", "toy.lexicon"))
    prefix = f"toy_world/{key}/model"
    if not storage.is_committed(prefix):
        with tempfile.TemporaryDirectory() as tmp, report_progress():
            world = build_toy_world(Path(tmp), toy_world)
            storage.upload_dir(world.model_dir, prefix, {
                "kind": "model", "source": "toy_world", "toy_world": toy_world.model_dump(),
                "train_stats": world.train_stats, "content_hash": folder_hash(world.model_dir),
            })
    manifest = storage.manifest(prefix)
    return {"kind": "model", "prefix": prefix, "uri": storage.uri(prefix), "content_hash": manifest["content_hash"], "dense": True}
