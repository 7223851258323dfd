"""Where compression applies: the decoder blocks of an HF causal LM and their Linear/Conv1D modules.

Shared by every method. Only modules *inside* the decoder blocks are targets: embeddings, the
LM head and norms are never compressed. Modules are grouped as ``attention`` / ``mlp`` from
their path inside the block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

try:  # GPT-2 style "Conv1D" (weight stored [in, out])
    from transformers.pytorch_utils import Conv1D
except Exception:  # pragma: no cover - transformers is a hard dependency of the project
    Conv1D = None  # type: ignore[assignment]

__all__ = ["MODULE_GROUPS", "Target", "acc_dtype", "as_model", "classify_module", "find_blocks",
           "find_prunable_modules", "require_groups", "weight_out_in"]

MODULE_GROUPS: tuple[str, ...] = ("attention", "mlp")

_LINEAR_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if Conv1D is not None else ())

# Path components (relative to a decoder block) that identify a module group.
_ATTN_RE = re.compile(r"(attn|attention)", re.IGNORECASE)
_MLP_RE = re.compile(
    r"^(mlp|ffn|ff|feed_forward|feedforward|moe|block_sparse_moe|experts|fc\d*|"
    r"dense_h_to_4h|dense_4h_to_h|c_fc|w1|w2|w3|gate_proj|up_proj|down_proj)$",
    re.IGNORECASE,
)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


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
class Target:
    """One module to compress: its full path, path inside the block, group and block index."""

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
) -> list[list[Target]]:
    """Per block, the Linear/Conv1D modules of the requested groups (in module order)."""
    groups = tuple(groups)
    prefix, blocks = find_blocks(model)
    out: list[list[Target]] = []
    for b, block in enumerate(blocks):
        targets = []
        for rel, mod in block.named_modules():
            if not rel or not _is_linear(mod):
                continue
            g = classify_module(rel)
            if g is not None and g in groups:
                targets.append(Target(f"{prefix}.{b}.{rel}", rel, g, b, mod))
        out.append(targets)
    return out


def as_model(model_config_or_model: Any) -> nn.Module:
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


def require_groups(model: nn.Module, groups: Iterable[str]) -> list[list[Target]]:
    """Per-block targets of ``groups``; ``ValueError`` if a requested group has no module."""
    groups = tuple(groups)
    targets = find_prunable_modules(model, groups)
    present = {t.group for bt in targets for t in bt}
    for g in groups:
        if g not in present:
            raise ValueError(
                f"module group {g!r} has no Linear/Conv1D module in the decoder blocks of "
                f"{type(model).__name__}"
            )
    return targets
