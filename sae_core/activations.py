"""Activation caching: stream a hook's activations to storage in safetensors shards.

Layout under a prefix:
    shard-00000.safetensors   {"activations": [rows, d_in], "token_ids": [rows]}
    shard-00000.json          {"rows": ..., "sequences": [start, stop]}  (written after the shard)
    manifest.json             written last: the cache is complete

Shard ``i`` always holds the same token windows (sequences ``i*q .. (i+1)*q``), so an
interrupted run resumes at the first shard without a sidecar and memory stays bounded by
one shard whatever the token count.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Iterator

import torch

from sae_core.activation_spec import MAX_TOKENS, ActivationCacheSpec  # noqa: F401  (re-exported)
from sae_core.datasets import iter_texts, token_windows
from sae_core.progress import Progress
from sae_core.storage import Storage

def _shard_key(prefix: str, index: int, suffix: str) -> str:
    return f"{prefix}/shard-{index:05d}.{suffix}"


def _layer_of(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None


@torch.no_grad()
def hook_activations(hooked, tokens: torch.Tensor, hook_name: str, batch_size: int | None = None) -> torch.Tensor:
    """[batch, seq, d] activations at ``hook_name`` (heads flattened for attn.hook_z); the forward
    stops after the hook's block. ``batch_size``: forward that many sequences at a time and gather
    the result on the CPU (for more windows than fit through the model at once)."""
    if batch_size is not None:
        return torch.cat([hook_activations(hooked, tokens[i : i + batch_size], hook_name).cpu()
                          for i in range(0, tokens.shape[0], batch_size)])
    layer = _layer_of(hook_name)
    _, cache = hooked.run_with_cache(
        tokens.to(hooked.cfg.device), names_filter=hook_name, stop_at_layer=None if layer is None else layer + 1
    )
    acts = cache[hook_name]
    return acts.flatten(start_dim=2) if acts.ndim == 4 else acts


# ------------------------------------------------------------------ the HF forward for residual hooks
# The residual stream of TransformerLens' view is the HF model's own, up to its weight processing:
# ``blocks.L.hook_resid_post`` is decoder layer L's output and ``blocks.L.hook_resid_pre`` its input
# (layer 0's: the embeddings, Gemma's scaled by sqrt(d_model)). Of the processing options only
# ``center_writing_weights`` changes it, and only under LayerNorm: every write to the stream loses its
# mean over d_model, so TransformerLens' residual is HF's minus that mean. fold_ln, fold_value_biases,
# center_unembed and refactor_factored_attn_matrices leave the stream as it is; RMSNorm models are never
# centred (TransformerLens skips it). Architectures listed here were checked against TransformerLens
# (tests/sae_core/test_activations.py on GPT-2, tests/sae_core/test_real_model.py on Gemma 3); any
# other architecture or hook (mlp_out, attn.hook_z, ...) is read through TransformerLens.
HF_RESIDUAL_NORMS: dict[str, str] = {"GPT2LMHeadModel": "LN", "Gemma2ForCausalLM": "RMS", "Gemma3ForCausalLM": "RMS"}
_HF_HOOKS = {"hook_resid_post": "output", "hook_resid_pre": "input"}


class _StopForward(Exception):
    pass


class HFResidualReader:
    """Activations at a residual hook from the HF model's own forward, stopped right after the
    decoder layer that produces them (no later layer, no LM head), in inference mode."""

    def __init__(self, hf_model, hook_name: str, layer: int, where: str, centred: bool):
        from sae_core.compression.modules import find_blocks

        self.hf_model, self.hook_name, self.where, self.centred = hf_model, hook_name, where, centred
        blocks_name, blocks = find_blocks(hf_model)
        self.block = blocks[layer]
        self.forward = f"hf:{blocks_name}.{layer}:{where}" + (":centred" if centred else "")

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def grab_output(module, args, output):
            seen.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        def grab_input(module, args, kwargs):
            seen.append(args[0] if args else kwargs["hidden_states"])
            raise _StopForward

        handle = (self.block.register_forward_hook(grab_output) if self.where == "output"
                  else self.block.register_forward_pre_hook(grab_input, with_kwargs=True))
        try:
            with torch.inference_mode():
                self.hf_model(input_ids=tokens.to(self.hf_model.device), use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        acts = seen[0]
        return acts - acts.mean(dim=-1, keepdim=True) if self.centred else acts


class HookedReader:
    """Activations at any hook through TransformerLens' view (``hook_activations``)."""

    forward = "transformer_lens"

    def __init__(self, hooked, hook_name: str):
        self.hooked, self.hook_name = hooked, hook_name

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return hook_activations(self.hooked, tokens, self.hook_name)


