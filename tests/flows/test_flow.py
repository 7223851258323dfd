"""The experiment flow under Prefect's test harness: it runs end to end, caches, and recomputes
only what a changed knob touches."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sae_core.storage import Storage
from tests.conftest import TINY_FLOW_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]


def task_runs_since(since: dt.datetime) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(limit=200, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
    return [r for r in runs if r.created and r.created >= since]


def run_full(storage_url: str, overrides: dict) -> dict:
    from flows.full import full

    return full(preset="toy", overrides=overrides, storage_url=storage_url)


def states_by_name(runs) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for run in runs:
        found.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return found


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory):
    storage_url = f"file://{tmp_path_factory.mktemp('flow')}/store"
    since = dt.datetime.now(dt.timezone.utc)
    summary = run_full(storage_url, TINY_FLOW_OVERRIDES)
    first_run_task_ids.extend(run.id for run in task_runs_since(since))
    return storage_url, summary


first_run_task_ids: list = []


def test_flow_produces_every_artifact(first_run):
    storage_url, summary = first_run
    storage = Storage(storage_url)
    assert summary["n_variants"] == 4  # original, retrained, pruned-wanda-50%, pruned-magnitude-50%
    assert summary["n_metric_results"] == 4
    variants = storage.read_parquet_prefix("variants")
    assert sorted(variants["sae_variant"]) == ["original", "pruned", "pruned", "retrained"]
    assert variants[["mse", "explained_variance_centred", "l0", "ce_loss_score"]].notna().all().all()
    metrics = storage.read_parquet_prefix("metrics")
    assert set(metrics["metric_family"]) == {"core", "feature_fidelity", "feature_identity"} and summary["n_feature_audits"] == 1
    assert metrics[metrics["metric_family"] == "core"]["value"].notna().all()
    assert summary["n_feature_cards"] == 1 and any(k.endswith(".parquet") for k in storage.list("feature_cards"))  # one per audit
    for prefix in ("toy_world", "compressed_models", "saes/original", "saes/retrained", "saes/pruned", "activations"):
        assert any(k.endswith("manifest.json") for k in storage.list(prefix)), prefix
    report = summary["report"]["prefix"]
    assert storage.exists(f"{report}/summary.md") and storage.exists(f"{report}/metrics.parquet")
    assert summary["report"]["html_uri"] == storage.uri(f"{report}/report.html") and storage.exists(f"{report}/report.html")
    assert any(name.endswith(".png") for name in summary["report"]["plots"])
    # the SAEs trained here keep their training curves beside their checkpoints, and the report draws them
    for folder in ("saes/original", "saes/retrained"):
        assert any(k.endswith("/training_curve.parquet") for k in storage.list(folder)), folder
    assert "training_curves.png" in summary["report"]["plots"]
    # Every Prefect result is a small JSON manifest, never a pickle.
    results = [k for k in storage.list("prefect-results") if not k.endswith(".lock")]
    assert results
    for key in results:
        json.loads(storage.get_bytes(key))


def test_long_tasks_show_progress_artifacts(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId, ArtifactFilterType

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            type=ArtifactFilterType(any_=["progress"]), task_run_id=ArtifactFilterTaskRunId(any_=first_run_task_ids)))
    final = {a.description.split(" ")[0]: a.data for a in artifacts}
    # toy LM training, activation caching, WANDA (block by block), SAE training, the feature audit's window batches:
    # each reached 100%; every SAEBench metric too (a whole-metric bar; SAEBench's own tqdm bars where it draws them).
    assert set(final) == {"toy", "caching", "wanda", "Training", "feature", "SAEBench"}, final
    assert all(value == 100.0 for value in final.values()), final


def test_ui_report_shows_the_plots_inline(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId, ArtifactFilterType

    _, summary = first_run
    with get_client(sync_client=True) as client:
        markdown = client.read_artifacts(artifact_filter=ArtifactFilter(
            type=ArtifactFilterType(any_=["markdown"]), task_run_id=ArtifactFilterTaskRunId(any_=first_run_task_ids)))
    # (Prefect stores link artifacts as markdown too: pick the report by its key.)
    [report] = [a for a in markdown if a.key == "sae-transfer-toy-report"]
    # Every plot of the report is embedded (the UI cannot read file:// or private buckets).
    assert report.data.count("](data:image/png;base64,") == len(summary["report"]["plots"]) >= 2


def test_second_run_is_served_from_cache(first_run):
    storage_url, _ = first_run
    storage = Storage(storage_url)
    before = {k: storage.fs.info(storage.path(k))["mtime"] for k in storage.list() if not k.startswith(("reports", "prefect-results"))}
    since = dt.datetime.now(dt.timezone.utc)
    run_full(storage_url, TINY_FLOW_OVERRIDES)
    states = states_by_name(task_runs_since(since))
    # The subflow's own placeholder run and the always-fresh report are the only runs that are not cached.
    not_cached = {name: s for name, s in states.items() if name not in ("report", "sae-transfer-experiment") and set(s) != {"Cached"}}
    assert not not_cached, not_cached
    after = {k: storage.fs.info(storage.path(k))["mtime"] for k in before}
    assert before == after, "a cached re-run rewrote artifacts"


def test_changing_one_knob_recomputes_only_what_depends_on_it(first_run):
    storage_url, _ = first_run
    overrides = copy.deepcopy(TINY_FLOW_OVERRIDES)
    overrides["pruned_sae"]["sparsities"] = [0.25, 0.5]
    since = dt.datetime.now(dt.timezone.utc)
    summary = run_full(storage_url, overrides)
    assert summary["n_variants"] == 6
    runs = task_runs_since(since)
    computed = sorted(r.name.rsplit("-", 1)[0] for r in runs if r.state.name == "Completed" and r.name.rsplit("-", 1)[0] != "sae-transfer-experiment")
    # Only the two new pruned SAEs, their metrics and feature identity, and the (always fresh) report did work.
    assert computed == ["feature-identity", "feature-identity", "metric-core", "metric-core", "prune-sae", "prune-sae", "report"], computed


def test_every_task_and_artifact_is_on_the_run_page_itself(first_run):
    """No subflow: the run a user opens (CLI, UI, deployment) holds the tasks and the report."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        [report] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sae-transfer-toy-report"])),
                                         limit=1)
        run = client.read_flow_run(report.flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.parent_task_run_id is None  # the top-level run, not a subflow
    assert {"metric-core", "prune-sae", "retrain-sae", "original-sae", "report"} <= {t.name.rsplit("-", 1)[0] for t in tasks}


def test_reevaluation_is_cached_until_a_setting_changes(first_run):
    from flows.reevaluate import reevaluate
    from sae_core.config import build_config

    storage_url, _ = first_run
    config = build_config("toy", TINY_FLOW_OVERRIDES)
    since = dt.datetime.now(dt.timezone.utc)
    summary = reevaluate(storage_url=storage_url, metrics=["core"], metric_profile=config.metric_profile,
                         metric_overrides=config.metric_overrides)
    assert summary["n_variants"] == 6  # the four of the first run and two of the changed-knob run
    states = states_by_name(task_runs_since(since))
    # Same (variant, metric, settings, code) as the experiment computed: Cached in Prefect's sense,
    # although this is another flow with another experiment name (a key over all inputs was Completed).
    assert states["metric-core"] == ["Cached"] * 6, states
    rows_before = len(Storage(storage_url).read_parquet_prefix("metrics"))
    changed = copy.deepcopy(config.metric_overrides)
    changed.setdefault("core", {})["n_eval_reconstruction_batches"] = 2
    since = dt.datetime.now(dt.timezone.utc)
    reevaluate(storage_url=storage_url, metrics=["core"], metric_profile=config.metric_profile, metric_overrides=changed)
    assert states_by_name(task_runs_since(since))["metric-core"] == ["Completed"] * 6
    assert len(Storage(storage_url).read_parquet_prefix("metrics")) > rows_before  # new rows beside the old


def test_sae_bench_caches_belong_to_one_run_and_storage(first_run, tmp_path):
    """What SAEBench may still pickle is never read by another run or another storage; only the safe
    LLM-side caches (safetensors + JSON) outlive a run."""
    from sae_core.metrics import safe_cache
    from tasks.metrics import sae_bench_llm_cache, sae_bench_run_cache

    storage_url, _ = first_run
    here = sae_bench_run_cache(storage_url, "some-run")
    assert here != sae_bench_run_cache(f"file://{tmp_path}/other", "some-run")  # other storage: cold
    assert here != sae_bench_run_cache(storage_url, "another-run")  # other run: cold
    assert sae_bench_llm_cache(storage_url) != sae_bench_llm_cache(f"file://{tmp_path}/other")
    # Every finished run removed its own folder; what is left is the safe cache, holding no pickle.
    left = sorted(p.name for p in here.parent.iterdir()) if here.parent.exists() else []
    assert left in ([], [sae_bench_llm_cache(storage_url).name]), left
    for path in sae_bench_llm_cache(storage_url).rglob("*"):
        if path.is_file() and path.name != safe_cache.LOCK:
            assert safe_cache.file_format(path) in safe_cache.SAFE_FORMATS, path


def test_another_seed_trains_new_saes_on_the_same_model_and_activations(first_run, tmp_path):
    """``seed`` is the SAE training seed: a run with another seed trains a new original SAE (so its
    transfer and pruned variants are new too) and a new retrained one, and reuses the model, its
    compression and every activation cache. (The original SAE's key once left the seed out, so a
    second seed silently re-evaluated the first seed's SAEs.)"""
    import shutil

    storage_url, _ = first_run
    copy_url = f"file://{tmp_path}/store"
    shutil.copytree(storage_url.removeprefix("file://"), tmp_path / "store")
    storage = Storage(copy_url)
    reusable = ("toy_world", "models", "compressed_models", "activations")
    before = {k: storage.fs.info(storage.path(k))["mtime"] for k in storage.list() if k.startswith(reusable)}
    since = dt.datetime.now(dt.timezone.utc)
    run_full(copy_url, copy.deepcopy(TINY_FLOW_OVERRIDES) | {"seed": 1})
    after = {k: storage.fs.info(storage.path(k))["mtime"] for k in storage.list() if k.startswith(reusable)}
    assert after == before, "another SAE seed rebuilt the model, its compression or an activation cache"
    states = states_by_name(task_runs_since(since))
    assert {"original-sae", "retrain-sae", "transfer-sae", "prune-sae", "metric-core"} <= set(states)
    originals = [k for k in storage.list("saes/original") if k.endswith("manifest.json")]
    assert len(originals) == 2, originals
    weights = {storage.get_bytes(k.replace("manifest.json", "sae_weights.safetensors")) for k in originals}
    assert len(weights) == 2, "the two seeds' original SAEs have the same weights"


def test_bad_config_fails_before_any_task(prefect_harness, tmp_path):
    from flows.full import full

    since = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(ValueError, match="unknown metric 'bogus'"):
        full(preset="toy", overrides={"metrics": ["bogus"]}, storage_url=f"file://{tmp_path}")
    assert task_runs_since(since) == []
    assert not (tmp_path / "toy_world").exists()


def test_config_names_are_the_libraries_own_and_light():
    """config's metric names and SAE pruning rules are the registry's and sae_prune's, and reading
    them (importing sae_core.config) loads neither torch nor SAEBench."""
    code = ("import sys, sae_core.config as c; assert 'torch' not in sys.modules and 'sae_bench' not in sys.modules; "
            "from sae_core.metrics.registry import METRIC_NAMES; from sae_core.sae_prune import RULES; "
            "assert c.KNOWN_METRICS == METRIC_NAMES == ('core', 'absorption', 'scr', 'tpp', 'sparse_probing', 'ravel', "
            "'autointerp', 'sparse_probing_sae_probes'), c.KNOWN_METRICS; assert c.SAE_PRUNING_RULES == RULES == ('wanda', 'paper', 'magnitude')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--sae-sparsities", "1.0"], "SAE sparsity must be in [0, 1), got 1.0"),
    (["--model-sparsities", "-0.1"], "LLM sparsity must be in [0, 1), got -0.1"),
    (["--metrics", "core,bogus"], "unknown metric 'bogus'"),
    (["--sae-rules", "wanda,bogus"], "unknown SAE pruning rule 'bogus'"),
    (["--layers", "7"], "layers [7] do not exist"),
    (["--storage", "gs://bucket/x"], "unsupported storage URL scheme 'gs'"),
    (["--compress", "wanda:5:4"], "N:M structure needs 1 <= N < M"),
])
def test_cli_rejects_bad_input_before_prefect_starts(args, message, tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    started = dt.datetime.now()
    proc = subprocess.run([sys.executable, "-m", "flows.full", "--storage", f"file://{tmp_path}/s", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "pydantic.dev" not in proc.stderr and "Traceback" not in proc.stderr
    # Importing Prefect creates its home folder; starting its API server would create the database.
    assert not list((tmp_path / "prefect").glob("*.db")), "Prefect's server was started for a config that could never run"
    assert (dt.datetime.now() - started).total_seconds() < 60


def test_config_errors_name_field_value_and_rule_one_line_each():
    from sae_core.config import build_config

    with pytest.raises(ValueError) as err:
        build_config("toy", {"compression": ["wanda:0.5", "wanda:-0.1"], "bogus": 1})
    lines = str(err.value).splitlines()
    assert "  field: compression.1" in lines and "  value: 'wanda:-0.1'" in lines
    assert "  rule:  sparsity must be in [0, 1), got -0.1 in 'wanda:-0.1'" in lines
    assert "  field: bogus" in lines and any(l.startswith("  rule:  not a known field") for l in lines)
    assert "pydantic" not in str(err.value)


def test_plots_past_the_inline_budget_are_linked_to_storage(monkeypatch):
    import tasks.report as report

    monkeypatch.setattr(report, "INLINE_PLOTS_BUDGET_BYTES", 150)
    summary = "# r\n\n![a.png](a.png)\n\n![b.png](b.png)\n"
    out = report.markdown_for_ui(summary, {"a.png": b"x" * 100, "b.png": b"y" * 100}, "s3://bucket/reports/r")
    assert "![a.png](data:image/png;base64," in out
    assert "[b.png](s3://bucket/reports/r/b.png)" in out and "![b.png]" not in out
