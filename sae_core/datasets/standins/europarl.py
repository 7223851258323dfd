"""``Helsinki-NLP/europarl`` stand-in (sparse probing's language identification):
``<pair>/train.parquet`` with a ``translation`` struct column ({lang: text}) for SAEBench's pairs,
from the aligned paragraphs of the Debian handbook's translations (untranslated ones dropped).
Real-language only (no toy counterpart)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa

from sae_core.datasets import debian_text
from sae_core.datasets.standins.common import MIN_PARAGRAPH_CHARS, real_seed, write_parquet

#: SAEBench's europarl configs (dataset_utils.get_europarl_dataset) -> handbook translation folders.
EUROPARL_PAIRS = ("en-fr", "fr-it", "de-en", "es-fr", "nl-pt")
HANDBOOK_LANGUAGE_FOLDERS = {"en": "en-US", "fr": "fr-FR", "it": "it-IT", "de": "de-DE", "es": "es-ES",
                             "nl": "nl-NL", "pt": "pt-BR"}


def build_real(out_dir: Path, seed: int) -> Path:
    """``<pair>/train.parquet`` with a ``translation`` struct column ({lang: text}) for each of
    SAEBench's five europarl configs, from the handbook's aligned translations: paragraph ``i`` of
    a page in language A beside paragraph ``i`` of the same page in language B. A non-English side
    identical to the English paragraph (left untranslated) drops the row; so do short paragraphs."""
    pages = {lang: dict(debian_text.handbook_pages(folder)) for lang, folder in HANDBOOK_LANGUAGE_FOLDERS.items()}
    english = pages["en"]
    for pair in EUROPARL_PAIRS:
        a, b = pair.split("-")
        rows, seen = [], set()
        for page in sorted(english):
            for i, original in enumerate(english[page]):
                sides = {lang: _paragraph(pages[lang], page, i) for lang in (a, b)}
                if not original or any(len(t) < MIN_PARAGRAPH_CHARS or (lang != "en" and t == original)
                                       for lang, t in sides.items()):
                    continue
                if sides[a] in seen or sides[b] in seen:  # repeated boilerplate paragraphs
                    continue
                seen.update(sides.values())
                rows.append(sides)
        random.Random(real_seed(seed, f"europarl/{pair}")).shuffle(rows)
        schema = pa.schema([("translation", pa.struct([(a, pa.string()), (b, pa.string())]))])
        write_parquet(out_dir / pair / "train.parquet", {"translation": rows}, schema)
    return out_dir


def _paragraph(pages: dict[str, tuple[str, ...]], page: str, index: int) -> str:
    """Paragraph ``index`` of ``page`` in one translation ("" when that translation lacks it)."""
    paragraphs = pages.get(page, ())
    return paragraphs[index] if index < len(paragraphs) else ""
