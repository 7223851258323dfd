"""Canonical WANDA pruning (Sun et al. 2023, locuslab/wanda) for in-memory HF causal LMs.

WANDA score of weight ``W[i, j]`` of a linear map stored as ``[out, in]``::

    S[i, j] = |W[i, j]| * ||X_j||_2

where ``X_j`` is input feature ``j`` over *all* calibration tokens. Scores are compared
within each output row; the lowest-scoring fraction of each row is set to zero. There is
no weight update: kept weights are bit-identical to the originals.

The model is pruned sequentially, block by block, like the reference implementation:

1. Capture the inputs of decoder block 0 (hidden states plus every other positional /
   keyword argument the model hands to its blocks: attention mask, position embeddings,
   position ids, ...) with the "Catcher" trick: each block's forward is swapped for a
   recorder for one embedding-only pass, which stops at the last block by raising
   :class:`_StopForward`. Non-hidden-state arguments are recorded *per block* because some
   architectures (Gemma-2: sliding-window vs. global layers) hand different masks to
   different blocks. (If a model cannot run with pass-through blocks, it falls back to the
   classic pre-hook catcher on block 0 and reuses block 0's arguments, with a warning.)
2. For block ``l``: one pass over the stored inputs through the *dense* block with forward
   pre-hooks on the selected linear modules, accumulating the per-input-column sum of
   squares in (at least) float32 over all calibration tokens. The pass stops right after the
   last hooked module has seen its input (its own matmul and the rest of the block are
   skipped), because nothing after it is needed for statistics. This is only done when
   every hooked module runs exactly once per forward (checked on the first batch).
3. Prune every selected module of the block from those statistics (all modules of a block
   use statistics of the dense block, like the reference).
4. Re-run the *pruned* block on the stored inputs; its outputs overwrite the stored inputs
   in place and become block ``l+1``'s inputs. (Skipped after the last block.)

Peak extra memory is one block's inputs (``n_samples x seq x d_model``) plus one batch of
activations.

Selection rule (documented, used identically by every method):

- ``k = floor(n * sparsity + 1e-9)`` weights are zeroed per group, where the group is an
  output row (``wanda``, ``magnitude_row``), the whole matrix (``magnitude_matrix``) or,
  for N:M, each run of M consecutive inputs of a row (exactly N zeroed). The ``1e-9``
  guards against ``0.29 * 100 == 28.999...``; otherwise this is the reference's
  ``int(n * sparsity)``.
- Ties are broken deterministically: among equal scores, the lower input index (for the
  whole-matrix baseline: lower row-major index of the ``[out, in]`` view) is pruned first,
  i.e. exactly what a stable ascending sort gives.

Magnitude baselines (``|W|`` per row, ``|W|`` per whole matrix) use the same interface and
need no calibration pass. Embeddings and the LM head are never pruned (only modules inside
the decoder blocks are considered).

This module is a plain library: it never imports prefect.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from torch import nn

from sae_core.progress import track

try:  # GPT-2 style "Conv1D" (weight stored [in, out])
    from transformers.pytorch_utils import Conv1D
except Exception:  # pragma: no cover - transformers is a hard dependency of the project
    Conv1D = None  # type: ignore[assignment]

__all__ = [
    "METHODS",
    "MODULE_GROUPS",
    "PruneConfig",
    "PruneReport",
    "check_compatible",
    "classify_module",
    "find_blocks",
    "find_prunable_modules",
    "magnitude_scores",
    "parse_structure",
    "prune_mask",
    "prune_model",
    "prune_module_",
    "sample_calibration",
    "wanda_scores",
    "weight_out_in",
]

METHODS: tuple[str, ...] = ("wanda", "magnitude_row", "magnitude_matrix")
MODULE_GROUPS: tuple[str, ...] = ("attention", "mlp")
_EPS_K = 1e-9

_LINEAR_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if Conv1D is not None else ())

# Path components (relative to a decoder block) that identify a module group.
_ATTN_RE = re.compile(r"(attn|attention)", re.IGNORECASE)
_MLP_RE = re.compile(
    r"^(mlp|ffn|ff|feed_forward|feedforward|moe|block_sparse_moe|experts|fc\d*|"
    r"dense_h_to_4h|dense_4h_to_h|c_fc|w1|w2|w3|gate_proj|up_proj|down_proj)$",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- config


def parse_structure(structure: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> ``None``; ``"N:M"`` -> ``(N, M)`` with ``1 <= N < M``."""
    if not isinstance(structure, str):
        raise ValueError(f"structure must be 'unstructured' or 'N:M', got {structure!r}")
    s = structure.strip().lower()
    if s == "unstructured":
        return None
    m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", s)
    if m is None:
        raise ValueError(f"structure must be 'unstructured' or 'N:M' (e.g. '2:4'), got {structure!r}")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 1 <= n < mm:
        raise ValueError(f"N:M structure needs 1 <= N < M, got {structure!r} (N={n}, M={mm})")
    return n, mm


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


