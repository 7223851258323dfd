"""``fancyzhx/ag_news`` stand-in (sparse probing's topic): ``{train,test}.parquet`` (``text``,
``label``) with ag_news' four labels -- two Bible topics (Old / New Testament, 3-verse passages), two
Debian handbook topics (paragraphs) -- split by a hash of the item id. Real-language only (no toy
counterpart)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa

from sae_core.datasets import debian_text
from sae_core.datasets.standins.common import MIN_PARAGRAPH_CHARS, real_seed, write_parquet

#: ag_news label -> (description, source). Two books, two topics each: a probe must tell topics
#: within a book apart, not only handbook from Bible.
AG_NEWS_TOPICS = {
    0: "Bible, Old Testament (3-verse passages)",
    1: "Bible, New Testament (3-verse passages)",
    2: "Debian handbook: the project, installation, packages and APT (paragraphs)",
    3: "Debian handbook: networks, network services, security, advanced administration (paragraphs)",
}
_HANDBOOK_TOPIC_CHAPTERS = {
    2: ("the-debian-project.html", "installation.html", "derivative-distributions.html", "packaging-system.html",
        "apt.html", "debian-packaging.html"),
    3: ("network-infrastructure.html", "network-services.html", "security.html", "advanced-administration.html"),
}
_NEW_TESTAMENT_FIRST_BOOK = "Mat"
VERSES_PER_PASSAGE = 3


def _handbook_chapter_of() -> dict[str, str]:
    """page file name -> its chapter's page (the page's ``<link rel="up">``)."""
    import re

    chapter = {}
    for path in sorted((debian_text.HANDBOOK_ROOT / "en-US").glob("*.html")):
        match = re.search(r'<link rel="up" href="([^"#]+)"', path.read_text(encoding="utf-8"))
        chapter[path.name] = match.group(1) if match else path.name
    return chapter


def ag_news_items() -> list[tuple[str, int, str]]:
    """``(item id, label, text)`` for every passage / paragraph of the four topics."""
    items = []
    testament = 0
    for book, chapter, text in debian_text.bible_chapters():
        if book == _NEW_TESTAMENT_FIRST_BOOK:
            testament = 1
        verses = [v for v in debian_text.bible_verses(book, chapter)]
        for start in range(0, len(verses), VERSES_PER_PASSAGE):
            items.append((f"bible/{book}/{chapter}/{start}", testament, " ".join(verses[start : start + VERSES_PER_PASSAGE])))
    chapter_of = _handbook_chapter_of()
    for page, paragraphs in debian_text.handbook_pages("en-US"):
        for label, chapters in _HANDBOOK_TOPIC_CHAPTERS.items():
            if page in chapters or chapter_of.get(page) in chapters:
                items += [(f"handbook/{page}#{i}", label, p) for i, p in enumerate(paragraphs)
                          if len(p) >= MIN_PARAGRAPH_CHARS]
    return items


def build_real(out_dir: Path, seed: int, test_fraction: float = 0.25) -> Path:
    """``{train,test}.parquet`` (``text``, ``label``) with ag_news' four labels, split by a hash of
    the item id (train and test never share a passage)."""
    schema = pa.schema([("text", pa.string()), ("label", pa.int64())])
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    seen: set[str] = set()
    for item_id, label, text in ag_news_items():
        if text in seen:  # a repeated paragraph would sit in train and test
            continue
        seen.add(text)
        bucket = int.from_bytes(hashlib.sha256(f"ag_news:{item_id}".encode()).digest()[:8], "big") % 1000
        splits["test" if bucket < test_fraction * 1000 else "train"].append((text, label))
    for split, rows in splits.items():
        random.Random(real_seed(seed, f"ag_news/{split}")).shuffle(rows)
        write_parquet(out_dir / f"{split}.parquet", {"text": [r[0] for r in rows], "label": [r[1] for r in rows]}, schema)
    return out_dir

