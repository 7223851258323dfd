"""Round-to-nearest weight quantization, ``rtn:B`` / ``rtn:BgG`` (Duan's protocol, notes §1.3).

Symmetric, signed, absmax, simulated ("fake-quant": the weight keeps its dtype and holds the
dequantized values)::

    qmax = 2^(B-1) - 1,  qmin = -2^(B-1)
    scale = max |W[i, group]| / qmax     (one scale per output channel, or per G inputs of it)
    scale = 1 where it is 0
    W_hat = clamp(round(W / scale), qmin, qmax) * scale

Arithmetic in float32 (float64 for a float64 model), cast back to the weight's dtype. Only
the attention and MLP weights of the decoder blocks change: embeddings, LM head, norms and
biases are untouched. No calibration.
"""

from __future__ import annotations

from typing import Any

import torch

from sae_core.compression.base import CompressionMethod
from sae_core.compression.modules import Target, acc_dtype, weight_out_in


def quant_range(bits: int) -> tuple[int, int]:
    """``(qmin, qmax)`` of signed ``bits``-bit integers."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def absmax_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric scale over the last dimension (``keepdim``); zero scales become 1."""
    scale = w.abs().amax(dim=-1, keepdim=True) / quant_range(bits)[1]
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    qmin, qmax = quant_range(bits)
    return torch.clamp(torch.round(w / scale), qmin, qmax) * scale


@torch.no_grad()
def rtn_quantize(w_out_in: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """The RTN-quantized copy of an ``[out, in]`` weight (at least float32)."""
    w = w_out_in.to(acc_dtype(w_out_in.dtype))
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    grouped = w.reshape(out_f, in_f // g, g)
    return fake_quantize(grouped, absmax_scale(grouped, bits), bits).reshape(out_f, in_f)


class RTNMethod(CompressionMethod):
    name = "rtn"

    @torch.no_grad()
    def compress_module(self, target: Target, stats: Any = None) -> dict[str, Any]:
        w = weight_out_in(target.module)
        w.copy_(rtn_quantize(w, self.spec.bits, self.spec.group_size).to(w.dtype))  # through the (transposed) view
        return {}
