"""The experiment record (one configuration per experiment name on a root), the step plan and its ledger,
preset inheritance (``extends``) and the study preset."""

from __future__ import annotations

import logging

import pytest

from sae_core import study
from sae_core.config import build_config, load_preset
from sae_core.storage import Storage


def _config(**overrides):
    return build_config("toy", overrides)


def test_identity_leaves_out_what_a_study_grows_and_keeps_what_defines_it():
    base = _config()
    grown = _config(seeds=[0, 1, 2], layers=[0, 1], metrics=["core"], variants=["transfer", "retrain"],
                    compression=["wanda:0.5", "rtn:4"], pruned_sae={"sparsities": [0.25]}, device="cuda")
    assert study.identity_hash(base) == study.identity_hash(grown)
    changed = _config(activations={"n_tokens": 5000})
    assert study.identity_hash(changed) != study.identity_hash(base)
    assert study.differences(study.identity(base), study.identity(changed)) == [
        "activations.n_tokens: 120000 (stored) -> 5000 (this run)"]


def test_a_second_configuration_under_one_name_is_refused_naming_the_difference(tmp_path, caplog):
    storage = Storage(f"file://{tmp_path}")
    first = _config()
    record = study.check_experiment(storage, first, command="python -m flows.full")
    assert record["model"] == "toy" and record["identity_hash"] == study.identity_hash(first)
    key = study.record_key("toy")
    before = storage.get_bytes(key)
    study.check_experiment(storage, _config(seeds=[0, 1]))  # a grown study: accepted
    other = _config(toy_world={"vocab_size": 512}, quality={"n_tokens": 1000})
    with pytest.raises(study.MixedStorageError) as err:
        study.check_experiment(storage, other)
    message = str(err.value)
    assert "'toy'" in message and "2 field(s) differ" in message
    assert "toy_world.vocab_size: 1024 (stored) -> 512 (this run)" in message
    assert "quality.n_tokens: 20000 (stored) -> 1000 (this run)" in message
    assert "--allow-mixed-storage" in message
    with caplog.at_level(logging.WARNING, logger=study.__name__):
        study.check_experiment(storage, other, allow_mixed=True)  # explicit: runs, the first record stays
        study.check_experiment(storage, other, allow_mixed=True)  # the flow checks again after the CLI: warned once
    assert sum("mixing configurations" in r.getMessage() for r in caplog.records) == 1
    assert storage.get_bytes(key) == before
    # Another experiment name on the same root is another experiment (one root, several presets).
    study.check_experiment(storage, _config(name="toy-other", toy_world={"vocab_size": 512}))
    assert storage.exists(study.record_key("toy-other"))


class _Future:
    def __init__(self, completed=True):
        self.completed, self.callbacks = completed, []

    def add_done_callback(self, fn):
        self.callbacks.append(fn)

    def wait(self):
        pass

    @property
    def state(self):
        return type("S", (), {"is_completed": lambda _: self.completed})()

    def finish(self):
        for fn in self.callbacks:
            fn(self)


