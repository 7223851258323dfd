"""SAE variants through one interface: ``build_variant("refit_decoder", original_sae, inputs)``.

Every variant answers one question: what does it cost to make the SAE trained on the dense LLM
explain a compressed copy again? Methods (``registry.METHODS``):

- ``transfer``: the original, unchanged (cost 0);
- ``retrain``: a fresh SAE of the same architecture / width / k trained on the compressed model;
- ``prune:RULE:SPARSITY``: the SAE's own weights pruned (``sae_core.sae_prune``);
- ``finetune:FRACTION``: warm start from the original, trained for FRACTION of the retrain budget;
- ``recalibrate``: no gradient steps; decoder bias (and, with dense activations, the input frame
  and JumpReLU thresholds) re-estimated from N compressed-model activations;
- ``refit_decoder``: encoder frozen, decoder weights and bias by closed-form least squares shrunk towards
  the original rows (shrinkage chosen on held-back fitting tokens);
- ``affine``: an affine map compressed -> dense activations (least squares shrunk towards the identity)
  folded into the encoder, then the decoder refit.

Every output is a NEW sae-lens SAE of the original's architecture and width with unit-norm
decoder rows (the original is never modified); ``identity`` measures which latents keep their
meaning. Layout mirrors ``sae_core.compression``: ``spec`` / ``registry`` (spec text, parser,
method table: no torch), ``base`` (method interface, inputs, report), one file per method,
``identity`` (feature identity vs the original), ``api`` (``build_variant``).

Adding a fix = one file with a :class:`~sae_core.variants.base.VariantMethod` subclass plus one
``MethodEntry`` in ``registry.METHODS`` (what it needs: compressed / dense activations, training,
whether it keeps latent identity). This package is a plain library: it never imports prefect.
Importing it is light: the torch-side names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from sae_core.variants.registry import METHODS, MethodEntry, parse_variant, parse_variants
from sae_core.variants.spec import VariantSpec

_LAZY = {
    "build_variant": "sae_core.variants.api", "method_for": "sae_core.variants.api",
    "VariantMethod": "sae_core.variants.base", "VariantInputs": "sae_core.variants.base",
    "VariantReport": "sae_core.variants.base",
    "decoder_identity": "sae_core.variants.identity", "match_latents": "sae_core.variants.identity",
    "code_fidelity": "sae_core.variants.identity",
}

__all__ = ["METHODS", "MethodEntry", "VariantSpec", "parse_variant", "parse_variants", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sae_core.variants' has no attribute {name!r}")
