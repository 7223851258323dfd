"""Storage outage on S3 (a dedicated moto server, stopped mid-operation and restarted on the same
port): a short outage is retried transparently, a long one is a clear ``StorageError``; nothing
partial is committed and a re-run resumes."""

from __future__ import annotations

import re
import threading
import time
import uuid

import pytest
import torch

from sae_core.storage import Storage, StorageError
from tests.conftest import free_port
from tests.reliability.faults import HOOK, s3_client, s3_snapshot


class DedicatedMoto:
    """A moto S3 server of this test's own on a fixed port; stop() / start() simulate an outage.

    moto keeps its buckets in process-wide backends, not in the server, so a server restarted
    on the same port serves the same objects again: a real "S3 went away and came back".
    """

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self):
        from moto.server import ThreadedMotoServer

        for attempt in range(50):
            try:
                self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                self.server.start()
                return
            except OSError:  # the port is still being released
                time.sleep(0.1)
        raise RuntimeError(f"could not restart moto on port {self.port}")

    def stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture()
def dedicated_s3(monkeypatch):
    moto = DedicatedMoto()
    moto.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "outage-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "outage-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("SAE_TRANSFER_S3_ENDPOINT", moto.endpoint)
    bucket = f"outage-{uuid.uuid4().hex[:10]}"
    s3_client(moto.endpoint).create_bucket(Bucket=bucket)
    moto.bucket, moto.url = bucket, f"s3://{bucket}/run"
    yield moto
    moto.stop()


OUTAGE_SPEC = dict(hook_name=HOOK, dataset="toy-corpus:3", n_tokens=2400, seq_len=32, batch_sequences=8, shard_sequences=8)


@pytest.fixture(scope="module")
def reference_rows(toy_model, tmp_path_factory):
    """The outage spec's activations cached without any trouble, on a local folder."""
    from sae_core.activations import ActivationCacheSpec, ActivationShards, cache_activations

    storage = Storage(f"file://{tmp_path_factory.mktemp('reference')}")
    cache_activations(toy_model.hooked(), toy_model.tokenizer, ActivationCacheSpec(**OUTAGE_SPEC), storage, "acts", progress=False)
    return torch.cat(list(ActivationShards(storage, "acts", batch_size=1000)))


class OutageAtShard:
    """Replace ``_write_shard``: stop the server right before shard ``index`` is computed and written
    (so the outage starts in the middle of ``cache_activations``), optionally restarting it later."""

    def __init__(self, monkeypatch, moto: DedicatedMoto, index: int, restart_after: float | None):
        import sae_core.activations as activations

        self.real_write = activations._write_shard
        self.moto, self.index, self.restart_after = moto, index, restart_after
        self.happened = False
        self.calls: list[int] = []
        monkeypatch.setattr(activations, "_write_shard", self)

    def __call__(self, *args, **kwargs):
        if args[7] == self.index and not self.happened:
            self.happened = True
            self.moto.stop()
            if self.restart_after is not None:
                threading.Timer(self.restart_after, self.moto.start).start()
        self.calls.append(args[7])
        return self.real_write(*args, **kwargs)


def _raw_keys(moto: DedicatedMoto) -> list[str]:
    return sorted(s3_snapshot(s3_client(moto.endpoint), [moto.bucket]))