def test_the_ledger_counts_finished_steps_of_this_configs_plan(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    config = _config(layers=[0, 1], seeds=[0, 1], metrics=["core"], variants=["transfer", "retrain"])
    plan = study.planned_steps(config)
    # 2 hooks x 2 seeds originals, 1 compression; per (hook, seed): 2 variants, 2 identities, 2 metrics, 1 audit
    assert len(plan) == len(set(plan)) == 4 + 1 + 4 * (2 + 2 + 2 + 1)
    assert study.progress(storage, config) == (0, len(plan))
    ledger = study.StepLedger(storage, config)
    done, failed = _Future(), _Future(completed=False)
    assert ledger.track(done, plan[0]) is done
    ledger.track(failed, plan[1])
    done.finish(), failed.finish()
    assert study.progress(storage, config) == (1, len(plan))
    assert "1 of 33 steps done" in study.progress_line(storage, config)
    # More seeds: the finished step still counts, the plan grew.
    assert study.progress(storage, _config(layers=[0, 1], seeds=[0, 1, 2], metrics=["core"], variants=["transfer", "retrain"])) \
        == (1, len(plan) + 2 + 7 * 2)
    # Another identity under the same name: its own count (nothing done).
    assert study.progress(storage, _config(layers=[0, 1], seeds=[0, 1], metrics=["core"], variants=["transfer", "retrain"],
                                           quality={"n_tokens": 1000}))[0] == 0


def test_the_study_preset_extends_the_gemma_preset_and_validates():
    base, data = load_preset("gemma-3-270m"), load_preset("gemma-3-270m-study")
    assert data["original_sae"] == base["original_sae"] and data["retrained_sae"] == base["retrained_sae"]
    config = build_config("gemma-3-270m-study")
    assert config.layers == [3, 6, 12] and config.run_seeds() == [0, 1, 2]
    assert [config.seeds_at(layer) for layer in config.layers] == [[0], [0, 1, 2], [0]]  # 3 seeds where the spread is measured
    assert [c.text for c in config.compression] == ["wanda:0.5"]
    assert [v.text for v in config.variants] == ["transfer", "prune:wanda:0.5", "retrain"]  # the paper's three
    assert config.metrics == ["core", "absorption", "scr", "tpp", "sparse_probing", "ravel", "sparse_probing_sae_probes"]
    audit = config.feature_audit
    assert audit.enabled and audit.n_tokens >= 100_000 and audit.perplexity_tokens == 20_000
    assert [c.text for c in config.audit_compressions()] == ["wanda:0.5", "sparsegpt:0.5", "magnitude:0.5", "rtn:8", "rtn:6", "rtn:4", "gptq:4"]
    assert config.audit_hooks() == ["blocks.6.hook_resid_post"] and config.audit_seeds("blocks.6.hook_resid_post") == [0]
    # 5 (hook, seed) cells (seed 0 at layers 3 and 12, seeds 0-2 at layer 6): an original SAE each and 3 variants, each
    # with its identity row and 7 metrics; 1 compression for the variants and 6 more for the audit; 7 audits.
    assert len(study.planned_steps(config)) == 5 + 1 + 5 * 3 * (1 + 1 + 7) + 6 + 7 == 154


def test_a_preset_that_extends_itself_is_an_error(monkeypatch, tmp_path):
    import sae_core.config as cfg

    (tmp_path / "a.yaml").write_text("extends: b\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a\nname: b\n")
    monkeypatch.setattr(cfg, "PRESET_DIR", tmp_path)
    with pytest.raises(ValueError, match="extends it back: a -> b -> a"):
        cfg.load_preset("a")


def test_a_layer_the_real_model_lacks_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"layers \[18\] do not exist in 'gemma-3-270m', which has 18 layers"):
        build_config("gemma-3-270m-study", {"layers": [6, 18]})


# ------------------------------------------------------------------ per-layer seeds and the audit's selection
def test_per_layer_seeds_and_the_audit_selection_validate_and_read_back():
    config = _config(layers=[0, 1], seeds=[0, 1, 2], layer_seeds={0: [2, 0]},
                     feature_audit={"compressions": ["wanda:0.5", "magnitude_row:0.5", "rtn:4"], "layers": [1], "seeds": [1],
                                    "perplexity_tokens": 20_000})
    assert config.seeds_at(0) == [0, 2] and config.seeds_at(1) == [0, 1, 2]  # the run's order
    assert config.hook_seeds("blocks.0.hook_resid_post") == [0, 2]
    assert [c.text for c in config.audit_compressions()] == ["wanda:0.5", "magnitude:0.5", "rtn:4"]
    assert [c.text for c in config.audit_only_compressions()] == ["magnitude:0.5", "rtn:4"]
    assert config.audit_hooks() == ["blocks.1.hook_resid_post"] and config.audit_seeds("blocks.1.hook_resid_post") == [1]
    dumped = config.model_dump(mode="json")
    assert dumped["feature_audit"]["compressions"] == ["wanda:0.5", "magnitude:0.5", "rtn:4"]
    assert type(config).model_validate(dumped) == config  # canonical text (and JSON's string keys) validate back
    # Not given: today's behaviour (every compression, layer and seed; perplexity on every audit token).
    plain = _config(layers=[0, 1], seeds=[0, 1])
    assert plain.seeds_at(0) == [0, 1] and plain.audit_compressions() == plain.compression and plain.audit_only_compressions() == []
    assert plain.audit_hooks() == plain.hook_names() and plain.feature_audit.perplexity_tokens is None


