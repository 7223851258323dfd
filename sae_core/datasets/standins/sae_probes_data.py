"""Stand-ins for the ``sae-probes`` datasets (SAEBench's ``sparse_probing_sae_probes`` family).

sae-probes does not fetch its data from the hub: its 113 binary-classification datasets ship inside
the wheel, as ``<package>/data/probing_datasets_MASTER.csv.zst`` (the dataset index: ``Dataset Tag``,
``Dataset save name`` = ``cleaned_data/<n>_<tag>.csv``, ``Data type``) and one
``<package>/data/cleaned_data/<n>_<tag>.csv.zst`` per dataset (columns ``prompt``, ``target``;
sae-probes reads the activation at the prompt's last token and label-encodes ``target``). A stand-in
folder is laid out like the package folder -- ``<folder>/data/...`` the same files (sae-probes finds
its index at ``DATA_PATH.parent / "data"``, so the sub-folder must be called ``data``) -- holding only
its own datasets; it is mapped under the pseudo-id
:data:`~sae_core.datasets.standins.common.SAE_PROBES_DATA` (``"sae_core/sae_probes_data"``) like any
other stand-in (:func:`sae_core.datasets.mirror.dataset_overrides`, or the site mirror), and the
family (:mod:`sae_core.metrics.sparse_probing_sae_probes`) points sae-probes' ``DATA_PATH`` at its
``data`` sub-folder while it runs. Unmapped, sae-probes reads its own bundled data (the "hub" profile).

Every dataset is balanced (half of each of its two labels): sae-probes draws a balanced train set of
``min(size - 100, 1024)`` rows and a balanced test set of the rest (``size - num_train - 1``), which
needs both labels to have rows left over.

Toy (:func:`build_toy`): four tasks from the toy world's own grammar (:mod:`sae_core.toy.corpus`),
``rows_per_dataset`` distinct prompts each: a bio's gender (cf. sae-probes' ``5_hist_fig_ismale``), a
bio's profession being medical, a city-facts paragraph's city being in Europe, and a document being a
spelling drill rather than a counting story.

Real (:func:`build_real`): ``rows_per_dataset`` rows (balanced, seeded) of each of a few of
sae-probes' own datasets (:data:`REAL_DATASETS`), read from the installed wheel: the real data at a
CPU size. The names stay sae-probes' (``5_hist_fig_ismale``, ...), so settings name them as on the hub.

Files are byte-identical across builds with the same arguments (CSV written by pandas, compressed
by ``zstandard`` at a fixed level, no timestamps).
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable
from pathlib import Path

from sae_core.datasets.standins.common import derived_seed, real_seed

DATA_SUBFOLDER = "data"
INDEX_FILE = "probing_datasets_MASTER.csv.zst"
DATA_FOLDER = "cleaned_data"
BINARY = "Binary Classification"
_ZSTD_LEVEL = 3

# --- toy ------------------------------------------------------------------------------------------

#: the toy datasets, in sae-probes' ``<n>_<tag>`` form (numbers above sae-probes' own 1-163).
TOY_DATASETS = ("901_toy_bio_isfemale", "902_toy_bio_ismedical", "903_toy_city_iseurope", "904_toy_doc_isspelling")
MEDICAL = ("dentist", "nurse", "physician", "psychologist", "surgeon")


def _toy_makers() -> dict[str, tuple[Callable[[random.Random], str], Callable[[random.Random], str]]]:
    """dataset -> (draw a label-1 prompt, draw a label-0 prompt)."""
    from sae_core.toy.corpus import make_bio, make_city_facts, make_counting, make_spelling
    from sae_core.toy.lexicon import CITIES, PROFESSIONS

    european = sorted(c for c, (_, continent, _) in CITIES.items() if continent == "Europe")
    elsewhere = sorted(c for c, (_, continent, _) in CITIES.items() if continent != "Europe")
    others = sorted(set(PROFESSIONS) - set(MEDICAL))
    return {
        "901_toy_bio_isfemale": (lambda r: make_bio(r, gender="female").text, lambda r: make_bio(r, gender="male").text),
        "902_toy_bio_ismedical": (lambda r: make_bio(r, profession=r.choice(MEDICAL)).text,
                                  lambda r: make_bio(r, profession=r.choice(others)).text),
        "903_toy_city_iseurope": (lambda r: make_city_facts(r, city=r.choice(european)).text,
                                  lambda r: make_city_facts(r, city=r.choice(elsewhere)).text),
        "904_toy_doc_isspelling": (lambda r: make_spelling(r).text, lambda r: make_counting(r).text),
    }


def build_toy(out_dir: Path, seed: int, rows_per_dataset: int = 300) -> Path:
    """``out_dir`` gets sae-probes' layout with the :data:`TOY_DATASETS`, ``rows_per_dataset`` distinct
    prompts each (half label 1), rows shuffled."""
    if rows_per_dataset < 202 or rows_per_dataset % 2:
        raise ValueError(f"rows_per_dataset must be even and >= 202 (sae-probes keeps 100 rows for its test set), "
                         f"got {rows_per_dataset}")
    datasets = {}
    for name, (positive, negative) in _toy_makers().items():
        rng = random.Random(derived_seed(seed, f"sae_probes/{name}"))
        rows: list[tuple[str, int]] = []
        seen: set[str] = set()
        for label, draw in ((1, positive), (0, negative)):
            made = attempts = 0
            while made < rows_per_dataset // 2:
                attempts += 1
                if attempts > 50 * rows_per_dataset:
                    raise RuntimeError(f"could not draw {rows_per_dataset // 2} distinct label-{label} prompts for {name}")
                text = draw(rng)
                if text in seen:  # distinct prompts: a train row never reappears in the test set
                    continue
                seen.add(text)
                rows.append((text, label))
                made += 1
        rng.shuffle(rows)
        datasets[name] = rows
    return write_layout(out_dir, datasets)


# --- real: a seeded, balanced subsample of sae-probes' own datasets ------------------------------

#: Short-prompt tasks of different kinds: a name's gender, sentiment, a place name's country, SMS spam.
REAL_DATASETS = ("5_hist_fig_ismale", "92_glue_sst2", "123_world_country_United_Kingdom", "96_spam_is")


def package_dir() -> Path:
    """The installed ``sae_probes`` package folder (its data is ``<it>/data``), found without importing
    the package (its import reads all 113 datasets)."""
    spec = importlib.util.find_spec("sae_probes")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the sae-probes stand-ins need the `sae-probes` package (a dependency of sae-bench)")
    return Path(list(spec.submodule_search_locations)[0])


def build_real(out_dir: Path, seed: int, datasets: tuple[str, ...] = REAL_DATASETS, rows_per_dataset: int = 1200,
               source: Path | None = None) -> Path:
    """``out_dir`` gets sae-probes' layout with ``rows_per_dataset`` rows of each of ``datasets`` (half of
    each label, drawn with a seed per dataset, shuffled) from the installed wheel (``source``: a folder
    laid out like the package, default :func:`package_dir`)."""
    import pandas as pd

    if rows_per_dataset < 202 or rows_per_dataset % 2:
        raise ValueError(f"rows_per_dataset must be even and >= 202, got {rows_per_dataset}")
    source = Path(source or package_dir()) / DATA_SUBFOLDER
    chosen = {}
    for name in datasets:
        path = source / DATA_FOLDER / f"{name}.csv.zst"
        if not path.is_file():
            raise ValueError(f"sae-probes has no dataset {name!r} ({path} missing)")
        frame = pd.read_csv(path, compression="zstd")
        labels = sorted(frame["target"].unique(), key=str)
        if len(labels) != 2:
            raise ValueError(f"{name} is not a binary dataset (targets {labels[:5]})")
        rng = random.Random(real_seed(seed, f"sae_probes/{name}"))
        rows = []
        for label in labels:
            index = sorted(frame.index[frame["target"] == label])
            if len(index) < rows_per_dataset // 2:
                raise ValueError(f"{name} has {len(index)} rows of target {label!r}, fewer than {rows_per_dataset // 2}")
            rows += [(str(frame.at[i, "prompt"]), frame.at[i, "target"]) for i in rng.sample(index, rows_per_dataset // 2)]
        rng.shuffle(rows)
        chosen[name] = rows
    return write_layout(out_dir, chosen)


# --- the layout ----------------------------------------------------------------------------------


def write_layout(out_dir: Path, datasets: dict[str, list[tuple[str, object]]]) -> Path:
    """sae-probes' data layout under ``out_dir/data``: the index file plus ``cleaned_data/<name>.csv.zst``
    (``prompt``, ``target``). Returns ``out_dir`` (the folder to map)."""
    import pandas as pd

    out_dir = Path(out_dir)
    data = out_dir / DATA_SUBFOLDER
    index = []
    for name, rows in datasets.items():
        number, _, tag = name.partition("_")
        if not number.isdigit() or not tag:
            raise ValueError(f"sae-probes dataset names are '<number>_<tag>', got {name!r}")
        _write_csv_zst(data / DATA_FOLDER / f"{name}.csv.zst",
                       pd.DataFrame({"prompt": [r[0] for r in rows], "target": [r[1] for r in rows]}))
        index.append({"Dataset Tag": tag, "Dataset save name": f"{DATA_FOLDER}/{name}.csv", "Data type": BINARY})
    _write_csv_zst(data / INDEX_FILE, pd.DataFrame(index, columns=["Dataset Tag", "Dataset save name", "Data type"]))
    return out_dir


def dataset_file(folder: Path, name: str) -> Path:
    """Where dataset ``name`` of a folder laid out like the package is."""
    return Path(folder) / DATA_SUBFOLDER / DATA_FOLDER / f"{name}.csv.zst"


def _write_csv_zst(path: Path, frame) -> None:
    import zstandard

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(frame.to_csv(index=False).encode("utf-8")))


def dataset_names(folder: Path) -> list[str]:
    """The ``<n>_<tag>`` names a folder laid out like the package holds (its index, binary datasets only)."""
    import pandas as pd

    index = pd.read_csv(Path(folder) / DATA_SUBFOLDER / INDEX_FILE, compression="zstd")
    index = index[index["Data type"] == BINARY]
    return [name.split("/")[-1].split(".")[0] for name in index["Dataset save name"]]
