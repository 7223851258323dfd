"""Offline stand-ins for SAEBench's evaluation datasets, generated from the toy world.

Each stand-in has the same columns / files and the same label meaning as the hub dataset it
replaces, so SAEBench's own loaders and metric code run on it unchanged (the redirection is
:func:`sae_core.metrics.offline_datasets.dataset_overrides`):

``LabHC/bias_in_bios`` -> ``bias_in_bios/{train,test}.parquet``
    columns ``hard_text`` (str), ``profession`` (int id from SAEBench's ``profession_dict``),
    ``gender`` (0 male / 1 female). Every (profession, gender) cell of the 15 toy professions has
    ``bios_train_per_group`` train and ``bios_test_per_group`` test rows, rows shuffled. The toy bios
    come from :func:`sae_core.toy.corpus.make_bio`; unlike the real "hard" text the first sentence
    (which names the profession) is kept -- the toy grammar is so small that without it test bios
    would largely repeat train bios. The 15 professions are exactly SAEBench's
    ``bias_in_bios_class_set1/2/3`` classes, and SCR's default pairs (professor/nurse,
    architect/journalist, surgeon/psychologist, attorney/teacher) are all present.
    Sizes: SCR needs ``train_per_group > train_set_size / 2`` and ``test_per_group > test_set_size / 2``;
    sparse probing / TPP need ``>= train_set_size / 4`` (``test_set_size / 4``).

``adamkarvonen/ravel_prompts`` -> ``ravel_prompts/ravel_city_*.json``
    RAVEL's four files for entity type ``city``: entity -> {Country, Continent, Language},
    attribute -> prompt templates (``%s`` = city, phrased like the toy corpus' city facts),
    template -> split and entity -> split (train/val).

``Skylion007/openwebtext`` and ``monology/pile-uncopyrighted`` -> ``text_corpus/train.parquet``
    a ``text`` column of toy documents (all kinds: bios, city facts, spelling drills, counting),
    drawn with a seed derived from (but different from) ``seed``: same distribution as the toy
    LM's training text, other samples. Core reads it through SAE Lens' ActivationsStore,
    autointerp through SAEBench's ``load_and_tokenize_dataset``.

``sae_core/absorption_words`` (pseudo-id, no hub dataset) -> ``absorption_words/words.json``
    absorption's word list. SAEBench normally takes every purely alphabetic token of the model's
    vocabulary; a toy model only knows the first letters of the words its corpus spells out (the
    spelling drills over ``lexicon.WORDS``), and most of a toy BPE vocabulary is sub-word pieces.
    The list holds those WORDS, bare and with a leading space, plus single-letter tokens for any
    letter with fewer than two WORDS; at run time only entries that are one token of the model's
    tokenizer are used (:func:`sae_core.metrics.offline_datasets.single_token_words`).

Output is a pure function of the arguments: parquet and json files are byte-identical across
builds with the same seed and sizes.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sae_core.toy.corpus import generate_corpus, make_bio
from sae_core.toy.lexicon import CITIES, MALE_NAMES, NUMBER_WORDS, OBJECTS, PROFESSIONS, WORDS

ABSORPTION_WORDS = "sae_core/absorption_words"
BIAS_IN_BIOS = "LabHC/bias_in_bios"
RAVEL_PROMPTS = "adamkarvonen/ravel_prompts"
OPENWEBTEXT = "Skylion007/openwebtext"
PILE_UNCOPYRIGHTED = "monology/pile-uncopyrighted"

# SAEBench's gender ids (sae_bench.sae_bench_utils.dataset_info.gender_dict; tests check they agree).
GENDER_IDS = {"male": 0, "female": 1}

# RAVEL prompt templates, phrased the way the toy corpus states city facts. A counting-story
# sentence in front gives a second context per attribute.
_PREFIX = f"{MALE_NAMES[0]} has {NUMBER_WORDS[1]} {OBJECTS[0]}. "
RAVEL_CITY_TEMPLATES: dict[str, list[str]] = {
    "Country": ["%s is a city in", f"{_PREFIX}%s is a city in", "The city of %s is a city in"],
    "Continent": ["The city of %s is in", f"{_PREFIX}The city of %s is in"],
    "Language": ["People in %s speak", f"{_PREFIX}People in %s speak", "The people of %s speak"],
}


def derived_seed(seed: int, purpose: str) -> int:
    """A stable per-purpose seed (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:8], "big")


def _profession_ids() -> dict[str, int]:
    """SAEBench's own label table (a tiny, dependency-free module)."""
    from sae_bench.sae_bench_utils.dataset_info import profession_dict

    return dict(profession_dict)


