"""The method table: name -> class, kind, N:M support. Light (no torch): configs and the CLI parse
specs (``spec.parse_spec``) without loading the methods.

A new method is one file (a :class:`~sae_core.compression.base.CompressionMethod` subclass) plus
one entry in ``METHODS``. Spec syntax (validated up front, ``ValueError`` naming the bad value):

- sparsity methods: ``NAME:S`` with ``0 <= S < 1`` (``wanda:0.5``), or ``NAME:N:M`` with
  ``1 <= N < M`` for N:M (``wanda:2:4``, ``sparsegpt:2:4``, ``magnitude:2:4``);
- bit-width methods: ``NAME:B`` with ``2 <= B <= 8`` (``rtn:8``), or ``NAME:BgG`` for one scale
  per group of G inputs (``rtn:4g128``, ``gptq:4g128``).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple


__all__ = ["ALIASES", "BITS_RANGE", "METHODS", "MethodEntry", "method_class", "method_names"]


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
