"""``prune:RULE:SPARSITY``: the SAE's own encoder and decoder pruned (:mod:`sae_core.sae_prune`).

wanda / paper score weights with norms accumulated over the compressed model's activations
(``inputs.compressed``, at most ``inputs.n_tokens``); magnitude needs none. sae_prune folds the
shortened decoder rows back to unit norm exactly; an original with non-unit rows is accepted
(sae_prune warns and notes how TopK selection then changes).
"""

from __future__ import annotations

from typing import Any

from sae_lens import SAE

from sae_core.sae_prune import accumulate_sae_norms, prune_sae
from sae_core.variants.base import VariantInputs, VariantMethod
from sae_core.variants.folding import limited_batches


class PruneMethod(VariantMethod):
    name = "prune"
    requires_unit_norm = False  # sae_prune folds any row norms exactly

    @property
    def needs_compressed_activations(self) -> bool:
        return self.spec.rule != "magnitude"

    def _build(self, original: SAE[Any], inputs: VariantInputs):
        norms = None
        if self.spec.rule != "magnitude":
            norms = accumulate_sae_norms(original, limited_batches(original, inputs.compressed, inputs.n_tokens))
        pruned, report = prune_sae(original, self.spec.rule, float(self.spec.sparsity), norms)
        tokens = int(norms.n_tokens) if norms is not None else 0
        return pruned, tokens, 0, {"prune_report": report}
