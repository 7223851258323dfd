"""Shared test fixtures: a real S3 endpoint (moto's server on 127.0.0.1), Prefect's own test
harness, and one small toy world built once per session."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

# Offline, quiet, and never the developer's own Prefect database.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import torch  # noqa: E402

# One intra-op thread: on a shared 2-core machine, tiny matmuls with 2 threads are far slower.
torch.set_num_threads(1)

# The toy world used by tests: same code as the preset, smaller so it trains in seconds.
TEST_TOY_WORLD = {"seed": 0, "n_documents": 3000, "vocab_size": 1024, "n_layer": 2, "d_model": 64, "n_head": 4,
                  "n_ctx": 64, "train_steps": 150, "batch_size": 16}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Every test module runs with one intra-op thread (a test may change it; the next module gets 1 back).
    Tiny matmuls on a shared 2-core box: one intra-op thread avoids spin-wait stalls."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 with test credentials in the environment."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "SAE_TRANSFER_S3_ENDPOINT")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key-value",
                       "AWS_DEFAULT_REGION": "us-east-1", "SAE_TRANSFER_S3_ENDPOINT": endpoint})
    yield {"endpoint": endpoint, "server": server, "port": port}
    server.stop()
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh, empty bucket; returns its s3:// URL with a prefix."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server["endpoint"]).create_bucket(Bucket=name)
    return f"s3://{name}/run"


@pytest.fixture(params=["file", "s3"])
def storage_url(request, tmp_path):
    """Every storage test runs against a local folder and a real S3 endpoint."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    return request.getfixturevalue("s3_bucket")


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's own test harness: a temporary database and API server for the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory):
    from sae_core.toy.world import ToyWorldConfig, build_toy_world

    return build_toy_world(tmp_path_factory.mktemp("toy_world"), ToyWorldConfig(**TEST_TOY_WORLD), progress=False)


@pytest.fixture(scope="session")
def toy_model(toy_world):
    from sae_core.models import load_language_model

    return load_language_model(str(toy_world.model_dir))


def committed_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# A complete experiment small enough for tests: every step runs, on a tiny toy world.
TINY_FLOW_OVERRIDES = {
    "toy_world": {**TEST_TOY_WORLD, "n_documents": 2000, "train_steps": 80},
    "activations": {"n_tokens": 8000, "seq_len": 64, "batch_sequences": 16, "shard_sequences": 64},
    "calibration": {"n_samples": 8, "seq_len": 64},
    "original_sae": {"train": {"architecture": "topk", "d_sae": 128, "k": 8, "train_tokens": 8000, "lr": 0.003, "batch_size": 256}},
    "retrained_sae": {"train_tokens": 8000, "lr": 0.003, "batch_size": 256},
    "pruned_sae": {"rules": ["wanda", "magnitude"], "sparsities": [0.5], "calibration_tokens": 2000},
    "variants": None,  # derived from retrained_sae / pruned_sae: transfer, retrain, prune:wanda:0.5, prune:magnitude:0.5
    "quality": {"n_tokens": 2000, "ce_sequences": 4},
    "metrics": ["core"],
    "feature_audit": {"n_tokens": 4000},
}
