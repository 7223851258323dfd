"""A fix written for a test: one file, one ``METHODS`` entry (tests/flows/test_repair_flow.py registers it).

``shift``: the decoder bias moved by the mean residual on the compressed model's activations (codes
unchanged); a stand-in for any new gradient-free fix.
"""

from __future__ import annotations

import torch

from sae_core.sae_io import clone_sae
from sae_core.variants.base import VariantMethod
from sae_core.variants.folding import limited_batches


class ShiftMethod(VariantMethod):
    name = "shift"

    def _build(self, original, inputs):
        sae = clone_sae(original)
        total, n = torch.zeros(sae.cfg.d_in, dtype=torch.float64), 0
        for x in limited_batches(sae, inputs.compressed, inputs.n_tokens):
            total += (x - sae.decode(sae.encode(x))).double().sum(0)
            n += int(x.shape[0])
        sae.b_dec.data += (total / max(n, 1)).to(sae.b_dec.dtype)
        return sae, n, 0, {"shift_tokens": n}
