"""Every dataset of the project: text sources, the hub mirror, and SAEBench's offline stand-ins.

What lives where:

- :mod:`.sources` -- the :class:`TextSource` interface, the registry :data:`SOURCE_MODULES` (a
  dataset name -> its source) and the token windows cut from any source (:func:`token_windows`,
  :func:`token_batch`, :func:`calibration_windows`, :func:`pruning_windows`);
- the text sources, one module each with its ``SOURCE``: :mod:`.toy_text` (``toy-corpus:<seed>``),
  :mod:`.debian_text` (``debian-text[:handbook|:bible]``, real English text from Debian packages,
  with disjoint splits), :mod:`.hub` (any other name: a Hugging Face dataset id, streamed);
- :mod:`.mirror` -- the one dataset-override mechanism: :func:`dataset_overrides` serves hub ids
  from local folders (to the hub source and to SAEBench's / SAE Lens' loaders, which it patches
  while active), as does the ``SAE_TRANSFER_DATASET_MIRROR`` site mirror;
- :mod:`.standins` -- SAEBench's hub datasets rebuilt offline: :mod:`.standins.common` (hub ids,
  label ids, seeds, writers), one module per SAEBench dataset with its toy and / or real-language
  builder, and the entry points :func:`build_eval_datasets` (toy world) and
  :func:`build_real_eval_datasets` (real language).

To add a text source: write ``sae_core/datasets/<name>.py`` with a :class:`TextSource` subclass
(``matches``, ``check``, ``iter_texts``; set ``finite`` / ``pruning_splits`` if it has finite,
disjoint splits) instantiated as ``SOURCE``, and add its module to :data:`SOURCE_MODULES` before
``hub``. To add a stand-in: put its builder (``build_toy`` / ``build_real``) in the module of its
SAEBench dataset under ``standins/`` (its hub id in ``standins/common.py``) and call it from
``standins/toy.py`` or ``standins/real.py``, returning ``{hub id: folder}``.

Importing this package stays light (no torch, no pyarrow, no ``datasets``): config validation
calls :func:`check_dataset_name`; the mirror and the builders load on first use. Nothing here
imports the metrics package (the metric adapters import this one).
"""

from __future__ import annotations

import importlib
from typing import Any

from sae_core.datasets.sources import (
    SOURCE_MODULES,
    TOY_PREFIX,
    TextSource,
    calibration_windows,
    check_dataset_name,
    is_toy_dataset,
    iter_texts,
    pruning_windows,
    source_of,
    token_batch,
    token_windows,
    toy_dataset_name,
)

_LAZY = {
    **{name: "sae_core.datasets.mirror" for name in (
        "MIRROR_ENV", "active_overrides", "dataset_overrides", "load_local_dataset", "load_words", "local_folder",
        "single_token_words")},
    **{name: "sae_core.datasets.standins.common" for name in (
        "ABSORPTION_WORDS", "AG_NEWS", "BIAS_IN_BIOS", "CLASSES_FILE", "EUROPARL", "GITHUB_CODE", "OPENWEBTEXT",
        "PILE_UNCOPYRIGHTED", "RAVEL_PROMPTS", "SAE_PROBES_DATA")},
    "build_eval_datasets": "sae_core.datasets.standins.toy",
    "build_real_eval_datasets": "sae_core.datasets.standins.real",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sae_core.datasets' has no attribute {name!r}")


__all__ = sorted([
    "SOURCE_MODULES", "TOY_PREFIX", "TextSource", "calibration_windows", "check_dataset_name",
    "is_toy_dataset", "iter_texts", "pruning_windows", "source_of", "token_batch", "token_windows",
    "toy_dataset_name", *_LAZY,
])
