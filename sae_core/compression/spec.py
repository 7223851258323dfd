"""A parsed compression spec (light: no torch, so configs and the CLI validate specs quickly)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CompressionSpec"]


@dataclass(frozen=True)
class CompressionSpec:
    """A parsed spec such as ``wanda:0.5``, ``sparsegpt:2:4``, ``rtn:4``, ``rtn:4g128``."""

    method: str
    sparsity: float | None = None  # "sparsity" methods (N/M for N:M)
    nm: tuple[int, int] | None = None
    bits: int | None = None  # "bits" methods
    group_size: int | None = None  # inputs sharing one scale (None: one scale per output channel)

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
