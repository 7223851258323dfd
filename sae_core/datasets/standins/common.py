"""What every stand-in shares: SAEBench's hub ids, its label ids, seeds and file writers.

Light on purpose (pyarrow loads inside :func:`write_parquet`): :mod:`sae_core.datasets.mirror`
imports :data:`ABSORPTION_WORDS` and :data:`CLASSES_FILE` from here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# --- hub ids (SAEBench ``dataset_names`` / loaders) ------------------------------------------------
BIAS_IN_BIOS = "LabHC/bias_in_bios"
RAVEL_PROMPTS = "adamkarvonen/ravel_prompts"
#: pseudo-id (no hub dataset): replaces absorption's vocabulary-derived word list, see
#: :mod:`sae_core.datasets.mirror`.
ABSORPTION_WORDS = "sae_core/absorption_words"
#: pseudo-id (sae-probes ships its data in its wheel): a folder in sae-probes' data layout for the
#: ``sparse_probing_sae_probes`` family, see :mod:`sae_core.datasets.standins.sae_probes_data`.
SAE_PROBES_DATA = "sae_core/sae_probes_data"
OPENWEBTEXT = "Skylion007/openwebtext"
PILE_UNCOPYRIGHTED = "monology/pile-uncopyrighted"
EUROPARL = "Helsinki-NLP/europarl"
GITHUB_CODE = "codeparrot/github-code"
AG_NEWS = "fancyzhx/ag_news"

#: Name of the file by which a stand-in folder declares that it holds only *some* of SAEBench's
#: classes for its id (:mod:`sae_core.datasets.mirror` narrows ``chosen_classes_per_dataset`` to
#: them while mapped).
CLASSES_FILE = "saebench_classes.json"

# SAEBench's gender ids (sae_bench.sae_bench_utils.dataset_info.gender_dict; tests check they agree).
GENDER_IDS = {"male": 0, "female": 1}

#: Shortest handbook paragraph a real stand-in uses (europarl, ag_news).
MIN_PARAGRAPH_CHARS = 40


def derived_seed(seed: int, purpose: str, namespace: str = "") -> int:
    """A stable per-purpose seed (independent of PYTHONHASHSEED): ``sha256("<seed>:<purpose>")``, or
    ``sha256("<namespace>:<seed>:<purpose>")`` with a namespace. The toy stand-ins use none, the
    real-language ones ``"real"`` (:func:`real_seed`) -- two streams, as they always were."""
    key = f"{namespace}:{seed}:{purpose}" if namespace else f"{seed}:{purpose}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def real_seed(seed: int, purpose: str) -> int:
    """The real-language stand-ins' per-purpose seed: :func:`derived_seed` in namespace ``"real"``."""
    return derived_seed(seed, purpose, namespace="real")


def write_parquet(path: Path, columns: dict[str, list], schema) -> None:
    """One Parquet file (zstd, no statistics: byte-identical across builds); ``schema`` a ``pa.Schema``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict(columns, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", write_statistics=False)


def write_json(path: Path, content) -> None:
    """UTF-8 JSON, indent 1, non-ASCII kept (the real-language stand-ins' format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
