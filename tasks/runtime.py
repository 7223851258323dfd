"""Per-run Prefect settings derived from the storage URL: where task results (manifests) live.

Task results are persisted next to the artifacts (``<storage>/prefect-results``), so a re-run on
another machine pointed at the same S3 prefix finds both Prefect's cache records and the
artifacts. Credentials are never saved in the block: s3fs reads them from the environment.
"""

from __future__ import annotations

from sae_core.hashing import config_hash
from sae_core.storage import Storage, _s3_options_from_env

RESULTS_PREFIX = "prefect-results"


def result_storage_reference(storage_url: str) -> str:
    """Save (idempotently) a filesystem block for this storage root and return its reference."""
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    storage = Storage(storage_url)
    name = f"sae-transfer-results-{config_hash(storage.url, length=10)}"
    if storage.scheme == "file":
        block = LocalFileSystem(basepath=str(storage.local_path(RESULTS_PREFIX)))
        slug = "local-file-system"
    else:
        block = RemoteFileSystem(basepath=storage.uri(RESULTS_PREFIX), settings=_s3_options_from_env())
        slug = "remote-file-system"
    block.save(name, overwrite=True)
    return f"{slug}/{name}"
