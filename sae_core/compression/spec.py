"""A parsed compression spec (light: no torch, so configs and the CLI validate specs quickly).

The spec is parsed once, when the config is validated, and this object travels from there to the
method. It is a frozen pydantic model, not a dataclass, for the Prefect tasks that take it
(``tasks/compression.compress_llm``): Prefect's INPUTS cache policy hashes a pydantic parameter
through its JSON form (stable across processes and machines, unlike the pickle fallback it uses for
other objects), and it travels to Ray workers and back as plain fields. As with
``ActivationCacheSpec``, task parameters stay JSON-friendly and their cache keys stable.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["CompressionSpec"]


class CompressionSpec(BaseModel):
    """A parsed spec such as ``wanda:0.5``, ``sparsegpt:2:4``, ``rtn:4``, ``rtn:4g128``.

    Validating text (``CompressionSpec.model_validate("rtn:4")``, or a config field of this type)
    runs the parser (``registry.parse_spec``), which checks every part and names a bad one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str
    sparsity: float | None = None  # "sparsity" methods (N/M for N:M)
    nm: tuple[int, int] | None = None
    bits: int | None = None  # "bits" methods
    group_size: int | None = None  # inputs sharing one scale (None: one scale per output channel)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            from sae_core.compression.registry import parse_spec

            return parse_spec(data).model_dump()
        return data

    @property
    def structure(self) -> str:
        if self.bits is not None:
            return "per_channel" if self.group_size is None else f"group{self.group_size}"
        return "unstructured" if self.nm is None else f"{self.nm[0]}:{self.nm[1]}"

    @property
    def kind(self) -> str:
        return "bits" if self.bits is not None else "sparsity"

    @property
    def strength(self) -> float:
        """The sparsity (fraction zeroed) or the bit width."""
        return float(self.bits) if self.bits is not None else float(self.sparsity or 0.0)

    @property
    def text(self) -> str:
        """Canonical spec text (what ``parse_spec`` reads back to this spec)."""
        if self.bits is not None:
            return f"{self.method}:{self.bits}" + ("" if self.group_size is None else f"g{self.group_size}")
        if self.nm is not None:
            return f"{self.method}:{self.nm[0]}:{self.nm[1]}"
        short = f"{self.sparsity:g}"
        return f"{self.method}:{short if float(short) == self.sparsity else repr(self.sparsity)}"  # exact round trip

    def __str__(self) -> str:
        return self.text
