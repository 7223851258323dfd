"""What every SAE-variant method shares: the inputs, the method interface, the report.

A method is a class with a ``name`` (its key in ``registry.METHODS``, which says what it needs)
and two jobs: ``check(sae)`` raises ``ValueError`` naming the method and the architecture / hook
/ setting it cannot handle (before any work), and ``build(original, inputs)`` returns
``(new_sae, VariantReport)``. The output is always a NEW sae-lens ``SAE`` of the original's class,
width and hook metadata with unit-norm decoder rows (``save_sae`` -> ``SAE.load_from_disk`` opens
it); the original is never modified.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from sae_lens import SAE

from sae_core.sae_io import ARCHITECTURES, decoder_norm_deviation
from sae_core.variants.registry import METHODS
from sae_core.variants.spec import VariantSpec

__all__ = ["UNIT_NORM_TOLERANCE", "VariantInputs", "VariantMethod", "VariantReport"]

#: Largest ``max_j | ||W_dec[j]|| - 1 |`` accepted for an original SAE (float32 rounding and
#: half-precision storage fit; SAEBench warns above 1e-5). Fold first: ``sae.fold_W_dec_norm()``.
UNIT_NORM_TOLERANCE = 1e-3
#: Activation normalisations whose runtime is a fixed function of the weights alone (sae-lens
#: applies ``expected_average_only_in`` outside an inference SAE, so at run time it is the identity).
FOLDABLE_NORMALISATIONS = ("none", "expected_average_only_in")


@dataclass
class VariantInputs:
    """What a method may need; each method reads only its part (``registry.METHODS`` says which).

    ``compressed``: compressed-model activation batches ``[n, d_in]`` (an iterable of tensors, e.g.
    ``ActivationShards``); re-iterable for the methods that read it more than once (recalibrate,
    refit_decoder, affine). ``dense``: dense-model activations on the SAME tokens, batch for
    batch and row for row (affine needs them; recalibrate uses them when given).
    ``n_tokens``: cap on the tokens the gradient-free fits and prune calibration read (None: all).
    ``train``: retrain settings, ``{"train_tokens": N, "lr": ..., "batch_size": ..., **other
    train_sae keywords}`` (retrain trains on ``train_tokens``, finetune on FRACTION of them).
    ``train_fn``: the trainer, ``train_fn(like, batches, total_tokens, **kwargs) -> (sae, report)``
    (default :func:`sae_core.sae_train.train_sae`; a task may wrap it, e.g. with a lock).
    ``options``: method knobs (``ridge``, ``shrink`` for refit_decoder / affine, ``affine_shrink`` for affine,
    ``rescale`` for recalibrate; ``shrink`` / ``affine_shrink`` default to ``"auto"``).
    """

    compressed: Iterable[torch.Tensor] | None = None
    dense: Iterable[torch.Tensor] | None = None
    n_tokens: int | None = None
    train: dict[str, Any] | None = None
    train_fn: Callable[..., tuple[SAE[Any], dict[str, Any]]] | None = None
    seed: int = 0
    progress: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantReport:
    """What building one variant cost and did. ``tokens``: activation token positions read to
    build it (a token read from both models, or in several passes, counts once; training counts
    every trained sample); ``gradient_steps``: optimiser steps (0 for the gradient-free fixes)."""

    spec: VariantSpec
    tokens: int
    gradient_steps: int
    wall_time_s: float
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures for a manifest (deterministic except ``wall_time_s``)."""
        entry = METHODS[self.spec.method]
        return {"spec": self.spec.text, "method": self.spec.method, "tokens": int(self.tokens),
                "gradient_steps": int(self.gradient_steps), "wall_time_s": float(self.wall_time_s),
                "trains": entry.trains, "keeps_identity": entry.keeps_identity, "details": self.details}


