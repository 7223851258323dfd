"""The storage layer on a local folder and on a real S3 endpoint (moto server on 127.0.0.1)."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from sae_core.storage import CorruptArtifact, Storage, StorageError, StorageObjectMissing, normalise_url


def test_round_trips_every_format(storage_url):
    storage = Storage(storage_url)
    storage.put_bytes("a/b.bin", b"\x00\x01")
    assert storage.get_bytes("a/b.bin") == b"\x00\x01"
    storage.put_json("a/c.json", {"x": [1, 2]})
    assert storage.get_json("a/c.json") == {"x": [1, 2]}
    tensors = {"w": torch.arange(12, dtype=torch.float32).view(3, 4), "ids": torch.tensor([1, 2, 3])}
    storage.put_tensors("t/x.safetensors", tensors, metadata={"hook": "h"})
    back = storage.get_tensors("t/x.safetensors")
    assert torch.equal(back["w"], tensors["w"]) and torch.equal(back["ids"], tensors["ids"])
    frame = pd.DataFrame({"metric": ["mse", "l0"], "value": [0.1, 16.0]})
    storage.put_parquet("m/one.parquet", frame)
    storage.put_parquet("m/two.parquet", frame.assign(value=[0.2, 8.0]))
    assert len(storage.read_parquet_prefix("m")) == 4
    assert storage.list("a") == ["a/b.bin", "a/c.json"]
    assert storage.exists("a/b.bin") and not storage.exists("a/nope")


def test_missing_object_is_a_clear_error(storage_url):
    storage = Storage(storage_url)
    with pytest.raises(StorageObjectMissing, match="no object at .*missing.json"):
        storage.get_json("missing.json")


def test_corrupt_and_foreign_files_are_refused_not_unpickled(storage_url):
    storage = Storage(storage_url)
    storage.put_tensors("ok.safetensors", {"w": torch.ones(64, 64)})
    storage.put_bytes("truncated.safetensors", storage.get_bytes("ok.safetensors")[:500])
    with pytest.raises(CorruptArtifact, match="not a valid safetensors"):
        storage.get_tensors("truncated.safetensors")
    buffer = __import__("io").BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)  # a pickle where a checkpoint should be
    storage.put_bytes("pickle.safetensors", buffer.getvalue())
    with pytest.raises(CorruptArtifact):
        storage.get_tensors("pickle.safetensors")
    storage.put_bytes("bad.parquet", b"not parquet")
    with pytest.raises(CorruptArtifact, match="not a valid Parquet"):
        storage.get_parquet("bad.parquet")


def test_multi_file_artifact_is_invisible_until_its_manifest_lands(storage_url, tmp_path):
    storage = Storage(storage_url)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.arange(250.0)}, folder / "weights.safetensors")
    weights = (folder / "weights.safetensors").read_bytes()
    # Half an upload (a crash before the manifest) is not a committed artifact.
    storage.put_bytes("models/m1/config.json", b"{}")
    assert not storage.is_committed("models/m1")
    storage.upload_dir(folder, "models/m1", {"kind": "model", "content_hash": "abc123"})
    assert storage.is_committed("models/m1")
    assert storage.manifest("models/m1")["files"] == ["config.json", "weights.safetensors"]
    local = storage.materialise_dir("models/m1", cache_root=tmp_path / "cache")
    assert (local / "weights.safetensors").read_bytes() == weights


def test_a_damaged_checkpoint_is_named_and_never_cached(s3_bucket, tmp_path):
    storage = Storage(s3_bucket)
    folder = tmp_path / "sae"
    folder.mkdir()
    save_file({"w": torch.ones(64, 64)}, folder / "sae_weights.safetensors")
    storage.upload_dir(folder, "saes/x", {"kind": "sae"})
    good = storage.get_bytes("saes/x/sae_weights.safetensors")
    storage.put_bytes("saes/x/sae_weights.safetensors", good[:300])  # truncated in the bucket
    cache = tmp_path / "cache"
    with pytest.raises(CorruptArtifact, match=f"{s3_bucket}/saes/x/sae_weights.safetensors is not a valid safetensors"):
        storage.materialise_dir("saes/x", cache_root=cache)
    assert not cache.exists() or not any((cache / "materialised").iterdir()), "a damaged copy was cached"
    storage.put_bytes("saes/x/sae_weights.safetensors", good)  # repaired: the next read works
    assert (storage.materialise_dir("saes/x", cache_root=cache) / "sae_weights.safetensors").read_bytes() == good


def test_local_writes_leave_no_temporary_files(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    for i in range(5):
        storage.put_bytes("x.bin", os.urandom(100) + bytes([i]))
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_url_forms():
    assert normalise_url("s3://bucket/pre/fix/") == "s3://bucket/pre/fix"
    assert normalise_url("/tmp/x").startswith("file:///")
    with pytest.raises(ValueError, match="unsupported storage URL scheme 'gs'"):
        normalise_url("gs://bucket/x")
    with pytest.raises(ValueError, match="names no bucket"):
        normalise_url("s3://")


def test_unreachable_and_missing_bucket_are_clear_errors(s3_server, monkeypatch):
    with pytest.raises(StorageError, match="not reachable or not writable"):
        Storage("s3://no-such-bucket-here/prefix").check_reachable()
    monkeypatch.setenv("SAE_TRANSFER_S3_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr("sae_core.storage.S3_OUTAGE_PAUSES_S", (0.1,))  # the outage policy is tested in test_reliability
    with pytest.raises(StorageError, match="not reachable"):
        Storage("s3://bucket/prefix").check_reachable()


def test_credentials_never_in_repr_or_errors(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-xyz")
    storage = Storage(s3_bucket)
    assert "secret" not in repr(storage).lower()
    try:
        storage.check_reachable()
    except StorageError as err:
        assert "wrong-secret-xyz" not in str(err)


# ------------------------------------------------------------------ roots from before the rename (pruning -> compression)
def test_old_root_is_named_once_and_its_rows_still_read(tmp_path):
    """A root written before the rename: pruned_models/ (not reused, one clear line) and metric /
    variant rows under the old column names, which the report and the catalog read as today's."""
    import pandas as pd

    from sae_core import report as rep
    from sae_core.model_ref import pre_rename_note
    from tasks.catalog import stored_variants
    from tasks.report import collect_metrics

    storage = Storage(f"file://{tmp_path}")
    assert pre_rename_note(storage) is None
    storage.put_json("pruned_models/x/manifest.json", {"kind": "model", "content_hash": "x", "base_model_name": "toy",
                                                       "pruning": {"method": "wanda:0.5", "sparsity": 0.5, "structure": "unstructured",
                                                                   "achieved_sparsity": 0.5, "wall_time_s": 1.0}})
    note = pre_rename_note(storage)
    assert "pruned_models" in note and "before the rename" in note and "not reused as caches" in note
    assert "Delete pruned_models/" in note

    old_metric = {"hook": "blocks.1.hook_resid_post", "pruning_method": "rtn:4", "model_sparsity": 0.0, "sae_variant": "original",
                  "sae_scoring_rule": "", "sae_sparsity": 0.0, "metric_family": "core", "metric_name": "ce_loss_score",
                  "value": 0.9, "model_prefix": "pruned_models/x", "status": "ok", "reason": ""}
    storage.put_parquet("metrics/core/old.parquet", pd.DataFrame([old_metric]))
    metrics = collect_metrics(storage, [{"rows_key": "metrics/core/old.parquet"}])
    assert "pruning_method" not in metrics and "model_sparsity" not in metrics
    assert metrics[["compression", "strength"]].values.tolist() == [["rtn:4", 4.0]]  # the bit width, not the old 0
    assert rep.headline_table(metrics)["compression"].tolist() == ["rtn:4"]

    storage.put_json("saes/original/s/manifest.json", {"kind": "sae", "processing": {}})
    old_variant = {"hook": "blocks.1.hook_resid_post", "model_prefix": "pruned_models/x", "compression": "wanda:0.5",
                   "model_sparsity": 0.5, "sae_variant": "original", "sae_scoring_rule": "", "sae_sparsity": 0.0,
                   "sae_prefix": "saes/original/s", "explained_variance": 0.9, "wall_time_s": 0.0}
    storage.put_parquet("variants/old.parquet", pd.DataFrame([old_variant]))
    [variant] = stored_variants.fn(storage.url)
    assert variant["row"]["compression"] == "wanda:0.5" and variant["row"]["strength"] == 0.5
    assert "model_sparsity" not in variant["row"] and variant["row"]["explained_variance_centred"] == 0.9
    assert variant["llm"]["compression"]["spec"] == "wanda:0.5"  # the old manifest's pruning block, read as compression
    assert "| wanda:0.5 |" in rep.markdown_summary(pd.DataFrame(), pd.DataFrame([variant["row"]]), [], [])


def test_full_flow_logs_the_old_root_line(tmp_path, monkeypatch, caplog):
    import contextlib
    import logging

    import flows.full as full_module

    storage = Storage(f"file://{tmp_path}")
    storage.put_json("pruned_models/x/manifest.json", {"kind": "model"})
    monkeypatch.setattr(full_module, "experiment", lambda config, url: {"ran": True})
    monkeypatch.setattr(full_module, "run_settings", lambda url, runner: contextlib.nullcontext())
    with caplog.at_level(logging.WARNING):
        assert full_module.full.fn(storage_url=storage.url) == {"ran": True}
    lines = [r.getMessage() for r in caplog.records if "before the rename" in r.getMessage()]
    assert len(lines) == 1 and "not reused as caches" in lines[0]
