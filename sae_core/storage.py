"""Object storage for every artifact: one root URL (``file://...`` or ``s3://bucket/prefix``).

Rules this module enforces:
- Writes are all-or-nothing. A single object is written to a temporary name and renamed
  (local) or sent as one PUT / completed multipart upload (S3, where an object only becomes
  visible when complete). A multi-file artifact (an HF model folder, an SAE folder, activation
  shards) is committed by writing its ``manifest.json`` last: readers only trust a prefix that
  has a manifest.
- Checkpoints are safetensors, tables Parquet, manifests JSON. Nothing is ever unpickled.
- Credentials are never part of ``repr`` or error messages.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

import fsspec

MANIFEST = "manifest.json"
DEFAULT_STORAGE_URL = "file://./artifacts"


class StorageError(RuntimeError):
    """Storage could not be reached or an object could not be read or written."""


class StorageObjectMissing(StorageError, FileNotFoundError):
    pass


class CorruptArtifact(StorageError):
    """An object exists but is not what it claims to be (truncated, wrong format)."""


# A brief S3 outage (a restart, a fail-over) is absorbed here, by retrying connection errors after
# these pauses; a longer one surfaces as a StorageError, which Prefect's task retries handle.
S3_OUTAGE_PAUSES_S = (0.5, 1.0, 2.0, 4.0)


def _is_connection_error(err: BaseException) -> bool:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return isinstance(err, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError))


def check_safetensors_folder(folder: str | os.PathLike[str], shown_as: str | None = None) -> None:
    """Every ``*.safetensors`` file in a local folder has a readable header and the length it declares.

    Cheap (headers only), so loaders run it first: a damaged checkpoint is then reported by its
    file name instead of surfacing as a library error deep inside loading. ``shown_as``: the
    location to name in the error instead of ``folder`` (e.g. the storage URI it came from).
    """
    from safetensors import safe_open

    folder = Path(folder)
    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises several kinds
            where = f"{shown_as.rstrip('/')}/{path.relative_to(folder).as_posix()}" if shown_as else str(path)
            raise CorruptArtifact(f"{where} is not a valid safetensors file: {err}") from None


def _s3_options_from_env() -> dict[str, Any]:
    """s3fs settings from the usual AWS variables plus a custom endpoint (MinIO, moto...)."""
    endpoint = os.environ.get("SAE_TRANSFER_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL"
    )
    options: dict[str, Any] = {}
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def normalise_url(url: str) -> str:
    """Accept ``s3://b/p``, ``file:///abs``, ``file://./rel`` or a bare path; return a canonical URL."""
    if not url or not isinstance(url, str):
        raise ValueError(f"storage URL must be a non-empty string, got {url!r}")
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = url[len("file://") :] if url.startswith("file://") else url
        return "file://" + str(Path(path).expanduser().resolve())
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket")
        return f"s3://{parsed.netloc}{parsed.path.rstrip('/')}"
    raise ValueError(f"unsupported storage URL scheme {parsed.scheme!r} in {url!r}; use file:// or s3://")


