"""``compress_model``: any registered method, one call."""

from __future__ import annotations

import time
from typing import Iterable

import torch
from torch import nn

from sae_core.compression.base import CompressionMethod, CompressionReport, module_record
from sae_core.compression.modules import MODULE_GROUPS, Target, acc_dtype, require_groups, weight_out_in
from sae_core.compression.registry import method_class
from sae_core.compression.sequential import check_calibration, compress_sequentially
from sae_core.compression.spec import CompressionSpec, parse_spec

__all__ = ["compress_model", "method_for"]


def method_for(spec: str | CompressionSpec) -> CompressionMethod:
    spec = parse_spec(spec)
    return method_class(spec.method)(spec)


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
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    method = method_for(spec)
    spec = method.spec
    module_groups = list(module_groups)
    groups = tuple(g for g in MODULE_GROUPS if g in module_groups)
    if not groups or any(g not in MODULE_GROUPS for g in module_groups):
        raise ValueError(f"module_groups must be a non-empty subset of {list(MODULE_GROUPS)}, got {module_groups}")
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
