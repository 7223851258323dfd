"""SIGKILL mid-task, then re-run (``flow_scenario`` runs A and B): the re-runs finish, finished artifacts
are never rewritten and no committed prefix is incomplete."""

from __future__ import annotations

import json
import signal

from sae_core.storage import MANIFEST
from tests.reliability.faults import TINY_FLOW_VARIANTS, require_completed


def test_killed_runs_resume_to_completion(flow_scenario):
    scn = flow_scenario
    a, b = scn.runs["A"], scn.runs["B"]
    assert a.rc == -signal.SIGKILL, f"run A was not killed mid-run (rc={a.rc}):\n{a.stderr[-3000:]}"
    partial = {p: e for p, e in scn.snapshots["A_activations"].items() if not e["committed"]}
    assert partial and all(e["sidecars"] >= 1 for e in partial.values()), \
        f"run A was not killed mid activation caching: {scn.snapshots['A_activations']}"
    assert b.rc == -signal.SIGKILL and any("killed_after" in w for w in b.writes), f"run B was not killed (rc={b.rc})"
    pruned = {k.split("/")[1] for k in scn.snapshots["B"] if k.startswith("compressed_models/")}
    assert pruned and all(f"compressed_models/{p}/{MANIFEST}" not in scn.snapshots["B"] for p in pruned), \
        "run B was not killed half-way through the pruned model's upload"
    require_completed(scn)
    for name in ("C", "D"):
        summary = scn.runs[name].summary()
        assert summary["n_variants"] == TINY_FLOW_VARIANTS and summary["report"]["n_variants"] == TINY_FLOW_VARIANTS


def test_finished_artifacts_are_never_rewritten(flow_scenario):
    """What a killed run had finished (the toy world, complete activation shards, B's committed
    artifacts) is reused: no later run writes those keys, and their ETag / LastModified are unchanged."""
    scn = flow_scenario
    require_completed(scn)
    final = scn.snapshots["final"]
    finished_by_a = {k for k in scn.snapshots["A"] if k.startswith("toy_world/")}
    for prefix, entry in scn.snapshots["A_activations"].items():
        rel = prefix[len(scn.prefix) + 1:]
        sidecars = {k for k in scn.snapshots["A"] if k.startswith(rel + "/shard-") and k.endswith(".json")}
        finished_by_a |= sidecars | {k[: -len(".json")] + ".safetensors" for k in sidecars}
    assert any(k.startswith("toy_world/") for k in finished_by_a) and any(k.startswith("activations/") for k in finished_by_a)
    committed_by_b = {k for k in scn.snapshots["B"]
                      if f"{k.rsplit('/', 1)[0]}/{MANIFEST}" in scn.snapshots["B"] and not k.startswith(("_probe/", "prefect-results/"))}
    for name, protected in (("B", finished_by_a), ("C", finished_by_a | committed_by_b), ("D", finished_by_a | committed_by_b)):
        rewritten = sorted(protected & set(scn.runs[name].written_keys()))
        assert not rewritten, f"run {name} rewrote finished artifacts: {rewritten}"
    for key in finished_by_a:
        assert final.get(key) == scn.snapshots["A"][key], f"{key} changed after run A"
    for key in committed_by_b:
        assert final.get(key) == scn.snapshots["B"][key], f"{key} changed after run B"


def test_no_committed_prefix_is_incomplete_and_no_temporary_objects(flow_scenario):
    scn = flow_scenario
    require_completed(scn)
    storage = scn.storage()
    keys = set(storage.list())
    assert not [k for k in scn.objects if ".tmp-" in k], "temporary objects are visible in the bucket"
    assert not [k for k in keys if ".tmp-" in k]
    manifests = sorted(k for k in keys if k.endswith(f"/{MANIFEST}"))
    assert len(manifests) >= 8
    for key in manifests:
        prefix = key[: -len(f"/{MANIFEST}")]
        manifest = json.loads(scn.objects[key])
        if "files" in manifest:
            missing = [f for f in manifest["files"] if f"{prefix}/{f}" not in keys]
            assert not missing, f"{prefix} is committed but lacks {missing}"
        if manifest.get("kind") == "activations":
            for shard in manifest["shards"]:
                assert shard["key"] in keys and shard["key"][: -len(".safetensors")] + ".json" in keys
                assert storage.get_tensors(shard["key"])["activations"].shape[0] == shard["rows"]
            assert sum(s["rows"] for s in manifest["shards"]) == manifest["n_tokens"]
    # Run B's half-uploaded pruned model was finished by the re-runs, not left half-committed.
    for prefix in {k.rsplit("/", 1)[0] for k in scn.snapshots["B"] if k.startswith("compressed_models/")}:
        assert f"{prefix}/{MANIFEST}" in keys


def test_the_runs_record_their_experiment_and_count_every_finished_step(flow_scenario):
    """The killed and resumed runs share one experiment record, and once C and D finished, the step ledger
    counts every step of the plan: what the next run's "N of M steps done" line reads."""
    from flows.cli import overrides_from_args, parser
    from sae_core import study
    from sae_core.config import build_config
    from tests.reliability.faults import TINY_FLOW_ARGS

    scn = flow_scenario
    require_completed(scn)
    config = build_config("toy", overrides_from_args(parser().parse_args(["--storage", scn.url, *TINY_FLOW_ARGS])))
    storage = scn.storage()
    assert storage.get_json(study.record_key(config.name))["identity_hash"] == study.identity_hash(config)
    done, total = study.progress(storage, config)
    assert total == len(study.planned_steps(config)) > 0 and done == total, (done, total)