class VariantMethod:
    """Base class: one instance builds one variant with one spec."""

    name: ClassVar[str]
    requires_unit_norm: ClassVar[bool] = True  # the original must have unit-norm decoder rows
    folds: ClassVar[bool] = False  # rewrites weights by exact folds: needs a foldable normalisation

    def __init__(self, spec: VariantSpec):
        self.spec = spec

    @property
    def entry(self):
        return METHODS[self.name]

    @property
    def needs_compressed_activations(self) -> bool:
        return self.entry.needs_compressed_activations

    def _refuse(self, sae: SAE[Any], why: str) -> ValueError:
        return ValueError(f"SAE variant {self.spec.text!r} cannot handle this {sae.cfg.architecture()!r} SAE "
                          f"(hook {sae.cfg.metadata.hook_name!r}): {why}")

    def check(self, sae: SAE[Any]) -> None:
        """Raise ``ValueError`` if this method cannot build a variant of ``sae`` (before any work)."""
        if not isinstance(sae, SAE):
            raise ValueError(f"SAE variant {self.spec.text!r} needs a sae-lens SAE, got {type(sae).__name__}")
        arch = sae.cfg.architecture()
        if arch not in ARCHITECTURES:
            raise ValueError(f"SAE variant {self.spec.text!r} supports SAE architectures {ARCHITECTURES}, not {arch!r}")
        d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
        if tuple(sae.W_enc.shape) != (d_in, d_sae) or tuple(sae.W_dec.shape) != (d_sae, d_in):
            raise self._refuse(sae, f"unexpected weight shapes W_enc {tuple(sae.W_enc.shape)}, W_dec {tuple(sae.W_dec.shape)}")
        if self.requires_unit_norm and decoder_norm_deviation(sae) > UNIT_NORM_TOLERANCE:
            raise self._refuse(sae, f"decoder rows are not unit norm (max deviation {decoder_norm_deviation(sae):.3g} > "
                               f"{UNIT_NORM_TOLERANCE}); fold them first (sae.fold_W_dec_norm())")
        if self.folds and sae.cfg.normalize_activations not in FOLDABLE_NORMALISATIONS:
            raise self._refuse(sae, f"normalize_activations={sae.cfg.normalize_activations!r} normalises each token at run "
                               "time, so a change of input frame or decoder cannot be folded into the weights exactly "
                               f"(supported: {FOLDABLE_NORMALISATIONS})")

    def check_inputs(self, inputs: VariantInputs) -> None:
        """Raise ``ValueError`` if ``inputs`` lack what the method needs."""
        if self.needs_compressed_activations and inputs.compressed is None:
            raise ValueError(f"SAE variant {self.spec.text!r} needs compressed-model activations (inputs.compressed)")
        if self.entry.needs_dense_activations and inputs.dense is None:
            raise ValueError(f"SAE variant {self.spec.text!r} needs dense-model activations on the same tokens (inputs.dense)")
        if self.entry.trains and not (inputs.train and inputs.train.get("train_tokens")):
            raise ValueError(f"SAE variant {self.spec.text!r} trains: inputs.train must give 'train_tokens' (the retrain "
                             "budget) and the train_sae settings")
        if inputs.n_tokens is not None and (isinstance(inputs.n_tokens, bool) or not isinstance(inputs.n_tokens, int)
                                            or inputs.n_tokens <= 0):
            raise ValueError(f"inputs.n_tokens must be a positive int or None, got {inputs.n_tokens!r}")

    def build(self, original: SAE[Any], inputs: VariantInputs) -> tuple[SAE[Any], VariantReport]:
        """Check, then :meth:`_build`; the variant's report also goes into ``cfg.metadata.sae_transfer_variant``."""
        self.check(original)
        self.check_inputs(inputs)
        started = time.perf_counter()
        was_training = original.training
        original.eval()
        try:
            if self.entry.trains:
                sae, tokens, steps, details = self._build(original, inputs)
            else:
                with torch.no_grad():
                    sae, tokens, steps, details = self._build(original, inputs)
        finally:
            original.train(was_training)
        details = {**details, "decoder_norm_max_deviation": decoder_norm_deviation(sae)}
        report = VariantReport(self.spec, int(tokens), int(steps), time.perf_counter() - started, details)
        sae.cfg.metadata.sae_transfer_variant = {k: v for k, v in report.summary().items() if k != "wall_time_s"}
        return sae, report

    def _build(self, original: SAE[Any], inputs: VariantInputs) -> tuple[SAE[Any], int, int, dict[str, Any]]:
        """Return ``(new sae, tokens, gradient steps, details)``."""
        raise NotImplementedError


def reiterable(batches: Iterable[Any], what: str) -> Iterable[Any]:
    """``batches`` itself if it can be iterated more than once; ValueError otherwise."""
    if iter(batches) is batches:
        raise ValueError(f"{what} reads the activations more than once: pass a re-iterable source (a list, "
                         "ActivationShards, ...), not a one-shot iterator")
    return batches
