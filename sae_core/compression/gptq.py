"""GPTQ weight quantization (Frantar et al. 2023), ``gptq:B`` / ``gptq:BgG``: SparseGPT's sweep
(same Hessian, dead inputs, damping ladder, upper Cholesky factor of H^-1, 128-column blocks,
OBS error feedback) with each column rounded to RTN's grid instead of masked.

Grid: RTN's (``rtn.py``): symmetric, signed, absmax. Per output channel, the scales come from
the original weights before the sweep (as the reference's ``find_params(W)``); with groups of G
inputs, from the current, error-updated weights when the sweep reaches a group's first column
(the sweep's blocks are then a multiple of G, so a group never straddles two). No act-order.
With a Hessian proportional to the identity there is no error to feed back and GPTQ equals RTN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sae_core.compression.modules import acc_dtype, weight_out_in
from sae_core.compression.rtn import absmax_scale, fake_quantize
from sae_core.compression.sparsegpt import (BLOCKSIZE, PERCDAMP, HessianAccumulator, SparseGPTMethod,
                                            inverse_hessian_factor, obs_sweep_, prepare_weight_and_hessian,
                                            write_weight_)


class _QuantRule:
    def __init__(self, W: torch.Tensor, bits: int, group_size: int | None):
        self.bits, self.group_size = bits, group_size
        self.scale = absmax_scale(W, bits).flatten() if group_size is None else None

    def begin_block(self, i1: int, W1: torch.Tensor, d: torch.Tensor) -> None:
        pass

    def column(self, i1: int, i: int, W1: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        g = self.group_size
        if g is not None and i % g == 0:
            self.scale = absmax_scale(W1[:, i : i + g], self.bits).flatten()
        return fake_quantize(W1[:, i], self.scale, self.bits)


@torch.no_grad()
def gptq_quantize_(module: nn.Module, H: torch.Tensor, bits: int, group_size: int | None = None, *,
                   name: str = "module", blocksize: int = BLOCKSIZE, percdamp: float = PERCDAMP) -> dict[str, Any]:
    """Quantize one module in place from its Hessian ``H`` (modified: dead inputs); returns damping facts."""
    rule = _QuantRule(weight_out_in(module).to(acc_dtype(module.weight.dtype)), bits, group_size)  # before dead columns are zeroed
    W, H = prepare_weight_and_hessian(module, H)
    Hinv, damping, retries = inverse_hessian_factor(H, name, percdamp)
    if group_size is not None:
        blocksize = group_size * max(1, blocksize // group_size)
    obs_sweep_(W, Hinv, rule, blocksize)
    write_weight_(module, W)
    return {"damping": damping, "damping_retries": retries}


class GPTQMethod(SparseGPTMethod):
    name = "gptq"

    def accumulator(self, target) -> HessianAccumulator:
        return HessianAccumulator(target)

    def compress_module(self, target, stats: HessianAccumulator | None) -> dict[str, Any]:
        return gptq_quantize_(target.module, stats.H, self.spec.bits, self.spec.group_size, name=target.name)
