"""SAEBench's SAE-independent work, done once per model and reused by every SAE evaluated on it.

Two users of one storage format (:class:`EntryWriter` / :class:`SharedWorkEntry`: safetensors files +
a manifest with sizes and SHA-256, written all or nothing, a broken entry deleted and recomputed):

* **the generic layer** -- :class:`SharedModel`, built by :func:`shared_model_calls`: a stand-in for
  the ``HookedTransformer`` that any family's adapter hands SAEBench. ``run_with_cache`` calls made
  with no hook attached are SAE-independent; they are answered from the entry by a hash of their
  arguments (tokens or prompt strings, names filter, stop layer, ...) or computed and recorded;
  everything else goes to the real model. Keyed by :func:`shared_calls_key` (weights fingerprint,
  tokenizer, family and settings, dtype, device, versions, what the adapter adds). Absorption can
  hand it to SAEBench (``Absorption.share_model_work``, off by default: its prompts are picked
  through the SAE and carry random in-context examples, so another SAE's batches rarely match).
  Where the other families stand (measured, docs/benchmarks.md
  section 11): sparse probing, SCR and TPP already reuse their LLM activations and LLM probes through
  SAEBench's own ``save_activations`` (no model forward for a further SAE), and RAVEL its filtered
  prompt set -- kept across runs as safetensors / JSON by :mod:`sae_core.metrics.safe_cache`; their
  per-SAE time is SAE encode/decode and probe / mask training, SAE-dependent.
* **core**, below: ``run_evals`` needs more than ``run_with_cache`` (token draws from the
  ``ActivationsStore``, the clean forward, the zero-ablated ``run_with_hooks``), so it has its own
  stand-ins, :class:`RecordingModel` / :class:`ReplayModel` and the store twins, on the same entry
  format.

Core in detail.

SAEBench's ``run_evals`` (``sae_bench/evals/core/main.py``) does, per SAE:

* draws ``n_eval_reconstruction_batches`` token batches from the ``ActivationsStore`` and, per batch,
  three full forward passes in ``get_recons_loss``: the **clean** model (logits + per-token CE loss),
  the SAE-**spliced** model, and the **zero-ablated** model (the hook's activations replaced by zeros);
* resets the store, draws ``n_eval_sparsity_variance_batches`` batches and, per batch, runs the model
  up to the hook (``run_with_cache``) to read the **hook activations** the SAE then encodes.

Only the spliced pass depends on the SAE. The token draws, the clean and zero-ablated outputs and the
hook activations depend on the model's weights, the tokenizer, the dataset, the core settings and the
hook -- not on the SAE -- yet SAEBench recomputes them for every SAE variant.

This module does not compute any metric: SAEBench's own ``run_evals`` runs unchanged. It only hands
``run_evals`` two stand-ins:

* the first SAE on a model runs with :class:`RecordingModel` / :class:`RecordingStore` around the real
  ``HookedTransformer`` and ``ActivationsStore``: every call goes through to them, and the outputs of
  the SAE-independent calls (the token draws, the clean forward, the zero-ablated ``run_with_hooks``,
  the hook ``run_with_cache``) are written to a :class:`SharedWorkEntry` as they come;
* every further SAE runs with :class:`ReplayModel` / :class:`ReplayStore`: the store serves the
  recorded token batches in the recorded order, the model serves the recorded outputs of those calls
  (looked up by a hash of the batch's tokens and the call's arguments) and passes every other call --
  the spliced pass -- to the real model. The tensors served are the ones SAEBench computed, loaded
  bit for bit, so every metric is identical to a run without the shared work.

A call is "the zero-ablated pass" only if its one forward hook is SAEBench's own
``get_recons_loss.<locals>.standard_zero_ablate_hook`` / ``single_head_zero_ablate_hook`` (module
``sae_bench.evals.core.main``): an SAE-dependent hook is never mistaken for it, and a SAEBench version
that renames it just stops being shared (the entry is keyed on the version anyway).

Storage (never pickle): one folder per key under the run's SAEBench cache,
``<artifacts_dir>/core/<hash>/shared/``, holding one safetensors file per recorded tensor group and
``manifest.json`` (the full key, every file's size and SHA-256, which call each file answers). The key
(:func:`shared_work_key`) is the model weights' fingerprint, the tokenizer, the dataset actually served,
every core setting, the SAE's hook / head / prepend-BOS / context / width, the LLM dtype and device, and
the versions of sae-bench, sae-lens, TransformerLens, torch and this format. Written all-or-nothing: a
private temporary folder, manifest last, then one rename. Read defensively: a missing or unreadable
manifest, a key that differs, a file of the wrong size (truncated) or wrong SHA-256 (checked when the
file is read) makes the entry untrusted -- it is deleted and the work recomputed, never served.

Size: the clean and ablated logits are ``batches x prompts x context x vocab`` floats (4 x 2 x 128 x
262144 float32 = 1 GiB each for Gemma 3 270M under the "real" profile). Above :data:`MAX_BYTES`
(``SAE_TRANSFER_CORE_SHARED_MAX_BYTES``, default 256 MiB) nothing is shared and SAEBench runs as it
always did (SAEBench's hub settings, 200 x 16 x 128 tokens, would need hundreds of GB). The default
keeps the sharing to runs where it is measured (the toy world: docs/benchmarks.md section 11); the
gigabyte-sized Gemma entries are not yet measured against the time they save, so they stay off
unless the variable raises the cap.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FORMAT = 1
ENTRY = "shared"
MANIFEST = "manifest.json"
MAX_BYTES = int(os.environ.get("SAE_TRANSFER_CORE_SHARED_MAX_BYTES", 256 * 2**20))
_ZERO_ABLATE_HOOKS = frozenset({"get_recons_loss.<locals>.standard_zero_ablate_hook",
                                "get_recons_loss.<locals>.single_head_zero_ablate_hook"})
_CORE_MODULE = "sae_bench.evals.core.main"


class SharedWorkMismatch(RuntimeError):
    """A stored entry cannot answer what SAEBench asked (more draws than recorded, another batch size, a
    file that fails its checksum): the caller discards the entry and runs without it."""


# --------------------------------------------------------------------------- key
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"format": str(FORMAT)}
    for dist in ("sae-bench", "sae-lens", "transformer-lens", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            out[dist] = "unknown"
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the vocabulary, the special tokens and the tokenizer's class (the token draws depend on them)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    digest.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    specials = {name: getattr(tokenizer, name, None) for name in
                ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side", "truncation_side")}
    digest.update(json.dumps(specials, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset: str) -> dict[str, Any]:
    """The dataset id and, when it is served from a local folder (stand-in, mirror), that folder and its files."""
    from sae_core.datasets.mirror import local_folder

    folder = local_folder(dataset)
    if folder is None:
        return {"id": dataset, "folder": None}
    files = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in Path(folder).rglob("*") if p.is_file())
    return {"id": dataset, "folder": str(Path(folder).resolve()), "files": files}


def shared_work_key(*, model_fingerprint: str, tokenizer: Any, settings: Any, sae: Any, llm_dtype: str,
                    device: str) -> dict[str, Any]:
    """Everything the shared work depends on, as JSON (stored in the manifest and compared on read)."""
    metadata = sae.cfg.metadata
    return {
        "model_fingerprint": model_fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "dataset": dataset_fingerprint(settings.dataset),
        "settings": settings.model_dump(mode="json"),
        "hook": {"hook_name": sae.cfg.hook_name, "hook_layer": getattr(sae.cfg, "hook_layer", None),
                 "hook_head_index": sae.cfg.hook_head_index, "prepend_bos": metadata.prepend_bos,
                 "context_size": metadata.context_size, "seqpos_slice": list(metadata.seqpos_slice or (None,)),
                 "d_in": sae.cfg.d_in},
        "llm_dtype": llm_dtype,
        "device": str(device),
        "versions": versions(),
    }


def estimated_bytes(settings: Any, *, d_vocab: int, d_in: int, itemsize: int) -> int:
    """What an entry for ``settings`` holds: two logits tensors per reconstruction batch, one hook
    activation tensor per sparsity batch, the token draws."""
    tokens_per_batch = settings.batch_size_prompts * settings.context_size
    recon = settings.n_eval_reconstruction_batches if (settings.compute_kl or settings.compute_ce_loss) else 0
    sparse = settings.n_eval_sparsity_variance_batches if (
        settings.compute_l2_norms or settings.compute_sparsity_metrics or settings.compute_variance_metrics) else 0
    return (recon * tokens_per_batch * (2 * d_vocab + 2) * itemsize + sparse * tokens_per_batch * d_in * itemsize
            + (recon + sparse) * tokens_per_batch * 8)


def tokens_hash(tokens: torch.Tensor) -> str:
    array = tokens.detach().cpu().contiguous().numpy()
    digest = hashlib.sha256(f"{tuple(array.shape)}|{array.dtype}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:32]


def _call_key(kind: str, tokens: torch.Tensor, **args: Any) -> str:
    return f"{kind}:{tokens_hash(tokens)}:{json.dumps(args, sort_keys=True, default=str)}"


def is_zero_ablation(fwd_hooks: Any) -> bool:
    """True iff ``fwd_hooks`` is exactly one hook and it is SAEBench core's own zero-ablation hook."""
    if not isinstance(fwd_hooks, (list, tuple)) or len(fwd_hooks) != 1:
        return False
    fn = fwd_hooks[0][1]
    while isinstance(fn, functools.partial):
        if fn.args or fn.keywords:
            return False
        fn = fn.func
    return getattr(fn, "__module__", None) == _CORE_MODULE and getattr(fn, "__qualname__", None) in _ZERO_ABLATE_HOOKS