# --------------------------------------------------------------------------- architecture


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, _LINEAR_TYPES)


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The module's weight as an ``[out, in]`` view (transposed view for ``Conv1D``)."""
    if Conv1D is not None and isinstance(module, Conv1D):
        return module.weight.t()
    if isinstance(module, nn.Linear):
        return module.weight
    raise TypeError(f"not a Linear/Conv1D module: {type(module).__name__}")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder block list: the ``nn.ModuleList`` (of non-linear modules) holding the most
    parameters, shallowest first on ties (e.g. ``transformer.h``, ``model.layers``).
    Expert lists inside MoE blocks lose because their parent list contains them."""
    best: tuple[int, int, str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if any(_is_linear(c) or not any(True for _ in c.parameters()) for c in mod):
            continue
        n_params = sum(p.numel() for p in mod.parameters())
        key = (n_params, -name.count("."))
        if best is None or key > best[:2]:
            best = (key[0], key[1], name, mod)
    if best is None:
        raise ValueError(f"no decoder block list (nn.ModuleList of blocks) found in {type(model).__name__}")
    return best[2], best[3]


def classify_module(rel_name: str) -> str | None:
    """Group of a linear module from its path relative to its block (None: unclassified)."""
    parts = rel_name.split(".")
    if any(_ATTN_RE.search(p) for p in parts):
        return "attention"
    if any(_MLP_RE.match(p) for p in parts):
        return "mlp"
    return None


@dataclass
class _Target:
    name: str  # full path in the model
    rel_name: str  # path inside the block
    group: str
    block: int
    module: nn.Module

    @property
    def shape(self) -> tuple[int, int]:
        w = weight_out_in(self.module)
        return int(w.shape[0]), int(w.shape[1])


def find_prunable_modules(
    model: nn.Module, groups: Iterable[str] = MODULE_GROUPS
) -> list[list[_Target]]:
    """Per block, the Linear/Conv1D modules of the requested groups (in module order)."""
    groups = tuple(groups)
    prefix, blocks = find_blocks(model)
    out: list[list[_Target]] = []
    for b, block in enumerate(blocks):
        targets = []
        for rel, mod in block.named_modules():
            if not rel or not _is_linear(mod):
                continue
            g = classify_module(rel)
            if g is not None and g in groups:
                targets.append(_Target(f"{prefix}.{b}.{rel}", rel, g, b, mod))
        out.append(targets)
    return out


def _as_model(model_config_or_model: Any) -> nn.Module:
    if isinstance(model_config_or_model, nn.Module):
        return model_config_or_model
    from transformers import AutoModelForCausalLM, PretrainedConfig

    if isinstance(model_config_or_model, PretrainedConfig):
        # Parameters on the meta device: no memory, no initialisation cost.
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(model_config_or_model)
    raise TypeError(
        f"expected an nn.Module or a transformers PretrainedConfig, got {type(model_config_or_model).__name__}"
    )


def check_compatible(model_config_or_model: Any, cfg: PruneConfig) -> list[list[_Target]]:
    """Check ``cfg`` against an architecture without running it.

    Accepts a model or an HF config (instantiated on the meta device). Raises ``ValueError``
    if a requested module group has no Linear/Conv1D module in the decoder blocks, or if M of
    an N:M structure does not divide the input dimension of a module to prune. Returns the
    per-block target modules.
    """
    if not isinstance(cfg, PruneConfig):
        raise TypeError(f"cfg must be a PruneConfig, got {type(cfg).__name__}")
    model = _as_model(model_config_or_model)
    targets = find_prunable_modules(model, cfg.module_groups)
    present = {t.group for bt in targets for t in bt}
    for g in cfg.module_groups:
        if g not in present:
            raise ValueError(
                f"module group {g!r} has no Linear/Conv1D module in the decoder blocks of "
                f"{type(model).__name__}"
            )
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


# --------------------------------------------------------------------------- scores & masks


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def wanda_scores(weight_out_in: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrt(sum_t X_tj^2)`` as a contiguous ``[out, in]`` tensor (>= float32)."""
    dt = _acc_dtype(weight_out_in.dtype)
    norms = input_sq_sum.to(device=weight_out_in.device, dtype=dt).sqrt()
    s = weight_out_in.abs().to(dt).mul_(norms.unsqueeze(0))
    return s.contiguous()


