"""The sequential, block-by-block driver shared by every calibrated compression method.

1. Capture the inputs of decoder block 0 (hidden states plus every other positional /
   keyword argument the model hands to its blocks: attention mask, position embeddings,
   position ids, ...) with the "Catcher" trick: each block's forward is swapped for a
   recorder for one embedding-only pass, which stops at the last block by raising
   :class:`StopForward`. Non-hidden-state arguments are recorded *per block* because some
   architectures (Gemma-2: sliding-window vs. global layers) hand different masks to
   different blocks. (If a model cannot run with pass-through blocks, it falls back to the
   classic pre-hook catcher on block 0 and reuses block 0's arguments, with a warning.)
2. For block ``l``: one pass over the stored inputs through the block (already compressed
   blocks before it, this one still dense) with forward pre-hooks on its target modules;
   each hook feeds the module's input to that module's *accumulator* (WANDA: per-column sum
   of squares; SparseGPT / GPTQ: the Hessian ``2/n X X^T``). The pass stops right after the
   last hooked module has seen its input, provided every hooked module runs exactly once per
   forward (checked on the first batch).
3. Compress every target module of the block from those statistics (all modules of a block
   use statistics of the dense block, like the WANDA and SparseGPT references).
4. Re-run the *compressed* block on the stored inputs; its outputs overwrite the stored
   inputs in place and become block ``l+1``'s inputs. (Skipped after the last block.)

Peak extra memory is one block's inputs (``n_samples x seq x d_model``), one batch of
activations and the accumulators of one block. Methods without calibration skip 1, 2 and 4.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Protocol

import torch
from torch import nn

from sae_core.compression.modules import Target, find_blocks
from sae_core.progress import track

__all__ = ["Accumulator", "StopForward", "capture_block_inputs", "check_calibration", "collect_block_stats",
           "compress_sequentially", "sample_calibration"]


class Accumulator(Protocol):
    """Per-module input statistics: ``add`` sees the module's input as given to its forward."""

    def add(self, x: torch.Tensor) -> None: ...


def sample_calibration(tokens: torch.Tensor, n_samples: int, seq_len: int, seed: int = 0) -> torch.LongTensor:
    """``n_samples`` random windows of ``seq_len`` tokens from a 1-D token stream (seeded)."""
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    if n_samples < 1 or seq_len < 1:
        raise ValueError(f"n_samples and seq_len must be >= 1, got {n_samples!r}, {seq_len!r}")
    if tokens.numel() < seq_len:
        raise ValueError(f"token stream of length {tokens.numel()} is shorter than seq_len={seq_len}")
    g = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (n_samples,), generator=g)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()]).long()


