"""What an activation cache holds (``ActivationCacheSpec``): no torch, so flows and config
validation can name caches without loading the tensor stack (:mod:`sae_core.activations` does the work)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sae_core.datasets import check_dataset_name

MAX_TOKENS = 10_000_000_000  # anything above is a typo, not a request


class ActivationCacheSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    hook_name: str
    dataset: str
    n_tokens: int = Field(gt=0, le=MAX_TOKENS)
    seq_len: int = Field(128, ge=2)
    batch_sequences: int = Field(16, ge=1)
    shard_sequences: int = Field(256, ge=1)
    dtype: str = "float32"
    exclude_special_tokens: bool = True
    split: str = "train"
    # Start this many windows into the dataset: held-out caches skip past the training ones.
    skip_sequences: int = Field(0, ge=0)

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {value!r}")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        check_dataset_name(value)
        return value