# --------------------------------------------------------------------------- the stored entry
def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class SharedWorkEntry:
    """A finished, checked entry: ``manifest`` read from ``folder``; files are verified as they are read."""

    folder: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, parent: Path, key: dict[str, Any]) -> "SharedWorkEntry | None":
        """The entry under ``parent`` if it is complete and its key is ``key``; a broken one is deleted (None)."""
        folder = Path(parent) / ENTRY
        if not folder.exists():
            return None
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            if manifest.get("format") != FORMAT or manifest.get("key") != json.loads(json.dumps(key, default=str)):
                raise SharedWorkMismatch("manifest key differs")
            for name, meta in manifest["files"].items():
                if (folder / name).stat().st_size != meta["bytes"]:
                    raise SharedWorkMismatch(f"{name}: size differs (truncated?)")
        except (OSError, ValueError, KeyError, TypeError, SharedWorkMismatch) as exc:
            log.warning("core shared work at %s is not usable (%s); recomputing", folder, exc)
            discard(folder)
            return None
        return cls(folder, manifest)

    def load(self, name: str, device: str) -> dict[str, torch.Tensor]:
        """The tensors of file ``name``, after checking its SHA-256 (one read serves both)."""
        from safetensors.torch import load

        meta = self.manifest["files"].get(name)
        if meta is None:
            raise SharedWorkMismatch(f"{name} is not in the manifest")
        try:
            data = (self.folder / name).read_bytes()
        except OSError as exc:
            raise SharedWorkMismatch(f"{name}: {exc}") from exc
        if len(data) != meta["bytes"] or _sha256_bytes(data) != meta["sha256"]:
            raise SharedWorkMismatch(f"{name}: checksum differs")
        return {k: v.to(device) for k, v in load(data).items()}

    def discard(self) -> None:
        discard(self.folder)


