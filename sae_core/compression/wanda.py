"""Canonical WANDA pruning (Sun et al. 2023, locuslab/wanda) and the magnitude baselines' pruning core.

WANDA score of weight ``W[i, j]`` of a linear map stored as ``[out, in]``::

    S[i, j] = |W[i, j]| * ||X_j||_2

where ``X_j`` is input feature ``j`` over *all* calibration tokens (accumulated in at least
float32). Scores are compared within each output row; the lowest-scoring fraction of each row
is set to zero (selection rule: ``masks.py``). There is no weight update: kept weights are
bit-identical to the originals. The model is pruned sequentially, block by block
(``sequential.py``), like the reference implementation; all modules of a block use
statistics of the dense block.

Magnitude baselines (``|W|`` per row, ``|W|`` per whole matrix) use the same
:func:`prune_module_` and need no calibration pass (their registry entries: ``magnitude.py``).

:func:`prune_model` / :class:`PruneConfig` / :class:`PruneReport` are the original pruning API
(kept for its tests, benchmarks and callers); the spec-driven API for every method is
``sae_core.compression.compress_model``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from torch import nn

from sae_core.compression.base import CompressionMethod, CompressionSpec
from sae_core.compression.masks import magnitude_scores, parse_structure, prune_mask
from sae_core.compression.modules import MODULE_GROUPS, Target, acc_dtype, as_model, require_groups, weight_out_in
from sae_core.compression.sequential import check_calibration, compress_sequentially

__all__ = ["METHODS", "PruneConfig", "PruneReport", "SumOfSquares", "WandaMethod", "check_compatible", "prune_model",
           "prune_module_"]

METHODS: tuple[str, ...] = ("wanda", "magnitude_row", "magnitude_matrix")


# --------------------------------------------------------------------------- config


class PruneConfig(BaseModel):
    """Pruning options, validated at construction (errors are ``ValueError`` subclasses).

    ``sparsity`` may be omitted for an N:M structure (it is then N/M); if given with N:M it
    must equal N/M. ``n_calibration_samples`` / ``seq_len`` describe the calibration tensor
    that :func:`prune_model` expects (the first ``n_calibration_samples`` rows are used;
    ``seq_len=None`` accepts any width). ``seed`` is used by :func:`sample_calibration`.
    Magnitude methods ignore the calibration fields.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["wanda", "magnitude_row", "magnitude_matrix"] = "wanda"
    sparsity: float
    structure: str = "unstructured"
    module_groups: tuple[Literal["attention", "mlp"], ...] = MODULE_GROUPS
    n_calibration_samples: int = 128
    seq_len: int | None = None
    seed: int = 0
    batch_size: int = 8

    @model_validator(mode="before")
    @classmethod
    def _fill_sparsity_from_nm(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sparsity") is None:
            nm = parse_structure(data.get("structure", "unstructured"))
            if nm is not None:
                data = {**data, "sparsity": nm[0] / nm[1]}
        return data

    @field_validator("method", mode="before")
    @classmethod
    def _check_method(cls, v: Any) -> Any:
        if v not in METHODS:
            raise ValueError(f"unknown pruning method {v!r}; expected one of {list(METHODS)}")
        return v

    @field_validator("sparsity")
    @classmethod
    def _check_sparsity(cls, v: float) -> float:
        if not (0.0 <= v < 1.0):  # also rejects NaN
            raise ValueError(f"sparsity must be in [0, 1), got {v!r}")
        return float(v)

    @field_validator("structure")
    @classmethod
    def _check_structure(cls, v: str) -> str:
        nm = parse_structure(v)
        return "unstructured" if nm is None else f"{nm[0]}:{nm[1]}"

    @field_validator("module_groups", mode="before")
    @classmethod
    def _check_groups(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = (v,)
        v = tuple(v)
        if not v:
            raise ValueError("module_groups must name at least one of ('attention', 'mlp'), got ()")
        bad = [g for g in v if g not in MODULE_GROUPS]
        if bad:
            raise ValueError(f"unknown module group(s) {bad!r}; expected a subset of {list(MODULE_GROUPS)}")
        return tuple(g for g in MODULE_GROUPS if g in v)  # canonical order, deduplicated

    @field_validator("n_calibration_samples")
    @classmethod
    def _check_n(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"n_calibration_samples must be >= 1, got {v!r}")
        return v

    @field_validator("seq_len")
    @classmethod
    def _check_seq_len(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"seq_len must be >= 1 (or None), got {v!r}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _check_batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"batch_size must be >= 1, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check_consistency(self) -> "PruneConfig":
        nm = parse_structure(self.structure)
        if nm is not None:
            n, m = nm
            if abs(self.sparsity - n / m) > 1e-9:
                raise ValueError(
                    f"structure {self.structure!r} implies sparsity {n / m!r}, got sparsity={self.sparsity!r}"
                )
            if self.method == "magnitude_matrix":
                raise ValueError(
                    f"method 'magnitude_matrix' cannot use N:M structure {self.structure!r} "
                    "(N:M groups are per row; use 'magnitude_row')"
                )
        return self

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_structure(self.structure)

    @property
    def needs_calibration(self) -> bool:
        return self.method == "wanda"


# --------------------------------------------------------------------------- report


@dataclass
class PruneReport:
    """What :func:`prune_model` did.

    ``modules``: one dict per pruned module with ``name`` (path in the model), ``group``,
    ``block`` (index), ``shape`` ``[out, in]``, ``n_params``, ``n_pruned`` (weights this call
    set to zero), ``n_zero`` (zeros in the weight afterwards) and ``achieved_sparsity``
    (``n_zero / n_params``). ``input_norms`` (only with ``record_input_norms=True``) maps a
    module name to the ``||X_j||_2`` vector used for its WANDA scores (accumulation dtype:
    float32, or float64 for a float64 model).
    """

    modules: list[dict]
    calibration_tokens: int
    wall_time_s: float
    method: str = ""
    sparsity: float = 0.0
    structure: str = "unstructured"
    module_groups: tuple[str, ...] = ()
    input_norms: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def overall_sparsity(self) -> float:
        n = sum(m["n_params"] for m in self.modules)
        return sum(m["n_zero"] for m in self.modules) / n if n else 0.0

    def to_rows(self) -> list[dict]:
        """Flat, Parquet-friendly rows (one per module, scalar columns only)."""
        rows = []
        for m in self.modules:
            rows.append(
                {
                    "name": m["name"],
                    "group": m["group"],
                    "block": int(m["block"]),
                    "out_features": int(m["shape"][0]),
                    "in_features": int(m["shape"][1]),
                    "n_params": int(m["n_params"]),
                    "n_pruned": int(m["n_pruned"]),
                    "n_zero": int(m["n_zero"]),
                    "achieved_sparsity": float(m["achieved_sparsity"]),
                    "method": self.method,
                    "target_sparsity": float(self.sparsity),
                    "structure": self.structure,
                    "calibration_tokens": int(self.calibration_tokens),
                    "wall_time_s": float(self.wall_time_s),
                }
            )
        return rows



# --------------------------------------------------------------------------- compatibility


def check_compatible(model_config_or_model: Any, cfg: PruneConfig) -> list[list[Target]]:
    """Check ``cfg`` against an architecture without running it.

    Accepts a model or an HF config (instantiated on the meta device). Raises ``ValueError``
    if a requested module group has no Linear/Conv1D module in the decoder blocks, or if M of
    an N:M structure does not divide the input dimension of a module to prune. Returns the
    per-block target modules.
    """
    if not isinstance(cfg, PruneConfig):
        raise TypeError(f"cfg must be a PruneConfig, got {type(cfg).__name__}")
    model = as_model(model_config_or_model)
    targets = require_groups(model, cfg.module_groups)
    nm = cfg.nm
    if nm is not None:
        for bt in targets:
            for t in bt:
                n_in = t.shape[1]
                if n_in % nm[1]:
                    raise ValueError(
                        f"structure {cfg.structure!r}: M={nm[1]} does not divide the input dimension "
                        f"{n_in} of {t.name}"
                    )
    return targets


# --------------------------------------------------------------------------- one module

_CHUNK_ELEMS = 1 << 22  # rows are scored / selected / masked in chunks of <= 4M elements (bounds temporaries)


@torch.no_grad()
def prune_module_(
    module: nn.Module,
    cfg: PruneConfig,
    input_sq_sum: torch.Tensor | None = None,
) -> int:
    """Prune one Linear/Conv1D module in place; returns the number of weights zeroed.

    ``input_sq_sum`` (per input column, over all calibration tokens) is required for WANDA.
    Row-wise rules are applied to chunks of output rows (same result as whole-matrix
    selection, less temporary memory, better cache use); kept weights are never written.
    """
    w = weight_out_in(module)
    out_f, in_f = w.shape
    dt = acc_dtype(w.dtype)
    norms = None
    if cfg.method == "wanda":
        if input_sq_sum is None:
            raise ValueError("method 'wanda' needs input_sq_sum (per-input-column sum of squares)")
        if tuple(input_sq_sum.shape) != (in_f,):
            raise ValueError(f"input_sq_sum has shape {tuple(input_sq_sum.shape)}, expected ({in_f},)")
        norms = input_sq_sum.to(device=w.device, dtype=dt).sqrt()
    elif cfg.method == "magnitude_matrix":
        mask = prune_mask(magnitude_scores(w), cfg.sparsity, cfg.structure, per="matrix", nonneg=True)
        w.masked_fill_(mask, 0)
        return int(torch.count_nonzero(mask))

    n_pruned = 0
    rows = max(1, _CHUNK_ELEMS // in_f)
    for o0 in range(0, out_f, rows):
        wc = w[o0 : o0 + rows]
        sc = torch.empty(wc.shape, dtype=dt, device=w.device)
        sc.copy_(wc).abs_()  # always a copy: the weight itself is only touched by masked_fill_
        if norms is not None:
            sc.mul_(norms)
        mask = prune_mask(sc, cfg.sparsity, cfg.structure, per="row", nonneg=True)
        del sc
        wc.masked_fill_(mask, 0)  # in place through the (possibly transposed) view
        n_pruned += int(torch.count_nonzero(mask))
    return n_pruned



class SumOfSquares:
    """WANDA's statistics: per input column, the sum of squares over all calibration tokens."""

    def __init__(self, target: Target):
        w = weight_out_in(target.module)
        self.n_in = int(w.shape[1])
        self.sum = torch.zeros(self.n_in, dtype=acc_dtype(w.dtype), device=w.device)

    def add(self, x: torch.Tensor) -> None:
        x2 = x.reshape(-1, self.n_in)
        if x2.dtype != self.sum.dtype:
            x2 = x2.to(self.sum.dtype)
        self.sum.add_(torch.square(x2).sum(dim=0))


# --------------------------------------------------------------------------- whole model


def _module_record(t: Target, n_pruned: int) -> dict:
    w = weight_out_in(t.module)
    n_zero = int((w == 0).sum())
    return {
        "name": t.name,
        "group": t.group,
        "block": t.block,
        "shape": [int(w.shape[0]), int(w.shape[1])],
        "n_params": int(w.numel()),
        "n_pruned": n_pruned,
        "n_zero": n_zero,
        "achieved_sparsity": n_zero / w.numel(),
    }


def prune_model(
    model: nn.Module,
    calibration_input_ids: torch.LongTensor | None,
    cfg: PruneConfig,
    progress: bool = True,
    *,
    record_input_norms: bool = False,
) -> PruneReport:
    """Prune ``model`` in place with ``cfg`` and return a :class:`PruneReport`.

    ``calibration_input_ids``: ``[n, seq]`` token ids (first ``cfg.n_calibration_samples``
    rows used); ignored (may be ``None``) for the magnitude methods. Everything is validated
    before the model is touched. ``record_input_norms=True`` keeps the ``||X_j||_2`` vectors
    used for every module in ``report.input_norms`` (for tests / debugging).
    """
    t0 = time.perf_counter()
    targets = check_compatible(model, cfg)  # raises ValueError before any change
    ids = None
    if cfg.needs_calibration:
        if calibration_input_ids is None:
            raise ValueError("method 'wanda' needs calibration_input_ids, got None")
        ids = check_calibration(model, calibration_input_ids, cfg.n_calibration_samples, cfg.seq_len)

    records: list[dict] = []
    norms: dict[str, torch.Tensor] | None = {} if record_input_norms else None

    def prune(t: Target, stats: SumOfSquares | None) -> None:
        n_pruned = prune_module_(t.module, cfg, None if stats is None else stats.sum)
        records.append(_module_record(t, n_pruned))
        if norms is not None and stats is not None:
            norms[t.name] = stats.sum.sqrt().cpu()

    compress_sequentially(model, targets, prune, calibration_ids=ids, accumulator_for=SumOfSquares,
                          batch_size=cfg.batch_size, label=f"{cfg.method} {cfg.structure} s={cfg.sparsity:g}",
                          progress=progress)
    return PruneReport(
        modules=records,
        calibration_tokens=0 if ids is None else int(ids.numel()),
        wall_time_s=time.perf_counter() - t0,
        method=cfg.method,
        sparsity=cfg.sparsity,
        structure=cfg.structure,
        module_groups=tuple(cfg.module_groups),
        input_norms=norms,
    )


# --------------------------------------------------------------------------- registry entry


class WandaMethod(CompressionMethod):
    """``wanda:S`` / ``wanda:N:M``: |W| * ||X_j||_2 per output row, no weight update."""

    name = "wanda"
    needs_calibration = True
    legacy_method = "wanda"  # PruneConfig.method

    def __init__(self, spec: CompressionSpec):
        super().__init__(spec)
        self.cfg = PruneConfig(method=self.legacy_method, sparsity=spec.sparsity, structure=spec.structure)

    def accumulator(self, target: Target) -> SumOfSquares:
        return SumOfSquares(target)

    def compress_module(self, target: Target, stats: SumOfSquares | None) -> dict[str, Any]:
        prune_module_(target.module, self.cfg, None if stats is None else stats.sum)
        return {}
