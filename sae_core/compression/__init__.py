"""Compression of an HF causal LM through one interface: ``compress_model(model, "wanda:0.5", ids)``.

Methods (``registry.METHODS``): ``wanda``, ``sparsegpt``, ``magnitude`` (per row),
``magnitude_matrix``, ``rtn`` and ``gptq``. Every method changes the attention / MLP
Linear/Conv1D weights of the decoder blocks in place and leaves plain float weights (quantized
ones stored dequantized), so downstream code reads the model unchanged. Layout: ``modules``
(what is compressed), ``sequential`` (block-by-block calibration driver), ``masks`` (pruning
selection rules), ``spec`` / ``registry`` (spec text, parser, method table: no torch), ``base``
(method interface, report), one file per method, ``api`` (``compress_model``).
This package is a plain library: it never imports prefect. Importing it is light: the
torch-side names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from sae_core.compression.registry import METHODS
from sae_core.compression.spec import CompressionSpec, parse_spec

_LAZY = {
    "compress_model": "sae_core.compression.api", "method_for": "sae_core.compression.api",
    "CompressionMethod": "sae_core.compression.base", "CompressionReport": "sae_core.compression.base",
    "MODULE_GROUPS": "sae_core.compression.modules", "find_blocks": "sae_core.compression.modules",
    "find_prunable_modules": "sae_core.compression.modules", "sample_calibration": "sae_core.compression.sequential",
}

__all__ = ["METHODS", "CompressionSpec", "parse_spec", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sae_core.compression' has no attribute {name!r}")
