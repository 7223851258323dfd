"""SAEBench's LLM-side caches in safe formats, kept across runs.

SAEBench caches what does not depend on the SAE -- sparse probing's and SCR/TPP's LLM activations
(``torch.save``) and LLM probes (``pickle.dump``), absorption's first-letter probe (``torch.save`` of
the module, read back with ``torch.load(weights_only=False)``), RAVEL's model-filtered prompt set
(JSON) -- in a folder the adapter hands it, and decides compute-or-load by whether the file exists.
Reading another run's pickle would execute whatever that file says, so these caches used to live for
one flow run only and every new or resumed run paid the first variant's LLM-side cost again.

This module keeps SAEBench's code doing all the computing and changes only the bytes on disk:

* :func:`safe_serialisation` -- while a family runs, the module globals ``torch`` and ``pickle`` of
  the SAEBench modules that write those files are thin proxies (:class:`SafeTorch`,
  :class:`SafePickle`): ``torch.save`` / ``pickle.dump`` write a safetensors file (every tensor; the
  object's structure -- dicts, lists, numbers, strings, numpy scalars, dtypes -- as JSON in the
  header's metadata; a probe module as its ``state_dict`` tensors plus the constructor arguments
  that rebuild it, for the classes in :data:`MODULES` only); ``torch.load`` / ``pickle.load`` rebuild
  the same objects from such a file. Nothing is ever unpickled: a file that is not this format is an
  error. Everything else those modules do with ``torch`` goes to the real module. Metric tasks run one
  at a time (``tasks.common.compute_lock``), so swapping module attributes is safe (as
  :func:`~sae_core.metrics.base.reseeded_calls`).
* :class:`LlmCache` -- one entry folder per key, ``<root>/<family>/<hash of key>/entry/`` with
  ``manifest.json`` (the full key; every file's size, SHA-256 and format). A cold run lets SAEBench
  write into the entry folder (the same path SAEBench records in its output, cold or warm) and, when
  the family succeeds, commits it by writing the manifest last (temporary file + rename: all or
  nothing); a folder without a manifest (a run that crashed) is deleted by the next run. Single files
  are written the same way (temporary file + rename).
  A warm run checks every file's size and SHA-256 *before* SAEBench reads any of it; an entry with a
  missing, truncated or altered file (or another key) is deleted and recomputed, never trusted.
  Across processes an exclusive ``flock`` on ``<hash>/.lock`` serialises users of one entry.

The key (:func:`llm_cache_key`): the model weights' fingerprint, the tokenizer, the device, what the
adapter passes (settings, hook, ...), the content of the datasets served locally (stand-ins are
rebuilt per run; their bytes, not their paths or times, are keyed), and the versions of sae-bench,
sae-lens, TransformerLens, torch and this format.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 1
ENTRY = "entry"
MANIFEST = "manifest.json"
LOCK = ".lock"
_TREE = "sae_transfer_tree"  # safetensors metadata field holding the object's structure

#: The ``nn.Module`` classes a cache may hold, with the constructor arguments that rebuild each from
#: itself. Anything else is refused at save time (an error naming the class), never pickled.
MODULES: dict[str, Any] = {
    "sae_bench.evals.sparse_probing.probe_training.Probe":
        lambda m: {"activation_dim": m.net.in_features, "dtype": m.net.weight.dtype},
    "sae_bench.evals.absorption.probing.LinearProbe":
        lambda m: {"input_dim": m.fc.in_features, "num_outputs": m.fc.out_features},
}


#: What an entry may hold: this module's safetensors, JSON (RAVEL's prompt sets, manifests), and what
#: absorption's SAEBench code writes and reads itself -- ``data.npz`` (read by ``np.load``, whose default
#: ``allow_pickle=False`` refuses object arrays), ``*_df.csv`` (pandas) and ``*.dat`` (raw float32
#: memmaps, not read back once the probe exists). A cold run that leaves any other file commits nothing.
SAFE_FORMATS = ("safetensors", "json", "npz", "csv", "dat")


class NotSafeCacheFile(ValueError):
    """A file handed to the safe ``torch.load`` / ``pickle.load`` is not one this module wrote."""


# --------------------------------------------------------------------------- object <-> safetensors
def dumps(obj: Any) -> bytes:
    """``obj`` as safetensors bytes: tensors as tensors, the structure as JSON metadata."""
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    storages: set[int] = set()
    tree = _encode(obj, tensors, storages)
    return save(tensors, metadata={_TREE: json.dumps(tree), "format": str(FORMAT)})


def loads(data: bytes, map_location: Any = None) -> Any:
    """The object :func:`dumps` wrote (tensors on their saved device, or on ``map_location``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    tree_json = _metadata(data).get(_TREE)
    if tree_json is None:
        raise NotSafeCacheFile("not a safe-cache file (no structure in the safetensors header)")
    try:
        tensors = load(data)
    except SafetensorError as exc:  # pragma: no cover - the header parsed, the body did not
        raise NotSafeCacheFile(f"unreadable safetensors body: {exc}") from exc
    if map_location is not None and not isinstance(map_location, str):
        import torch

        if not isinstance(map_location, torch.device):
            raise NotImplementedError(f"map_location={map_location!r}: only a device is supported")
    return _decode(json.loads(tree_json), tensors, None if map_location is None else str(map_location))


def _metadata(data: bytes) -> dict[str, str]:
    """The header's ``__metadata__`` (raises :class:`NotSafeCacheFile` for anything else, e.g. a pickle)."""
    if len(data) < 8:
        raise NotSafeCacheFile("too short for a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8 or size > 100 * 2**20:
        raise NotSafeCacheFile("no safetensors header (a pickle or a truncated file?)")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError as exc:
        raise NotSafeCacheFile("no safetensors header (a pickle or a truncated file?)") from exc
    return header.get("__metadata__") or {}


def file_format(path: Path) -> str:
    """"safetensors" (this module's or any), "json", or the file's suffix (SAEBench's own npz/csv/...)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            (size,) = struct.unpack("<Q", head)
            if 0 < size <= min(100 * 2**20, os.path.getsize(path) - 8):
                try:
                    json.loads(f.read(size))
                    return "safetensors"
                except ValueError:
                    pass
    suffix = Path(path).suffix.lstrip(".") or "bytes"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        try:
            json.loads(text)
            return "json"
        except ValueError:
            return "csv" if suffix == "csv" else suffix
    if suffix == "npz":  # numeric arrays only: np.load without allow_pickle refuses object arrays
        import numpy as np

        try:
            with np.load(path) as archive:
                for name in archive.files:
                    archive[name]
            return "npz"
        except Exception:  # noqa: BLE001 - anything numpy cannot read safely is not an npz we keep
            return "npz-unsafe"
    return suffix if suffix in ("dat",) else f"{suffix}-binary"


def _encode(obj: Any, tensors: dict[str, Any], storages: set[int]) -> Any:
    import numpy as np
    import torch

    if obj is None or isinstance(obj, (bool, str)) or type(obj) in (int, float):
        return {"py": obj}
    if isinstance(obj, torch.Tensor):
        return _encode_tensor(obj, tensors, storages)
    if type(obj) is dict:
        return {"dict": [[_encode(k, tensors, storages), _encode(v, tensors, storages)] for k, v in obj.items()]}
    if type(obj) in (list, tuple):
        return {type(obj).__name__: [_encode(v, tensors, storages) for v in obj]}
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return {"np": obj.dtype.str, "value": obj.item()}
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        return {"ndarray": _encode_tensor(torch.from_numpy(np.ascontiguousarray(obj)), tensors, storages)}
    if isinstance(obj, torch.dtype):
        return {"dtype": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.nn.Module):
        return _encode_module(obj, tensors, storages)
    raise TypeError(f"the safe SAEBench cache cannot store a {type(obj).__module__}.{type(obj).__qualname__} "
                    "(only tensors, numbers, strings, dicts, lists, numpy numbers and the probe modules in MODULES)")


def _encode_tensor(tensor: Any, tensors: dict[str, Any], storages: set[int]) -> dict[str, Any]:
    import torch

    key = f"t{len(tensors)}"
    stored = tensor.detach().to("cpu").contiguous()
    if stored.untyped_storage().data_ptr() in storages:
        stored = stored.clone()  # safetensors refuses tensors that share memory
    storages.add(stored.untyped_storage().data_ptr())
    tensors[key] = stored
    return {"tensor": key, "device": str(tensor.device), "requires_grad": bool(tensor.requires_grad),
            "parameter": isinstance(tensor, torch.nn.Parameter)}


def _encode_module(module: Any, tensors: dict[str, Any], storages: set[int]) -> dict[str, Any]:
    name = f"{type(module).__module__}.{type(module).__qualname__}"
    if name not in MODULES:
        raise TypeError(f"the safe SAEBench cache cannot store the module {name} (known: {sorted(MODULES)})")
    kwargs = MODULES[name](module)
    rebuilt = _build_module(name, kwargs)
    ours, theirs = module.state_dict(keep_vars=True), rebuilt.state_dict(keep_vars=True)
    if set(ours) != set(theirs) or any(ours[k].shape != theirs[k].shape for k in ours) \
            or set(vars(module)) != set(vars(rebuilt)):
        raise TypeError(f"{name}: its constructor arguments {kwargs} do not rebuild it (other attributes or shapes)")
    return {"module": name, "kwargs": _encode(kwargs, tensors, storages),
            "state": {k: _encode_tensor(v, tensors, storages) for k, v in ours.items()},
            "training": {k: m.training for k, m in module.named_modules()}}


def _build_module(name: str, kwargs: dict[str, Any]) -> Any:
    module_name, _, cls_name = name.rpartition(".")
    return getattr(importlib.import_module(module_name), cls_name)(**kwargs)


def _decode(node: dict[str, Any], tensors: dict[str, Any], device: str | None) -> Any:
    import numpy as np
    import torch

    (kind,) = [k for k in node if k in ("py", "tensor", "dict", "list", "tuple", "np", "ndarray", "dtype", "module")]
    if kind == "py":
        return node["py"]
    if kind == "tensor":
        tensor = tensors[node["tensor"]].to(device or node["device"])
        if node["parameter"]:
            return torch.nn.Parameter(tensor, requires_grad=node["requires_grad"])
        return tensor.requires_grad_(node["requires_grad"]) if node["requires_grad"] else tensor
    if kind == "dict":
        return {_decode(k, tensors, device): _decode(v, tensors, device) for k, v in node["dict"]}
    if kind in ("list", "tuple"):
        items = [_decode(v, tensors, device) for v in node[kind]]
        return items if kind == "list" else tuple(items)
    if kind == "np":
        dtype = np.dtype(node["np"])
        if dtype.kind not in "biuf":
            raise NotSafeCacheFile(f"numpy scalar of dtype {dtype} is not stored here")
        return dtype.type(node["value"])
    if kind == "ndarray":
        return tensors[node["ndarray"]["tensor"]].numpy()
    if kind == "dtype":
        dtype = getattr(torch, node["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise NotSafeCacheFile(f"{node['dtype']!r} is not a torch dtype")
        return dtype
    if node["module"] not in MODULES:  # never import or call anything a file names, beyond the known probes
        raise NotSafeCacheFile(f"module class {node['module']!r} is not one the cache rebuilds")
    module = _build_module(node["module"], _decode(node["kwargs"], tensors, None))
    state = {k: tensors[t["tensor"]].to(device or t["device"]) for k, t in node["state"].items()}
    module.load_state_dict(state, assign=True)
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(node["state"][name]["requires_grad"])
    for name, sub in module.named_modules():
        sub.training = node["training"][name]
    return module


# --------------------------------------------------------------------------- the proxies
def _write_atomically(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class SafeTorch:
    """``torch`` for a SAEBench module: ``save`` / ``load`` use :func:`dumps` / :func:`loads`, the rest is torch."""

    def __init__(self, torch_module: Any) -> None:
        self._torch = torch_module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)

    @staticmethod
    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(f, (str, os.PathLike)):
            raise TypeError(f"safe torch.save writes to a path, got {type(f).__name__}")
        _write_atomically(f, dumps(obj))

    @staticmethod
    def load(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        data = Path(f).read_bytes() if isinstance(f, (str, os.PathLike)) else f.read()
        return loads(data, map_location)


class SafePickle:
    """``pickle`` for a SAEBench module: ``dump`` / ``load`` use :func:`dumps` / :func:`loads`; nothing is unpickled."""

    def __init__(self, pickle_module: Any) -> None:
        self._pickle = pickle_module

    def __getattr__(self, name: str) -> Any:
        if name in ("loads", "Unpickler", "load"):
            raise AttributeError(f"pickle.{name} is not available to SAEBench while its caches are kept safe")
        return getattr(self._pickle, name)

    @staticmethod
    def dump(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        # SAEBench opened the file itself ("wb"): the bytes go to a temporary file renamed over that name,
        # so a reader never sees half of it; SAEBench's handle then closes the replaced, empty file.
        _write_atomically(f.name, dumps(obj))

    @staticmethod
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        return loads(f.read())


@contextlib.contextmanager
def safe_serialisation(module_names: Iterable[str]) -> Iterator[None]:
    """While open, the listed SAEBench modules' ``torch`` / ``pickle`` globals are :class:`SafeTorch` /
    :class:`SafePickle` (restored on exit)."""
    import pickle

    import torch

    from sae_core.metrics.base import swapped_attributes

    replacements = []
    for name in module_names:
        module = importlib.import_module(name)
        for attr, real, proxy in (("torch", torch, SafeTorch), ("pickle", pickle, SafePickle)):
            if getattr(module, attr, None) is real:
                replacements.append((module, attr, proxy(real)))
    with swapped_attributes(replacements):
        yield


# --------------------------------------------------------------------------- key
_CONTENT_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _CONTENT_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(2**22), b""):
                digest.update(block)
        _CONTENT_MEMO[memo] = digest.hexdigest()
    return _CONTENT_MEMO[memo]


def dataset_content_fingerprint(dataset: str) -> dict[str, Any]:
    """The dataset id and, when it is served from a local folder (stand-in, mirror), a hash of the bytes
    of its files (not their paths or times: the toy stand-ins are rebuilt, identically, by every run)."""
    from sae_core.datasets.mirror import local_folder

    folder = local_folder(dataset)
    if folder is None:
        return {"id": dataset, "content": None}
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}|{_file_sha256(path)}\n".encode())
    return {"id": dataset, "content": digest.hexdigest()[:16]}


def llm_cache_key(*, family: str, model_fingerprint: str, tokenizer: Any, device: str, parts: Any,
                  datasets: Iterable[str] = ()) -> dict[str, Any]:
    """Everything an entry depends on, as JSON (stored in the manifest and compared on open)."""
    from sae_core.metrics.shared_work import tokenizer_fingerprint, versions

    return json.loads(json.dumps({
        "family": family,
        "model_fingerprint": model_fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        "device": str(device),
        "parts": parts,
        "datasets": [dataset_content_fingerprint(d) for d in datasets],
        "versions": {**versions(), "format": str(FORMAT)},
    }, sort_keys=True, default=str))


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the entry
def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _describe(folder: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": _plain_sha256(folder / name),
                   "format": file_format(folder / name)} for name in names}


def _plain_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path, key: dict[str, Any], files: dict[str, Any]) -> None:
    _write_atomically(folder / MANIFEST, json.dumps({"format": FORMAT, "key": key, "files": files},
                                                     indent=1, sort_keys=True).encode())


class LlmCache:
    """``with LlmCache(parent, key, modules) as folder:`` -- ``folder`` is where SAEBench keeps its
    LLM-side files for ``key``: the checked entry (warm) or a staging folder committed on success
    (cold); inside the block ``modules`` (SAEBench module names) save and load safely
    (:func:`safe_serialisation`). ``status`` afterwards: "warm", "cold" (no entry), "recomputed"
    (an entry failed its check and was deleted), "failed" (the block raised; nothing committed) or
    "not_kept" (SAEBench wrote a file outside :data:`SAFE_FORMATS`; nothing committed)."""

    def __init__(self, parent: str | Path, key: dict[str, Any], modules: Iterable[str] = ()) -> None:
        self.parent, self.key, self.modules = Path(parent), key, tuple(modules)
        self.status = "unopened"
        self.problem: str | None = None

    @property
    def entry(self) -> Path:
        return self.parent / ENTRY

    def _check(self) -> dict[str, Any] | None:
        """The entry's manifest if every listed file has its size and SHA-256; files it does not list
        (a warm run's crash) are removed. A broken entry is deleted (None)."""
        if not self.entry.exists():
            return None
        try:
            if not (self.entry / MANIFEST).exists():
                raise ValueError("no manifest (a run that stopped before committing)")
            manifest = json.loads((self.entry / MANIFEST).read_text())
            if manifest.get("format") != FORMAT or manifest.get("key") != self.key:
                raise ValueError("manifest key or format differs")
            for name, meta in manifest["files"].items():
                if meta["format"] not in SAFE_FORMATS:
                    raise ValueError(f"{name}: format {meta['format']!r} is not one kept across runs")
                path = self.entry / name
                if path.stat().st_size != meta["bytes"]:
                    raise ValueError(f"{name}: size differs (truncated?)")
                if _plain_sha256(path) != meta["sha256"]:
                    raise ValueError(f"{name}: SHA-256 differs")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.problem = str(exc)
            log.warning("SAEBench cache %s is not usable (%s); recomputing", self.entry, exc)
            from sae_core.metrics.shared_work import discard

            discard(self.entry)
            return None
        for name in set(_listing(self.entry)) - set(manifest["files"]):
            (self.entry / name).unlink()
        return manifest

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.parent.mkdir(parents=True, exist_ok=True)
        with open(self.parent / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def __enter__(self) -> Path:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self._locked())
        try:
            self.manifest = self._check()
            if self.manifest is not None:
                self.status = "warm"
            else:
                self.status = "recomputed" if self.problem else "cold"
                self.entry.mkdir()
            self.folder = folder = self.entry
            self._stack.enter_context(safe_serialisation(self.modules))
        except BaseException:
            self._stack.close()
            raise
        return folder

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.manifest is None:  # cold: commit the folder (manifest last), or drop it
                files = _describe(self.folder, _listing(self.folder)) if exc_type is None else {}
                unsafe = {name: meta["format"] for name, meta in files.items() if meta["format"] not in SAFE_FORMATS}
                if unsafe:
                    log.warning("SAEBench wrote %s into %s: not kept across runs", unsafe, self.folder)
                    self.problem, self.status = f"unsafe files {unsafe}", "not_kept"
                if exc_type is None and not unsafe:
                    _write_manifest(self.folder, self.key, files)  # the commit
                else:
                    from sae_core.metrics.shared_work import discard

                    discard(self.folder)
                    self.status = "failed" if exc_type is not None else self.status
            else:  # warm: SAEBench may have added files (unexpected); keep them only if the run succeeded
                new = sorted(set(_listing(self.folder)) - set(self.manifest["files"]))
                added = _describe(self.folder, new) if new and exc_type is None else {}
                if added and all(meta["format"] in SAFE_FORMATS for meta in added.values()):
                    _write_manifest(self.folder, self.key, {**self.manifest["files"], **added})
                elif new:
                    for name in new:
                        (self.folder / name).unlink(missing_ok=True)
        finally:
            self._stack.close()
