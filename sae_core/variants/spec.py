"""A parsed SAE-variant spec (light: no torch, so configs and the CLI validate specs quickly).

Parsed once, when the config is validated, and this object travels from there to the method. As
``sae_core.compression.spec.CompressionSpec``, it is a frozen pydantic model, not a dataclass, for
the Prefect task that takes it (``tasks/saes.sae_variant_task``): Prefect's INPUTS cache policy
hashes a pydantic parameter through its JSON form (stable across processes and machines), and it
travels to Ray workers and back as plain fields. Validating text (``VariantSpec.model_validate(
"prune:wanda:0.5")``, or a config field of this type) runs the parser (``registry.parse_variant``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["VariantSpec"]


def _exact(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)  # exact round trip


class VariantSpec(BaseModel):
    """A parsed spec such as ``transfer``, ``prune:wanda:0.5``, ``finetune:0.05``, ``affine``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str
    rule: str | None = None  # prune: wanda | paper | magnitude
    sparsity: float | None = None  # prune: fraction of SAE weights zeroed, in [0, 1)
    fraction: float | None = None  # finetune: share of the retrain token budget, in (0, 1]

    def __init__(self, method: str | None = None, /, **data: Any):
        if method is not None:
            data["method"] = method
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            from sae_core.variants.registry import parse_variant

            return parse_variant(data).model_dump()
        return data

    @property
    def text(self) -> str:
        """Canonical spec text (what ``parse_variant`` reads back to this spec)."""
        if self.method == "prune":
            return f"prune:{self.rule}:{_exact(float(self.sparsity or 0.0))}"
        if self.method == "finetune":
            return f"finetune:{_exact(float(self.fraction or 0.0))}"
        return self.method

    def __str__(self) -> str:
        return self.text
