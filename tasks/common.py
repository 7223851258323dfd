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

import ast
import contextlib
import ctypes
import gc
import hashlib
import re
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE

import sae_core
from sae_core.hashing import folder_hash
from sae_core.storage import Storage, StorageError

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


# ------------------------------------------------------------------ code fingerprints
# Packages whose source can change a stored artifact. A task's fingerprint is the hash of every
# module of these packages that its module reaches through imports (top-level and lazy ones inside
# functions, plus "pkg.module:Name" strings such as registry entries), so an edit to any library
# file a task actually uses invalidates that task's artifacts, and no hand-kept list can miss one.
FINGERPRINTED_PACKAGES = ("sae_core", "tasks")
_MODULE_TEXT = re.compile(r"^(?:sae_core|tasks)(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _package_dirs() -> dict[str, Path]:
    import tasks

    return {"sae_core": Path(sae_core.__file__).parent, "tasks": Path(tasks.__file__).parent}


def _module_file(module: str, roots: dict[str, Path]) -> Path | None:
    """The source file of a dotted module name in one of the fingerprinted packages (None if it is not one)."""
    top, _, rest = module.partition(".")
    if top not in roots:
        return None
    base = roots[top].joinpath(*rest.split(".")) if rest else roots[top]
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> tuple[set[str], bool]:
    """Every module name a file imports, anywhere in it, and every string that names one; and
    whether it also imports a module by a name computed at run time."""
    stat = path.stat()
    return _parsed_imports(path, stat.st_mtime_ns, stat.st_size)


_AST_LOCK = threading.Lock()


@lru_cache(maxsize=None)
def _parsed_imports(path: Path, mtime_ns: int, size: int) -> tuple[frozenset[str], bool]:  # keyed on the file's version
    with _AST_LOCK:  # CPython 3.11's ast.parse is not safe from two threads at once ("AST constructor recursion depth mismatch")
        tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    computed = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            computed |= bool(node.args) and isinstance(node.args[0], (ast.JoinedStr, ast.BinOp))
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # "from pkg import module"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.split(":")[0]
            if _MODULE_TEXT.match(text):
                names.add(text)
    return frozenset(names), computed


def module_closure(module: str, roots: dict[str, Path] | None = None) -> list[Path]:
    """The source files ``module`` reaches through imports within the fingerprinted packages.

    Modules named by string constants count as imported (registries such as
    ``"sae_core.compression.wanda:WandaMethod"``); a file that imports a module whose name it
    computes (``import_module(f"pkg.{name}")``) pulls in every module of its package.
    """
    roots = roots or _package_dirs()
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name, roots)
        if path is None or path in seen:
            continue
        seen.add(path)
        names, computed = _imported_names(path)
        todo.extend(names)
        if computed:  # a module name built at run time: every module of the package may be the one
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            todo.extend(f"{package}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__")
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)  # importing pkg.mod runs pkg/__init__.py
    return sorted(seen)


@lru_cache(maxsize=None)
def _file_digest(path: Path, mtime_ns: int, size: int) -> str:  # keyed on the file's version
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_fingerprint(module: str, roots: dict[str, Path] | None = None) -> str:
    """Hash of the source of every library and task module that ``module`` (a task module's
    ``__name__``) reaches through imports: a change in an algorithm it uses invalidates its artifacts.
    Paths enter relative to their package, so the same tree gives the same hash wherever it lies."""
    roots = roots or _package_dirs()
    digest = hashlib.sha256()
    for path in module_closure(module, roots):
        top = next(name for name, root in roots.items() if path.is_relative_to(root))
        stat = path.stat()
        digest.update(f"{top}/{path.relative_to(roots[top]).as_posix()}:".encode())
        digest.update(_file_digest(path, stat.st_mtime_ns, stat.st_size).encode())
    return digest.hexdigest()[:12]


def flow_run_id() -> str:
    """The flow run's id (the ``run_id`` of table rows); ``local`` outside a flow run."""
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or "local")
    except Exception:  # noqa: BLE001 - outside a flow run
        return "local"


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


# ------------------------------------------------------------------ SAE checkpoints and activation batches
# Used by every task that reads or writes an SAE (variants, metrics, the feature audit).
READ_BATCH = 4096


def store_sae(storage: Storage, sae, prefix: str, manifest: dict[str, Any]) -> dict[str, Any]:
    from sae_core.sae_io import save_sae

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sae"
        save_sae(sae, folder)
        storage.upload_dir(folder, prefix, {**manifest, "kind": "sae", "content_hash": folder_hash(folder),
                                            "architecture": sae.cfg.architecture(), "d_in": int(sae.cfg.d_in),
                                            "d_sae": int(sae.cfg.d_sae)})
    return storage.manifest(prefix)


def load_stored_sae(storage: Storage, prefix: str, device: str = "cpu"):
    from sae_core.sae_io import load_sae

    return load_sae(str(storage.materialise_dir(prefix)), device=device)


def sae_processing(sae) -> dict[str, bool]:
    """The HookedTransformer weight processing this SAE was trained with (sae-lens records it)."""
    from sae_core.models import PROCESSING_KEYS

    kwargs = getattr(sae.cfg.metadata, "model_from_pretrained_kwargs", None) or {}
    return {k: bool(v) for k, v in kwargs.items() if k in PROCESSING_KEYS}


def activation_batches(storage: Storage, acts: dict, max_tokens: int | None = None, shuffle: bool = False, seed: int = 0):
    from sae_core.activations import ActivationShards

    return ActivationShards(storage, acts["prefix"], batch_size=READ_BATCH, shuffle=shuffle, seed=seed, max_tokens=max_tokens)
