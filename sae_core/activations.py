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


def special_token_ids(tokenizer) -> set[int]:
    return {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}


def cache_activations(
    hooked,
    tokenizer,
    spec: ActivationCacheSpec,
    storage: Storage,
    prefix: str,
    extra_manifest: dict | None = None,
    progress: bool = True,
) -> dict:
    """Cache ``spec.n_tokens`` activation rows under ``prefix``; resume from complete shards."""
    if storage.is_committed(prefix):
        return storage.manifest(prefix)
    started = time.perf_counter()
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
            info = _write_shard(hooked, torch.stack(shard_windows), spec, specials, dtype, storage, prefix, index,
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
        "wall_time_s": round(time.perf_counter() - started, 3),
        **(extra_manifest or {}),
    }
    storage.put_json(f"{prefix}/manifest.json", manifest)
    return manifest


def _write_shard(hooked, tokens, spec, specials, dtype, storage, prefix, index, rows_wanted) -> dict:
    chunks, ids = [], []
    for start in range(0, len(tokens), spec.batch_sequences):
        batch = tokens[start : start + spec.batch_sequences]
        acts = hook_activations(hooked, batch, spec.hook_name).to("cpu", dtype)
        keep = ~torch.isin(batch, specials)
        chunks.append(acts[keep])
        ids.append(batch[keep])
        if sum(len(c) for c in chunks) >= rows_wanted:  # the last shard: skip forwards nobody keeps
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
