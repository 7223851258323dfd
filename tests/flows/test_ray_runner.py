"""The experiment on a real local Ray cluster (prefect-ray): every heavy task runs in a Ray worker
process, hand-offs go through S3 (moto), and the results are the very ones the thread runner
then finds in its cache."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sae_core.storage import Storage
from tests.conftest import TINY_FLOW_OVERRIDES
from tests.flows.test_flow import states_by_name, task_runs_since

ROOT = Path(__file__).resolve().parents[2]
HEAVY_TASKS = {"base-model", "cache-activations", "original-sae", "compress-llm", "transfer-sae", "retrain-sae", "feature-identity",
               "prune-sae", "metric-core"}


@pytest.mark.slow  # ~2-4 min on 2 cores (cluster start, per-worker imports): `make test-slow`, which CI runs
def test_experiment_runs_on_a_local_ray_cluster_and_shares_its_cache(prefect_harness, s3_bucket, monkeypatch):
    import ray

    from flows.full import full
    from tasks import common

    # A small cluster: two CPUs, a small object store (only manifests travel through it).
    monkeypatch.setenv("SAE_TRANSFER_RAY_INIT", json.dumps({"num_cpus": 2, "object_store_memory": 200 * 2**20}))
    monkeypatch.delenv("SAE_TRANSFER_RAY_ADDRESS", raising=False)
    common._models.clear()

    since = dt.datetime.now(dt.timezone.utc)
    summary = full(preset="toy", overrides=TINY_FLOW_OVERRIDES, storage_url=s3_bucket, runner="ray")

    assert not ray.is_initialized(), "the runner must shut down the cluster it started"
    # Every heavy task loads a model; none was loaded here, so every task body ran in a Ray worker.
    assert common._models == {}
    assert summary["n_variants"] == 4 and summary["n_metric_results"] == 4
    states = states_by_name(task_runs_since(since))
    assert HEAVY_TASKS <= set(states), sorted(states)
    assert all(set(states[name]) == {"Completed"} for name in HEAVY_TASKS), states

    storage = Storage(s3_bucket)
    variants = storage.read_parquet_prefix("variants")
    assert sorted(variants["sae_variant"]) == ["original", "pruned", "pruned", "retrained"]
    metrics = storage.read_parquet_prefix("metrics")
    assert set(metrics["metric_family"]) == {"core", "feature_fidelity", "feature_identity"}
    assert metrics[metrics["metric_family"] == "core"]["value"].notna().all()

    # The thread runner on the same prefix (think: another machine) reuses every Ray result.
    since = dt.datetime.now(dt.timezone.utc)
    again = full(preset="toy", overrides=TINY_FLOW_OVERRIDES, storage_url=s3_bucket, runner="threads")
    states = states_by_name(task_runs_since(since))
    not_cached = {name: s for name, s in states.items() if name in HEAVY_TASKS and set(s) != {"Cached"}}
    assert not not_cached, not_cached
    assert again["n_variants"] == 4 and again["n_metric_results"] == 4


def test_gpu_tasks_ask_ray_for_a_gpu_and_cpu_tasks_do_not(monkeypatch):
    from prefect_ray.context import RemoteOptionsContext

    from flows.runners import accelerator_request

    with accelerator_request("cpu"):
        assert RemoteOptionsContext.get().current_remote_options == {}
    with accelerator_request("cuda"):
        assert RemoteOptionsContext.get().current_remote_options == {"num_gpus": 1.0, "max_calls": 1}
    monkeypatch.setenv("SAE_TRANSFER_RAY_GPUS_PER_TASK", "0.5")
    with accelerator_request("cuda:1"):
        assert RemoteOptionsContext.get().current_remote_options == {"num_gpus": 0.5, "max_calls": 1}


def test_ray_runner_ships_our_code_and_no_secrets(monkeypatch):
    from flows.runners import task_runner

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-shipped-secret")
    monkeypatch.setenv("SAE_TRANSFER_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("SAE_TRANSFER_RAY_INIT", '{"num_cpus": 3}')
    runner = task_runner("ray")
    runtime_env = runner.init_kwargs["runtime_env"]
    assert sorted(Path(p).name for p in runtime_env["py_modules"]) == ["flows", "sae_core", "tasks"]
    assert runtime_env["env_vars"]["SAE_TRANSFER_S3_ENDPOINT"] == "http://127.0.0.1:9000"
    assert "never-shipped-secret" not in json.dumps(runner.init_kwargs)
    assert runner.init_kwargs["num_cpus"] == 3


@pytest.mark.parametrize("value, message", [("{num_cpus: 2", "not JSON"), ("[2]", "JSON object")])
def test_cli_rejects_a_malformed_ray_setting_before_prefect_starts(value, message, tmp_path):
    env = {**os.environ, "SAE_TRANSFER_RAY_INIT": value, "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.run([sys.executable, "-m", "flows.full", "--runner", "ray", "--storage", f"file://{tmp_path}/s"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "SAE_TRANSFER_RAY_INIT" in proc.stderr and message in proc.stderr
    assert not list((tmp_path / "prefect").glob("*.db")), "Prefect's server was started for a run that could never start"
