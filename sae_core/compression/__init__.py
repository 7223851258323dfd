"""Compression of an HF causal LM through one interface: ``compress_model(model, "wanda:0.5", ids)``.

Methods (``registry.METHODS``): ``wanda``, ``sparsegpt``, ``magnitude`` (per row),
``magnitude_matrix``, ``rtn`` and ``gptq``. Every method changes the attention / MLP
Linear/Conv1D weights of the decoder blocks in place and leaves plain float weights (quantized
ones stored dequantized), so downstream code reads the model unchanged. Layout: ``modules``
(what is compressed), ``sequential`` (block-by-block calibration driver), ``masks`` (pruning
selection rules), ``base`` (spec, method interface, report), one file per method, ``registry``.
This package is a plain library: it never imports prefect.
"""

from sae_core.compression.base import CompressionMethod, CompressionReport, CompressionSpec
from sae_core.compression.modules import MODULE_GROUPS, find_blocks, find_prunable_modules
from sae_core.compression.registry import METHODS, compress_model, method_for, parse_spec
from sae_core.compression.sequential import sample_calibration

__all__ = ["METHODS", "MODULE_GROUPS", "CompressionMethod", "CompressionReport", "CompressionSpec", "compress_model",
           "find_blocks", "find_prunable_modules", "method_for", "parse_spec", "sample_calibration"]
