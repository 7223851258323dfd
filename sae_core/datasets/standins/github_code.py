"""``codeparrot/github-code`` stand-in (sparse probing's programming language):
``train.parquet`` (``code``, ``language``) from installed source files -- C (``/usr/include``
headers, C++ skipped), Python (the interpreter's stdlib), HTML (the handbook's pages). No Java / PHP
installs, so the folder declares :data:`~sae_core.datasets.standins.common.CLASSES_FILE` = the
languages found. Real-language only (no toy counterpart)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa

from sae_core.datasets import debian_text
from sae_core.datasets.standins.common import CLASSES_FILE, real_seed, write_json, write_parquet


def _code_files(language: str) -> list[Path]:
    """Installed source files of one github-code class, sorted (what each class reads: docs)."""
    import sysconfig

    if language == "Python":
        root = Path(sysconfig.get_paths()["stdlib"])
        return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    if language == "C":
        root = Path("/usr/include")
        return sorted(p for p in root.rglob("*.h") if "c++" not in p.as_posix())
    if language == "HTML":  # the handbook's pages in all its translations
        return sorted(debian_text.HANDBOOK_ROOT.glob("*/*.html"))
    raise ValueError(f"no installed source for {language!r}")


#: github-code classes with an installed source (SAEBench's list also has Java and PHP, which no
#: package of this project installs; the stand-in declares the three it holds, see CLASSES_FILE).
CODE_LANGUAGES = ("C", "Python", "HTML")
CODE_CHUNK_CHARS = 2000
CODE_CHUNKS_PER_FILE = 3


def _looks_like_cxx(text: str) -> bool:
    return any(marker in text for marker in ("namespace ", "template <", "template<", "#include <c++", "class "))


def build_real(out_dir: Path, seed: int, max_rows_per_language: int = 2000,
                      min_rows_per_language: int = 200) -> Path:
    """``train.parquet`` (``code``, ``language``) from installed source files: up to
    :data:`CODE_CHUNKS_PER_FILE` chunks of about :data:`CODE_CHUNK_CHARS` characters (cut at line
    ends) per file, files drawn with a seeded shuffle, rows of all languages interleaved. A language
    with fewer than ``min_rows_per_language`` rows here (e.g. no ``/usr/include``: ``apt-get install
    libc6-dev``) is left out of the declared classes; fewer than two languages is an error."""
    rows = []
    present = []
    seen: set[str] = set()  # identical chunks (copied headers, boilerplate) would leak across train/test
    for language in CODE_LANGUAGES:
        files = _code_files(language)
        random.Random(real_seed(seed, f"github_code/{language}")).shuffle(files)
        chunks: list[str] = []
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if language == "C" and _looks_like_cxx(text):
                continue
            lines, current, made = text.splitlines(keepends=True), "", 0
            pieces = []
            for line in lines:
                current += line
                if len(current) >= CODE_CHUNK_CHARS:
                    pieces.append(current)
                    current, made = "", made + 1
                    if made == CODE_CHUNKS_PER_FILE:
                        break
            if made < CODE_CHUNKS_PER_FILE and len(current) > 600:  # SAEBench skips code under 534 chars
                pieces.append(current)
            for piece in pieces:
                # SAEBench drops the first 150 characters (licence headers): compare what it keeps.
                if piece[150:] not in seen:
                    seen.add(piece[150:])
                    chunks.append(piece)
            if len(chunks) >= max_rows_per_language:
                break
        if len(chunks) < min_rows_per_language:
            continue
        present.append(language)
        rows += [(chunk, language) for chunk in chunks[:max_rows_per_language]]
    if len(present) < 2:
        raise ValueError(f"the github-code stand-in found installed sources for only {present} of {CODE_LANGUAGES} "
                         "(C: `apt-get install libc6-dev`; Python: the interpreter's standard library; HTML: "
                         "`apt-get install debian-handbook`)")
    random.Random(real_seed(seed, "github_code")).shuffle(rows)
    write_parquet(out_dir / "train.parquet", {"code": [r[0] for r in rows], "language": [r[1] for r in rows]},
                   pa.schema([("code", pa.string()), ("language", pa.string())]))
    write_json(out_dir / CLASSES_FILE, present)
    return out_dir

