"""A parsed compression spec (light: no torch, so configs and the CLI validate specs quickly).

The spec is parsed once, when the config is validated, and this object travels from there to the
method. It is a frozen pydantic model, not a dataclass, for the Prefect tasks that take it
(``tasks/compression.compress_llm``): Prefect's INPUTS cache policy hashes a pydantic parameter
through its JSON form (stable across processes and machines, unlike the pickle fallback it uses for
other objects), and it travels to Ray workers and back as plain fields. As with
``ActivationCacheSpec``, task parameters stay JSON-friendly and their cache keys stable.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from sae_core.compression.registry import ALIASES, BITS_RANGE, METHODS

__all__ = ["CompressionSpec", "parse_spec"]


class CompressionSpec(BaseModel):
    """A parsed spec such as ``wanda:0.5``, ``sparsegpt:2:4``, ``rtn:4``, ``rtn:4g128``.

    Validating text (``CompressionSpec.model_validate("rtn:4")``, or a config field of this type)
    runs the parser (``parse_spec`` below), which checks every part and names a bad one.
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


def parse_spec(text: str | CompressionSpec) -> CompressionSpec:
    """``"wanda:0.5"`` -> :class:`CompressionSpec`; ``ValueError`` naming the bad part otherwise."""
    if isinstance(text, CompressionSpec):
        return text  # parsed already (the config parses every spec once)
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"compression spec must look like 'METHOD:STRENGTH' (e.g. 'wanda:0.5', 'rtn:8'), got {text!r}")
    name, arg = (part.strip() for part in text.strip().split(":", 1))
    name = ALIASES.get(name.lower(), name.lower())
    entry = METHODS.get(name)
    if entry is None:
        raise ValueError(f"unknown compression method {name!r} in {text!r}; known: {sorted(METHODS)}")
    if entry.kind == "bits":
        m = re.fullmatch(r"(\d+)(?:g(\d+))?", arg)
        if m is None:
            raise ValueError(f"{name} needs a bit width, e.g. '{name}:4' or '{name}:4g128', got {arg!r} in {text!r}")
        bits, group = int(m.group(1)), (None if m.group(2) is None else int(m.group(2)))
        if not BITS_RANGE[0] <= bits <= BITS_RANGE[1]:
            raise ValueError(f"bits must be in [{BITS_RANGE[0]}, {BITS_RANGE[1]}], got {bits} in {text!r}")
        if group is not None and group < 1:
            raise ValueError(f"group size must be >= 1, got {group} in {text!r}")
        return CompressionSpec(method=name, bits=bits, group_size=group)
    m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", arg)
    if m is not None:
        n, mm = int(m.group(1)), int(m.group(2))
        if not entry.nm:
            raise ValueError(f"method {name!r} cannot use N:M structure {arg!r} (in {text!r})")
        if not 1 <= n < mm:
            raise ValueError(f"N:M structure needs 1 <= N < M, got N={n}, M={mm} in {text!r}")
        return CompressionSpec(method=name, sparsity=n / mm, nm=(n, mm))
    try:
        sparsity = float(arg)
    except ValueError:
        raise ValueError(f"{name} needs a sparsity in [0, 1) or N:M, got {arg!r} in {text!r}") from None
    if not 0.0 <= sparsity < 1.0:  # also rejects NaN
        raise ValueError(f"sparsity must be in [0, 1), got {arg} in {text!r}")
    return CompressionSpec(method=name, sparsity=sparsity)
