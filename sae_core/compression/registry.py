"""Spec text -> method: the registry and the parser. Light (no torch): configs and the CLI parse
specs without loading the methods.

A new method is one file (a :class:`~sae_core.compression.base.CompressionMethod` subclass) plus
one entry in ``METHODS``. Spec syntax (validated up front, ``ValueError`` naming the bad value):

- sparsity methods: ``NAME:S`` with ``0 <= S < 1`` (``wanda:0.5``), or ``NAME:N:M`` with
  ``1 <= N < M`` for N:M (``wanda:2:4``, ``sparsegpt:2:4``, ``magnitude:2:4``);
- bit-width methods: ``NAME:B`` with ``2 <= B <= 8`` (``rtn:8``), or ``NAME:BgG`` for one scale
  per group of G inputs (``rtn:4g128``, ``gptq:4g128``).
"""

from __future__ import annotations

import importlib
import re
from typing import NamedTuple

from sae_core.compression.spec import CompressionSpec

__all__ = ["ALIASES", "BITS_RANGE", "METHODS", "MethodEntry", "method_class", "method_names", "parse_spec"]


class MethodEntry(NamedTuple):
    target: str  # "module:Class", imported on first use
    kind: str  # "sparsity" (strength = fraction zeroed) | "bits" (strength = bit width)
    nm: bool = False  # accepts N:M


METHODS: dict[str, MethodEntry] = {
    "wanda": MethodEntry("sae_core.compression.wanda:WandaMethod", "sparsity", nm=True),
    "sparsegpt": MethodEntry("sae_core.compression.sparsegpt:SparseGPTMethod", "sparsity", nm=True),
    "magnitude": MethodEntry("sae_core.compression.magnitude:MagnitudeMethod", "sparsity", nm=True),
    "magnitude_matrix": MethodEntry("sae_core.compression.magnitude:MagnitudeMatrixMethod", "sparsity"),
    "rtn": MethodEntry("sae_core.compression.rtn:RTNMethod", "bits"),
    "gptq": MethodEntry("sae_core.compression.gptq:GPTQMethod", "bits"),
}
ALIASES = {"magnitude_row": "magnitude"}  # an older name of per-row magnitude pruning
BITS_RANGE = (2, 8)


def method_names(kind: str | None = None) -> tuple[str, ...]:
    """Every name a spec may start with (aliases included), optionally only those of one ``kind``."""
    names = [n for n, e in METHODS.items() if kind is None or e.kind == kind]
    return (*names, *(a for a, n in ALIASES.items() if n in names))


def method_class(name: str) -> type:
    module, cls = METHODS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)


def parse_spec(text: str | CompressionSpec) -> CompressionSpec:
    """``"wanda:0.5"`` -> :class:`CompressionSpec`; ``ValueError`` naming the bad part otherwise."""
    if isinstance(text, CompressionSpec):
        return text  # parsed already (the config parses every spec once)
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"compression spec must look like 'METHOD:STRENGTH' (e.g. 'wanda:0.5', 'rtn:8'), got {text!r}")
    name, arg = (part.strip() for part in text.strip().split(":", 1))
    name = ALIASES.get(name.lower(), name.lower())
    entry = METHODS.get(name)
    if entry is None:
        raise ValueError(f"unknown compression method {name!r} in {text!r}; known: {sorted(METHODS)}")
    if entry.kind == "bits":
        m = re.fullmatch(r"(\d+)(?:g(\d+))?", arg)
        if m is None:
            raise ValueError(f"{name} needs a bit width, e.g. '{name}:4' or '{name}:4g128', got {arg!r} in {text!r}")
        bits, group = int(m.group(1)), (None if m.group(2) is None else int(m.group(2)))
        if not BITS_RANGE[0] <= bits <= BITS_RANGE[1]:
            raise ValueError(f"bits must be in [{BITS_RANGE[0]}, {BITS_RANGE[1]}], got {bits} in {text!r}")
        if group is not None and group < 1:
            raise ValueError(f"group size must be >= 1, got {group} in {text!r}")
        return CompressionSpec(method=name, bits=bits, group_size=group)
    m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", arg)
    if m is not None:
        n, mm = int(m.group(1)), int(m.group(2))
        if not entry.nm:
            raise ValueError(f"method {name!r} cannot use N:M structure {arg!r} (in {text!r})")
        if not 1 <= n < mm:
            raise ValueError(f"N:M structure needs 1 <= N < M, got N={n}, M={mm} in {text!r}")
        return CompressionSpec(method=name, sparsity=n / mm, nm=(n, mm))
    try:
        sparsity = float(arg)
    except ValueError:
        raise ValueError(f"{name} needs a sparsity in [0, 1) or N:M, got {arg!r} in {text!r}") from None
    if not 0.0 <= sparsity < 1.0:  # also rejects NaN
        raise ValueError(f"sparsity must be in [0, 1), got {arg} in {text!r}")
    return CompressionSpec(method=name, sparsity=sparsity)
