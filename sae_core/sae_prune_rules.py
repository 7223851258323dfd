"""The SAE pruning rules by name, and what each compares within: light data (no torch), read by
:mod:`sae_core.sae_prune`, which implements them (its docstring defines each rule), and by
:mod:`sae_core.config`, which validates ``pruned_sae.rules`` against them."""

from __future__ import annotations

#: rule name -> (encoder comparison group, decoder comparison group), in the order presets list them
GROUPS: dict[str, tuple[str, str]] = {
    "wanda": ("per latent (column of W_enc, over d_in)", "per output dim (column of W_dec, over d_sae)"),
    "paper": ("per input dim (row of W_enc, over d_sae)", "per latent (row of W_dec, over d_in)"),
    "magnitude": ("whole matrix", "whole matrix"),
}
RULES: tuple[str, ...] = tuple(GROUPS)
#: rules that score weights with calibration norms (``sae_prune.accumulate_sae_norms``)
NORM_RULES: tuple[str, ...] = ("wanda", "paper")