def hf_residual_reader(hf_model, hook_name: str, processing: dict | None = None) -> HFResidualReader | None:
    """The HF-forward reader for ``hook_name`` under ``processing``, or None where the hook has no
    exact HF counterpart (not a residual hook, or an architecture not in ``HF_RESIDUAL_NORMS``)."""
    from sae_core.models import resolve_processing

    parts = hook_name.split(".")
    layer = _layer_of(hook_name)
    architecture = (getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__])[0]
    norm = HF_RESIDUAL_NORMS.get(architecture)
    if layer is None or len(parts) != 3 or parts[2] not in _HF_HOOKS or norm is None:
        return None
    if not 0 <= layer < hf_model.config.num_hidden_layers:
        return None
    centred = norm == "LN" and resolve_processing(processing)["center_writing_weights"]
    return HFResidualReader(hf_model, hook_name, layer, _HF_HOOKS[parts[2]], centred)


def activation_reader(model, hook_name: str, processing: dict | None = None):
    """A callable ``tokens [batch, seq] -> activations [batch, seq, d]`` at ``hook_name``: the same
    function as TransformerLens' view of ``model`` with ``processing`` (the view an SAE of that hook
    is used with), computed by the cheapest exact route.

    ``model``: a :class:`~sae_core.models.LoadedModel` (residual hooks through the HF forward, the
    TransformerLens view, built lazily, for every other hook) or a HookedTransformer (always itself;
    ``processing`` is then the one it was built with)."""
    hf_model = getattr(model, "hf_model", None)
    if hf_model is None:
        return HookedReader(model, hook_name)
    from sae_core.models import check_hook

    reader = hf_residual_reader(hf_model, hook_name, processing)
    if reader is not None:
        return reader
    hooked = model.hooked(processing)
    check_hook(hooked, hook_name)
    return HookedReader(hooked, hook_name)


def special_token_ids(tokenizer) -> set[int]:
    return {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}


def cache_activations(
    model,
    tokenizer,
    spec: ActivationCacheSpec,
    storage: Storage,
    prefix: str,
    extra_manifest: dict | None = None,
    progress: bool = True,
    processing: dict | None = None,
) -> dict:
    """Cache ``spec.n_tokens`` activation rows under ``prefix``; resume from complete shards.

    ``model``: a LoadedModel (with ``processing``, the TransformerLens view's weight processing the
    activations must match) or a HookedTransformer; see :func:`activation_reader`."""
    if storage.is_committed(prefix):
        return storage.manifest(prefix)
    started = time.perf_counter()
    reader = activation_reader(model, spec.hook_name, processing)
    dtype = getattr(torch, spec.dtype)
    specials = torch.tensor(sorted(special_token_ids(tokenizer))) if spec.exclude_special_tokens else torch.tensor([], dtype=torch.long)
    windows = itertools.islice(token_windows(tokenizer, iter_texts(spec.dataset, split=spec.split), spec.seq_len),
                               spec.skip_sequences, None)
    shards: list[dict] = []
    rows_done = 0
    width = None
    bar = Progress(spec.n_tokens, f"caching {spec.hook_name}", unit="tok", show=progress)
    for index in itertools.count():
        if rows_done >= spec.n_tokens:
            break
        shard_windows = list(itertools.islice(windows, spec.shard_sequences))
        if not shard_windows:
            raise ValueError(f"dataset {spec.dataset!r} ran out after {rows_done} tokens; {spec.n_tokens} asked")
        sidecar_key = _shard_key(prefix, index, "json")
        if storage.exists(sidecar_key):  # finished by an earlier, interrupted run
            info = storage.get_json(sidecar_key)
        else:
            info = _write_shard(reader, torch.stack(shard_windows), spec, specials, dtype, storage, prefix, index,
                                rows_wanted=spec.n_tokens - rows_done)
        width = info["d_in"]
        shards.append(info)
        rows_done += info["rows"]
        bar.update(info["rows"])
    bar.close()
    manifest = {
        "kind": "activations",
        "spec": spec.model_dump(),
        "d_in": width,
        "n_tokens": rows_done,
        "shards": [{"key": s["key"], "rows": s["rows"]} for s in shards],
        "forward": reader.forward,
        "wall_time_s": round(time.perf_counter() - started, 3),
        **(extra_manifest or {}),
    }
    storage.put_json(f"{prefix}/manifest.json", manifest)
    return manifest


