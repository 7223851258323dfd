"""``retrain``: a fresh SAE of the original's architecture, width, k and hook metadata, trained on
the compressed model's activations with :func:`sae_core.sae_train.train_sae` (called as the
retrain task calls it: ``train_fn(original, batches, train_tokens, seed=..., **settings)``).
Its latents are new: compare it to the original only after :func:`~sae_core.variants.identity.match_latents`.
"""

from __future__ import annotations

from typing import Any

from sae_lens import SAE

from sae_core.variants.base import VariantInputs, VariantMethod


def trainer(inputs: VariantInputs):
    if inputs.train_fn is not None:
        return inputs.train_fn
    from sae_core.sae_train import train_sae

    return train_sae


def train_settings(inputs: VariantInputs) -> tuple[int, dict[str, Any]]:
    """``(retrain budget in tokens, the other train_sae keywords)`` from ``inputs.train``."""
    settings = dict(inputs.train or {})
    budget = settings.pop("train_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"inputs.train['train_tokens'] must be a positive int, got {budget!r}")
    settings.setdefault("progress", inputs.progress)
    return budget, settings


def training_details(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("tokens_requested", "tokens_used", "data_passes", "steps", "batch_size", "lr", "seed", "init",
            "final_mse", "final_explained_variance", "final_l0", "dead_latents")
    return {k: report[k] for k in keep if k in report}


class RetrainMethod(VariantMethod):
    name = "retrain"
    requires_unit_norm = False  # only the shape is taken from the original

    def _build(self, original: SAE[Any], inputs: VariantInputs):
        budget, settings = train_settings(inputs)
        sae, report = trainer(inputs)(original, inputs.compressed, budget, seed=inputs.seed, **settings)
        return sae, int(report["tokens_used"]), int(report["steps"]), {"training": training_details(report),
                                                                        "training_curve": report.get("curve")}
