"""A study on a toy scale: two layers, two seeds. The report plots each metric against layer; a run
interrupted part-way (here: every metric task of seed 1 fails) resumes when run again, recomputing only
what did not finish and saying at start how far the earlier run got; the root then refuses another
configuration under the same experiment name before any task runs."""

from __future__ import annotations

import copy
import datetime as dt

import pandas as pd
import pytest

from sae_core import study
from sae_core.config import build_config
from sae_core.storage import Storage
from tests.conftest import TINY_FLOW_OVERRIDES
from tests.flows.test_flow import states_by_name, task_runs_since

# One variant, no audit or identity rows: what is tested is the layers, the seeds and the resumption, not the ladder.
OVERRIDES = {**copy.deepcopy(TINY_FLOW_OVERRIDES), "layers": [0, 1], "seeds": [0, 1], "variants": ["transfer"],
             "feature_audit": {"enabled": False}, "repair": {"identity": False}}
# 3.5 min on 2 cores: behind the slow marker (make test-slow, CI), the default suite has its budget.
pytestmark = pytest.mark.slow

FAILED = 2  # the metric task of seed 1 at each of the 2 layers


def test_two_layers_interrupted_then_resumed(prefect_harness, tmp_path, monkeypatch):
    import flows.full
    from flows.full import full
    from sae_core.metrics import registry

    storage = Storage(f"file://{tmp_path}/store")
    config = build_config("toy", OVERRIDES)
    plan = study.planned_steps(config)
    real_run_metric = registry.run_metric

    def interrupted(*args, **kwargs):
        if kwargs.get("seed") == 1:
            raise ValueError("interrupted: seed 1's metrics did not run")
        return real_run_metric(*args, **kwargs)

    monkeypatch.setattr(registry, "run_metric", interrupted)
    with pytest.raises(RuntimeError, match=f"{FAILED} metric task"):
        full(preset="toy", overrides=OVERRIDES, storage_url=storage.url)
    assert len(plan) == 4 + 1 + 4 * 2  # originals (2 hooks x 2 seeds), compression, per (hook, seed): variant + metric
    assert study.progress(storage, config) == (len(plan) - FAILED, len(plan))
    record = storage.get_json(study.record_key("toy"))
    assert record["model"] == "toy" and record["identity_hash"] == study.identity_hash(config)

    monkeypatch.setattr(registry, "run_metric", real_run_metric)
    before = {k: storage.fs.info(storage.path(k))["mtime"] for k in storage.list() if not k.startswith(("reports", "prefect-results"))}
    since = dt.datetime.now(dt.timezone.utc)
    lines, real_line = [], flows.full.progress_line
    monkeypatch.setattr(flows.full, "progress_line", lambda *a: lines.append(real_line(*a)) or lines[-1])  # what the flow logs at start
    summary = full(preset="toy", overrides=OVERRIDES, storage_url=storage.url)
    assert len(lines) == 1 and f"{len(plan) - FAILED} of {len(plan)} steps done" in lines[0] and "resuming" in lines[0], lines
    states = states_by_name(task_runs_since(since))
    computed = {name: s for name, s in states.items() if name not in ("report", "sae-transfer-experiment") and set(s) != {"Cached"}}
    assert set(computed) == {"metric-core"} and sorted(computed["metric-core"]).count("Completed") == FAILED, computed
    after = {k: storage.fs.info(storage.path(k))["mtime"] for k in before}
    assert before == after, "the resumed run rewrote a finished artifact"
    assert study.progress(storage, config) == (len(plan), len(plan))

    # The report of a two-layer run plots each metric against layer.
    assert "depth_resid_post_wanda-0.5.png" in summary["report"]["plots"]
    assert storage.exists(f"{summary['report']['prefix']}/depth_resid_post_wanda-0.5.png")

    # Another configuration under the same name: refused before any task, naming the difference, nothing written.
    keys = set(storage.list())
    since = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(study.MixedStorageError, match=r"activations.n_tokens: 8000 \(stored\) -> 6000"):
        full(preset="toy", overrides={**OVERRIDES, "activations": {**OVERRIDES["activations"], "n_tokens": 6000}}, storage_url=storage.url)
    assert not [r for r in task_runs_since(since) if r.name != "sae-transfer-experiment"]
    assert set(storage.list()) == keys


# Per-layer seeds and the audit's own selection, end to end: layer 0 runs seed 0, layer 1 seeds 0 and 1; the audit
# covers layer 1's seed 1 on the run's wanda:0.5 and on rtn:4, which only the audit names (no variant or metric on it).
AUDIT_OVERRIDES = {**copy.deepcopy(TINY_FLOW_OVERRIDES), "layers": [0, 1], "seeds": [0, 1], "layer_seeds": {0: [0]},
                   "variants": ["transfer"], "repair": {"identity": False},
                   "feature_audit": {"enabled": True, "n_tokens": 4000, "perplexity_tokens": 1000, "layers": [1], "seeds": [1],
                                     "compressions": ["wanda:0.5", "rtn:4"]}}


def test_per_layer_seeds_and_an_audit_only_compression(prefect_harness, tmp_path):
    from flows.full import full

    storage = Storage(f"file://{tmp_path}/store")
    config = build_config("toy", AUDIT_OVERRIDES)
    summary = full(preset="toy", overrides=AUDIT_OVERRIDES, storage_url=storage.url)
    plan = study.planned_steps(config)
    # originals: layer 0 seed 0, layer 1 seeds 0, 1; compressions wanda + rtn; 3 (hook, seed) x (variant, identity, metric); 2 audits
    assert len(plan) == 3 + 2 + 3 * 3 + 2 and study.progress(storage, config) == (len(plan), len(plan))
    assert summary["n_variants"] == 3 and summary["n_metric_results"] == 3 and summary["n_feature_audits"] == 2
    assert summary["n_feature_cards"] == 2
    variants = storage.get_parquet(f"{summary['report']['prefix']}/variants.parquet")
    assert sorted(zip(variants["hook"], variants["seed"])) == [("blocks.0.hook_resid_post", 0), ("blocks.1.hook_resid_post", 0),
                                                               ("blocks.1.hook_resid_post", 1)]
    assert set(variants["compression"]) == {"wanda:0.5"}
    audits = pd.read_parquet(storage.local_path("metrics/feature_fidelity"))
    assert set(audits["hook"]) == {"blocks.1.hook_resid_post"} and set(audits["compression"]) == {"wanda:0.5", "rtn:4"}
    tokens = audits[audits["metric_name"] == "ppl_audit_tokens"]["value"]
    assert set(tokens) == {63 * 16}  # 1,000 tokens: the first 16 windows of 64 tokens (63 predicted each)