def magnitude_scores(weight_out_in: torch.Tensor) -> torch.Tensor:
    return weight_out_in.abs().to(_acc_dtype(weight_out_in.dtype)).contiguous()


def _n_prune(n: int, sparsity: float) -> int:
    return int(math.floor(n * sparsity + _EPS_K))


def _order_keys(scores: torch.Tensor, nonneg: bool = False) -> torch.Tensor:
    """Integer view with the same order as the (non-negative) float scores: selecting on
    int32/int64 bit patterns is exact and faster than on floats (no NaN handling)."""
    view = {torch.float32: torch.int32, torch.float64: torch.int64}.get(scores.dtype)
    if view is None or not (nonneg or bool((scores >= 0).all())):
        return scores
    return scores.view(view)


def _lowest_k_rows(scores: torch.Tensor, k: int, nonneg: bool = False) -> torch.Tensor:
    """Bool mask with exactly ``k`` True per row at the lowest scores (stable tie-break)."""
    rows, n = scores.shape
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    keys = _order_keys(scores, nonneg)
    # Fast path: k-th value per row (quickselect, O(n)), then <=. Every row then has >= k
    # entries selected, exactly k unless the k-th value is tied; such rows are redone with
    # a stable sort (lower index pruned first).
    thr = keys.kthvalue(k, dim=1, keepdim=True).values
    mask = keys <= thr
    if int(torch.count_nonzero(mask)) != rows * k:
        bad = (mask.sum(dim=1) != k).nonzero().flatten()
        idx = torch.sort(keys[bad], dim=1, stable=True).indices[:, :k]
        fix = torch.zeros((bad.numel(), n), dtype=torch.bool, device=scores.device)
        fix.scatter_(1, idx, True)
        mask[bad] = fix
    return mask


def prune_mask(
    scores: torch.Tensor,
    sparsity: float,
    structure: str = "unstructured",
    per: Literal["row", "matrix"] = "row",
    *,
    nonneg: bool = False,
) -> torch.Tensor:
    """Bool ``[out, in]`` mask (True = prune) of the lowest scores.

    ``per="row"``: ``floor(in * sparsity)`` per row; ``per="matrix"``: ``floor(numel *
    sparsity)`` over the whole matrix (row-major tie-break); N:M: exactly N per group of M
    consecutive inputs of each row (``sparsity`` is then ignored). ``nonneg=True`` promises
    scores >= 0 (skips a check).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [out, in], got shape {tuple(scores.shape)}")
    out_f, in_f = scores.shape
    nm = parse_structure(structure)
    if nm is not None:
        n, m = nm
        if in_f % m:
            raise ValueError(f"structure {structure!r}: M={m} does not divide the input dimension {in_f}")
        g = _order_keys(scores, nonneg).reshape(out_f * (in_f // m), m)
        idx = torch.sort(g, dim=1, stable=True).indices[:, :n]
        mask = torch.zeros_like(g, dtype=torch.bool)
        mask.scatter_(1, idx, True)
        return mask.reshape(out_f, in_f)
    if not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if per == "row":
        return _lowest_k_rows(scores, _n_prune(in_f, sparsity), nonneg)
    if per == "matrix":
        flat = scores.reshape(1, -1)
        return _lowest_k_rows(flat, _n_prune(scores.numel(), sparsity), nonneg).reshape(out_f, in_f)
    raise ValueError(f"per must be 'row' or 'matrix', got {per!r}")


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
    dt = _acc_dtype(w.dtype)
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


# --------------------------------------------------------------------------- calibration


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


def _check_calibration(model: nn.Module, ids: Any, cfg: PruneConfig) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"calibration_input_ids must be a torch.LongTensor [n, seq], got {type(ids).__name__}")
    if ids.ndim != 2:
        raise ValueError(f"calibration_input_ids must be 2-D [n, seq], got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"calibration_input_ids must be integer token ids, got dtype {ids.dtype}")
    n, seq = ids.shape
    if n == 0 or seq == 0:
        raise ValueError(f"calibration_input_ids is empty: shape {tuple(ids.shape)}")
    if n < cfg.n_calibration_samples:
        raise ValueError(
            f"calibration_input_ids has {n} rows but n_calibration_samples={cfg.n_calibration_samples}"
        )
    if cfg.seq_len is not None and seq != cfg.seq_len:
        raise ValueError(f"calibration_input_ids has seq length {seq} but cfg.seq_len={cfg.seq_len}")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(emb, "num_embeddings", None)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        raise ValueError(f"calibration token ids must be in [0, {vocab}), got range [{lo}, {hi}]")
    return ids[: cfg.n_calibration_samples].long()


# --------------------------------------------------------------------------- sequential driver


class _StopForward(Exception):
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
def _capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor, batch_size: int, per_block: bool = True
) -> tuple[list[torch.Tensor], list[list[tuple[tuple, dict]]]]:
    """Per batch: hidden states entering block 0. Per block and batch: the other args/kwargs.

    Catcher trick, generalised: every block's ``forward`` is temporarily replaced by a
    recorder that passes the hidden states through untouched; the last block's recorder
    raises ``_StopForward`` so the final norm and LM head never run. Only the embedding
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
                raise _StopForward
            return hs

        return recorder

    try:
        for i, blk in enumerate(hooked):
            blk.forward = make_recorder(i)  # instance attribute shadows the class method
        for s in range(0, ids.shape[0], batch_size):
            batch = ids[s : s + batch_size].to(device)
            try:
                model(input_ids=batch, use_cache=False)
            except _StopForward:
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
        hidden, extra0 = _capture_block_inputs(model, blocks, ids, batch_size, per_block=False)
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


