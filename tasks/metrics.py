"""Every SAEBench metric family as its own cached task, run on the compressed model.

One generic task body, named per family in the flow (``metric-core``, ``metric-scr``, ...). The
family is an explicit input, so each family has its own cache entries. Each run stores
SAEBench's JSON as it came (``metrics/<family>/<key>.json``) and its headline numbers as one
tidy Parquet file (``metrics/<family>/<key>.parquet``; raw JSON in ``metrics_raw/``); concurrent runs never share a file, and
every run is one ``read_parquet`` over ``metrics/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from sae_core.hashing import config_hash
from sae_core.metrics.rows import metric_rows
from sae_core.model_ref import model_key
from sae_core.progress import Progress
from sae_core.storage import Storage
from tasks.progress import mirror_tqdm, report_progress
from tasks.common import ARTIFACT_TASK_OPTIONS, code_fingerprint, compute_lock, flow_run_id, load_model_ref, load_stored_sae, ml_stack

def metric_key(metric: str, variant: dict, settings: dict, profile: str) -> str:
    """What a metric result depends on: the SAE and the model it runs on, the settings, the adapter
    code and the installed sae-bench version. Not the experiment's name, device or run."""
    from sae_core.metrics.base import sae_bench_version

    return config_hash(metric, variant["sae_prefix"], model_key(variant["llm"]),
                       variant.get("processing", {}), settings, profile, code_fingerprint(__name__), sae_bench_version())


def metric_cache_key(context, parameters: dict) -> str:
    """Prefect's cache key for ``evaluate_metric``: the storage key of its rows, so a re-evaluation
    (or another experiment) of an unchanged (variant, metric, settings, code) shows as Cached."""
    p = parameters
    return metric_key(p["metric"], p["variant"], p["settings"], p["profile"])


def _cache_root() -> Path:
    return Path(os.environ.get("SAE_TRANSFER_CACHE", Path.home() / ".cache" / "sae-transfer"))


def sae_bench_run_cache(storage_url: str, run_id: str | None = None) -> Path:
    """Where SAEBench keeps the caches of one flow run that are not kept safe across runs: the toy
    stand-in datasets, core's shared work, sae-probes' and autointerp's activations (``torch.save``).

    Keyed by storage root *and* flow run, and deleted when the run ends (``discard_sae_bench_run_cache``):
    SAE variants of one run on the same compressed model share it, but no run ever reads (unpickles) a file
    another run wrote. The LLM-side caches that are written in safe formats live beside it in
    :func:`sae_bench_llm_cache` and outlive the run. Finished metric rows are reused across runs through
    storage and Prefect's cache, which never unpickle anything.
    """
    run_id = run_id or flow_run_id()
    if run_id == "local":  # outside a flow run: private to this process
        run_id = f"local-{os.getpid()}"
    return _cache_root() / "sae_bench" / config_hash(Storage(storage_url).url, length=10) / run_id


def sae_bench_llm_cache(storage_url: str) -> Path:
    """Where the SAE-independent LLM-side caches of sparse probing, SCR/TPP, absorption and RAVEL live
    across runs on one storage root (:mod:`sae_core.metrics.safe_cache`: safetensors + JSON only, every
    file checked by size and SHA-256 before it is read, keyed by model weights, tokenizer, settings, hook,
    datasets and library versions), so a new or resumed run on the same compressed model skips their
    LLM forwards and LLM probe training.

    Local, not under the storage root: SAEBench reads and writes these files by local path, and storage
    may be s3. Keyed by the storage URL (one cache per study, removed with ``rm -rf``; an s3 study keeps one
    such cache per machine that runs its metrics); the entry keys make sharing between runs safe.
    """
    return _cache_root() / "sae_bench" / config_hash(Storage(storage_url).url, length=10) / "llm-cache"


def discard_sae_bench_run_cache(storage_url: str, run_id: str | None = None) -> None:
    shutil.rmtree(sae_bench_run_cache(storage_url, run_id), ignore_errors=True)


@task(name="metric", **{**ARTIFACT_TASK_OPTIONS, "cache_policy": TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=metric_cache_key)})
def evaluate_metric(metric: str, variant: dict, settings: dict, profile: str, experiment: str, storage_url: str,
                    device: str = "cpu", dtype: str = "float32", seed: int = 0) -> dict:
    """Run one SAEBench metric family for one SAE variant on its compressed model; store raw JSON + tidy rows."""
    from sae_core.metrics import registry

    ml_stack()
    storage = Storage(storage_url)
    key = metric_key(metric, variant, settings, profile)
    # Raw JSON lives beside, not inside, metrics/ so that `pd.read_parquet("<root>/metrics")` reads every row.
    rows_key, raw_key = f"metrics/{metric}/{key}.parquet", f"metrics_raw/{metric}/{key}.json"
    if not storage.exists(rows_key):
        model = load_model_ref(storage, variant["llm"], device, dtype, only=True)
        sae = load_stored_sae(storage, variant["sae_prefix"], device)
        # SAEBench sets global state (seeds, grad mode, dataset loaders): one metric at a time per process.
        # On this task's page: one bar for the whole metric (some families draw none of their own, e.g.
        # core runs quiet) and SAEBench's own tqdm bars, not only in the worker's terminal.
        with compute_lock(), tempfile.TemporaryDirectory() as scratch, report_progress(), \
                Progress(1, f"SAEBench {metric} (whole metric)", show=False) as whole, mirror_tqdm(f"SAEBench {metric}"):
            hooked = model.hooked(variant.get("processing", {}))
            result = registry.run_metric(
                metric, sae=sae, hooked_model=hooked, hf_model=model.hf_model, tokenizer=model.tokenizer,
                settings=settings, profile=profile, artifacts_dir=sae_bench_run_cache(storage.url) / metric, scratch_dir=Path(scratch),
                llm_cache_dir=sae_bench_llm_cache(storage.url),
                device=device, seed=seed,
            )
            whole.update(1)
        storage.put_json(raw_key, result.model_dump(mode="json"))
        storage.put_parquet(rows_key, metric_rows(result, variant, settings, experiment, run_id=flow_run_id()))  # the row file commits the run
    rows = storage.get_parquet(rows_key)
    return {"kind": "metric", "metric": metric, "rows_key": rows_key, "raw_key": raw_key, "uri": storage.uri(rows_key),
            "status": str(rows["status"].iloc[0]) if len(rows) else "empty",
            "headline": {r["metric_name"]: (None if pd.isna(r["value"]) else float(r["value"])) for _, r in rows.iterrows()}}
