"""Model references (the manifests tasks hand each other): identity, storage key, compression block.

A reference is ``{"hub_id": ...}`` (a hub model), or ``{"prefix": ..., "content_hash": ...}`` for a
model in storage (the toy world, a packaged model, a compressed model, whose manifest also holds
one ``compression`` block: spec text, method, kind, strength, structure, bits, ...). Every reader
works these out here, in one place. Plain library: no prefect, no torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LEGACY_COMPRESSED_ROOT", "compression_label", "compression_of", "compression_strength", "model_identity",
           "model_key", "pre_rename_note"]

DENSE_LABEL = "none"  # the ``compression`` of the dense model in every table
LEGACY_COMPRESSED_ROOT = "pruned_models"  # where compressed models were stored before the rename (now compressed_models/)


def model_identity(ref: dict[str, Any]) -> str:
    """What the weights are: the content hash of a stored model, else its hub id. Cache keys use it."""
    return ref.get("content_hash") or ref.get("prefix") or ref.get("hub_id")


def model_key(ref: dict[str, Any]) -> str:
    """Where the model is: its storage prefix, else its hub id (the ``model_prefix`` of table rows)."""
    return ref.get("prefix") or ref.get("hub_id")


def compression_of(ref: dict[str, Any]) -> dict[str, Any]:
    """The ``compression`` block of a compressed model's reference or manifest; ``{}`` for the dense model."""
    if ref.get("compression"):
        return ref["compression"]
    p = ref.get("pruning")  # old-root compatibility: manifests from before the compression package
    if not p:
        return {}
    spec = p["method"] if ":" in str(p["method"]) else f"{p['method']}:{p['sparsity']:g}"
    return {"spec": spec, "method": spec.split(":", 1)[0], "kind": "sparsity", "structure": p.get("structure", "unstructured"),
            "strength": float(p.get("sparsity", 0.0)), "sparsity": float(p.get("sparsity", 0.0)), "bits": None,
            "achieved_sparsity": p.get("achieved_sparsity"), "wall_time_s": p.get("wall_time_s", 0.0),
            "calibration_tokens": p.get("calibration_tokens", 0)}


def compression_label(ref: dict[str, Any]) -> str:
    """Canonical spec text (``wanda:0.5``, ``rtn:4``), ``none`` for the dense model: the ``compression`` column."""
    return compression_of(ref).get("spec") or DENSE_LABEL


def compression_strength(ref: dict[str, Any]) -> float:
    """Sparsity fraction (sparsity methods) or bit width (quantization), 0 for the dense model: the ``strength`` column."""
    return float(compression_of(ref).get("strength") or 0.0)


def pre_rename_note(storage) -> str | None:
    """One line for a storage root that holds compressed models from before the rename, else None."""
    if not storage.exists(LEGACY_COMPRESSED_ROOT):
        return None
    return (f"{storage.uri(LEGACY_COMPRESSED_ROOT)} holds compressed models from before the rename to compressed_models/; "
            "they are not reused as caches (their code fingerprints differ anyway), so this run compresses again. "
            "Their metric and variant rows still show in reports. Delete pruned_models/ to reclaim the space, "
            "or use a fresh storage root.")
