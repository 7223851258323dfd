"""``transfer``: the original SAE, unchanged (an independent copy), read on the compressed model. Cost 0."""

from __future__ import annotations

from typing import Any

from sae_lens import SAE

from sae_core.sae_io import clone_sae
from sae_core.variants.base import VariantInputs, VariantMethod


class TransferMethod(VariantMethod):
    name = "transfer"

    def _build(self, original: SAE[Any], inputs: VariantInputs):
        return clone_sae(original), 0, 0, {}
