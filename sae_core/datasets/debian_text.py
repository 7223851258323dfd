"""Real English text from installed Debian packages, as a dataset source with disjoint splits.

Dataset names (checked by :func:`sae_core.datasets.check_dataset_name`, read by
:func:`sae_core.datasets.iter_texts`, windowed by :func:`sae_core.datasets.token_windows` like every
source; :data:`SOURCE` is this module's entry in :data:`sae_core.datasets.sources.SOURCE_MODULES`):

``debian-text``           both books below, documents interleaved (a stable hash orders them)
``debian-text:handbook``  *The Debian Administrator's Handbook* (package ``debian-handbook``), English
                          HTML -> clean paragraphs (the ``<div class="para">`` blocks; screen output,
                          program listings and index terms dropped); one document = up to
                          :data:`HANDBOOK_PARAGRAPHS_PER_DOCUMENT` consecutive paragraphs of one page.
                          GPL-2+ / CC-BY-SA-3.0.
``debian-text:bible``     the King James Bible (packages ``bible-kjv`` + ``bible-kjv-text``, read with the
                          ``bible`` program); one document = one chapter (its verses joined). Public domain.

Splits (``iter_texts(name, split=...)``) are by *document*: ``sha256("split:" + document id)``
modulo 100 puts a document into exactly one of

=============== ======= ==========================================================
split           share   use
=============== ======= ==========================================================
``train``        80 %   SAE training activations
``validation``   10 %   held-out activations (SAE quality, core's eval text)
``calibration``   5 %   WANDA calibration windows (:func:`sae_core.datasets.calibration_windows`)
``perplexity``    5 %   perplexity windows of dense / pruned models
=============== ======= ==========================================================

so no text is shared between splits whatever the window length. Within a split, documents come in
the order of ``sha256("order:" + document id)`` (handbook and Bible interleave); the stream is
finite (a split is read once; asking for more windows than it holds is an error upstream).

A missing package raises :class:`ValueError` naming what to install (``make env-real``, or
``apt-get install debian-handbook bible-kjv bible-kjv-text``) from :func:`check_real_text_name`,
which ``check_dataset_name`` calls at config-validation time -- before any heavy work.

The parallel translations of the handbook (26 languages, same pages, same paragraph count per page)
are exposed by :func:`handbook_pages` for the language-identification stand-in of
:mod:`sae_core.datasets.standins.europarl`.
"""

from __future__ import annotations

import functools
import html as htmllib
import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sae_core.datasets.sources import TextSource

PREFIX = "debian-text"
SOURCES: dict[str, tuple[str, ...]] = {
    "": ("handbook", "bible"),
    "handbook": ("handbook",),
    "bible": ("bible",),
}
#: split -> [lo, hi) range of ``sha256("split:" + doc id) % 100``.
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 80),
    "validation": (80, 90),
    "calibration": (90, 95),
    "perplexity": (95, 100),
}
HANDBOOK_PARAGRAPHS_PER_DOCUMENT = 8

# Module-level so tests can point them at a missing location.
HANDBOOK_ROOT = Path("/usr/share/doc/debian-handbook/html")
BIBLE_PROGRAM = "bible"
BIBLE_DATA = Path("/usr/lib/bible.data")
# Every verse of the KJV, Genesis 1:1 to Revelation 22:21.
BIBLE_RANGE = "Gen1:1-Rev22:21"

INSTALL_HINT = ("run `make env-real` (or `sudo apt-get update && sudo apt-get install debian-handbook bible-kjv "
                "bible-kjv-text`)")
_PACKAGES = {"handbook": "debian-handbook", "bible": "bible-kjv bible-kjv-text"}


@dataclass(frozen=True)
class Document:
    doc_id: str  # stable, unique: e.g. "handbook/en-US/sect.apt-get.html#0", "bible/Ge/1"
    text: str


def is_real_text_dataset(name: str) -> bool:
    return isinstance(name, str) and (name == PREFIX or name.startswith(PREFIX + ":"))


