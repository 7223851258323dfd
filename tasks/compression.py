"""Compression of the LLM as a task (any method of sae_core/compression): a compressed HF folder + a Parquet report."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
from prefect import task

from sae_core.compression import CompressionSpec
from sae_core.datasets import pruning_windows
from sae_core.hashing import config_hash, folder_hash
from sae_core.model_ref import compression_of, model_identity
from sae_core.storage import Storage
from tasks.common import ARTIFACT_TASK_OPTIONS, code_fingerprint, ml_stack
from tasks.progress import report_progress

PERPLEXITY_SEQUENCES = 32
REPORT_NAME = "compression_report.parquet"  # per-module rows of every method
CALIBRATION_KEYS = ("dataset", "n_samples", "seq_len", "seed", "module_groups")  # sae_core.config.CalibrationSettings


def compressed_model_prefix(dense: dict, spec: CompressionSpec, calibration: dict) -> str:
    return f"compressed_models/{config_hash(model_identity(dense), spec.text, calibration, code_fingerprint(__name__))}"


@task(name="compress-llm", **ARTIFACT_TASK_OPTIONS)
def compress_llm(dense: dict, spec: CompressionSpec, calibration: dict, storage_url: str, device: str = "cpu",
                 dtype: str = "float32") -> dict:
    """Compress the dense model once per (model, spec, calibration settings, code); return its manifest.

    ``spec``: parsed once by the config (e.g. ``wanda:0.5``, ``sparsegpt:2:4``, ``rtn:4``); a pydantic
    model, so Prefect hashes it through its JSON form (see ``sae_core/compression/spec.py``).
    ``calibration``: ``ExperimentConfig.calibration.model_dump()`` (``CALIBRATION_KEYS``); the held-out
    perplexity windows (``sae_core.datasets.pruning_windows``) are the same for every method and seed.
    """
    ml_stack()
    spec = CompressionSpec.model_validate(spec)  # an instance passes as it is
    calibration = {key: calibration[key] for key in CALIBRATION_KEYS}
    storage = Storage(storage_url)
    prefix = compressed_model_prefix(dense, spec, calibration)
    if not storage.is_committed(prefix):
        with report_progress():
            _compress_and_store(dense, spec, calibration, storage, prefix, device, dtype)
    manifest = storage.manifest(prefix)
    return {"kind": "model", "prefix": prefix, "uri": storage.uri(prefix), "content_hash": manifest["content_hash"],
            "dense": False, "base_model": manifest["base_model_name"], "compression": manifest["compression"],
            "perplexity": manifest["perplexity"]}


def _compress_and_store(dense, spec, calibration, storage, prefix, device, dtype) -> None:
    import torch

    from sae_core.compression import compress_model
    from sae_core.lm_eval import perplexity
    from sae_core.models import load_language_model

    # A private copy: compression is in place and the cached dense model must stay dense.
    source = str(storage.materialise_dir(dense["prefix"])) if dense.get("prefix") else dense["hub_id"]
    model = load_language_model(source, device=device, dtype=getattr(torch, dtype))
    n_calibration = calibration["n_samples"]
    seq_len = calibration["seq_len"] or min(1024, getattr(model.hf_model.config, "n_positions", 1024))
    # Calibration windows drawn with calibration.seed; the perplexity windows never depend on it.
    calibration_ids, held_out = pruning_windows(model.tokenizer, calibration["dataset"], n_calibration,
                                                PERPLEXITY_SEQUENCES, seq_len, calibration["seed"])
    dense_ppl = perplexity(model.hf_model, held_out)
    started = time.perf_counter()
    report = compress_model(model.hf_model, spec, calibration_ids, module_groups=calibration["module_groups"])
    wall_time = round(time.perf_counter() - started, 3)
    compressed_ppl = perplexity(model.hf_model, held_out)
    # The one compression block: the spec's fields (CompressionSpec.model_validate reads them back), what it did, how.
    summary = {**report.summary(), "calibration_dataset": calibration["dataset"], "calibration": calibration,
               "wall_time_s": wall_time}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.hf_model.save_pretrained(folder, safe_serialization=True)
        model.tokenizer.save_pretrained(folder)
        # No wall time in the folder: it is hashed into every downstream key and must be deterministic.
        pd.DataFrame(report.to_rows()).to_parquet(folder / REPORT_NAME, index=False)
        content_hash = folder_hash(folder)
        storage.upload_dir(folder, prefix, {
            "kind": "model",
            "base_model": dense,
            "base_model_name": dense.get("hub_id") or dense.get("name") or f"toy-world:{dense['content_hash']}",
            "compression": summary,
            "perplexity": {"dense": dense_ppl, "compressed": compressed_ppl, "pruned": compressed_ppl,
                           "held_out_tokens": int(held_out.numel())},
            "content_hash": content_hash,
        })


# ------------------------------------------------------------------ matched-perplexity comparison
def _held_out_perplexity(model: dict) -> float:
    perplexity = model["perplexity"]
    return float(perplexity.get("compressed", perplexity.get("pruned")))


@task(name="match-compression", **ARTIFACT_TASK_OPTIONS)
def match_compression(dense: dict, match: dict, reference: dict, calibration: dict, storage_url: str,
                      device: str = "cpu", dtype: str = "float32") -> dict:
    """Bisect ``match['method']``'s sparsity until its held-out perplexity matches the ``reference``
    compressed model's (both measured on the same windows by the compression task); the chosen
    model's manifest, plus the search (target, chosen strength, every step). ``match``:
    ``MatchSettings.model_dump()`` (its method name canonical, checked to take a sparsity)."""
    ml_stack()
    from sae_core.feature_audit import match_strength

    tried: dict[float, dict] = {}

    def evaluate(sparsity: float) -> float:
        # Each step is the compression task's own body: stored (and reused) under its usual key.
        # The step's spec, built (not parsed): its sparsity to 6 significant digits, as its spec text shows it.
        spec = CompressionSpec(method=match["method"], sparsity=float(f"{sparsity:g}"))
        tried[sparsity] = compress_llm.fn(dense, spec, calibration, storage_url, device, dtype)
        return _held_out_perplexity(tried[sparsity])

    target = _held_out_perplexity(reference)
    found = match_strength(evaluate, target, match["lo"], match["hi"], match["steps"])
    return {**tried[found.strength], "match": {"reference": compression_of(reference),
                                               "target_perplexity": target, "strength": found.strength,
                                               "perplexity": found.value, "trace": [list(step) for step in found.trace]}}
