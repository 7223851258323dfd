"""The flow submits exactly the steps of the study plan (``sae_core.study.planned_steps``), with per-layer seeds
(``layer_seeds``) and the audit's own selection (``feature_audit.compressions`` / ``layers`` / ``seeds``, an
audit-only compression included). No Prefect run: every task of ``flows.full.experiment`` is replaced by a
recorder, so the test checks the wiring in a second (the tasks themselves are tested elsewhere)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

import flows.full
from sae_core import study
from sae_core.config import build_config

OVERRIDES = {"layers": [0, 1], "seeds": [0, 1, 2], "layer_seeds": {0: [0]}, "compression": ["wanda:0.5"],
             "variants": ["transfer", "retrain"], "metrics": ["core"],
             "feature_audit": {"enabled": True, "compressions": ["wanda:0.5", "rtn:4"], "layers": [1], "seeds": [0, 2],
                               "perplexity_tokens": 5000}}
H0, H1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


class _Future:
    _ids = itertools.count()

    def __init__(self, task: str, args: tuple):
        self.task, self.args, self.id = task, args, next(self._ids)

    def result(self):
        return {"processing": {}, "rows_key": f"rows/{self.id}", "cards_key": f"cards/{self.id}", "task": self.task}

    def wait(self):
        pass

    @property
    def state(self):
        return type("State", (), {"is_completed": lambda _: True})()


class _Task:
    def __init__(self, name: str, submitted: list):
        self.name, self.submitted = name, submitted

    def with_options(self, name: str):
        return _Task(name, self.submitted)

    def submit(self, *args, **kwargs):
        future = _Future(self.name, args)
        self.submitted.append(future)
        return future


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """Run ``experiment`` with recorders for every task; returns (submitted futures, tracked step names)."""
    submitted, tracked = [], []
    for name in ("base_model", "cache_activations_task", "original_sae", "compress_llm", "match_compression", "feature_fidelity",
                 "feature_identity", "feature_overlap", "feature_cards", "dense_patch_control", "evaluate_metric", "sae_variant_task"):
        monkeypatch.setattr(flows.full, name, _Task(name, submitted))

    class Ledger:
        def __init__(self, storage, config):
            pass

        def track(self, future, step):
            tracked.append(step)
            return future

    monkeypatch.setattr(flows.full, "StepLedger", Ledger)
    monkeypatch.setattr(flows.full, "write_report", lambda *args, **kwargs: {"uri": "report"})

    def run(overrides):
        submitted.clear(), tracked.clear()
        flows.full.experiment(build_config("toy", overrides), f"file://{tmp_path}")
        return list(submitted), list(tracked)

    return run


def _by_task(submitted, name):
    return [f for f in submitted if f.task == name]


def test_the_flow_submits_the_plan_with_per_layer_seeds_and_the_audits_selection(recorded):
    config = build_config("toy", OVERRIDES)
    submitted, tracked = recorded(OVERRIDES)
    plan = study.planned_steps(config)
    assert Counter(tracked) == Counter(plan) and len(plan) == len(set(plan))
    # Layer 0 runs seed 0 only, layer 1 seeds 0-2: 4 originals; per (hook, seed): 2 variants, 2 identities, 2 metrics.
    assert sorted(s for s in plan if s.startswith("original")) == [f"original|{H0}|0", *(f"original|{H1}|{s}" for s in (0, 1, 2))]
    assert len([s for s in plan if s.startswith("variant")]) == 4 * 2 and len([s for s in plan if s.startswith("metric")]) == 4 * 2
    # The audit: layer 1, seeds 0 and 2, on wanda:0.5 (a run compression) and rtn:4 (compressed for the audit alone).
    assert sorted(s for s in plan if s.startswith("audit")) == sorted(
        f"audit|{H1}|{c}|{s}" for c in ("wanda:0.5", "rtn:4") for s in (0, 2))
    assert [f.args[1].text for f in _by_task(submitted, "compress_llm")] == ["wanda:0.5", "rtn:4"]
    assert len(plan) == 4 + 2 + 4 * 6 + 4
    # No SAE variant or metric is built on the audit-only model; each audit gets its cards, on the right model and SAE.
    rtn = _by_task(submitted, "compress_llm")[1]
    assert not [f for f in _by_task(submitted, "sae_variant_task") if rtn in f.args]
    audits = _by_task(submitted, "feature_fidelity")
    assert len(audits) == len(_by_task(submitted, "feature_cards")) == 4
    assert sum(rtn in f.args for f in audits) == 2
    originals = {f.args[1:2] + (f.args[-1],): f for f in _by_task(submitted, "original_sae")}  # (hook, seed) -> its task
    assert {(f.args[0] is originals[(H1, 0)] or f.args[0] is originals[(H1, 2)]) for f in audits} == {True}
    assert {f.args[3]["perplexity_tokens"] for f in audits} == {5000}  # part of the audit's settings (and its key)


def test_without_the_new_knobs_the_plan_and_the_audits_are_todays(recorded):
    overrides = {**OVERRIDES, "layer_seeds": None, "feature_audit": {"enabled": True}}
    config = build_config("toy", overrides)
    submitted, tracked = recorded(overrides)
    plan = study.planned_steps(config)
    assert Counter(tracked) == Counter(plan)
    assert len(plan) == 6 + 1 + 6 * 6 + 6  # every hook x seed: its original, variants, identities, metrics and audit
    assert "perplexity_tokens" not in _by_task(submitted, "feature_fidelity")[0].args[3]  # the audit's key as before
    # A released (loaded) original SAE is one for every seed: audited once per hook, at the first seed.
    released = build_config("gpt2-small", {"layers": [5, 6], "hook_types": ["resid_post"], "seeds": [0, 1], "layer_seeds": {5: [1]}, "variants": ["transfer"],
                                           "metrics": ["core"], "feature_audit": {"enabled": True}})
    steps = study.planned_steps(released)
    assert sorted(s for s in steps if s.startswith(("original", "audit"))) == [
        "audit|blocks.5.hook_resid_post|wanda:0.5|1", "audit|blocks.6.hook_resid_post|wanda:0.5|0",
        "original|blocks.5.hook_resid_post|1", "original|blocks.6.hook_resid_post|0"]
