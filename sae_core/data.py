"""Text sources and token windows: the same code path for hub datasets and the toy corpus.

A dataset is named by a string:
- ``toy-corpus:<seed>`` — the toy world's grammar, generated on the fly (offline);
- ``debian-text`` / ``debian-text:handbook`` / ``debian-text:bible`` — real English text from installed
  Debian packages with disjoint splits ``train`` / ``validation`` / ``calibration`` / ``perplexity``
  (:mod:`sae_core.real_text`);
- anything else — a Hugging Face dataset id, streamed (``datasets.load_dataset(..., streaming=True)``),
  or served from a local folder when one is mapped (the one mechanism,
  ``sae_core.metrics.offline_datasets``: an active override or the ``SAE_TRANSFER_DATASET_MIRROR`` site mirror).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Iterable, Iterator

from sae_core import real_text

if TYPE_CHECKING:  # torch loads on first use: config validation and cached runs never need it
    import torch

TOY_PREFIX = "toy-corpus:"
# Documents generated per chunk when streaming the (unbounded) toy corpus.
_TOY_CHUNK = 2000


def is_toy_dataset(name: str) -> bool:
    return name.startswith(TOY_PREFIX)


def toy_dataset_name(seed: int) -> str:
    return f"{TOY_PREFIX}{seed}"


def check_dataset_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset must be a hub id or '{TOY_PREFIX}<seed>', got {name!r}")
    if is_toy_dataset(name):
        try:
            int(name[len(TOY_PREFIX) :])
        except ValueError:
            raise ValueError(f"toy dataset {name!r} must end in an integer seed, e.g. '{TOY_PREFIX}1'") from None
    elif real_text.is_real_text_dataset(name):
        real_text.check_real_text_name(name)  # unknown variant / missing Debian package, before heavy work


def iter_texts(name: str, split: str = "train", text_column: str = "text") -> Iterator[str]:
    """Texts of a dataset, streamed; the toy corpus never ends (chunks with derived seeds)."""
    check_dataset_name(name)
    if is_toy_dataset(name):
        from sae_core.toy.corpus import generate_corpus

        seed = int(name[len(TOY_PREFIX) :])
        for chunk in itertools.count():
            for doc in generate_corpus(_TOY_CHUNK, seed=seed * 100_003 + chunk):
                yield doc.text
        return
    if real_text.is_real_text_dataset(name):
        yield from real_text.iter_real_texts(name, split)
        return
    from sae_core.metrics.offline_datasets import load_local_dataset, local_folder

    folder = local_folder(name)
    if folder is not None:
        rows = load_local_dataset(folder, split=split, streaming=True)
    else:
        from datasets import load_dataset

        rows = load_dataset(name, split=split, streaming=True)
    for row in rows:
        text = row[text_column]
        if text:
            yield text


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
    if not real_text.is_real_text_dataset(dataset):
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
    if real_text.is_real_text_dataset(dataset):
        return (calibration_windows(tokenizer, dataset, n_calibration, seq_len, seed, split="calibration"),
                token_batch(tokenizer, dataset, n_held_out, seq_len, split="perplexity"))
    return (calibration_windows(tokenizer, dataset, n_calibration, seq_len, seed, split="train"),
            token_batch(tokenizer, dataset, n_held_out, seq_len, skip_sequences=4 * n_calibration))
