"""What every compression method shares: the parsed spec, the method interface, the report.

A method is a class with a ``name`` (its registry entry gives its ``kind``: ``"sparsity"``, the
strength is the fraction of weights zeroed, or ``"bits"``, the weight bit width) and one job:
``compress_module(target, statistics)`` changes one Linear/Conv1D weight in place, leaving a
plain float tensor of the same dtype (quantized weights are stored dequantized, "fake-quant"),
so every downstream step reads the model unchanged. Calibrated methods also say what input
statistics they need (``accumulator``); the sequential driver gathers them block by block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from sae_core.compression.modules import Target, weight_out_in
from sae_core.compression.sequential import Accumulator
from sae_core.compression.spec import CompressionSpec

__all__ = ["CompressionMethod", "CompressionReport", "CompressionSpec", "module_record"]


class CompressionMethod:
    """Base class: one instance compresses one model with one spec."""

    name: ClassVar[str]  # its key in registry.METHODS, which also says its kind and whether it takes N:M
    needs_calibration: ClassVar[bool] = False

    def __init__(self, spec: CompressionSpec):
        self.spec = spec

    def check_target(self, target: Target) -> None:
        """Raise ``ValueError`` if the method cannot compress this module (before any change)."""
        n_in = target.shape[1]
        if self.spec.nm is not None and n_in % self.spec.nm[1]:
            raise ValueError(f"structure {self.spec.structure!r}: M={self.spec.nm[1]} does not divide the input "
                             f"dimension {n_in} of {target.name}")
        if self.spec.group_size is not None and n_in % self.spec.group_size:
            raise ValueError(f"group size {self.spec.group_size} of {self.spec.text!r} does not divide the input "
                             f"dimension {n_in} of {target.name}")

    def accumulator(self, target: Target) -> Accumulator:  # pragma: no cover - calibrated methods override
        raise NotImplementedError

    def compress_module(self, target: Target, stats: Accumulator | None) -> dict[str, Any]:
        """Compress ``target`` in place; return extra per-module report fields (may be empty)."""
        raise NotImplementedError


@dataclass
class CompressionReport:
    """What ``compress_model`` did: one record per module, calibration tokens, wall time, warnings."""

    spec: CompressionSpec
    modules: list[dict]
    calibration_tokens: int
    wall_time_s: float
    module_groups: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)

    @property
    def overall_sparsity(self) -> float:
        n = sum(m["n_params"] for m in self.modules)
        return sum(m["n_zero"] for m in self.modules) / n if n else 0.0

    @property
    def relative_error(self) -> float:
        """``||W - W_hat||_F / ||W||_F`` over all compressed weights together."""
        num = sum(m["error_sq"] for m in self.modules)
        den = sum(m["weight_sq"] for m in self.modules)
        return math.sqrt(num / den) if den else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures for a manifest."""
        dampings = [m["damping"] for m in self.modules if not math.isnan(m.get("damping", math.nan))]
        return {
            "spec": self.spec.text, "method": self.spec.method, "kind": self.spec.kind, "strength": self.spec.strength,
            "structure": self.spec.structure, "sparsity": self.spec.sparsity,
            "nm": None if self.spec.nm is None else list(self.spec.nm), "bits": self.spec.bits, "group_size": self.spec.group_size,
            "achieved_sparsity": self.overall_sparsity, "relative_weight_error": self.relative_error,
            "module_groups": list(self.module_groups), "n_modules": len(self.modules),
            "calibration_tokens": int(self.calibration_tokens),
            "max_damping": max(dampings) if dampings else None, "warnings": list(self.warnings),
        }

    def to_rows(self) -> list[dict]:
        """Flat, Parquet-friendly rows (one per module, scalar columns only, no wall time: deterministic)."""
        rows = []
        for m in self.modules:
            rows.append({
                "name": m["name"], "group": m["group"], "block": int(m["block"]),
                "out_features": int(m["shape"][0]), "in_features": int(m["shape"][1]),
                "n_params": int(m["n_params"]), "n_zero": int(m["n_zero"]),
                "achieved_sparsity": float(m["achieved_sparsity"]),
                "relative_error": float(m["relative_error"]), "damping": float(m.get("damping", math.nan)),
                "spec": self.spec.text, "method": self.spec.method, "strength": self.spec.strength,
                "structure": self.spec.structure, "bits": int(self.spec.bits or 0),
                "group_size": int(self.spec.group_size or 0), "calibration_tokens": int(self.calibration_tokens),
            })
        return rows


def module_record(target: Target, before: torch.Tensor, extra: dict[str, Any]) -> dict[str, Any]:
    """Per-module figures from the weight before (a float copy) and after compression."""
    w = weight_out_in(target.module).detach()
    n_zero = int((w == 0).sum())
    error_sq = float((w.to(before.dtype) - before).pow(2).sum())
    weight_sq = float(before.pow(2).sum())
    return {
        "name": target.name, "group": target.group, "block": target.block,
        "shape": [int(w.shape[0]), int(w.shape[1])], "n_params": int(w.numel()),
        "n_zero": n_zero, "achieved_sparsity": n_zero / w.numel(),
        "error_sq": error_sq, "weight_sq": weight_sq,
        "relative_error": math.sqrt(error_sq / weight_sq) if weight_sq else 0.0,
        **extra,
    }