def discard(folder: Path) -> None:
    """Delete an entry folder: renamed aside first, so no reader ever sees half of it."""
    folder = Path(folder)
    if not folder.exists():
        return
    aside = folder.with_name(f".{folder.name}.discarded-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        folder.rename(aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)


class EntryWriter:
    """Writes an entry into a private temporary folder as SAEBench produces it; :meth:`commit` writes the
    manifest last and renames the folder into place (all or nothing)."""

    def __init__(self, parent: Path, key: dict[str, Any]) -> None:
        self.parent = Path(parent)
        self.parent.mkdir(parents=True, exist_ok=True)
        self.key = json.loads(json.dumps(key, default=str))
        self.staging = Path(tempfile.mkdtemp(prefix=f".{ENTRY}.tmp-", dir=self.parent))
        self.files: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, str] = {}  # call key -> file
        self.draws: list[torch.Tensor] = []
        self.recorded_calls = 0

    def add_call(self, call_key: str, tensors: dict[str, torch.Tensor]) -> None:
        if call_key in self.calls:  # the same batch twice (a dataset that wrapped around): same outputs
            return
        name = f"call_{len(self.calls):05d}.safetensors"
        self._write(name, tensors)
        self.calls[call_key] = name

    def add_draw(self, tokens: torch.Tensor) -> None:
        self.draws.append(tokens.detach().cpu().clone())

    def _write(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        (self.staging / name).write_bytes(data)
        self.files[name] = {"bytes": len(data), "sha256": _sha256_bytes(data)}

    def commit(self) -> None:
        self._write("draws.safetensors", {f"draw_{i:05d}": t for i, t in enumerate(self.draws)})
        manifest = {"format": FORMAT, "key": self.key, "files": self.files, "calls": self.calls,
                    "n_draws": len(self.draws), "draw_batch_sizes": [int(t.shape[0]) for t in self.draws]}
        tmp = self.staging / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, self.staging / MANIFEST)
        final = self.parent / ENTRY
        try:
            self.staging.rename(final)
        except OSError:  # another process committed the same key first: keep theirs
            self.abort()

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


