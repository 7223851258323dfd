"""Spec text -> method: the registry, the parser, and ``compress_model``.

A new method is one file (a :class:`~sae_core.compression.base.CompressionMethod` subclass) plus
one entry in ``METHODS``. Spec syntax (validated up front, ``ValueError`` naming the bad value):

- sparsity methods: ``NAME:S`` with ``0 <= S < 1`` (``wanda:0.5``), or ``NAME:N:M`` with
  ``1 <= N < M`` for N:M (``wanda:2:4``, ``sparsegpt:2:4``, ``magnitude:2:4``);
- bit-width methods: ``NAME:B`` with ``2 <= B <= 8`` (``rtn:8``), or ``NAME:BgG`` for one scale
  per group of G inputs (``rtn:4g128``).
"""

from __future__ import annotations

import re
import time
from typing import Iterable

import torch
from torch import nn

from sae_core.compression.base import CompressionMethod, CompressionReport, CompressionSpec, module_record
from sae_core.compression.gptq import GPTQMethod
from sae_core.compression.magnitude import MagnitudeMatrixMethod, MagnitudeMethod
from sae_core.compression.modules import MODULE_GROUPS, Target, acc_dtype, require_groups, weight_out_in
from sae_core.compression.rtn import RTNMethod
from sae_core.compression.sequential import check_calibration, compress_sequentially
from sae_core.compression.sparsegpt import SparseGPTMethod
from sae_core.compression.wanda import WandaMethod

__all__ = ["ALIASES", "BITS_RANGE", "METHODS", "compress_model", "method_for", "parse_spec"]

METHODS: dict[str, type[CompressionMethod]] = {
    cls.name: cls for cls in (WandaMethod, SparseGPTMethod, MagnitudeMethod, MagnitudeMatrixMethod, RTNMethod, GPTQMethod)
}
ALIASES = {"magnitude_row": "magnitude"}  # the name llm_pruning.method uses
BITS_RANGE = (2, 8)


def parse_spec(text: str | CompressionSpec) -> CompressionSpec:
    """``"wanda:0.5"`` -> :class:`CompressionSpec`; ``ValueError`` naming the bad part otherwise."""
    if isinstance(text, CompressionSpec):
        return text
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"compression spec must look like 'METHOD:STRENGTH' (e.g. 'wanda:0.5', 'rtn:8'), got {text!r}")
    name, arg = (part.strip() for part in text.strip().split(":", 1))
    name = ALIASES.get(name.lower(), name.lower())
    cls = METHODS.get(name)
    if cls is None:
        raise ValueError(f"unknown compression method {name!r} in {text!r}; known: {sorted(METHODS)}")
    if cls.kind == "bits":
        m = re.fullmatch(r"(\d+)(?:g(\d+))?", arg)
        if m is None:
            raise ValueError(f"{name} needs a bit width, e.g. '{name}:4' or '{name}:4g128', got {arg!r} in {text!r}")
        bits, group = int(m.group(1)), (None if m.group(2) is None else int(m.group(2)))
        if not BITS_RANGE[0] <= bits <= BITS_RANGE[1]:
            raise ValueError(f"bits must be in [{BITS_RANGE[0]}, {BITS_RANGE[1]}], got {bits} in {text!r}")
        if group is not None and group < 1:
            raise ValueError(f"group size must be >= 1, got {group} in {text!r}")
        return CompressionSpec(name, bits=bits, group_size=group)
    m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", arg)
    if m is not None:
        n, mm = int(m.group(1)), int(m.group(2))
        if not cls.supports_nm:
            raise ValueError(f"method {name!r} cannot use N:M structure {arg!r} (in {text!r})")
        if not 1 <= n < mm:
            raise ValueError(f"N:M structure needs 1 <= N < M, got N={n}, M={mm} in {text!r}")
        return CompressionSpec(name, sparsity=n / mm, nm=(n, mm))
    try:
        sparsity = float(arg)
    except ValueError:
        raise ValueError(f"{name} needs a sparsity in [0, 1) or N:M, got {arg!r} in {text!r}") from None
    if not 0.0 <= sparsity < 1.0:  # also rejects NaN
        raise ValueError(f"sparsity must be in [0, 1), got {arg} in {text!r}")
    return CompressionSpec(name, sparsity=sparsity)


def method_for(spec: str | CompressionSpec) -> CompressionMethod:
    spec = parse_spec(spec)
    return METHODS[spec.method](spec)


def compress_model(
    model: nn.Module,
    spec: str | CompressionSpec,
    calibration_input_ids: torch.Tensor | None = None,
    *,
    module_groups: Iterable[str] = MODULE_GROUPS,
    batch_size: int = 8,
    progress: bool = True,
) -> CompressionReport:
    """Compress ``model`` in place with ``spec``; every check runs before the model is touched.

    ``calibration_input_ids`` (``[n, seq]`` token ids, all rows used) is required by calibrated
    methods (wanda, sparsegpt, gptq) and ignored by the others.
    """
    t0 = time.perf_counter()
    method = method_for(spec)
    spec = method.spec
    groups = tuple(g for g in MODULE_GROUPS if g in tuple(module_groups))
    unknown = [g for g in module_groups if g not in MODULE_GROUPS]
    if unknown or not groups:
        raise ValueError(f"module_groups must be a non-empty subset of {list(MODULE_GROUPS)}, got {list(module_groups)}")
    targets = require_groups(model, groups)
    for block_targets in targets:
        for t in block_targets:
            method.check_target(t)
    ids = None
    if method.needs_calibration:
        if calibration_input_ids is None:
            raise ValueError(f"method {spec.method!r} needs calibration_input_ids, got None")
        ids = check_calibration(model, calibration_input_ids)

    records: list[dict] = []
    warnings_seen: list[str] = []

    def compress(t: Target, stats) -> None:
        w = weight_out_in(t.module)
        before = w.detach().to(acc_dtype(w.dtype), copy=True)
        extra = method.compress_module(t, stats)
        if extra.get("damping_retries"):
            warnings_seen.append(f"{t.name}: Cholesky needed damping {extra['damping']:g} x mean diag")
        records.append(module_record(t, before, extra))

    compress_sequentially(model, targets, compress, calibration_ids=ids,
                          accumulator_for=method.accumulator if ids is not None else None,
                          batch_size=batch_size, label=f"{spec.method} {spec.text}", progress=progress)
    return CompressionReport(spec=spec, modules=records, calibration_tokens=0 if ids is None else int(ids.numel()),
                             wall_time_s=time.perf_counter() - t0, module_groups=groups, warnings=warnings_seen)