class Storage:
    """Artifacts under one root URL. Keys are '/'-separated paths relative to the root."""

    def __init__(self, url: str = DEFAULT_STORAGE_URL, storage_options: dict[str, Any] | None = None):
        self.url = normalise_url(url)
        self.scheme = urlparse(self.url).scheme
        options = dict(storage_options or {})
        if self.scheme == "s3":
            options = {**_s3_options_from_env(), **options}
            # Fail fast instead of retrying a dead endpoint for minutes; Prefect retries tasks.
            options.setdefault("config_kwargs", {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}})
            self.root = self.url[len("s3://") :]
        else:
            self.root = self.url[len("file://") :]
        self._options = options
        self.fs = fsspec.filesystem(self.scheme, **options)
        if self.scheme == "s3":
            # s3fs caches listings per instance; artifacts appear from other processes.
            self.fs.invalidate_cache()

    def __repr__(self) -> str:  # never show credentials
        return f"Storage({self.url!r})"

    def __reduce__(self):
        # Picklable for process-based runners without leaking anything beyond URL and options.
        return (Storage, (self.url, self._options))

    # ---------------------------------------------------------------- paths
    def path(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.root}/{key}" if key else self.root

    def uri(self, key: str) -> str:
        return f"{self.scheme}://{self.path(key)}"

    def local_path(self, key: str) -> Path | None:
        """The file-system path of a key, for ``file://`` storage only."""
        return Path(self.path(key)) if self.scheme == "file" else None

    def _call(self, operation):
        """``operation()``; on S3, retried through a brief outage (see S3_OUTAGE_PAUSES_S)."""
        if self.scheme != "s3":
            return operation()
        for pause in S3_OUTAGE_PAUSES_S:
            try:
                return operation()
            except Exception as err:  # noqa: BLE001 - only connection errors are retried
                if not _is_connection_error(err):
                    raise
                time.sleep(pause)
        return operation()

    # ---------------------------------------------------------------- checks
    def check_reachable(self) -> None:
        """Raise StorageError with a clear message if the root cannot be written and read."""
        probe = f"_probe/{uuid.uuid4().hex}"
        try:
            self.put_bytes(probe, b"ok")
            if self.get_bytes(probe) != b"ok":
                raise StorageError(f"storage {self.url} returned different bytes than written")
            self.fs.rm(self.path(probe))
            if self.scheme == "file":  # leave no trace: remove the now-empty probe folder
                try:
                    os.rmdir(self.path("_probe"))
                except OSError:
                    pass
        except Exception as err:  # noqa: BLE001 - every backend failure becomes one clear error
            raise StorageError(f"storage {self.url} is not reachable or not writable: {err}") from None

    # ---------------------------------------------------------------- single objects
    def exists(self, key: str) -> bool:
        try:
            if self.scheme == "s3":
                self.fs.invalidate_cache(self.path(key))
            return self._call(lambda: self.fs.exists(self.path(key)))
        except Exception as err:  # noqa: BLE001 - e.g. botocore's EndpointConnectionError during an outage
            raise StorageError(f"could not check {self.uri(key)}: {type(err).__name__}: {err}") from None

    def put_bytes(self, key: str, data: bytes) -> str:
        target = self.path(key)
        try:
            if self.scheme == "file":
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                tmp = f"{target}.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            else:
                # One PUT (or a completed multipart upload): S3 never exposes a partial object.
                self._call(lambda: self.fs.pipe_file(target, data))
                self.fs.invalidate_cache(target)
        except Exception as err:  # noqa: BLE001
            raise StorageError(f"could not write {self.uri(key)}: {type(err).__name__}: {err}") from None
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        target = self.path(key)
        try:
            return self._call(lambda: self.fs.cat_file(target))
        except FileNotFoundError:
            raise StorageObjectMissing(f"no object at {self.uri(key)}") from None
        except Exception as err:  # noqa: BLE001
            raise StorageError(f"could not read {self.uri(key)}: {type(err).__name__}: {err}") from None

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def get_json(self, key: str) -> Any:
        raw = self.get_bytes(key)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as err:
            raise CorruptArtifact(f"{self.uri(key)} is not valid JSON: {err}") from None

    def put_tensors(self, key: str, tensors: dict, metadata: dict[str, str] | None = None) -> str:
        from safetensors.torch import save

        contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        return self.put_bytes(key, save(contiguous, metadata=metadata))

    def get_tensors(self, key: str) -> dict:
        from safetensors.torch import load

        raw = self.get_bytes(key)
        try:
            return load(raw)
        except Exception as err:  # noqa: BLE001 - safetensors raises several kinds
            raise CorruptArtifact(f"{self.uri(key)} is not a valid safetensors file: {err}") from None

    def put_parquet(self, key: str, frame) -> str:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return self.put_bytes(key, buffer.getvalue())

    def get_parquet(self, key: str):
        import pandas as pd

        raw = self.get_bytes(key)
        try:
            return pd.read_parquet(io.BytesIO(raw))
        except Exception as err:  # noqa: BLE001
            raise CorruptArtifact(f"{self.uri(key)} is not a valid Parquet file: {err}") from None

    def read_parquet_prefix(self, prefix: str):
        """Every Parquet object under ``prefix`` as one DataFrame (empty if there are none)."""
        import pandas as pd

        frames = [self.get_parquet(key) for key in self.list(prefix) if key.endswith(".parquet")]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # ---------------------------------------------------------------- listing
    def list(self, prefix: str = "") -> list[str]:
        """Keys (relative to the root) of every object under ``prefix``, recursively, sorted."""
        base = self.path(prefix)
        try:
            if self.scheme == "s3":
                self.fs.invalidate_cache(base)
            if not self._call(lambda: self.fs.exists(base)):
                return []
            found = self._call(lambda: self.fs.find(base))
        except Exception as err:  # noqa: BLE001
            raise StorageError(f"could not list {self.uri(prefix)}: {type(err).__name__}: {err}") from None
        root = self.root.rstrip("/") + "/"
        keys = [p[len(root) :] if p.startswith(root) else p for p in found]
        return sorted(k for k in keys if ".tmp-" not in k)

    def delete_prefix(self, prefix: str) -> None:
        base = self.path(prefix)
        try:
            if self.fs.exists(base):
                self.fs.rm(base, recursive=True)
        except Exception as err:  # noqa: BLE001
            raise StorageError(f"could not delete {self.uri(prefix)}: {type(err).__name__}: {err}") from None

    # ---------------------------------------------------------------- multi-file artifacts
    def upload_dir(self, local_dir: Path, prefix: str, manifest: dict[str, Any]) -> str:
        """Copy a folder's files under ``prefix`` and commit it by writing the manifest last."""
        local_dir = Path(local_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        for path in files:
            self.put_bytes(f"{prefix}/{path.relative_to(local_dir).as_posix()}", path.read_bytes())
        manifest = {**manifest, "files": [p.relative_to(local_dir).as_posix() for p in files]}
        self.put_json(f"{prefix}/{MANIFEST}", manifest)
        return self.uri(prefix)

    def is_committed(self, prefix: str) -> bool:
        return self.exists(f"{prefix}/{MANIFEST}")

    def manifest(self, prefix: str) -> dict[str, Any]:
        return self.get_json(f"{prefix}/{MANIFEST}")

    def materialise_dir(self, prefix: str, cache_root: Path | None = None) -> Path:
        """A local folder holding a committed multi-file artifact (the folder itself for file://)."""
        manifest = self.manifest(prefix)
        local = self.local_path(prefix)
        if local is not None:
            return local
        cache_root = Path(cache_root or os.environ.get("SAE_TRANSFER_CACHE", Path.home() / ".cache" / "sae-transfer"))
        digest = manifest.get("content_hash") or uuid.uuid5(uuid.NAMESPACE_URL, self.uri(prefix)).hex
        target = cache_root / "materialised" / digest
        if (target / MANIFEST).exists():
            return target
        staging = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
        for name in manifest["files"]:
            dest = staging / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.get_bytes(f"{prefix}/{name}"))
        try:  # a damaged download must not become a cached copy that every later run trusts
            check_safetensors_folder(staging, shown_as=self.uri(prefix))
        except CorruptArtifact:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        (staging / MANIFEST).write_text(json.dumps(manifest))
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
        return target


def iter_keys_with_suffix(storage: Storage, prefix: str, suffix: str) -> Iterable[str]:
    return (k for k in storage.list(prefix) if k.endswith(suffix))
