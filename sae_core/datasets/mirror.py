"""Serving hub datasets from local folders -- the one redirection (dataset-override) mechanism.

SAEBench (and SAE Lens' ``ActivationsStore``, which SAEBench's core eval reads its tokens from)
fetch their data from the Hugging Face hub *by id*:

================================  ==============================================================
hub id                            who loads it, and how
================================  ==============================================================
``LabHC/bias_in_bios``            ``datasets.load_dataset`` in ``sae_bench.sae_bench_utils.dataset_utils``
                                  (sparse probing, TPP; ids ``..._class_set1/2/3`` are cut to this)
                                  and ``sae_bench.evals.scr_and_tpp.dataset_creation`` (SCR)
``adamkarvonen/ravel_prompts``    ``huggingface_hub.snapshot_download`` in
                                  ``sae_bench.evals.ravel.instance`` (json files, only when they are
                                  missing from ``<artifact_dir>/base``)
``Skylion007/openwebtext``        ``datasets.load_dataset`` in ``sae_lens.training.activations_store``
                                  (core)
``monology/pile-uncopyrighted``   ``datasets.load_dataset`` in ``dataset_utils`` (autointerp)
================================  ==============================================================

Absorption has no hub dataset: SAEBench's word list is the model's own vocabulary (every purely
alphabetic token, ``sae_bench.evals.absorption.vocab.get_alpha_tokens``). A small model only knows
the first letters of the words its corpus spelled out, so the same mapping accepts a pseudo-id,
:data:`~sae_core.datasets.standins.common.ABSORPTION_WORDS` (``"sae_core/absorption_words"``): while
it is mapped to a folder holding ``words.json`` (a JSON list of strings), ``get_alpha_tokens`` -- as looked up by
``sae_bench.evals.absorption.common`` and ``...absorption.feature_absorption`` -- returns those words
instead, keeping only the ones that are purely alphabetic and a *single token* of the tokenizer
it is called with (SAEBench's prompts assume single-token words: they index a fixed position from
the end and require equal prompt lengths). Unmapped, SAEBench's vocabulary scan runs unchanged.
A second pseudo-id, :data:`~sae_core.datasets.standins.common.SAE_PROBES_DATA`
(``"sae_core/sae_probes_data"``), names a folder in sae-probes' data layout (that package ships its
datasets in its wheel); nothing here patches for it: the ``sparse_probing_sae_probes`` family asks
:func:`local_folder` for it and points sae-probes at the folder while it runs
(:mod:`sae_core.metrics.sparse_probing_sae_probes`).

:func:`dataset_overrides` is a context manager that, while active, replaces the ``load_dataset``,
``snapshot_download`` and ``get_alpha_tokens`` names *in the modules listed in*
:data:`LOAD_DATASET_TARGETS`, :data:`SNAPSHOT_TARGETS` and :data:`ALPHA_TOKENS_TARGETS` (plus
``datasets.load_dataset`` itself) by thin wrappers. A wrapper looks the requested id up in the active mapping; a mapped id is served
from its local folder, any other id goes to the original function untouched. SAEBench's files are
never edited and nothing stays patched after the block: the originals are put back when the
outermost block exits. Nested / concurrent blocks may add ids; mapping one id to two different
folders at the same time raises ``RuntimeError``.

A site mirror: the environment variable :data:`MIRROR_ENV` (``SAE_TRANSFER_DATASET_MIRROR``) names a
folder laid out like the hub, ``<mirror>/<owner>/<name>/`` (same folder formats as below). While it is
set, every id that has a folder there is served from it -- by the wrappers above (inside any
``dataset_overrides`` block; ``run_metric`` always opens one) and by the flow's own text streams
(activations, WANDA calibration, CE: the hub source of :func:`sae_core.datasets.iter_texts`,
:mod:`sae_core.datasets.hub`, asks :func:`local_folder`).
Ids without a folder there go to the hub as usual; an explicit ``dataset_overrides`` mapping wins
over the mirror. Use it for a site with mirrored datasets and no hub access, or for the offline
rehearsals of the hub presets (``tests/helpers/fakehub.py``).

Local folder formats (``load_local_dataset``):

* a ``datasets`` folder written by ``Dataset(Dict).save_to_disk`` (has ``dataset_dict.json`` or
  ``state.json``), or
* a folder of ``<split>.parquet`` / ``<split>.jsonl`` files (one per split), as written by
  :func:`sae_core.datasets.standins.toy.build_eval_datasets` (read into memory, nothing is written to
  the HF datasets cache);
* a hub *config* name (``load_dataset(id, name)``) is served from ``<folder>/<name>/`` when that
  sub-folder exists;
* for ``snapshot_download`` the folder simply holds the repository's files; those matching
  ``allow_patterns`` are copied into ``local_dir``.

A stand-in folder may hold fewer classes than SAEBench's class list for its id
(``sae_bench.sae_bench_utils.dataset_info.chosen_classes_per_dataset``), e.g. a code stand-in without
Java: it then declares the classes it holds in
:data:`~sae_core.datasets.standins.common.CLASSES_FILE` (a JSON list, a subset of
SAEBench's), and while mapped that id's entry in ``chosen_classes_per_dataset`` is narrowed to them
(restored on exit). Labels keep SAEBench's meaning; nothing is relabelled.

``split=`` picks one split, ``streaming=True`` returns an ``IterableDataset`` (dict), other keyword
arguments (``trust_remote_code``, ``languages``, ...) are ignored for local folders.

Example::

    paths = build_eval_datasets(out_dir, seed=0)          # {hub id: local folder}
    with dataset_overrides(paths):
        result = run_metric("sparse_probing", ...)
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import os
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sae_core.datasets.standins.common import ABSORPTION_WORDS, CLASSES_FILE

#: (module, attribute) pairs whose ``load_dataset`` is redirected while overrides are active.
LOAD_DATASET_TARGETS: tuple[tuple[str, str], ...] = (
    ("datasets", "load_dataset"),
    ("sae_bench.sae_bench_utils.dataset_utils", "load_dataset"),
    ("sae_bench.evals.scr_and_tpp.dataset_creation", "load_dataset"),
    ("sae_lens.training.activations_store", "load_dataset"),
)
#: (module, attribute) pairs whose ``snapshot_download`` is redirected while overrides are active.
SNAPSHOT_TARGETS: tuple[tuple[str, str], ...] = (("sae_bench.evals.ravel.instance", "snapshot_download"),)
#: (module, attribute) pairs whose ``get_alpha_tokens`` honours :data:`ABSORPTION_WORDS`.
ALPHA_TOKENS_TARGETS: tuple[tuple[str, str], ...] = (
    ("sae_bench.evals.absorption.common", "get_alpha_tokens"),
    ("sae_bench.evals.absorption.feature_absorption", "get_alpha_tokens"),
)

#: environment variable naming a folder of mirrored hub datasets, ``<mirror>/<owner>/<name>/``.
MIRROR_ENV = "SAE_TRANSFER_DATASET_MIRROR"

_LOCK = threading.RLock()
_ACTIVE: dict[str, list[Path]] = {}
_ORIGINALS: dict[tuple[str, str], Any] = {}
_DEPTH = 0


def active_overrides() -> dict[str, Path]:
    """The id -> folder mapping in force right now (empty outside any ``dataset_overrides`` block)."""
    with _LOCK:
        return {dataset_id: stack[-1] for dataset_id, stack in _ACTIVE.items() if stack}


def mirrored_folder(dataset_id: Any) -> Path | None:
    """``<$SAE_TRANSFER_DATASET_MIRROR>/<dataset_id>`` when the variable is set and that folder exists."""
    root = os.environ.get(MIRROR_ENV, "").strip()
    if not root or not isinstance(dataset_id, str) or not dataset_id:
        return None
    parts = dataset_id.split("/")
    if dataset_id.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return None  # not a hub id: never let one point outside the mirror
    folder = Path(root).expanduser() / dataset_id
    return folder if folder.is_dir() else None


def local_folder(dataset_id: Any) -> Path | None:
    """Where ``dataset_id`` is served from locally: an active override, else the site mirror, else None."""
    return _resolve(dataset_id)


def _resolve(dataset_id: Any) -> Path | None:
    if not isinstance(dataset_id, str):
        return None
    with _LOCK:
        stack = _ACTIVE.get(dataset_id)
        if stack:
            return stack[-1]
    return mirrored_folder(dataset_id)


@contextlib.contextmanager
def dataset_overrides(overrides: Mapping[str, str | Path] | None) -> Iterator[dict[str, Path]]:
    """Serve the given hub ids from local folders inside the block (see module docstring)."""
    global _DEPTH
    mapping = {str(k): Path(v).resolve() for k, v in (overrides or {}).items()}
    for dataset_id, folder in mapping.items():
        if not folder.exists():
            raise FileNotFoundError(f"offline stand-in for {dataset_id!r} not found: {folder}")
    with _LOCK:
        for dataset_id, folder in mapping.items():
            current = _ACTIVE.get(dataset_id)
            if current and current[-1] != folder:
                raise RuntimeError(
                    f"{dataset_id!r} is already redirected to {current[-1]}; refusing to redirect it to {folder} at the same time"
                )
        narrowed = _declared_classes(mapping)
        for dataset_id, folder in mapping.items():
            _ACTIVE.setdefault(dataset_id, []).append(folder)
        if _DEPTH == 0:
            _install()
        _DEPTH += 1
        restore_classes = _narrow_classes(narrowed)
    try:
        yield mapping
    finally:
        with _LOCK:
            restore_classes()
            for dataset_id in mapping:
                _ACTIVE[dataset_id].pop()
                if not _ACTIVE[dataset_id]:
                    del _ACTIVE[dataset_id]
            _DEPTH -= 1
            if _DEPTH == 0:
                _uninstall()


def _declared_classes(mapping: dict[str, Path]) -> dict[str, list[str]]:
    """id -> the classes its folder declares (checked against SAEBench's list before anything is patched)."""
    import json

    declared = {}
    for dataset_id, folder in mapping.items():
        path = folder / CLASSES_FILE
        if not path.is_file():
            continue
        from sae_bench.sae_bench_utils.dataset_info import chosen_classes_per_dataset

        classes = json.loads(path.read_text())
        known = chosen_classes_per_dataset.get(dataset_id)
        if known is None or not isinstance(classes, list) or not classes or not set(classes) <= set(known):
            raise ValueError(f"{path} must list a non-empty subset of SAEBench's classes for {dataset_id!r} "
                             f"({known}), got {classes!r}")
        declared[dataset_id] = [c for c in known if c in classes]  # SAEBench's order
    return declared


def _narrow_classes(declared: dict[str, list[str]]):
    if not declared:
        return lambda: None
    from sae_bench.sae_bench_utils import dataset_info

    saved = {dataset_id: dataset_info.chosen_classes_per_dataset[dataset_id] for dataset_id in declared}
    dataset_info.chosen_classes_per_dataset.update(declared)

    def restore() -> None:
        dataset_info.chosen_classes_per_dataset.update(saved)

    return restore


def _install() -> None:
    for target in LOAD_DATASET_TARGETS:
        _patch(target, _make_load_dataset)
    for target in SNAPSHOT_TARGETS:
        _patch(target, _make_snapshot_download)
    for target in ALPHA_TOKENS_TARGETS:
        _patch(target, _make_get_alpha_tokens)


def _patch(target: tuple[str, str], factory) -> None:
    module_name, attribute = target
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # optional eval modules
        return
    original = getattr(module, attribute)
    _ORIGINALS[target] = original
    setattr(module, attribute, factory(original))


def _uninstall() -> None:
    for (module_name, attribute), original in list(_ORIGINALS.items()):
        setattr(importlib.import_module(module_name), attribute, original)
    _ORIGINALS.clear()


def _make_load_dataset(original):
    def load_dataset(path, name=None, *args, split=None, streaming=False, **kwargs):
        local = _resolve(path)
        if local is None:
            return original(path, name, *args, split=split, streaming=streaming, **kwargs)
        return load_local_dataset(local, name=name, split=split, streaming=streaming)

    load_dataset.__wrapped__ = original  # type: ignore[attr-defined]
    load_dataset.__doc__ = f"sae_core.datasets.mirror redirect around {original!r}"
    return load_dataset


def _make_snapshot_download(original):
    def snapshot_download(repo_id=None, *args, local_dir=None, allow_patterns=None, ignore_patterns=None, **kwargs):
        local = _resolve(repo_id)
        if local is None:
            return original(repo_id, *args, local_dir=local_dir, allow_patterns=allow_patterns,
                            ignore_patterns=ignore_patterns, **kwargs)
        if local_dir is None:
            return str(local)
        copy_matching_files(local, Path(local_dir), allow_patterns, ignore_patterns)
        return str(local_dir)

    snapshot_download.__wrapped__ = original  # type: ignore[attr-defined]
    return snapshot_download


def _make_get_alpha_tokens(original):
    def get_alpha_tokens(tokenizer, allow_leading_space: bool = True, replace_special_chars: bool = True):
        local = _resolve(ABSORPTION_WORDS)
        if local is None:
            return original(tokenizer, allow_leading_space=allow_leading_space, replace_special_chars=replace_special_chars)
        return single_token_words(tokenizer, load_words(local), allow_leading_space=allow_leading_space)

    get_alpha_tokens.__wrapped__ = original  # type: ignore[attr-defined]
    return get_alpha_tokens


def load_words(folder: str | Path) -> list[str]:
    import json

    words = json.loads((Path(folder) / "words.json").read_text())
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"{folder}/words.json must be a JSON list of strings")
    return words