# --------------------------------------------------------------------------- stand-ins handed to run_evals
@dataclass
class Counters:
    """What the stand-ins did in one ``run_evals``: real passes of the SAE-independent kinds, and replays."""

    computed: dict[str, int] = field(default_factory=lambda: {"clean": 0, "ablated": 0, "hook_acts": 0, "draws": 0})
    reused: dict[str, int] = field(default_factory=lambda: {"clean": 0, "ablated": 0, "hook_acts": 0, "draws": 0})


def _clean_call(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tokens of SAEBench's clean call ``model(tokens, return_type="both", loss_per_token=True)``, else None."""
    if len(args) == 1 and kwargs == {"return_type": "both", "loss_per_token": True}:
        return args[0]
    return None


def _ablated_call(args: tuple, kwargs: dict) -> torch.Tensor | None:
    rest = {k: v for k, v in kwargs.items() if k != "fwd_hooks"}
    if len(args) == 1 and rest == {"return_type": "both", "loss_per_token": True} and is_zero_ablation(kwargs.get("fwd_hooks")):
        return args[0]
    return None


def _cache_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict[str, Any]] | None:
    names = kwargs.get("names_filter")
    if (len(args) == 1 and set(kwargs) == {"prepend_bos", "names_filter", "stop_at_layer"}
            and isinstance(names, (list, tuple)) and len(names) == 1 and kwargs["prepend_bos"] is False):
        return args[0], {"names": list(names), "stop_at_layer": kwargs["stop_at_layer"]}
    return None


