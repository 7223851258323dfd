"""``LabHC/bias_in_bios`` stand-ins: ``{train,test}.parquet`` with SAEBench's columns ``hard_text``
(str), ``profession`` (int id from SAEBench's ``profession_dict``), ``gender`` (0 male / 1 female),
every (profession, gender) cell of the 15 class-set professions with ``*_per_group`` distinct rows.

Toy (:func:`build_toy`): bios from :func:`sae_core.toy.corpus.make_bio`.
Real (:func:`build_real`): templated bios (:data:`PROFESSION_FACTS`) with real US-census first names
by gender (train and test names disjoint) and real cities (:mod:`.geography`).
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa

from sae_core.datasets.standins.common import GENDER_IDS, derived_seed, real_seed, write_parquet
from sae_core.datasets.standins.geography import real_cities
from sae_core.toy.corpus import make_bio
from sae_core.toy.lexicon import PROFESSIONS

# --- toy ------------------------------------------------------------------------------------------


def _profession_ids() -> dict[str, int]:
    """SAEBench's own label table (a tiny, dependency-free module)."""
    from sae_bench.sae_bench_utils.dataset_info import profession_dict

    return dict(profession_dict)


def build_toy(out_dir: Path, seed: int, train_per_group: int = 120, test_per_group: int = 60) -> Path:
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
        write_parquet(out_dir / f"{split}.parquet",
                       {"hard_text": [r[0] for r in rows], "profession": [r[1] for r in rows], "gender": [r[2] for r in rows]},
                       schema)
    return out_dir


# --- real: templated bios, real first names ------------------------------------------------------


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


def build_real(out_dir: Path, seed: int, train_per_group: int = 600, test_per_group: int = 300) -> Path:
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
        rng = random.Random(real_seed(seed, f"bias_in_bios/{split}"))
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
        write_parquet(out_dir / f"{split}.parquet",
                       {"hard_text": [r[0] for r in rows], "profession": [r[1] for r in rows],
                        "gender": [r[2] for r in rows]}, schema)
    return out_dir