def _variant(name: str) -> str:
    return "" if name == PREFIX else name[len(PREFIX) + 1 :]


def missing_packages(sources: tuple[str, ...] = ("handbook", "bible")) -> list[str]:
    """Debian packages (of ``sources``) that are not installed here."""
    missing = []
    if "handbook" in sources and not (HANDBOOK_ROOT / "en-US" / "index.html").is_file():
        missing.append(_PACKAGES["handbook"])
    if "bible" in sources and (shutil.which(BIBLE_PROGRAM) is None or not Path(BIBLE_DATA).is_file()):
        missing.append(_PACKAGES["bible"])
    return missing


def check_real_text_name(name: str) -> tuple[str, ...]:
    """The sources of ``name``; ValueError for an unknown variant or a missing Debian package."""
    variant = _variant(name)
    if variant not in SOURCES:
        known = ", ".join(repr(PREFIX + (":" + v if v else "")) for v in SOURCES)
        raise ValueError(f"unknown real-text dataset {name!r}; use one of {known}")
    sources = SOURCES[variant]
    missing = missing_packages(sources)
    if missing:
        raise ValueError(f"dataset {name!r} needs the Debian package(s) {' '.join(missing)}, not installed here: "
                         f"{INSTALL_HINT}")
    return sources


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of the real-text datasets; use one of {sorted(SPLITS)}")