def test_long_storage_outage_mid_cache_is_a_clear_error_then_resumes(toy_model, dedicated_s3, reference_rows, monkeypatch):
    from sae_core.activations import ActivationCacheSpec, ActivationShards, cache_activations
    from tasks.common import is_transient

    moto, spec = dedicated_s3, ActivationCacheSpec(**OUTAGE_SPEC)
    outage = OutageAtShard(monkeypatch, moto, index=3, restart_after=None)
    started = time.perf_counter()
    with pytest.raises(StorageError, match=re.escape(f"could not write {moto.url}/acts/shard-00003.safetensors")) as raised:
        cache_activations(toy_model.hooked(), toy_model.tokenizer, spec, Storage(moto.url), "acts", progress=False)
    assert outage.happened
    assert time.perf_counter() - started < 120, "a dead endpoint must fail fast, not hang"
    assert is_transient(raised.value), "Prefect would not retry this storage failure"
    assert "outage-secret-value" not in str(raised.value)

    moto.start()  # storage comes back, with everything written before the outage
    storage = Storage(moto.url)
    keys = storage.list("acts")
    assert keys == [f"acts/shard-0000{i}.{ext}" for i in range(3) for ext in ("json", "safetensors")], keys
    assert not storage.is_committed("acts"), "a half-written cache was committed"
    assert not [k for k in _raw_keys(moto) if ".tmp-" in k]

    outage.calls.clear()
    manifest = cache_activations(toy_model.hooked(), toy_model.tokenizer, spec, storage, "acts", progress=False)
    assert outage.calls and outage.calls[0] == 3, f"completed shards were recomputed: {outage.calls}"
    assert manifest["n_tokens"] == spec.n_tokens
    rows = torch.cat(list(ActivationShards(storage, "acts", batch_size=1000)))
    assert torch.equal(rows, reference_rows)


def test_short_storage_outage_mid_cache_is_retried_transparently(toy_model, dedicated_s3, reference_rows, monkeypatch):
    from sae_core.activations import ActivationCacheSpec, ActivationShards, cache_activations

    moto, spec = dedicated_s3, ActivationCacheSpec(**OUTAGE_SPEC)
    outage = OutageAtShard(monkeypatch, moto, index=3, restart_after=0.5)
    manifest = cache_activations(toy_model.hooked(), toy_model.tokenizer, spec, Storage(moto.url), "acts", progress=False)
    assert outage.happened, "the outage never happened"
    assert manifest["n_tokens"] == spec.n_tokens
    assert not [k for k in _raw_keys(moto) if ".tmp-" in k]
    rows = torch.cat(list(ActivationShards(Storage(moto.url), "acts", batch_size=1000)))
    assert torch.equal(rows, reference_rows)


EXISTS_BUG = ("product bug: sae_core/storage.py Storage.exists() (and so is_committed(), used first by every task) and "
              "delete_prefix() let botocore's EndpointConnectionError escape -- not a StorageError, not an OSError, so "
              "tasks.common.is_transient() says False and Prefect does not retry. Fix: wrap their bodies like get_bytes: "
              "`try: ... except Exception as err: raise StorageError(f\"could not check {self.uri(key)}: "
              "{type(err).__name__}: {err}\") from None`.")


@pytest.mark.parametrize("operation", [
    pytest.param(lambda s: s.check_reachable(), id="check_reachable"),
    pytest.param(lambda s: s.put_bytes("x.bin", b"x"), id="put_bytes"),
    pytest.param(lambda s: s.put_tensors("x.safetensors", {"w": torch.ones(2)}), id="put_tensors"),
    pytest.param(lambda s: s.get_bytes("x.bin"), id="get_bytes"),
    pytest.param(lambda s: s.get_json("x.json"), id="get_json"),
    pytest.param(lambda s: s.list("acts"), id="list"),
    pytest.param(lambda s: s.read_parquet_prefix("variants"), id="read_parquet_prefix"),
    pytest.param(lambda s: s.exists("x.bin"), id="exists"),
    pytest.param(lambda s: s.is_committed("acts"), id="is_committed"),
    pytest.param(lambda s: s.delete_prefix("acts"), id="delete_prefix"),
])
def test_every_storage_call_against_a_dead_endpoint_is_a_retryable_storage_error(operation, monkeypatch):
    from tasks.common import is_transient

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "outage-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "outage-secret-value")
    monkeypatch.setenv("SAE_TRANSFER_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    # What is checked here is the error, not how long storage waits out an outage (see the outage tests).
    monkeypatch.setattr("sae_core.storage.S3_OUTAGE_PAUSES_S", (0.1,))
    storage = Storage("s3://gone-bucket/run")
    started = time.perf_counter()
    with pytest.raises(StorageError, match=re.escape("s3://gone-bucket/run")) as raised:
        operation(storage)
    assert time.perf_counter() - started < 60
    assert is_transient(raised.value)
    assert "outage-secret-value" not in str(raised.value)
