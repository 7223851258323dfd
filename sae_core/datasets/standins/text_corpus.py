"""``Skylion007/openwebtext`` (core, through SAE Lens' ActivationsStore) and
``monology/pile-uncopyrighted`` (autointerp, through SAEBench's ``load_and_tokenize_dataset``)
stand-ins: one folder, ``train.parquet`` with a ``text`` column.

Toy (:func:`build_toy`): toy documents of all kinds (bios, city facts, spelling drills, counting),
drawn with a seed derived from (but different from) ``seed``: the toy LM's training distribution,
other samples. Real (:func:`build_real`): every document of a held-out split of ``debian-text``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from sae_core.datasets import debian_text
from sae_core.datasets.standins.common import derived_seed, write_parquet
from sae_core.toy.corpus import generate_corpus


def build_toy(out_dir: Path, seed: int, n_documents: int = 2000) -> Path:
    texts = [doc.text for doc in generate_corpus(n_documents, seed=derived_seed(seed, "text_corpus") % (2**31))]
    write_parquet(out_dir / "train.parquet", {"text": texts}, pa.schema([("text", pa.string())]))
    return out_dir


def build_real(out_dir: Path, dataset: str = "debian-text", split: str = "validation") -> Path:
    """``train.parquet`` with a ``text`` column: every document of ``split`` (held out from SAE training)."""
    texts = list(debian_text.iter_real_texts(dataset, split))
    write_parquet(out_dir / "train.parquet", {"text": texts}, pa.schema([("text", pa.string())]))
    return out_dir
