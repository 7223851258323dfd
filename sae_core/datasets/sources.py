"""Text sources behind one interface, and the token windows cut from them.

A dataset is named by a string; :data:`SOURCE_MODULES` lists the sources, asked in order, each a
module holding one :class:`TextSource` as ``SOURCE``:

- ``toy-corpus:<seed>`` -- the toy world's grammar, generated on the fly (offline;
  :mod:`sae_core.datasets.toy_text`);
- ``debian-text`` / ``debian-text:handbook`` / ``debian-text:bible`` -- real English text from installed
  Debian packages with disjoint splits ``train`` / ``validation`` / ``calibration`` / ``perplexity``
  (:mod:`sae_core.datasets.debian_text`);
- anything else -- a Hugging Face dataset id, streamed (``datasets.load_dataset(..., streaming=True)``),
  or served from a local folder when one is mapped (:mod:`sae_core.datasets.hub`, through the one
  mechanism ``sae_core.datasets.mirror``: an active override or the ``SAE_TRANSFER_DATASET_MIRROR`` site mirror).

A new source is one module with a ``SOURCE`` and one entry in :data:`SOURCE_MODULES` (before the hub,
which takes every name).
"""

from __future__ import annotations

import importlib
import itertools
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Iterator

if TYPE_CHECKING:  # torch loads on first use: config validation and cached runs never need it
    import torch

TOY_PREFIX = "toy-corpus:"

#: Modules of the text sources, asked in order; the first whose ``SOURCE.matches(name)`` serves it.
SOURCE_MODULES: tuple[str, ...] = (
    "sae_core.datasets.toy_text",
    "sae_core.datasets.debian_text",
    "sae_core.datasets.hub",  # last: every other name is a hub id
)


class TextSource:
    """One kind of text dataset.

    ``finite``: a split is read whole (a finite stream) rather than an unbounded / hub stream.
    ``pruning_splits``: ``(calibration split, held-out perplexity split)`` when the source has its
    own disjoint splits for LLM compression; None draws both from ``train`` (see :func:`pruning_windows`).
    """

    finite: bool = False
    pruning_splits: tuple[str, str] | None = None

    def matches(self, name: str) -> bool:
        raise NotImplementedError

    def check(self, name: str) -> None:
        """ValueError for a name this source cannot serve (cheap: called at config-validation time)."""

    def iter_texts(self, name: str, split: str = "train", text_column: str = "text") -> Iterator[str]:
        raise NotImplementedError


@lru_cache(maxsize=None)
def _sources() -> tuple[TextSource, ...]:
    return tuple(importlib.import_module(module).SOURCE for module in SOURCE_MODULES)


def source_of(name: str) -> TextSource:
    """The source serving dataset ``name``."""
    for source in _sources():
        if source.matches(name):
            return source
    raise ValueError(f"no text source serves dataset {name!r}")  # unreachable: the hub takes every name


def is_toy_dataset(name: str) -> bool:
    return name.startswith(TOY_PREFIX)


def toy_dataset_name(seed: int) -> str:
    return f"{TOY_PREFIX}{seed}"


def check_dataset_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset must be a hub id or '{TOY_PREFIX}<seed>', got {name!r}")
    source_of(name).check(name)


def iter_texts(name: str, split: str = "train", text_column: str = "text") -> Iterator[str]:
    """Texts of a dataset, streamed; the toy corpus never ends (chunks with derived seeds)."""
    check_dataset_name(name)
    yield from source_of(name).iter_texts(name, split, text_column)


def token_windows(tokenizer, texts: Iterable[str], seq_len: int, prepend_bos: bool = True) -> Iterator[torch.Tensor]:
    """Concatenate documents (separated by EOS) and cut fixed windows, each starting with BOS."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    import torch

    body = seq_len - 1 if prepend_bos else seq_len
    buffer: list[int] = []
    for text in texts:
        buffer.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        buffer.append(separator)
        while len(buffer) >= body:
            window, buffer = buffer[:body], buffer[body:]
            if prepend_bos:
                window = [tokenizer.bos_token_id] + window
            yield torch.tensor(window, dtype=torch.long)


def token_batch(tokenizer, dataset: str, n_sequences: int, seq_len: int, skip_sequences: int = 0, split: str = "train") -> torch.Tensor:
    """``n_sequences`` windows as one [n, seq_len] tensor (after skipping ``skip_sequences``)."""
    import torch

    if n_sequences <= 0:
        raise ValueError(f"n_sequences must be positive, got {n_sequences}")
    windows = token_windows(tokenizer, iter_texts(dataset, split=split), seq_len)
    chosen = list(itertools.islice(windows, skip_sequences, skip_sequences + n_sequences))
    if len(chosen) < n_sequences:
        raise ValueError(f"dataset {dataset!r} yields only {len(chosen)} windows of {seq_len} tokens, {n_sequences} asked")
    return torch.stack(chosen)


def calibration_windows(tokenizer, dataset: str, n_sequences: int, seq_len: int, seed: int,
                        split: str = "calibration") -> torch.Tensor:
    """``n_sequences`` windows drawn with ``seed`` (without replacement, in drawn order) from all
    windows of ``split``. A finite split (real text) is read whole; a stream (toy corpus, hub)
    draws from its first ``4 * n_sequences`` windows."""
    import random

    import torch

    if n_sequences <= 0:
        raise ValueError(f"n_sequences must be positive, got {n_sequences}")
    windows = token_windows(tokenizer, iter_texts(dataset, split=split), seq_len)
    if not source_of(dataset).finite:
        windows = itertools.islice(windows, 4 * n_sequences)
    pool = list(windows)
    if len(pool) < n_sequences:
        raise ValueError(f"dataset {dataset!r} split {split!r} yields only {len(pool)} windows of {seq_len} tokens, "
                         f"{n_sequences} asked")
    chosen = random.Random(seed).sample(range(len(pool)), n_sequences)
    return torch.stack([pool[i] for i in chosen])


def pruning_windows(tokenizer, dataset: str, n_calibration: int, n_held_out: int, seq_len: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration windows drawn with ``seed``, held-out windows for perplexity) for LLM pruning.

    Real text: its ``calibration`` and ``perplexity`` splits. A stream without such splits (toy
    corpus, hub): calibration drawn from the first ``4 * n_calibration`` windows, held-out windows
    right after them. Either way the held-out text does not depend on the seed and never overlaps
    the calibration pool.
    """
    splits = source_of(dataset).pruning_splits
    if splits is not None:
        calibration, perplexity = splits
        return (calibration_windows(tokenizer, dataset, n_calibration, seq_len, seed, split=calibration),
                token_batch(tokenizer, dataset, n_held_out, seq_len, split=perplexity))
    return (calibration_windows(tokenizer, dataset, n_calibration, seq_len, seed, split="train"),
            token_batch(tokenizer, dataset, n_held_out, seq_len, skip_sequences=4 * n_calibration))