class _Passthrough:
    def __init__(self, model: Any, counters: Counters) -> None:
        self._model = model
        self.counters = counters

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class RecordingModel(_Passthrough):
    """The real model; the SAE-independent calls' outputs are also written to ``writer``."""

    def __init__(self, model: Any, writer: EntryWriter, counters: Counters) -> None:
        super().__init__(model, counters)
        self._writer = writer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._model(*args, **kwargs)
        tokens = _clean_call(args, kwargs)
        if tokens is not None:
            self.counters.computed["clean"] += 1
            self._writer.add_call(_call_key("clean", tokens), {"logits": out[0], "loss": out[1]})
        return out

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any:
        out = self._model.run_with_hooks(*args, **kwargs)
        tokens = _ablated_call(args, kwargs)
        if tokens is not None:
            self.counters.computed["ablated"] += 1
            hook_name = kwargs["fwd_hooks"][0][0]
            self._writer.add_call(_call_key("ablated", tokens, hook=hook_name), {"logits": out[0], "loss": out[1]})
        return out

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any:
        out, cache = self._model.run_with_cache(*args, **kwargs)
        call = _cache_call(args, kwargs)
        if call is not None:
            tokens, key_args = call
            self.counters.computed["hook_acts"] += 1
            name = key_args["names"][0]
            self._writer.add_call(_call_key("hook_acts", tokens, **key_args), {"act": cache[name]})
        return out, cache


