"""Fixtures of the reliability suite. ``flow_scenario`` runs four flow processes on one S3 prefix once
for the whole package (runs A and B are killed, C and D run at once to completion); the kill,
concurrency and pickle/secret tests read what it left."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.reliability.faults import (
    PRUNED_WEIGHTS,
    Scenario,
    activation_state,
    finish,
    kill_group,
    make_iam_key,
    moto_authentication,
    s3_client,
    start_flow,
    storage_snapshot,
)


@pytest.fixture(autouse=True, scope="module")
def _quiet_moto_request_log():
    """moto's werkzeug server logs every request at INFO; once Prefect's console handler is on the
    root logger (after ``import flows.full`` under capsys) those lines hit a closed stream."""
    import logging

    logger = logging.getLogger("werkzeug")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="package")  # one scenario for the kill, concurrency and pickle tests
def flow_scenario(s3_server, tmp_path_factory):
    """Run A: killed from outside mid activation caching. Run B: killed (SIGKILL at a chosen
    write) half-way through uploading the pruned LLM. Runs C and D: the same command at the same
    time, to completion. All on one S3 prefix, with moto's IAM authentication on, so the secret
    in the runs' environment is a real, required credential."""
    endpoint = s3_server["endpoint"]
    work = tmp_path_factory.mktemp("flow-scenario")
    bucket = f"scenario-{uuid.uuid4().hex[:10]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    key_id, secret = make_iam_key(endpoint)
    scn = Scenario(url=f"s3://{bucket}/run", bucket=bucket, prefix="run", endpoint=endpoint, key_id=key_id,
                   secret=secret, work=work)
    client = s3_client(endpoint, key_id, secret)
    timings = {}
    with moto_authentication(endpoint):
        # --- A: external SIGKILL while the dense activations are being cached
        proc, info = start_flow(scn, "A")
        deadline = time.time() + 420
        while time.time() < deadline and proc.poll() is None:
            state = activation_state(client, scn)
            if any(e["sidecars"] >= 1 and not e["committed"] for e in state.values()):
                kill_group(proc)
                break
            time.sleep(0.1)
        finish(scn, "A", proc, info, timeout=60)
        scn.snapshots["A"] = storage_snapshot(client, scn)
        scn.snapshots["A_activations"] = activation_state(client, scn)

        # --- B: SIGKILL right after the pruned model's weights are uploaded, before its manifest
        proc, info = start_flow(scn, "B", kill_after=PRUNED_WEIGHTS)
        finish(scn, "B", proc, info, timeout=480)
        scn.snapshots["B"] = storage_snapshot(client, scn)

        # --- C and D: the same command at the same time, to completion. Both find B's half-uploaded
        # pruned model and prune again; a barrier before that upload makes them write it at the same
        # moment: without it, one run's Prefect server may boot seconds sooner and finish first.
        barrier = f"{PRUNED_WEIGHTS}|{work / 'barrier-CD'}|2|240"
        started = [start_flow(scn, name, barrier=barrier) for name in ("C", "D")]
        for name, (proc, info) in zip(("C", "D"), started):
            finish(scn, name, proc, info, timeout=560)
        scn.snapshots["final"] = storage_snapshot(client, scn)
        for key in scn.snapshots["final"]:
            if not key.endswith("/"):
                scn.objects[key] = client.get_object(Bucket=bucket, Key=f"{scn.prefix}/{key}")["Body"].read()
    timings.update({name: run.wall_s for name, run in scn.runs.items()})
    print(f"\nflow scenario wall times (s): {timings}")
    return scn
