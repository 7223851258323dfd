"""Spec text -> method: the registry and the parser. Light (no torch): configs and the CLI parse
specs without loading the methods.

A new fix is one file (a :class:`~sae_core.variants.base.VariantMethod` subclass) plus one entry
in ``METHODS``. Spec syntax (validated up front, ``ValueError`` naming the bad part):

- ``transfer``, ``retrain``, ``recalibrate``, ``refit_decoder``, ``affine``: no argument;
- ``prune:RULE:SPARSITY`` with RULE in ``wanda`` / ``paper`` / ``magnitude`` and ``0 <= SPARSITY < 1``;
- ``finetune:FRACTION`` with ``0 < FRACTION <= 1`` (share of the retrain token budget).
"""

from __future__ import annotations

import importlib
import math
from typing import Iterable, NamedTuple

from sae_core.sae_prune_rules import RULES as PRUNE_RULES  # light: no torch at import
from sae_core.variants.spec import VariantSpec

__all__ = ["METHODS", "MethodEntry", "PRUNE_RULES", "label_spec", "method_class", "parse_variant", "parse_variants"]


class MethodEntry(NamedTuple):
    target: str  # "module:Class", imported on first use
    needs_compressed_activations: bool  # activations of the compressed model (prune: not for magnitude)
    needs_dense_activations: bool = False  # dense-model activations on the SAME tokens, batch for batch
    uses_dense_activations: bool = False  # optional: used when given (recalibrate)
    trains: bool = False  # takes gradient steps (needs train settings)
    keeps_identity: bool = True  # latent j keeps meaning what it meant, by construction
    argument: str = ""  # "" | "prune" (RULE:SPARSITY) | "fraction"
    # Where the pipeline stores it: ``saes/<folder>/<hash>/`` ("": the method's name; None: it stores
    # no SAE of its own, e.g. transfer, whose SAE is the original's). ``label``: the variants table's
    # ``sae_variant`` ("": the method's name). ``options``: the ``repair:`` settings it reads
    # (``VariantInputs.options``); the pipeline keys the stored variant on exactly these.
    folder: str | None = ""
    label: str = ""
    options: tuple[str, ...] = ()

    def storage_folder(self, name: str) -> str | None:
        return None if self.folder is None else (self.folder or name)

    def display_label(self, name: str) -> str:
        return self.label or name


METHODS: dict[str, MethodEntry] = {
    "transfer": MethodEntry("sae_core.variants.transfer:TransferMethod", needs_compressed_activations=False,
                            folder=None, label="original"),
    "retrain": MethodEntry("sae_core.variants.retrain:RetrainMethod", True, trains=True, keeps_identity=False,
                           folder="retrained", label="retrained"),
    "prune": MethodEntry("sae_core.variants.prune:PruneMethod", True, argument="prune", folder="pruned", label="pruned"),
    "finetune": MethodEntry("sae_core.variants.finetune:FinetuneMethod", True, trains=True, argument="fraction",
                            folder="finetuned"),
    "recalibrate": MethodEntry("sae_core.variants.recalibrate:RecalibrateMethod", True, uses_dense_activations=True,
                               folder="recalibrated", options=("rescale",)),
    "refit_decoder": MethodEntry("sae_core.variants.refit_decoder:RefitDecoderMethod", True, options=("ridge",)),
    "affine": MethodEntry("sae_core.variants.affine:AffineMethod", True, needs_dense_activations=True, options=("ridge",)),
}
# Considered and left out (ValueError says why): a residual "boost" SAE adds latents (d_sae changes)
# and a second encoder, so its output is not one SAE of the original's architecture.
NOT_IMPLEMENTED = {
    "boost": "SAE Boost adds a second SAE on the first one's error (more latents, two encoders): the result is not "
             "one sae-lens SAE of the original's architecture and width, which every variant here must be",
}


def label_spec(label: str, rule: str | None = None, sparsity: float | None = None) -> tuple[str, str]:
    """``(variant_spec, variant_method)`` of a row that names only its ``sae_variant`` label (rows written
    before specs: ``original`` / ``retrained`` / ``pruned``; a method name otherwise)."""
    for name, entry in METHODS.items():
        if label == entry.display_label(name):
            if entry.argument == "prune":
                return f"prune:{rule}:{float(sparsity or 0.0)!r}" if rule else name, name
            return name, name
    return str(label), str(label).split(":")[0]


def method_class(name: str) -> type:
    module, cls = METHODS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)


def _float(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r} in {spec!r}") from None
    if math.isnan(value):
        raise ValueError(f"{what} must be a number, got {text!r} in {spec!r}")
    return value


def parse_variant(text: str | VariantSpec) -> VariantSpec:
    """``"prune:wanda:0.5"`` -> :class:`VariantSpec`; ``ValueError`` naming the bad part otherwise."""
    if isinstance(text, VariantSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"SAE variant spec must be a non-empty string such as 'transfer' or 'prune:wanda:0.5', got {text!r}")
    parts = [p.strip() for p in text.strip().split(":")]
    name, args = parts[0].lower(), parts[1:]
    if name in NOT_IMPLEMENTED:
        raise ValueError(f"SAE variant {name!r} is not implemented: {NOT_IMPLEMENTED[name]}; known: {sorted(METHODS)}")
    entry = METHODS.get(name)
    if entry is None:
        raise ValueError(f"unknown SAE variant {name!r} in {text!r}; known: {sorted(METHODS)}")
    if entry.argument == "prune":
        if len(args) != 2:
            raise ValueError(f"prune needs 'prune:RULE:SPARSITY' (e.g. 'prune:wanda:0.5'), got {text!r}")
        rule = args[0].lower()
        if rule not in PRUNE_RULES:
            raise ValueError(f"unknown prune rule {args[0]!r} in {text!r}; known: {list(PRUNE_RULES)}")
        sparsity = _float(args[1], "prune sparsity", text)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"prune sparsity must be in [0, 1), got {args[1]} in {text!r}")
        return VariantSpec("prune", rule=rule, sparsity=sparsity)
    if entry.argument == "fraction":
        if len(args) != 1:
            raise ValueError(f"{name} needs '{name}:FRACTION' with FRACTION in (0, 1] (e.g. '{name}:0.05'), got {text!r}")
        fraction = _float(args[0], f"{name} fraction", text)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"{name} fraction must be in (0, 1] (share of the retrain token budget), got {args[0]} in {text!r}")
        return VariantSpec(name, fraction=fraction)
    if args:
        raise ValueError(f"SAE variant {name!r} takes no argument, got {':'.join(args)!r} in {text!r}")
    return VariantSpec(name)


def parse_variants(texts: Iterable[str | VariantSpec]) -> list[VariantSpec]:
    """Parse a list of specs; ``ValueError`` on a bad one or on duplicates (after canonicalisation)."""
    if isinstance(texts, (str, VariantSpec)):
        raise ValueError(f"parse_variants takes a list of specs, got a single {texts!r}")
    specs: list[VariantSpec] = []
    seen: dict[str, str] = {}
    for text in texts:
        spec = parse_variant(text)
        if spec.text in seen:
            raise ValueError(f"duplicate SAE variant {text!r} (same as {seen[spec.text]!r}, canonical {spec.text!r})")
        seen[spec.text] = str(text)
        specs.append(spec)
    return specs