@pytest.mark.parametrize("overrides, fragments", [
    ({"layer_seeds": {5: [0]}}, ["layer_seeds names layers [5]", "layers: [1]"]),
    ({"seeds": [0, 1], "layer_seeds": {1: [2]}}, ["layer_seeds[1] names seeds [2]", "seeds: [0, 1]"]),
    ({"layer_seeds": {1: []}}, ["layer_seeds[1] is empty"]),
    ({"seeds": [0, 1], "layer_seeds": {1: [1, 1]}}, ["layer_seeds[1] has duplicates: [1]"]),
    ({"seeds": [0, 1, 1]}, ["seeds has duplicates: [1]"]),
    ({"feature_audit": {"compressions": ["wanda:0.5", "wanda:0.50"]}}, ["feature_audit.compressions has duplicates: ['wanda:0.5']"]),
    ({"feature_audit": {"compressions": ["wanda:1.5"]}}, ["feature_audit.compressions", "got 1.5 in 'wanda:1.5'"]),
    ({"feature_audit": {"compressions": ["nope:4"]}}, ["feature_audit.compressions", "'nope"]),
    ({"feature_audit": {"compressions": []}}, ["feature_audit.compressions is empty"]),
    ({"feature_audit": {"layers": [0]}}, ["feature_audit.layers names layers [0]", "layers: [1]"]),
    ({"feature_audit": {"layers": []}}, ["feature_audit.layers is empty"]),
    ({"feature_audit": {"seeds": [3]}}, ["feature_audit.seeds names seeds [3] that layer 1 does not run", "its seeds: [0]"]),
    ({"seeds": [0, 1, 2], "layer_seeds": {1: [0]}, "feature_audit": {"seeds": [1]}}, ["feature_audit.seeds names seeds [1] that layer 1"]),
    ({"feature_audit": {"seeds": [-1]}}, ["feature_audit.seeds must be non-negative", "[-1]"]),
    ({"feature_audit": {"perplexity_tokens": 0}}, ["feature_audit.perplexity_tokens", "greater than 0"]),
    ({"feature_audit": {"n_tokens": 5000, "perplexity_tokens": 6000}}, ["perplexity_tokens=6000 exceeds feature_audit.n_tokens=5000"]),
], ids=["layer-seeds-unknown-layer", "layer-seeds-not-a-run-seed", "layer-seeds-empty", "layer-seeds-duplicate", "seeds-duplicate",
        "audit-compressions-duplicate", "audit-compressions-bad-sparsity", "audit-compressions-unknown-method", "audit-compressions-empty",
        "audit-layer-not-run", "audit-layers-empty", "audit-seed-not-run", "audit-seed-not-at-that-layer", "audit-seed-negative",
        "audit-perplexity-tokens-zero", "audit-perplexity-tokens-beyond-n-tokens"])
def test_bad_per_layer_seeds_and_audit_selections_are_refused_naming_the_value(overrides, fragments):
    with pytest.raises(ValueError) as err:
        _config(**overrides)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_what_the_audit_covers_and_layer_seeds_are_growable_perplexity_tokens_defines_once_set():
    base = _config(layers=[0, 1], seeds=[0, 1])
    grown = _config(layers=[0, 1], seeds=[0, 1], layer_seeds={0: [0]},
                    feature_audit={"compressions": ["rtn:4"], "layers": [1], "seeds": [0]})
    assert study.identity_hash(base) == study.identity_hash(grown)
    assert "perplexity_tokens" not in study.identity(base)["feature_audit"]  # None: as records written before the knob
    capped = _config(layers=[0, 1], seeds=[0, 1], feature_audit={"perplexity_tokens": 20_000})
    assert study.differences(study.identity(base), study.identity(capped)) == [
        "feature_audit.perplexity_tokens: '<absent>' (stored) -> 20000 (this run)"]
