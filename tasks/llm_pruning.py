"""WANDA (or magnitude) pruning of the LLM as a task: a pruned HF folder + a Parquet report."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
from prefect import task

from sae_core.data import pruning_windows
from sae_core.hashing import config_hash, folder_hash
from sae_core.lm_eval import perplexity
from sae_core.models import load_language_model
from sae_core.storage import Storage
from sae_core.wanda import PruneConfig, prune_model
from tasks.common import ARTIFACT_TASK_OPTIONS, code_fingerprint
from tasks.progress import report_progress

PERPLEXITY_SEQUENCES = 32
REPORT_NAME = "pruning_report.parquet"


def pruned_model_prefix(dense: dict, prune: PruneConfig, calibration_dataset: str) -> str:
    identity = dense.get("content_hash") or dense.get("hub_id")
    return f"pruned_models/{config_hash(identity, prune, calibration_dataset, code_fingerprint('wanda', 'data'))}"


@task(name="prune-llm", **ARTIFACT_TASK_OPTIONS)
def prune_llm(dense: dict, prune: PruneConfig, calibration_dataset: str, storage_url: str,
              device: str = "cpu", dtype: str = "float32") -> dict:
    """Prune the dense model once per (model, options, calibration data, code); return its manifest."""
    storage = Storage(storage_url)
    prefix = pruned_model_prefix(dense, prune, calibration_dataset)
    if not storage.is_committed(prefix):
        with report_progress():
            _prune_and_store(dense, prune, calibration_dataset, storage, prefix, device, dtype)
    manifest = storage.manifest(prefix)
    return {"kind": "model", "prefix": prefix, "uri": storage.uri(prefix), "content_hash": manifest["content_hash"],
            "dense": False, "base_model": manifest["base_model_name"], "pruning": manifest["pruning"],
            "perplexity": manifest["perplexity"]}


def _prune_and_store(dense, prune, calibration_dataset, storage, prefix, device, dtype) -> None:
    import torch

    # A private copy: pruning is in place and the cached dense model must stay dense.
    source = str(storage.materialise_dir(dense["prefix"])) if dense.get("prefix") else dense["hub_id"]
    model = load_language_model(source, device=device, dtype=getattr(torch, dtype))
    seq_len = prune.seq_len or min(1024, getattr(model.hf_model.config, "n_positions", 1024))
    calibration, held_out = pruning_windows(model.tokenizer, calibration_dataset, prune.n_calibration_samples,
                                            PERPLEXITY_SEQUENCES, seq_len, prune.seed)
    dense_ppl = perplexity(model.hf_model, held_out)
    started = time.perf_counter()
    report = prune_model(model.hf_model, calibration if prune.method == "wanda" else None, prune)
    wall_time = time.perf_counter() - started
    pruned_ppl = perplexity(model.hf_model, held_out)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.hf_model.save_pretrained(folder, safe_serialization=True)
        model.tokenizer.save_pretrained(folder)
        # No wall time in the folder: it is hashed into every downstream key and must be deterministic.
        rows = pd.DataFrame(report.to_rows()).drop(columns=["wall_time_s"], errors="ignore")
        rows["method"], rows["target_sparsity"], rows["structure"] = prune.method, prune.sparsity, prune.structure
        rows.to_parquet(folder / REPORT_NAME, index=False)
        content_hash = folder_hash(folder)
        storage.upload_dir(folder, prefix, {
            "kind": "model",
            "base_model": dense,
            "base_model_name": dense.get("hub_id") or dense.get("name") or f"toy-world:{dense['content_hash']}",
            "pruning": {**prune.model_dump(mode="json"), "calibration_dataset": calibration_dataset,
                        "calibration_tokens": int(calibration.numel()) if prune.method == "wanda" else 0,
                        "achieved_sparsity": report.overall_sparsity, "wall_time_s": round(wall_time, 3)},
            "perplexity": {"dense": dense_ppl, "pruned": pruned_ppl, "held_out_tokens": int(held_out.numel())},
            "content_hash": content_hash,
        })