@torch.no_grad()
def _wanda_block_stats(
    block: nn.Module,
    targets: list[_Target],
    hidden: list[torch.Tensor],
    extra: list[tuple[tuple, dict]],
    early_stop_cache: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Sum of squares per input column of every target module over all calibration tokens.

    The forward of a batch is cut short right after the last target module has received its
    input, provided each target runs exactly once per forward. That is checked on the first
    batch of the first block of each kind (``early_stop_cache``: block class + target paths
    -> bool); until then batches run the whole block.
    """
    device = _device_of(block, hidden[0].device)
    sums: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    cache = {} if early_stop_cache is None else early_stop_cache
    key = (type(block), tuple(t.rel_name for t in targets))
    state = {"early_stop": cache.get(key, False), "seen": 0}
    n_targets = len(targets)

    def make_hook(t: _Target):
        n_in = t.shape[1]
        w = weight_out_in(t.module)
        acc = torch.zeros(n_in, dtype=_acc_dtype(w.dtype), device=w.device)
        sums[t.name] = acc
        calls[t.name] = 0

        def hook(mod, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            x2 = x.reshape(-1, n_in)
            if x2.dtype != acc.dtype:
                x2 = x2.to(acc.dtype)
            acc.add_(torch.square(x2).sum(dim=0))
            calls[t.name] += 1
            state["seen"] += 1
            if state["early_stop"] and state["seen"] == n_targets:
                raise _StopForward  # nothing after the last hooked input is needed

        return hook

    handles = [t.module.register_forward_pre_hook(make_hook(t), with_kwargs=True) for t in targets]
    try:
        for b, (hs, ex) in enumerate(zip(hidden, extra)):
            state["seen"] = 0
            try:
                _call_block(block, hs, ex, device)
            except _StopForward:
                pass
            if b == 0 and key not in cache:
                # Early stopping is only safe if each target runs exactly once per forward.
                cache[key] = state["early_stop"] = all(c == 1 for c in calls.values())
    finally:
        for h in handles:
            h.remove()
    return sums


def _module_record(t: _Target, n_pruned: int) -> dict:
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
        ids = _check_calibration(model, calibration_input_ids, cfg)

    _, blocks = find_blocks(model)
    records: list[dict] = []
    norms: dict[str, torch.Tensor] | None = {} if record_input_norms else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            bar = track(range(len(blocks)), f"{cfg.method} {cfg.structure} s={cfg.sparsity:g} (blocks)", show=progress)
            if ids is None:
                for b in bar:
                    for t in targets[b]:
                        records.append(_module_record(t, prune_module_(t.module, cfg)))
            else:
                hidden, extra = _capture_block_inputs(model, blocks, ids, cfg.batch_size)
                last = len(blocks) - 1
                early_stop_cache: dict = {}
                for b in bar:
                    block = blocks[b]
                    if targets[b]:
                        sums = _wanda_block_stats(block, targets[b], hidden, extra[b], early_stop_cache)
                        for t in targets[b]:
                            n_pruned = prune_module_(t.module, cfg, sums[t.name])
                            records.append(_module_record(t, n_pruned))
                            if norms is not None:
                                norms[t.name] = sums[t.name].sqrt().cpu()
                        del sums
                    if b < last:  # the pruned block's outputs are the next block's inputs
                        device = _device_of(block, hidden[0].device)
                        for i in range(len(hidden)):
                            hidden[i] = _first_tensor(_call_block(block, hidden[i], extra[b][i], device))
                del hidden, extra
    finally:
        model.train(was_training)
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