def check_calibration(model: nn.Module, ids: Any, n_samples: int | None = None,
                      seq_len: int | None = None) -> torch.Tensor:
    """Validated ``[n, seq]`` token ids, cut to the first ``n_samples`` rows (all when None)."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"calibration_input_ids must be a torch.LongTensor [n, seq], got {type(ids).__name__}")
    if ids.ndim != 2:
        raise ValueError(f"calibration_input_ids must be 2-D [n, seq], got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"calibration_input_ids must be integer token ids, got dtype {ids.dtype}")
    n, seq = ids.shape
    if n == 0 or seq == 0:
        raise ValueError(f"calibration_input_ids is empty: shape {tuple(ids.shape)}")
    if n_samples is not None and n < n_samples:
        raise ValueError(f"calibration_input_ids has {n} rows but n_calibration_samples={n_samples}")
    if seq_len is not None and seq != seq_len:
        raise ValueError(f"calibration_input_ids has seq length {seq} but cfg.seq_len={seq_len}")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(emb, "num_embeddings", None)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        raise ValueError(f"calibration token ids must be in [0, {vocab}), got range [{lo}, {hi}]")
    return (ids if n_samples is None else ids[:n_samples]).long()


# --------------------------------------------------------------------------- block inputs


class StopForward(Exception):
    """Raised inside a forward to end it early (Catcher trick)."""


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _share(new: Any, old: Any) -> Any:
    """Return ``old``'s tensors where equal to ``new``'s (saves memory on repeated masks)."""
    if isinstance(new, torch.Tensor):
        if (
            isinstance(old, torch.Tensor)
            and old.shape == new.shape
            and old.dtype == new.dtype
            and old.device == new.device
            and torch.equal(old, new)
        ):
            return old
        return new
    if isinstance(new, (tuple, list)) and isinstance(old, (tuple, list)) and len(new) == len(old):
        return type(new)(_share(n, o) for n, o in zip(new, old))
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: _share(v, old.get(k)) for k, v in new.items()}
    return new


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    raise TypeError(f"unexpected decoder block output type {type(out).__name__}")


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    for p in module.parameters():
        return p.device
    return default


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor, batch_size: int, per_block: bool = True
) -> tuple[list[torch.Tensor], list[list[tuple[tuple, dict]]]]:
    """Per batch: hidden states entering block 0. Per block and batch: the other args/kwargs.

    Catcher trick, generalised: every block's ``forward`` is temporarily replaced by a
    recorder that passes the hidden states through untouched; the last block's recorder
    raises ``StopForward`` so the final norm and LM head never run. Only the embedding
    layers do real work. Arguments are recorded per block because they can differ (Gemma-2
    gives sliding-window layers another mask than global ones). If a model cannot run with
    pass-through blocks, it falls back to the classic catcher on block 0 alone and reuses
    block 0's arguments for every block (with a warning).
    """
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = emb.weight.device if emb is not None else _device_of(model, torch.device("cpu"))
    hooked = list(blocks) if per_block else [blocks[0]]
    n_hooked = len(hooked)
    hidden: list[torch.Tensor] = []
    extra: list[list[tuple[tuple, dict]]] = [[] for _ in range(n_hooked)]
    saved = [blk.__dict__.get("forward") for blk in hooked]

    def make_recorder(i: int):
        def recorder(*args, **kwargs):
            if args:
                hs, rest = args[0], tuple(args[1:])
            else:
                hs, rest = kwargs.pop("hidden_states"), ()
            if i == 0:
                hidden.append(hs)
            prev = extra[i][0] if extra[i] else None
            item = (rest, kwargs)
            extra[i].append(_share(item, prev) if prev is not None else item)
            if i == n_hooked - 1:
                raise StopForward
            return hs

        return recorder

    try:
        for i, blk in enumerate(hooked):
            blk.forward = make_recorder(i)  # instance attribute shadows the class method
        for s in range(0, ids.shape[0], batch_size):
            batch = ids[s : s + batch_size].to(device)
            try:
                model(input_ids=batch, use_cache=False)
            except StopForward:
                pass
            else:
                raise RuntimeError("the model's forward never reached its decoder blocks")
    except Exception as err:
        if not per_block:
            raise
        warnings.warn(
            f"capturing per-block inputs with pass-through blocks failed ({err!r}); "
            "reusing block 0's arguments for every block",
            RuntimeWarning,
            stacklevel=3,
        )
        for blk, old in zip(hooked, saved):
            _restore_forward(blk, old)
        hidden, extra0 = capture_block_inputs(model, blocks, ids, batch_size, per_block=False)
        return hidden, [extra0[0]] * len(blocks)
    finally:
        for blk, old in zip(hooked, saved):
            _restore_forward(blk, old)
    if len(hidden) != -(-ids.shape[0] // batch_size):
        raise RuntimeError("block 0 inputs were not captured for every calibration batch")
    return hidden, extra


def _restore_forward(block: nn.Module, old: Any) -> None:
    if old is None:
        block.__dict__.pop("forward", None)
    else:
        block.forward = old


def _call_block(block: nn.Module, hs: torch.Tensor, extra: tuple[tuple, dict], device: torch.device) -> Any:
    rest, kwargs = extra
    if hs.device != device:
        hs = hs.to(device)
        rest, kwargs = _to_device(rest, device), _to_device(kwargs, device)
    return block(hs, *rest, **kwargs)




# --------------------------------------------------------------------------- statistics & driver


@torch.no_grad()
def collect_block_stats(
    block: nn.Module,
    targets: list[Target],
    hidden: list[torch.Tensor],
    extra: list[tuple[tuple, dict]],
    accumulator_for: Callable[[Target], Accumulator],
    early_stop_cache: dict | None = None,
) -> dict[str, Accumulator]:
    """Run the stored inputs through ``block``; every target's input goes to its accumulator.

    The forward of a batch is cut short right after the last target module has received its
    input, provided each target runs exactly once per forward. That is checked on the first
    batch of the first block of each kind (``early_stop_cache``: block class + target paths
    -> bool); until then batches run the whole block.
    """
    device = _device_of(block, hidden[0].device)
    accs: dict[str, Accumulator] = {}
    calls: dict[str, int] = {}
    cache = {} if early_stop_cache is None else early_stop_cache
    key = (type(block), tuple(t.rel_name for t in targets))
    state = {"early_stop": cache.get(key, False), "seen": 0}
    n_targets = len(targets)

    def make_hook(t: Target):
        acc = accs[t.name] = accumulator_for(t)
        calls[t.name] = 0

        def hook(mod, args, kwargs):
            acc.add(args[0] if args else next(iter(kwargs.values())))
            calls[t.name] += 1
            state["seen"] += 1
            if state["early_stop"] and state["seen"] == n_targets:
                raise StopForward  # nothing after the last hooked input is needed

        return hook

    handles = [t.module.register_forward_pre_hook(make_hook(t), with_kwargs=True) for t in targets]
    try:
        for b, (hs, ex) in enumerate(zip(hidden, extra)):
            state["seen"] = 0
            try:
                _call_block(block, hs, ex, device)
            except StopForward:
                pass
            if b == 0 and key not in cache:
                # Early stopping is only safe if each target runs exactly once per forward.
                cache[key] = state["early_stop"] = all(c == 1 for c in calls.values())
    finally:
        for h in handles:
            h.remove()
    return accs


@torch.no_grad()
def compress_sequentially(
    model: nn.Module,
    targets: list[list[Target]],
    compress: Callable[[Target, Accumulator | None], None],
    *,
    calibration_ids: torch.Tensor | None = None,
    accumulator_for: Callable[[Target], Accumulator] | None = None,
    batch_size: int = 8,
    label: str = "compress",
    progress: bool = True,
) -> None:
    """Compress every target, block by block, in eval mode (the model's mode is restored).

    With ``calibration_ids`` (and ``accumulator_for``): steps 1-4 of the module docstring,
    ``compress(target, accumulator)`` per module. Without: ``compress(target, None)`` per
    module, no forward pass at all.
    """
    _, blocks = find_blocks(model)
    was_training = model.training
    model.eval()
    try:
        bar = track(range(len(blocks)), f"{label} (blocks)", show=progress)
        if calibration_ids is None:
            for b in bar:
                for t in targets[b]:
                    compress(t, None)
            return
        if accumulator_for is None:
            raise ValueError("calibration_ids given without accumulator_for")
        hidden, extra = capture_block_inputs(model, blocks, calibration_ids, batch_size)
        last = len(blocks) - 1
        early_stop_cache: dict = {}
        for b in bar:
            block = blocks[b]
            if targets[b]:
                accs = collect_block_stats(block, targets[b], hidden, extra[b], accumulator_for, early_stop_cache)
                for t in targets[b]:
                    compress(t, accs.pop(t.name))  # popped: its memory is freed as soon as it is used
            if b < last:  # the compressed block's outputs are the next block's inputs
                device = _device_of(block, hidden[0].device)
                for i in range(len(hidden)):
                    hidden[i] = _first_tensor(_call_block(block, hidden[i], extra[b][i], device))
        del hidden, extra
    finally:
        model.train(was_training)
