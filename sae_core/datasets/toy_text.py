"""The toy world's corpus as a text source: ``toy-corpus:<seed>``, generated on the fly (offline).

The stream never ends: chunks of :data:`TOY_CHUNK` documents of :func:`sae_core.toy.corpus.generate_corpus`
with derived seeds (``seed * 100_003 + chunk``). There are no splits: every split reads the same stream.
"""

from __future__ import annotations

import itertools
from typing import Iterator

from sae_core.datasets.sources import TOY_PREFIX, TextSource, is_toy_dataset

# Documents generated per chunk when streaming the (unbounded) toy corpus.
TOY_CHUNK = 2000


class ToyCorpus(TextSource):
    def matches(self, name: str) -> bool:
        return isinstance(name, str) and is_toy_dataset(name)

    def check(self, name: str) -> None:
        try:
            int(name[len(TOY_PREFIX) :])
        except ValueError:
            raise ValueError(f"toy dataset {name!r} must end in an integer seed, e.g. '{TOY_PREFIX}1'") from None

    def iter_texts(self, name: str, split: str = "train", text_column: str = "text") -> Iterator[str]:
        from sae_core.toy.corpus import generate_corpus

        seed = int(name[len(TOY_PREFIX) :])
        for chunk in itertools.count():
            for doc in generate_corpus(TOY_CHUNK, seed=seed * 100_003 + chunk):
                yield doc.text


SOURCE = ToyCorpus()