def _hash100(salt: str, doc_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{doc_id}".encode()).digest()[:8], "big") % 100


def split_of(doc_id: str) -> str:
    bucket = _hash100("split", doc_id)
    for split, (lo, hi) in SPLITS.items():
        if lo <= bucket < hi:
            return split
    raise AssertionError(bucket)  # SPLITS covers 0..99


def _order_key(doc_id: str) -> bytes:
    return hashlib.sha256(f"order:{doc_id}".encode()).digest()


# --- the handbook --------------------------------------------------------------------------------


_DIV_TAG = re.compile(r"<(/?)div\b[^>]*>")
_PARA_OPEN = re.compile(r'<div class="para">')
_PRE_BLOCK = re.compile(r"<pre\b.*?</pre>", re.S)
_TAG = re.compile(r"<[^>]+>")


def html_paragraphs(html: str) -> list[str]:
    """Text of every ``<div class="para">`` (nested paragraphs merge into the outer one), without
    ``<pre>`` blocks (screen output, program listings); whitespace collapsed, entities decoded."""
    paragraphs = []
    position = 0
    while True:
        opened = _PARA_OPEN.search(html, position)
        if opened is None:
            return paragraphs
        depth, end = 1, len(html)
        for tag in _DIV_TAG.finditer(html, opened.end()):
            depth += -1 if tag.group(1) else 1
            if depth == 0:
                end = tag.start()
                break
        body = _TAG.sub("", _PRE_BLOCK.sub(" ", html[opened.end() : end]))
        paragraphs.append(re.sub(r"\s+", " ", htmllib.unescape(body)).strip())
        position = end


def handbook_languages() -> list[str]:
    """Language folders of the installed handbook (``en-US``, ``de-DE``, ...)."""
    if not HANDBOOK_ROOT.is_dir():
        return []
    return sorted(p.name for p in HANDBOOK_ROOT.iterdir() if (p / "index.html").is_file())


@functools.lru_cache(maxsize=32)
def handbook_pages(language: str = "en-US") -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``((page file name, paragraphs), ...)`` of one translation, pages in file-name order.

    Paragraph ``i`` of a page is the translation of paragraph ``i`` of the same page in every other
    language (publican keeps the structure); empty paragraphs are kept as ``""`` so indices align.
    """
    folder = HANDBOOK_ROOT / language
    if not (folder / "index.html").is_file():
        missing = missing_packages(("handbook",))
        hint = f"the Debian package debian-handbook is not installed: {INSTALL_HINT}" if missing else \
            f"known languages: {handbook_languages()}"
        raise ValueError(f"no Debian handbook in language {language!r} under {HANDBOOK_ROOT}; {hint}")
    pages = []
    for path in sorted(folder.glob("*.html")):
        pages.append((path.name, tuple(html_paragraphs(path.read_text(encoding="utf-8")))))
    return tuple(pages)


def handbook_documents(language: str = "en-US") -> list[Document]:
    documents = []
    for page, paragraphs in handbook_pages(language):
        kept = [p for p in paragraphs if p]
        for start in range(0, len(kept), HANDBOOK_PARAGRAPHS_PER_DOCUMENT):
            block = kept[start : start + HANDBOOK_PARAGRAPHS_PER_DOCUMENT]
            documents.append(Document(f"handbook/{language}/{page}#{start // HANDBOOK_PARAGRAPHS_PER_DOCUMENT}",
                                      "\n\n".join(block)))
    return documents


# --- the Bible -----------------------------------------------------------------------------------

_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


@functools.lru_cache(maxsize=1)
def bible_chapters() -> tuple[tuple[str, int, str], ...]:
    """``((book abbreviation, chapter, text), ...)`` in canonical order (1,189 chapters)."""
    chapters = _bible_verses_by_chapter()
    return tuple((book, chapter, " ".join(verses)) for (book, chapter), verses in chapters.items())


@functools.lru_cache(maxsize=1)
def _bible_verses_by_chapter() -> dict[tuple[str, int], tuple[str, ...]]:
    if missing_packages(("bible",)):
        raise ValueError(f"the King James Bible needs the Debian packages bible-kjv bible-kjv-text: {INSTALL_HINT}")
    out = subprocess.run([shutil.which(BIBLE_PROGRAM) or BIBLE_PROGRAM, "-f", BIBLE_RANGE],
                         check=True, capture_output=True, text=True, encoding="utf-8").stdout
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in out.splitlines():
        match = _VERSE.match(line.strip())
        if match:
            book, chapter, _, verse = match.groups()
            chapters.setdefault((book, int(chapter)), []).append(verse.strip())
    if len(chapters) < 1000:
        raise RuntimeError(f"`{BIBLE_PROGRAM} -f {BIBLE_RANGE}` gave only {len(chapters)} chapters; is bible-kjv-text complete?")
    return {key: tuple(verses) for key, verses in chapters.items()}


def bible_verses(book: str, chapter: int) -> tuple[str, ...]:
    """The verses of one chapter (book abbreviation as the ``bible`` program prints it: ``Ge``, ``Mat``...)."""
    return _bible_verses_by_chapter()[(book, chapter)]


def bible_documents() -> list[Document]:
    return [Document(f"bible/{book}/{chapter}", text) for book, chapter, text in bible_chapters()]


# --- the dataset ---------------------------------------------------------------------------------


def documents(name: str, split: str) -> list[Document]:
    """The documents of ``split`` of dataset ``name``, in stream order."""
    check_split(split)
    sources = check_real_text_name(name)
    pool: list[Document] = []
    if "handbook" in sources:
        pool += handbook_documents("en-US")
    if "bible" in sources:
        pool += bible_documents()
    chosen = [d for d in pool if split_of(d.doc_id) == split]
    return sorted(chosen, key=lambda d: _order_key(d.doc_id))


def iter_real_texts(name: str, split: str = "train") -> Iterator[str]:
    for document in documents(name, split):
        yield document.text


class DebianText(TextSource):
    """The ``debian-text[:variant]`` source: finite splits, its own calibration / perplexity splits.

    Calls this module's functions by their global names at call time, so tests can replace them."""

    finite = True
    pruning_splits = ("calibration", "perplexity")

    def matches(self, name: str) -> bool:
        return is_real_text_dataset(name)

    def check(self, name: str) -> None:
        check_real_text_name(name)  # unknown variant / missing Debian package, before heavy work

    def iter_texts(self, name: str, split: str = "train", text_column: str = "text") -> Iterator[str]:
        yield from iter_real_texts(name, split)


SOURCE = DebianText()