class RecordingStore:
    """The real ``ActivationsStore``; every token draw is also written to ``writer``."""

    def __init__(self, store: Any, writer: EntryWriter, counters: Counters) -> None:
        self._store, self._writer, self.counters = store, writer, counters

    def get_batch_tokens(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        tokens = self._store.get_batch_tokens(*args, **kwargs)
        self.counters.computed["draws"] += 1
        self._writer.add_draw(tokens)
        return tokens

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class ReplayModel(_Passthrough):
    """Serves the recorded outputs of the SAE-independent calls; every other call goes to the real model."""

    def __init__(self, model: Any, entry: SharedWorkEntry, counters: Counters, device: str) -> None:
        super().__init__(model, counters)
        self._entry, self._device = entry, device

    def _served(self, kind: str, call_key: str) -> dict[str, torch.Tensor] | None:
        name = self._entry.manifest["calls"].get(call_key)
        if name is None:
            return None
        self.counters.reused[kind] += 1
        return self._entry.load(name, self._device)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tokens = _clean_call(args, kwargs)
        served = None if tokens is None else self._served("clean", _call_key("clean", tokens))
        if served is not None:
            return served["logits"], served["loss"]
        if tokens is not None:
            self.counters.computed["clean"] += 1
        return self._model(*args, **kwargs)

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any:
        tokens = _ablated_call(args, kwargs)
        served = None if tokens is None else self._served(
            "ablated", _call_key("ablated", tokens, hook=kwargs["fwd_hooks"][0][0]))
        if served is not None:
            return served["logits"], served["loss"]
        if tokens is not None:
            self.counters.computed["ablated"] += 1
        return self._model.run_with_hooks(*args, **kwargs)

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any:
        call = _cache_call(args, kwargs)
        served = None if call is None else self._served("hook_acts", _call_key("hook_acts", call[0], **call[1]))
        if served is not None:  # SAEBench reads cache[hook_name] only; the first output is unused
            return None, {call[1]["names"][0]: served["act"]}
        if call is not None:
            self.counters.computed["hook_acts"] += 1
        return self._model.run_with_cache(*args, **kwargs)


class ReplayStore:
    """Stands in for the ``ActivationsStore``: the recorded token draws, in the recorded order.

    ``run_evals`` reads ``context_size`` and ``store_batch_size_prompts``, draws with
    ``get_batch_tokens(n)`` and calls ``reset_input_dataset()`` between its two phases (the recorded
    sequence already contains the draws after the reset). Anything else it might ask is an error.
    """

    def __init__(self, entry: SharedWorkEntry, counters: Counters, device: str, context_size: int,
                 store_batch_size_prompts: int) -> None:
        self.context_size = context_size
        self.store_batch_size_prompts = store_batch_size_prompts
        self.counters = counters
        draws = entry.load("draws.safetensors", device)
        self._draws = [draws[f"draw_{i:05d}"] for i in range(entry.manifest["n_draws"])]
        self._next = 0

    def get_batch_tokens(self, batch_size: int | None = None, raise_at_epoch_end: bool = False,
                         move_to_model_device: bool = True) -> torch.Tensor:
        size = batch_size or self.store_batch_size_prompts
        if raise_at_epoch_end or self._next >= len(self._draws) or self._draws[self._next].shape[0] != size:
            raise SharedWorkMismatch(f"draw {self._next} of {len(self._draws)} with batch size {size} was not recorded")
        tokens = self._draws[self._next]
        self._next += 1
        self.counters.reused["draws"] += 1
        return tokens

    def reset_input_dataset(self) -> None:
        pass

    def finished(self) -> bool:
        return self._next == len(self._draws)


# --------------------------------------------------------------------------- the generic layer (any family)
def _value_fingerprint(value: Any) -> Any:
    """A JSON-able, exact stand-in for a call argument (tokens -> their hash, strings as they are); a value
    the layer cannot fingerprint exactly raises ``TypeError`` (the call is then passed through, never shared)."""
    import torch

    if isinstance(value, torch.Tensor):
        return {"tensor": tokens_hash(value)}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_value_fingerprint(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _value_fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def generic_call_key(method: str, args: tuple, kwargs: dict) -> str | None:
    """Hash of a call's method, positional and keyword arguments, or None when they cannot be hashed exactly."""
    try:
        payload = json.dumps({"args": _value_fingerprint(list(args)), "kwargs": _value_fingerprint(kwargs)},
                             sort_keys=True)
    except TypeError:
        return None
    return f"{method}:{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


def hooks_attached(model: Any) -> bool:
    """True if any TransformerLens hook point of ``model`` has a forward or backward hook right now (the
    call then depends on whatever the hook does -- an SAE splice, an ablation -- and is never shared)."""
    return any(hp.fwd_hooks or hp.bwd_hooks for hp in getattr(model, "hook_dict", {}).values())


@dataclass
class CallCounters:
    computed: int = 0
    reused: int = 0
    passed_through: int = 0
    broken: str | None = None


class SharedModel(_Passthrough):
    """A ``HookedTransformer`` stand-in any SAEBench family can be handed: ``run_with_cache`` calls made
    with no hook attached and no ``fwd_hooks`` / ``bwd_hooks`` argument (SAE-independent: their
    result depends only on the weights, the tokenizer and the arguments) are answered from a stored
    entry (by a hash of their arguments), or computed and recorded when the entry lacks them. Every
    other call -- hooks attached, arguments the layer cannot hash exactly, other methods -- goes to
    the real model unchanged. The outputs served are the tensors the real model returned, stored
    bit for bit (safetensors), so SAEBench computes identical numbers.

    Build it with :func:`shared_model_calls`, which owns the entry's life (open, record, commit).
    """

    def __init__(self, model: Any, *, entry: SharedWorkEntry | None, writer: EntryWriter | None,
                 device: str, max_bytes: int) -> None:
        super().__init__(model, CallCounters())  # type: ignore[arg-type]
        self._entry, self._writer, self._device, self._max_bytes = entry, writer, device, max_bytes
        self._recorded_bytes = 0

    def _key(self, method: str, args: tuple, kwargs: dict) -> str | None:
        if hooks_attached(self._model) or kwargs.get("fwd_hooks") or kwargs.get("bwd_hooks"):
            return None
        return generic_call_key(method, args, kwargs)

    def _serve(self, call_key: str) -> dict[str, torch.Tensor] | None:
        if self._entry is None or self.counters.broken:
            return None
        name = self._entry.manifest["calls"].get(call_key)
        if name is None:
            return None
        try:
            return self._entry.load(name, self._device)
        except SharedWorkMismatch as exc:  # a bad file: never served; the entry is dropped at the end
            self.counters.broken = str(exc)
            return None

    def _record(self, call_key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self._writer is None:
            return
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        self._recorded_bytes += size
        if self._recorded_bytes > self._max_bytes:
            log.info("shared model calls: over %d bytes; this entry will not be kept", self._max_bytes)
            self._writer.abort()
            self._writer = None
            return
        self._writer.add_call(call_key, tensors)

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any:
        from transformer_lens import ActivationCache

        call_key = self._key("run_with_cache", args, kwargs)
        if call_key is None:
            self.counters.passed_through += 1
            return self._model.run_with_cache(*args, **kwargs)
        served = self._serve(call_key)
        if served is not None:
            self.counters.reused += 1
            out = served.pop("__output__", None)
            cache = {name[len("cache."):]: t for name, t in served.items() if name.startswith("cache.")}
            for name in served:
                if name.startswith("__output_is__."):  # the output was one of the cached tensors (stop_at_layer)
                    out = cache[name[len("__output_is__."):]]
            return out, ActivationCache(cache, self._model)
        self.counters.computed += 1
        out, cache = self._model.run_with_cache(*args, **kwargs)
        tensors = {f"cache.{name}": act for name, act in cache.items()}
        if out is None or hasattr(out, "detach"):
            alias = next((name for name, act in cache.items() if out is not None and _same_tensor(out, act)), None)
            if alias is not None:
                tensors[f"__output_is__.{alias}"] = out.new_empty(0)
            elif out is not None:
                tensors["__output__"] = out
            self._record(call_key, tensors)
        return out, cache


def _same_tensor(a: Any, b: Any) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype)


def shared_calls_key(*, family: str, model_fingerprint: str, tokenizer: Any, settings: Any, llm_dtype: str,
                     device: str, extra: Any = None) -> dict[str, Any]:
    """Everything a family's SAE-independent calls depend on: the model's weights, the tokenizer, the
    family and its settings, the LLM dtype and device, the library versions, and what the adapter adds
    (hook, word list, ...)."""
    return {
        "family": family,
        "model_fingerprint": model_fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "settings": settings.model_dump(mode="json") if hasattr(settings, "model_dump") else settings,
        "llm_dtype": llm_dtype,
        "device": str(device),
        "extra": json.loads(json.dumps(extra, default=str)),
        "versions": versions(),
    }


class shared_model_calls:
    """``with shared_model_calls(model, parent, key, device) as shared:`` -- ``shared`` is a
    :class:`SharedModel` around ``model`` to hand SAEBench. A complete entry for ``key`` under
    ``parent`` answers the SAE-independent calls; without one, they are recorded and the entry
    committed (all or nothing) when the block ends without an error. An entry that is truncated
    (caught on open) is deleted and rerecorded; one whose file fails its checksum when read is not
    served (the call is computed) and is deleted at the end, so the next run records it afresh.
    ``enabled=False`` hands over the model itself."""

    def __init__(self, model: Any, parent: Path, key: dict[str, Any], device: str, *, enabled: bool = True,
                 max_bytes: int | None = None) -> None:
        self.model, self.parent, self.key, self.device, self.enabled = model, Path(parent), key, device, enabled
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        self.shared: SharedModel | None = None
        self.status = "off"

    def __enter__(self) -> Any:
        if not self.enabled:
            return self.model
        entry = SharedWorkEntry.open(self.parent, self.key)
        writer = None if entry is not None else EntryWriter(self.parent, self.key)
        self.shared = SharedModel(self.model, entry=entry, writer=writer, device=self.device, max_bytes=self.max_bytes)
        return self.shared

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.shared is None:
            return
        shared, counters = self.shared, self.shared.counters
        writer = shared._writer
        if shared._entry is not None:
            self.status = "replayed"
            if counters.broken:
                log.warning("shared model calls at %s: %s; entry deleted", shared._entry.folder, counters.broken)
                shared._entry.discard()
                self.status = "discarded"
        elif writer is not None:
            if exc_type is None and counters.computed:
                writer.commit()
                self.status = "recorded"
            else:
                writer.abort()
                self.status = "not_recorded"
        else:
            self.status = "too_big"

    @property
    def summary(self) -> dict[str, Any]:
        counters = self.shared.counters if self.shared is not None else CallCounters()
        return {"status": self.status, **vars(counters)}
