"""Encode each test batch once in SCR / TPP's ablation loop, instead of once per (ablated class × threshold).

SAEBench's ``scr_and_tpp.main.perform_feature_ablations`` calls ``ablated_precomputed_activations``
for every (ablated class, top-n threshold, evaluated class); each call runs, per batch of the *same*
cached test activations with the *same* SAE, ``f = sae.encode(x)``, ``x_hat = sae.decode(f)``, then
zeroes the ablated latents of ``f`` in place and decodes again. Only the last decode depends on the
ablation. Profiled on the toy world (docs/benchmarks.md §11.2) the repeated encodes are 70–85% of a
further variant's SCR / TPP time.

:func:`memoised_codes` makes the first two of those three products free after the first time: while
it is open, ``sae.encode(x)`` for an input seen before returns a copy of the stored codes (a copy,
because SAEBench writes into it), and ``sae.decode(f)`` of codes it has just returned, still
unmodified, returns a copy of the stored reconstruction. Every other call is passed through. The
values are the SAE's own outputs for the same input, so SAEBench's results are bit-identical
(``tests/sae_core/metrics/test_encode_memo.py`` runs SCR and TPP both ways).

An input is "seen before" when it is a view of the same storage with the same offset, shape, strides,
dtype and in-place version counter; the entry holds a reference to that view, so its storage cannot be
freed and its address reused by another tensor while the memo is open. Entries past ``max_bytes``
(``SAE_TRANSFER_ENCODE_MEMO_MAX_BYTES``, default 1 GiB) are not stored: those batches are computed each
time, as without the memo.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

DEFAULT_MAX_BYTES = 1 << 30
MAX_BYTES_ENV = "SAE_TRANSFER_ENCODE_MEMO_MAX_BYTES"


def memo_max_bytes() -> int:
    """The memo's size limit in bytes, from ``SAE_TRANSFER_ENCODE_MEMO_MAX_BYTES`` (0 switches it off)."""
    raw = os.environ.get(MAX_BYTES_ENV, "")
    if not raw.strip():
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_BYTES_ENV} must be a whole number of bytes, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{MAX_BYTES_ENV} must be >= 0, got {value}")
    return value


def _key(tensor) -> tuple:
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
            tensor.dtype, tensor.device, tensor._version)


class EncodeMemo:
    """What :func:`memoised_codes` installs on an SAE: counts kept for tests and benchmarks."""

    def __init__(self, encode, decode, max_bytes: int):
        self._encode, self._decode, self.max_bytes = encode, decode, max_bytes
        self._codes: dict[tuple, tuple[Any, Any]] = {}  # input key -> (the input view, kept alive; its codes)
        self._recons: dict[tuple, Any] = {}  # input key -> decode(codes)
        self._handed_out: dict[int, tuple[Any, int, tuple]] = {}  # id(copy) -> (copy, its version then, input key)
        self.bytes = 0
        self.encode_hits = self.encode_misses = self.decode_hits = 0

    def encode(self, x, *args, **kwargs):
        if args or kwargs:
            return self._encode(x, *args, **kwargs)
        key = _key(x)
        entry = self._codes.get(key)
        if entry is None:
            self.encode_misses += 1
            codes = self._encode(x)
            size = codes.numel() * codes.element_size()
            if self.bytes + size > self.max_bytes:
                return codes
            self._codes[key] = (x, codes)
            self.bytes += size
        else:
            self.encode_hits += 1
            codes = entry[1]
        copy = codes.clone()
        self._handed_out = {id(copy): (copy, copy._version, key)}  # only the latest copy: SAEBench decodes it next
        return copy

    def decode(self, f, *args, **kwargs):
        handed = self._handed_out.get(id(f))
        if args or kwargs or handed is None or handed[0] is not f or f._version != handed[1]:
            return self._decode(f, *args, **kwargs)
        key = handed[2]
        recon = self._recons.get(key)
        if recon is None:
            recon = self._decode(f)
            size = recon.numel() * recon.element_size()
            if self.bytes + size > self.max_bytes:
                return recon
            self._recons[key] = recon
            self.bytes += size
        else:
            self.decode_hits += 1
        return recon.clone()


@contextlib.contextmanager
def memoised_codes(sae, max_bytes: int | None = None) -> Iterator[EncodeMemo]:
    """While open, ``sae.encode`` / ``sae.decode`` answer repeated inputs from memory (module doc).
    Installed as instance attributes over the SAE's own methods, removed on exit."""
    limit = memo_max_bytes() if max_bytes is None else max_bytes
    had = {name: name in vars(sae) for name in ("encode", "decode")}
    previous = {name: vars(sae)[name] for name in had if had[name]}
    memo = EncodeMemo(sae.encode, sae.decode, limit)
    if limit > 0:
        object.__setattr__(sae, "encode", memo.encode)
        object.__setattr__(sae, "decode", memo.decode)
    try:
        yield memo
    finally:
        for name in ("encode", "decode"):
            if had[name]:
                object.__setattr__(sae, name, previous[name])
            else:
                vars(sae).pop(name, None)


@contextlib.contextmanager
def memoised_feature_ablations(module) -> Iterator[list[EncodeMemo]]:
    """While open, every call of ``module.perform_feature_ablations`` (SAEBench's SCR / TPP loop,
    signature ``(probes, sae, ...)``) runs with :func:`memoised_codes` on its SAE; the memo lives for
    that one call. Yields the memos, one per call, for their counts."""
    original, memos = module.perform_feature_ablations, []

    @functools.wraps(original)
    def wrapped(probes, sae, *args, **kwargs):
        with memoised_codes(sae) as memo:
            memos.append(memo)
            return original(probes, sae, *args, **kwargs)

    from sae_core.metrics.base import swapped_attributes

    with swapped_attributes([(module, "perform_feature_ablations", wrapped)]):
        yield memos
