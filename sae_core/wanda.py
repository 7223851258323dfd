"""Compatibility re-export: WANDA and the magnitude baselines now live in ``sae_core.compression``
(``compression/wanda.py`` for the algorithm, ``masks.py`` for the selection rule,
``sequential.py`` for the block-by-block driver). New code: ``sae_core.compression.compress_model``."""

from sae_core.compression.masks import magnitude_scores, parse_structure, prune_mask, wanda_scores
from sae_core.compression.modules import MODULE_GROUPS, classify_module, find_blocks, find_prunable_modules, weight_out_in
from sae_core.compression.sequential import sample_calibration
from sae_core.compression.wanda import METHODS, PruneConfig, PruneReport, check_compatible, prune_model, prune_module_

__all__ = ["METHODS", "MODULE_GROUPS", "PruneConfig", "PruneReport", "check_compatible", "classify_module", "find_blocks",
           "find_prunable_modules", "magnitude_scores", "parse_structure", "prune_mask", "prune_model", "prune_module_",
           "sample_calibration", "wanda_scores", "weight_out_in"]
