"""``finetune:FRACTION``: warm start. The original's weights are the starting point, then
``train_sae`` runs on the compressed model's activations for FRACTION of the retrain token
budget with the retrain settings otherwise unchanged (Kissane et al. 2024 fine-tuned base SAEs on
chat activations with ~0.6% of the from-scratch tokens; docs: repair notes).

``train_sae(init="keep")`` loads the original's weights into the training SAE, so step 0
computes the original's function (:func:`sae_core.sae_train.warm_start_training_sae`). The
retrain ``b_dec_init`` is not applied (the warm start keeps the original's ``b_dec``; the report
says so). A budget below one batch is raised to one batch (noted).
"""

from __future__ import annotations

from typing import Any

from sae_lens import SAE

from sae_core.variants.base import VariantInputs, VariantMethod
from sae_core.variants.retrain import train_settings, trainer, training_details


class FinetuneMethod(VariantMethod):
    name = "finetune"

    def _build(self, original: SAE[Any], inputs: VariantInputs):
        budget, settings = train_settings(inputs)
        notes = []
        if settings.pop("b_dec_init", "zeros") != "zeros":
            notes.append("b_dec_init of the retrain settings not applied: the warm start keeps the original's b_dec")
        tokens = int(round(float(self.spec.fraction) * budget))
        batch_size = int(settings.get("batch_size", 4096))
        if tokens < batch_size:
            notes.append(f"{self.spec.fraction:g} x {budget} tokens is under one batch: trained one batch ({batch_size})")
            tokens = batch_size
        sae, report = trainer(inputs)(original, inputs.compressed, tokens, seed=inputs.seed, init="keep", **settings)
        details = {"training": training_details(report), "retrain_budget": int(budget), "fraction": float(self.spec.fraction),
                   "notes": notes, "training_curve": report.get("curve")}
        return sae, int(report["tokens_used"]), int(report["steps"]), details
