"""Offline stand-ins for SAEBench's evaluation datasets, generated from the toy world.

Each stand-in has the same columns / files and the same label meaning as the hub dataset it
replaces, so SAEBench's own loaders and metric code run on it unchanged (the redirection is
:func:`sae_core.datasets.mirror.dataset_overrides`). This module is the toy entry point; each
dataset's builder is ``build_toy`` of its family module (:mod:`.bias_in_bios`, :mod:`.ravel`,
:mod:`.text_corpus`, :mod:`.absorption`), beside the real-language one:

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
    tokenizer are used (:func:`sae_core.datasets.mirror.single_token_words`).

``sae_core/sae_probes_data`` (pseudo-id; sae-probes ships its data in its wheel) -> ``sae_probes/``
    sae-probes' own layout (``probing_datasets_MASTER.csv.zst`` + ``cleaned_data/<n>_<tag>.csv.zst``,
    columns ``prompt`` / ``target``) with four balanced toy tasks, ``sae_probes_rows_per_dataset``
    distinct prompts each (:func:`sae_core.datasets.standins.sae_probes_data.build_toy`).

Output is a pure function of the arguments: parquet, json and csv.zst files are byte-identical across
builds with the same seed and sizes.
"""

from __future__ import annotations

from pathlib import Path

from sae_core.datasets.standins import absorption, bias_in_bios, ravel, sae_probes_data, text_corpus
from sae_core.datasets.standins.common import (
    ABSORPTION_WORDS,
    BIAS_IN_BIOS,
    OPENWEBTEXT,
    PILE_UNCOPYRIGHTED,
    RAVEL_PROMPTS,
    SAE_PROBES_DATA,
)


def build_eval_datasets(
    out_dir: str | Path,
    seed: int = 0,
    *,
    bios_train_per_group: int = 120,
    bios_test_per_group: int = 60,
    n_text_documents: int = 2000,
    sae_probes_rows_per_dataset: int = 300,
) -> dict[str, Path]:
    """Write every stand-in under ``out_dir``; returns ``{hub id: local folder}`` for ``dataset_overrides``."""
    out_dir = Path(out_dir)
    bios = bias_in_bios.build_toy(out_dir / "bias_in_bios", seed, bios_train_per_group, bios_test_per_group)
    prompts = ravel.build_toy(out_dir / "ravel_prompts", seed)
    text = text_corpus.build_toy(out_dir / "text_corpus", seed, n_text_documents)
    words = absorption.build_toy(out_dir / "absorption_words")
    probes = sae_probes_data.build_toy(out_dir / "sae_probes", seed, sae_probes_rows_per_dataset)
    return {BIAS_IN_BIOS: bios, RAVEL_PROMPTS: prompts, OPENWEBTEXT: text, PILE_UNCOPYRIGHTED: text, ABSORPTION_WORDS: words,
            SAE_PROBES_DATA: probes}
