"""Nothing is unpickled (loaders are booby-trapped in the flow processes) and the S3 secret (a real
one: moto's IAM authentication is on for the runs) never appears in output, stored objects or the
Prefect database."""

from __future__ import annotations

from tests.reliability.faults import looks_like_pickle, require_completed


def test_nothing_is_unpickled_during_the_flow_runs(flow_scenario):
    """pickle / cloudpickle / torch loaders raise (and log) in every flow process; none was called."""
    scn = flow_scenario
    require_completed(scn)
    for name, run in scn.runs.items():
        assert not run.unpickles, f"run {name} unpickled something:\n" + "".join(run.unpickles[0]["stack"])
    stored_checkpoints = [k for k in scn.objects if k.endswith(".safetensors")]
    assert stored_checkpoints
    assert not [k for k in stored_checkpoints if looks_like_pickle(scn.objects[k])]


# Regression guard: before flows/full.py set result_serializer="json" on its flows, the experiment
# subflow's return value landed in <storage>/prefect-results/ as a base64 cloudpickle.
def test_no_pickle_is_stored_anywhere(flow_scenario):
    scn = flow_scenario
    require_completed(scn)
    pickles = sorted(k for k, raw in scn.objects.items() if looks_like_pickle(raw))
    assert not pickles, f"pickled objects in storage (a flow or task result persisted with a pickle serializer?): {pickles}"
    assert any(k.startswith("prefect-results/") for k in scn.objects), "no Prefect results were inspected"


def test_the_s3_secret_never_leaks(flow_scenario):
    """The secret was needed (moto checked signatures) and is nowhere: stdout, stderr, stored
    objects, the runs' Prefect databases and homes, the local materialisation cache."""
    scn = flow_scenario
    require_completed(scn)
    needles = [scn.secret.encode(), scn.secret[:12].encode(), scn.secret[-12:].encode()]
    places: dict[str, bytes] = {}
    for name, run in scn.runs.items():
        places[f"{name}/stdout"] = run.stdout.encode()
        places[f"{name}/stderr"] = run.stderr.encode()
        for path in run.prefect_home.rglob("*"):
            if path.is_file():
                places[f"{name}/prefect-home/{path.relative_to(run.prefect_home)}"] = path.read_bytes()
    assert any(k.endswith("prefect.db") for k in places), "no Prefect database found to inspect"
    for key, raw in scn.objects.items():
        places[f"storage/{key}"] = raw
    cache = scn.work / "materialised-cache"
    for path in cache.rglob("*") if cache.exists() else []:
        if path.is_file():
            places[f"cache/{path.relative_to(cache)}"] = path.read_bytes()
    leaks = sorted(place for place, raw in places.items() if any(n in raw for n in needles))
    assert not leaks, f"the S3 secret appears in: {leaks}"
    assert len(places) > 50
