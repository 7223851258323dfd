"""Real-data stand-ins for SAEBench's hub datasets (sae_core.datasets.standins, ``build_real``), read
through SAEBench's own loaders under the one redirection mechanism (sae_core.datasets.mirror.dataset_overrides).

Unmarked tests are pure logic; ``real_model`` ones need the ``real-model`` Python group and the
Debian text packages (``make env-real``)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sae_core.datasets import dataset_overrides
from sae_core.datasets.standins import absorption, bias_in_bios, common, github_code, ravel, real
from sae_core.datasets.standins.common import BIAS_IN_BIOS, OPENWEBTEXT, PILE_UNCOPYRIGHTED, RAVEL_PROMPTS

# SAEBench's SCR pairs on bias_in_bios (sae_bench.evals.scr_and_tpp.eval_config defaults).
SCR_PAIRS = [("professor", "nurse"), ("architect", "journalist"), ("surgeon", "psychologist"), ("attorney", "teacher")]


def test_labels_match_saebench():
    from sae_bench.sae_bench_utils.dataset_info import chosen_classes_per_dataset, gender_dict, profession_dict

    assert common.GENDER_IDS == gender_dict
    class_sets = {int(c) for k, v in chosen_classes_per_dataset.items() if "bias_in_bios" in k for c in v}
    assert {profession_dict[p] for p in bias_in_bios.PROFESSION_FACTS} == class_sets, "exactly the 15 class-set professions"
    assert {p for pair in SCR_PAIRS for p in pair} <= set(bias_in_bios.PROFESSION_FACTS)


def test_bio_carries_profession_and_gender_without_repeating():
    rng = random.Random(0)
    bios = [bias_in_bios.make_real_bio(rng, "nurse", "female", "Mary", ["Lima", "Oslo"]) for _ in range(200)]
    assert all(" he " not in f" {b.lower()} " and " his " not in f" {b.lower()} " for b in bios), "female bios say she/her"
    assert len(set(bios)) > 190, "templates vary enough that rows rarely repeat"
    facts = bias_in_bios.PROFESSION_FACTS["nurse"]
    own = [s for key in ("place", "credential", "title") for s in facts[key]]
    assert all(any(v in b for v in own + facts["does"]) for b in bios), "every bio has some nurse-specific content"
    # Some bios borrow a related profession's task phrase (never an unrelated one's): not one phrase decides.
    borrowed = [b for b in bios if any(d in b for p in ("physician", "surgeon", "dentist", "psychologist")
                                       for d in bias_in_bios.PROFESSION_FACTS[p]["does"])]
    assert 0.1 < len(borrowed) / len(bios) < 0.5
    assert not any(d in b for b in bios for d in bias_in_bios.PROFESSION_FACTS["accountant"]["does"])


def test_declared_classes_narrow_saebench_list_while_mapped(tmp_path):
    import json

    from sae_bench.sae_bench_utils import dataset_info

    from sae_core.datasets.standins.common import CLASSES_FILE

    original = list(dataset_info.chosen_classes_per_dataset[common.GITHUB_CODE])
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / CLASSES_FILE).write_text(json.dumps(["HTML", "C"]))
    with dataset_overrides({common.GITHUB_CODE: folder}):
        assert dataset_info.chosen_classes_per_dataset[common.GITHUB_CODE] == ["C", "HTML"], "SAEBench's order"
    assert dataset_info.chosen_classes_per_dataset[common.GITHUB_CODE] == original, "restored on exit"
    # Only a subset: a stand-in cannot invent classes (that would change SAEBench's task).
    (folder / CLASSES_FILE).write_text(json.dumps(["C", "Rust"]))
    with pytest.raises(ValueError, match="subset"):
        with dataset_overrides({common.GITHUB_CODE: folder}):
            pass
    assert dataset_info.chosen_classes_per_dataset[common.GITHUB_CODE] == original


def test_absorption_words_cover_every_letter_with_single_tokens():
    class OneTokenPerShortForm:  # "single token" = at most 6 characters (stands in for a vocabulary)
        def encode(self, text, add_special_tokens=False):
            return [0] if len(text) <= 6 else [0, 1]

    counts = {w: 100 - i for i, w in enumerate(f"{c}{tail}" for c in absorption.LETTERS for tail in
                                                ("a", "bb", "ccc", "dddd", "eeeee", "ffffffffff"))}
    words = absorption.real_word_list(seed=0, tokenizer=OneTokenPerShortForm(), words_per_letter=3, counts=counts)
    assert {w.strip()[0] for w in words} == set(absorption.LETTERS)
    assert all(len(w) <= 6 for w in words), "only single-token forms are written"
    assert words == absorption.real_word_list(seed=0, tokenizer=OneTokenPerShortForm(), words_per_letter=3, counts=counts)
    assert words != absorption.real_word_list(seed=1, tokenizer=OneTokenPerShortForm(), words_per_letter=3, counts=counts)


def test_code_standin_declares_only_languages_it_found(monkeypatch, tmp_path):
    import json

    import pandas as pd

    sources = {}
    for language, line in (("Python", "x = compute(value)  # python\n"), ("HTML", "<p>some paragraph</p>\n")):
        folder = tmp_path / language
        folder.mkdir()
        sources[language] = []
        for i in range(30):
            path = folder / f"f{i}.txt"
            path.write_text("".join(f"{line.strip()} {i}-{n}\n" for n in range(300)))
            sources[language].append(path)
    sources["C"] = []  # e.g. no /usr/include on this machine
    monkeypatch.setattr(github_code, "_code_files", lambda language: list(sources[language]))
    out = github_code.build_real(tmp_path / "out", seed=0, max_rows_per_language=50, min_rows_per_language=40)
    assert json.loads((out / common.CLASSES_FILE).read_text()) == ["Python", "HTML"]
    frame = pd.read_parquet(out / "train.parquet")
    assert frame.language.value_counts().to_dict() == {"Python": 50, "HTML": 50}
    assert (frame.code.str.len() > 534).all(), "SAEBench drops code of 534 characters or fewer"
    sources["HTML"] = []
    with pytest.raises(ValueError, match="libc6-dev"):
        github_code.build_real(tmp_path / "out2", seed=0, max_rows_per_language=50, min_rows_per_language=40)


def test_ravel_templates_have_one_slot():
    for templates in ravel.REAL_CITY_TEMPLATES.values():
        assert all(t.count("%s") == 1 for t in templates)


# --- built from the installed packages ------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_eval")
    return out, real.build_real_eval_datasets(out, seed=0, tokenizer=_gemma_tokenizer(), **SMALL)


SMALL = dict(bios_train_per_group=220, bios_test_per_group=110, n_cities=60, code_rows_per_language=700,
             absorption_words_per_letter=4)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.real_model
def test_rebuild_is_byte_identical_and_seed_matters(built, tmp_path):
    out, _ = built
    real.build_real_eval_datasets(tmp_path / "again", seed=0, tokenizer=_gemma_tokenizer(), **SMALL)
    assert _files(out) == _files(tmp_path / "again")
    bias_in_bios.build_real(tmp_path / "other", seed=1, train_per_group=220, test_per_group=110)
    assert _files(tmp_path / "other") != _files(out / "bias_in_bios")


@pytest.mark.real_model
def test_bias_in_bios_through_saebench_loaders(built):
    from sae_bench.evals.scr_and_tpp.dataset_creation import get_train_test_data
    from sae_bench.sae_bench_utils import dataset_utils
    from sae_bench.sae_bench_utils.dataset_info import chosen_classes_per_dataset, profession_dict

    _, paths = built
    with dataset_overrides(paths):
        for class_set in ("LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2", "LabHC/bias_in_bios_class_set3"):
            train, test = dataset_utils.get_multi_label_train_test_data(class_set, 400, 200, random_seed=42)
            for label in chosen_classes_per_dataset[class_set]:
                assert len(train[label]) == 200 and len(test[label]) == 100  # 2 genders x size // 4
        for pos, neg in SCR_PAIRS:  # SCR's spurious-correlation sets; asserts inside need > 2 x quadrant rows
            train, test = get_train_test_data("LabHC/bias_in_bios_class_set1", True, 400, 200, 42,
                                              column1_vals=(pos, neg), column2_vals=("male", "female"))
            assert all(len(v) == 200 for v in train.values()) and all(len(v) == 100 for v in test.values())
    # Train and test share neither a bio nor a first name (a probe cannot pass by memorising).
    import pandas as pd

    frames = {s: pd.read_parquet(paths[BIAS_IN_BIOS] / f"{s}.parquet") for s in ("train", "test")}
    assert not set(frames["train"].hard_text) & set(frames["test"].hard_text)
    counts = frames["train"].groupby(["profession", "gender"]).size()
    assert len(counts) == 30 and (counts == 220).all()
    assert set(frames["train"].profession) == {profession_dict[p] for p in bias_in_bios.PROFESSION_FACTS}


@pytest.mark.real_model
def test_ravel_files_load_in_saebench(built, tmp_path):
    from sae_bench.evals.ravel.instance import RAVELInstance

    _, paths = built
    instance = RAVELInstance()
    with dataset_overrides(paths):
        instance.load_files("city", str(tmp_path))  # snapshot_download is redirected
    cities = instance.entityLBL_attrTYP_attrLBL
    assert len(cities) == 60
    assert set(instance.entity_splits.values()) == {"train", "val"}
    assert set(instance.template_splits.values()) == {"train", "val"}
    assert cities["Tokyo"] == {"Country": "Japan", "Continent": "Asia", "Language": "Japanese"}
    assert cities["London"]["Country"] == "United Kingdom", "a shared name means its most populous city"
    for attribute in ("Country", "Continent", "Language"):
        assert len({v[attribute] for v in cities.values()}) >= 5, f"{attribute} needs varied values"


@pytest.mark.real_model
def test_text_corpus_is_held_out_real_text(built):
    from sae_bench.sae_bench_utils import dataset_utils

    from sae_core.datasets import debian_text

    _, paths = built
    assert paths[OPENWEBTEXT] == paths[PILE_UNCOPYRIGHTED]
    with dataset_overrides(paths):
        texts = dataset_utils.get_dataset_list_of_strs(OPENWEBTEXT, "text", 100, 20_000)
    training = {d.text for d in debian_text.documents("debian-text", "train")}
    assert texts and not set(texts) & training, "core's text never comes from the SAE-training split"


@pytest.mark.real_model
def test_sparse_probing_standins_through_saebench_loader(built):
    """europarl / github-code / ag_news stand-ins give every class SAEBench asks for its sizes
    (the loaders assert exact counts), train and test disjoint."""
    from sae_bench.sae_bench_utils import dataset_utils

    _, paths = built
    expected = {common.EUROPARL: {"en", "fr", "de", "es", "nl"}, common.GITHUB_CODE: {"C", "Python", "HTML"},
                common.AG_NEWS: {"0", "1", "2", "3"}}
    with dataset_overrides(paths):
        for name, classes in expected.items():
            train, test = dataset_utils.get_multi_label_train_test_data(name, 1000, 400, random_seed=42)
            assert set(train) == set(test) == classes, name
            assert all(len(train[c]) == 500 and len(test[c]) == 200 for c in classes), name
            assert all(not set(train[c]) & set(test[c]) for c in classes), name


@pytest.mark.real_model
def test_europarl_rows_are_translations_not_copies(built):
    import pandas as pd

    _, paths = built
    rows = pd.read_parquet(paths[common.EUROPARL] / "de-en" / "train.parquet").translation.tolist()
    assert len(rows) > 2000 and all(r["de"] != r["en"] for r in rows)
    assert all(len(r["de"]) >= common.MIN_PARAGRAPH_CHARS for r in rows)


@pytest.mark.real_model
def test_absorption_words_reach_saebench_as_real_single_tokens(built):
    from transformers import AutoTokenizer

    from sae_core.datasets import ABSORPTION_WORDS, load_words

    _, paths = built
    words = load_words(paths[ABSORPTION_WORDS])
    assert {w.strip()[0] for w in words} == set(absorption.LETTERS)
    tokenizer = _gemma_tokenizer()
    if tokenizer is None:
        pytest.skip("no Gemma tokenizer here")
    from sae_bench.evals.absorption import common

    with dataset_overrides(paths):
        kept = common.get_alpha_tokens(tokenizer)
    assert len(kept) > 26 * 4 and {w.strip()[0] for w in kept} == set(absorption.LETTERS)


def _gemma_tokenizer():
    """The real model's tokenizer, from the dequantized copy when present."""
    import os

    from transformers import AutoTokenizer

    for folder in (os.environ.get("GEMMA_HF_DIR"), "/work/cache/gemma-3-270m-hf"):
        if folder and Path(folder, "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(folder)
    return None
