"""A parsed SAE-variant spec (light: no torch, so configs and the CLI validate specs quickly)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VariantSpec"]


def _exact(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)  # exact round trip


@dataclass(frozen=True)
class VariantSpec:
    """A parsed spec such as ``transfer``, ``prune:wanda:0.5``, ``finetune:0.05``, ``affine``."""

    method: str
    rule: str | None = None  # prune: wanda | paper | magnitude
    sparsity: float | None = None  # prune: fraction of SAE weights zeroed, in [0, 1)
    fraction: float | None = None  # finetune: share of the retrain token budget, in (0, 1]

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
