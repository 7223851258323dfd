"""``build_variant``: any registered SAE variant, one call."""

from __future__ import annotations

from typing import Any

from sae_lens import SAE

from sae_core.variants.base import VariantInputs, VariantMethod, VariantReport
from sae_core.variants.registry import method_class, parse_variant
from sae_core.variants.spec import VariantSpec

__all__ = ["build_variant", "method_for"]


def method_for(spec: str | VariantSpec) -> VariantMethod:
    spec = parse_variant(spec)
    return method_class(spec.method)(spec)


def build_variant(spec: str | VariantSpec, original_sae: SAE[Any], inputs: VariantInputs | None = None
                  ) -> tuple[SAE[Any], VariantReport]:
    """Build the variant ``spec`` of ``original_sae``; every check runs before any work.

    Returns a NEW SAE (``original_sae`` is not modified) of the same architecture and width with
    unit-norm decoder rows, and its :class:`~sae_core.variants.base.VariantReport` (also stored in
    the SAE's ``cfg.metadata.sae_transfer_variant``, so it travels with ``save_sae``).
    """
    return method_for(spec).build(original_sae, inputs if inputs is not None else VariantInputs())
