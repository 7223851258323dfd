"""Hugging Face hub datasets as a text source: any name no other source takes.

Streamed with ``datasets.load_dataset(name, split=split, streaming=True)``, or -- when the id is mapped
to a local folder (an active :func:`~sae_core.datasets.mirror.dataset_overrides` block or the
``SAE_TRANSFER_DATASET_MIRROR`` site mirror) -- read from that folder
(:func:`sae_core.datasets.mirror.load_local_dataset`). Empty texts are skipped.
"""

from __future__ import annotations

from typing import Iterator

from sae_core.datasets.sources import TextSource


class HubDataset(TextSource):
    def matches(self, name: str) -> bool:
        return True

    def iter_texts(self, name: str, split: str = "train", text_column: str = "text") -> Iterator[str]:
        from sae_core.datasets.mirror import load_local_dataset, local_folder

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


SOURCE = HubDataset()