def single_token_words(tokenizer, words: list[str], allow_leading_space: bool = True) -> list[str]:
    """``words`` that SAEBench's alphabetic filter accepts and that encode to exactly one token."""
    kept: list[str] = []
    seen: set[str] = set()
    for word in words:
        body = word[1:] if allow_leading_space and word.startswith(" ") else word
        if not body or not body.isascii() or not body.isalpha() or word in seen:
            continue
        if len(tokenizer.encode(word, add_special_tokens=False)) != 1:
            continue
        seen.add(word)
        kept.append(word)
    return kept


def _patterns(patterns: str | list[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def copy_matching_files(source: Path, destination: Path, allow_patterns=None, ignore_patterns=None) -> list[Path]:
    """Copy files below ``source`` whose relative path matches ``allow_patterns`` (hub glob semantics)."""
    allow, ignore = _patterns(allow_patterns), _patterns(ignore_patterns)
    copied = []
    destination.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(source).as_posix()
        if allow is not None and not any(fnmatch.fnmatch(relative, p) for p in allow):
            continue
        if ignore is not None and any(fnmatch.fnmatch(relative, p) for p in ignore):
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(target)
    if allow is not None and not copied:
        raise FileNotFoundError(f"no file in offline stand-in {source} matches {allow}")
    return copied


_SPLIT_SUFFIXES = (".parquet", ".jsonl")


def _read_split_files(folder: Path):
    """``<split>.parquet`` / ``<split>.jsonl`` files -> in-memory ``DatasetDict`` (no HF cache writes)."""
    import datasets
    import pandas as pd
    import pyarrow.parquet as pq

    splits = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix not in _SPLIT_SUFFIXES:
            continue
        if path.suffix == ".parquet":
            splits[path.stem] = datasets.Dataset(pq.read_table(path))
        else:
            splits[path.stem] = datasets.Dataset.from_pandas(pd.read_json(path, lines=True), preserve_index=False)
    if not splits:
        raise FileNotFoundError(f"{folder} holds neither a save_to_disk dataset nor <split>.parquet/.jsonl files")
    return datasets.DatasetDict(splits)


def load_local_dataset(folder: str | Path, name: str | None = None, split: str | None = None, streaming: bool = False):
    """Open a local stand-in folder the way ``load_dataset(hub_id, name, split=, streaming=)`` would."""
    import datasets

    folder = Path(folder)
    if name and (folder / name).is_dir():
        folder = folder / name
    if (folder / "dataset_dict.json").exists() or (folder / "state.json").exists():
        dataset = datasets.load_from_disk(str(folder))
    else:
        dataset = _read_split_files(folder)
    if split is not None:
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise KeyError(f"split {split!r} not in offline stand-in {folder} (has {list(dataset)})")
            dataset = dataset[split]
    if streaming:
        if isinstance(dataset, datasets.DatasetDict):
            dataset = datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in dataset.items()})
        else:
            dataset = dataset.to_iterable_dataset()
    return dataset