def _write_parquet(path: Path, columns: dict[str, list], schema: pa.Schema) -> None:
    table = pa.Table.from_pydict(columns, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", write_statistics=False)


def build_bias_in_bios(out_dir: Path, seed: int, train_per_group: int = 120, test_per_group: int = 60) -> Path:
    """``out_dir`` gets ``train.parquet`` / ``test.parquet`` shaped like ``LabHC/bias_in_bios``."""
    profession_ids = _profession_ids()
    unknown = sorted(set(PROFESSIONS) - set(profession_ids))
    if unknown:
        raise ValueError(f"toy professions missing from SAEBench's profession_dict: {unknown}")
    schema = pa.schema([("hard_text", pa.string()), ("profession", pa.int64()), ("gender", pa.int64())])
    seen: set[str] = set()
    for split, per_group in (("train", train_per_group), ("test", test_per_group)):
        rng = random.Random(derived_seed(seed, f"bias_in_bios/{split}"))
        rows = []
        for profession in sorted(PROFESSIONS):
            for gender in ("male", "female"):
                made = 0
                attempts = 0
                while made < per_group:
                    attempts += 1
                    if attempts > 50 * per_group:
                        raise RuntimeError(f"could not draw {per_group} distinct {gender} {profession} bios")
                    text = make_bio(rng, profession=profession, gender=gender).text
                    if text in seen:  # keep train and test disjoint, no duplicates
                        continue
                    seen.add(text)
                    rows.append((text, profession_ids[profession], GENDER_IDS[gender]))
                    made += 1
        rng.shuffle(rows)
        _write_parquet(out_dir / f"{split}.parquet",
                       {"hard_text": [r[0] for r in rows], "profession": [r[1] for r in rows], "gender": [r[2] for r in rows]},
                       schema)
    return out_dir


def build_ravel_prompts(out_dir: Path, seed: int) -> Path:
    """RAVEL's four json files for entity type ``city`` from the toy lexicon."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(derived_seed(seed, "ravel"))
    entities = sorted(CITIES)
    attributes = {city: {"Country": c, "Continent": k, "Language": lang} for city, (c, k, lang) in sorted(CITIES.items())}
    shuffled = entities[:]
    rng.shuffle(shuffled)
    half = len(shuffled) // 2
    entity_split = {city: ("train" if i < half else "val") for i, city in enumerate(shuffled)}
    entity_split = dict(sorted(entity_split.items()))
    template_split = {}
    for templates in RAVEL_CITY_TEMPLATES.values():
        for i, template in enumerate(templates):
            template_split[template] = "train" if i == 0 else "val"
    files = {
        "ravel_city_entity_attributes.json": attributes,
        "ravel_city_attribute_to_prompts.json": RAVEL_CITY_TEMPLATES,
        "ravel_city_prompt_to_split.json": template_split,
        "ravel_city_entity_to_split.json": entity_split,
    }
    for name, content in files.items():
        (out_dir / name).write_text(json.dumps(content, indent=1, sort_keys=False) + "\n")
    return out_dir


def build_text_corpus(out_dir: Path, seed: int, n_documents: int = 2000) -> Path:
    texts = [doc.text for doc in generate_corpus(n_documents, seed=derived_seed(seed, "text_corpus") % (2**31))]
    _write_parquet(out_dir / "train.parquet", {"text": texts}, pa.schema([("text", pa.string())]))
    return out_dir


def absorption_word_list(words: list[str] | None = None) -> list[str]:
    """The absorption stand-in: the words whose first letter the toy corpus teaches (its spelling
    drills use ``lexicon.WORDS``), each bare and with a leading space. Letters with fewer than two
    such words get their single-letter tokens too, so SAEBench sees every letter a-z (it trains one
    probe per letter and fails on a missing one)."""
    words = list(WORDS if words is None else words)
    forms: list[str] = []
    for word in words:
        if word.isascii() and word.isalpha():
            forms += [word, " " + word]
    covered: dict[str, int] = {}
    for word in words:
        covered[word[0].lower()] = covered.get(word[0].lower(), 0) + 1
    for letter in "abcdefghijklmnopqrstuvwxyz":
        if covered.get(letter, 0) < 2:
            forms += [letter, letter.upper(), " " + letter.upper(), " " + letter]
    seen: set[str] = set()
    return [f for f in forms if not (f in seen or seen.add(f))]


def build_absorption_words(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "words.json").write_text(json.dumps(absorption_word_list(), indent=0) + "\n")
    return out_dir


def build_eval_datasets(
    out_dir: str | Path,
    seed: int = 0,
    *,
    bios_train_per_group: int = 120,
    bios_test_per_group: int = 60,
    n_text_documents: int = 2000,
) -> dict[str, Path]:
    """Write every stand-in under ``out_dir``; returns ``{hub id: local folder}`` for ``dataset_overrides``."""
    out_dir = Path(out_dir)
    bios = build_bias_in_bios(out_dir / "bias_in_bios", seed, bios_train_per_group, bios_test_per_group)
    ravel = build_ravel_prompts(out_dir / "ravel_prompts", seed)
    text = build_text_corpus(out_dir / "text_corpus", seed, n_text_documents)
    words = build_absorption_words(out_dir / "absorption_words")
    return {BIAS_IN_BIOS: bios, RAVEL_PROMPTS: ravel, OPENWEBTEXT: text, PILE_UNCOPYRIGHTED: text, ABSORPTION_WORDS: words}