def _write_shard(reader, tokens, spec, specials, dtype, storage, prefix, index, rows_wanted) -> dict:
    chunks, ids = [], []
    kept = 0
    for start in range(0, len(tokens), spec.batch_sequences):
        batch = tokens[start : start + spec.batch_sequences]
        acts = reader(batch)
        keep = ~torch.isin(batch, specials)
        chunks.append(acts[keep.to(acts.device)].to("cpu", dtype))
        ids.append(batch[keep])
        kept += len(ids[-1])
        if kept >= rows_wanted:  # the last shard: skip forwards nobody keeps
            break
    activations = torch.cat(chunks)[:rows_wanted]
    token_ids = torch.cat(ids)[:rows_wanted]
    key = _shard_key(prefix, index, "safetensors")
    storage.put_tensors(key, {"activations": activations, "token_ids": token_ids}, metadata={"hook_name": spec.hook_name})
    info = {"key": key, "rows": int(activations.shape[0]), "d_in": int(activations.shape[1])}
    storage.put_json(_shard_key(prefix, index, "json"), info)  # the shard is complete only now
    return info


class ActivationShards(torch.utils.data.IterableDataset):
    """A committed activation cache, read back as batches of [batch_size, d_in] rows.

    One shard is in memory at a time; ``shuffle`` permutes rows within each shard and the
    shard order, seeded, so epochs are reproducible.
    """

    def __init__(self, storage: Storage, prefix: str, batch_size: int = 4096, shuffle: bool = False, seed: int = 0,
                 max_tokens: int | None = None, dtype: torch.dtype = torch.float32):
        if not storage.is_committed(prefix):
            raise FileNotFoundError(f"no complete activation cache at {storage.uri(prefix)} (manifest.json missing)")
        self.storage, self.prefix = storage, prefix
        self.manifest = storage.manifest(prefix)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.max_tokens = min(max_tokens or self.manifest["n_tokens"], self.manifest["n_tokens"])
        self.dtype = dtype
        self.epoch = 0

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    def __len__(self) -> int:
        return math.ceil(self.max_tokens / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.manifest["shards"]), generator=generator).tolist() if self.shuffle else range(len(self.manifest["shards"]))
        remaining = self.max_tokens
        carry = None
        for shard_index in order:
            if remaining <= 0:
                break
            rows = self.storage.get_tensors(self.manifest["shards"][shard_index]["key"])["activations"].to(self.dtype)
            if self.shuffle:
                rows = rows[torch.randperm(len(rows), generator=generator)]
            rows = rows[:remaining]
            remaining -= len(rows)
            if carry is not None:
                rows = torch.cat([carry, rows])
            full = len(rows) // self.batch_size * self.batch_size
            yield from rows[:full].split(self.batch_size)
            carry = rows[full:] if full < len(rows) else None
        if carry is not None and len(carry):
            yield carry
