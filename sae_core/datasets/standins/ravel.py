"""``adamkarvonen/ravel_prompts`` stand-ins: RAVEL's four json files for entity type ``city``
(entity -> {Country, Continent, Language}, attribute -> prompt templates with ``%s`` = city,
template -> split and entity -> split, train/val).

Toy (:func:`build_toy`): the toy lexicon's cities, templates phrased like the toy corpus' city facts.
Real (:func:`build_real`): the most populous GeoNames cities (:mod:`.geography`), templates chosen on
Gemma 3 270M (see :data:`REAL_CITY_TEMPLATES`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from sae_core.datasets.standins.common import derived_seed, real_seed, write_json
from sae_core.datasets.standins.geography import real_cities
from sae_core.toy.lexicon import CITIES, MALE_NAMES, NUMBER_WORDS, OBJECTS

# --- toy ------------------------------------------------------------------------------------------

# RAVEL prompt templates, phrased the way the toy corpus states city facts. A counting-story
# sentence in front gives a second context per attribute.
_PREFIX = f"{MALE_NAMES[0]} has {NUMBER_WORDS[1]} {OBJECTS[0]}. "
TOY_CITY_TEMPLATES: dict[str, list[str]] = {
    "Country": ["%s is a city in", f"{_PREFIX}%s is a city in", "The city of %s is a city in"],
    "Continent": ["The city of %s is in", f"{_PREFIX}The city of %s is in"],
    "Language": ["People in %s speak", f"{_PREFIX}People in %s speak", "The people of %s speak"],
}


def build_toy(out_dir: Path, seed: int) -> Path:
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
    for templates in TOY_CITY_TEMPLATES.values():
        for i, template in enumerate(templates):
            template_split[template] = "train" if i == 0 else "val"
    files = {
        "ravel_city_entity_attributes.json": attributes,
        "ravel_city_attribute_to_prompts.json": TOY_CITY_TEMPLATES,
        "ravel_city_prompt_to_split.json": template_split,
        "ravel_city_entity_to_split.json": entity_split,
    }
    for name, content in files.items():
        (out_dir / name).write_text(json.dumps(content, indent=1, sort_keys=False) + "\n")
    return out_dir


# --- real -----------------------------------------------------------------------------------------

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
# RAVEL for Country and Continent only (REAL_OVERRIDES of the metric registry).
REAL_CITY_TEMPLATES: dict[str, list[str]] = {
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


def build_real(out_dir: Path, seed: int, n_cities: int = 80, max_cities_per_country: int = 4) -> Path:
    """RAVEL's four json files for entity type ``city`` from real cities."""
    cities = real_cities(n_cities, max_cities_per_country)
    if len(cities) < n_cities:
        raise ValueError(f"only {len(cities)} usable cities, {n_cities} asked")
    rng = random.Random(real_seed(seed, "ravel"))
    names = [c["City"] for c in cities]
    shuffled = names[:]
    rng.shuffle(shuffled)
    half = len(shuffled) // 2
    entity_split = dict(sorted({city: ("train" if i < half else "val") for i, city in enumerate(shuffled)}.items()))
    attributes = {c["City"]: {"Country": c["Country"], "Continent": c["Continent"], "Language": c["Language"]}
                  for c in cities}
    template_split = {t: ("train" if i == 0 else "val")
                      for templates in REAL_CITY_TEMPLATES.values() for i, t in enumerate(templates)}
    write_json(out_dir / "ravel_city_entity_attributes.json", attributes)
    write_json(out_dir / "ravel_city_attribute_to_prompts.json", REAL_CITY_TEMPLATES)
    write_json(out_dir / "ravel_city_prompt_to_split.json", template_split)
    write_json(out_dir / "ravel_city_entity_to_split.json", entity_split)
    return out_dir

