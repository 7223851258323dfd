"""What every artifact task shares: caching, retries, result format, and loaded-object reuse.

Two layers of reuse, on purpose:
- Prefect's cache (INPUTS + TASK_SOURCE, JSON results in the configured storage) skips a task
  whose inputs, code and library fingerprint are unchanged;
- each task also writes its artifact under a content-hashed key and returns the existing
  manifest when that key is already committed, so work is never redone even if Prefect's
  result store was wiped or another machine did it.
Results are small JSON manifests; tensors never pass through Prefect.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE

import sae_core
from sae_core.storage import StorageError

SAE_CORE_DIR = Path(sae_core.__file__).parent


def is_transient(exc: BaseException | None) -> bool:
    """Storage and network trouble is worth retrying; deterministic errors are not."""
    if exc is None:
        return False
    if isinstance(exc, (ValueError, TypeError, KeyError, FileNotFoundError)):
        return False
    return isinstance(exc, (StorageError, ConnectionError, TimeoutError, OSError))


def retry_transient(task, task_run, state) -> bool:  # Prefect's retry_condition_fn signature
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we only classify it
        return is_transient(exc)
    return False


ARTIFACT_TASK_OPTIONS: dict[str, Any] = dict(
    cache_policy=INPUTS + TASK_SOURCE,
    persist_result=True,
    result_serializer="json",
    retries=3,
    retry_delay_seconds=[2, 8, 30],
    retry_condition_fn=retry_transient,
)


@lru_cache(maxsize=None)
def code_fingerprint(*modules: str) -> str:
    """Hash of library source files, so a change in an algorithm invalidates its cached artifacts."""
    digest = hashlib.sha256()
    for module in modules:
        path = SAE_CORE_DIR / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = SAE_CORE_DIR / module.replace(".", "/") / "__init__.py"
        digest.update(module.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# ------------------------------------------------------------------ loaded-object reuse
# Tasks of one process share loaded models, and hooks added for one task's forward pass would
# leak into another's; SAEBench also sets global state. So heavy compute holds this lock: threads
# overlap I/O, while real parallelism comes from process-based runners (Ray), one task per process.
_COMPUTE_LOCK = threading.RLock()


def compute_lock() -> threading.RLock:
    """The process's compute lock. A function, not a bare global, because a task's code is
    shipped to Ray workers by value and would try to pickle a lock it named directly."""
    return _COMPUTE_LOCK


# Several tasks of one flow run use the same model; loading it once per process saves minutes
# on GPT-2/Gemma. Keyed by the artifact's storage URI, so a different model is never reused.
_model_lock = threading.Lock()
_models: dict[tuple, Any] = {}
_MAX_MODELS = 2


_ML_STACK_LOCK = threading.Lock()


def ml_stack() -> None:
    """Import torch, transformers, TransformerLens and sae-lens, once per process, under a lock.

    Task modules import them lazily (a fully cached run never needs them), so the first tasks
    that do real work may start importing from two worker threads at once, and transformers'
    lazy top-level module is not safe for that ("cannot import name 'AutoTokenizer'"). Every
    task that computes calls this first; after the first call it costs nothing.
    """
    with _ML_STACK_LOCK:
        import torch  # noqa: F401
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (resolve the lazy names now)

        import transformer_lens  # noqa: F401
        import sae_lens  # noqa: F401

        del transformers


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and the process's resident
    size would still count a dropped 3 GB model)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def load_model_ref(storage, ref: dict, device: str, dtype: str, only: bool = False):
    """A LoadedModel for a model manifest ({'hub_id'} or {'prefix'} in storage).

    ``only``: drop every other model this process keeps loaded first. Caching and metric tasks
    need just their own model; with Gemma 3 270M, loading the pruned model beside the cached dense
    one (each ~2.9 GB as HF + TransformerLens copies) was the run's 12.6-12.9 GB peak.
    """
    import torch

    from sae_core.model_ref import model_key
    from sae_core.models import load_language_model

    key = (storage.url, model_key(ref), device, dtype)
    with _model_lock:
        if only and any(k != key for k in _models):
            for other in [k for k in _models if k != key]:
                del _models[other]
            gc.collect()
            _return_freed_memory()
        if key not in _models:
            source = str(storage.materialise_dir(ref["prefix"])) if ref.get("prefix") else ref["hub_id"]
            if len(_models) >= _MAX_MODELS:
                _models.pop(next(iter(_models)))
            _models[key] = load_language_model(source, device=device, dtype=getattr(torch, dtype))
        return _models[key]
