"""Flow tests keep their local caches in a temporary folder: the safe SAEBench LLM-side caches
(``tasks.metrics.sae_bench_llm_cache``) outlive a run by design, and each test's storage root is new, so
under the developer's ``~/.cache/sae-transfer`` they would pile up, one folder per test storage."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="module")
def _module_local_caches(tmp_path_factory):
    """Per test module (restored after it, so tests elsewhere, e.g. the persistent real-model store, see
    the environment they expect)."""
    previous = os.environ.get("SAE_TRANSFER_CACHE")
    if previous is None:
        os.environ["SAE_TRANSFER_CACHE"] = str(tmp_path_factory.mktemp("sae_transfer_cache"))
    yield
    if previous is None:
        os.environ.pop("SAE_TRANSFER_CACHE", None)
