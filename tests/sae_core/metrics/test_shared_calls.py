"""The generic record/replay layer (sae_core.metrics.shared_work.SharedModel / shared_model_calls) any
SAEBench family is handed instead of the HookedTransformer, and absorption through it.

How a wrong variant would be caught:
* serving a call that had a hook attached (an SAE splice) would make a hooked call's output equal the
  recorded clean one: the pass-through test attaches a hook that changes the output and compares;
* serving different tensors than the model computes (a cast, another batch) breaks the bit-for-bit
  equality of the replayed activations and of every absorption number with an unshared run;
* a key without the weights' fingerprint would reuse the dense model's activations for a changed
  model: the changed model's entry must be a new recording, and its activations differ;
* trusting a truncated / bit-flipped file: the entry is deleted and the call recomputed (counted on
  the real model's forward).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from sae_core.metrics import shared_work as shared
from sae_core.metrics.base import model_fingerprint
from sae_core.metrics.registry import METRICS
from tests.sae_core.metrics.test_families import facts_world, sampled_sae, spelling_lm  # noqa: F401 (fixtures)

HOOK = "blocks.1.hook_resid_post"
VOLATILE = {"eval_id", "datetime_epoch_millis"}


@pytest.fixture(scope="module")
def hooked(toy_model):
    return toy_model.hooked()


def _key(model, **extra):
    return shared.shared_calls_key(family="test", model_fingerprint=model_fingerprint(model), tokenizer=model.tokenizer,
                                   settings={"s": 1}, llm_dtype="float32", device="cpu", extra=extra)


def _forwards(model):
    """Count the real model's forward passes."""
    counts = {"n": 0}
    original = model.forward

    def forward(*args, **kwargs):
        counts["n"] += 1
        return original(*args, **kwargs)

    model.forward = forward
    return counts


def _calls(model, shared_model, tokens):
    outs = []
    for batch in (tokens[:2], tokens[2:], ["the cat", "a dog"]):
        out, cache = shared_model.run_with_cache(batch, names_filter=[HOOK], stop_at_layer=2)
        outs.append((out, cache[HOOK]))
    return outs


def test_replay_is_bit_for_bit_and_runs_no_forward(hooked, tmp_path):
    tokens = torch.randint(0, hooked.cfg.d_vocab, (4, 16), generator=torch.Generator().manual_seed(0))
    key = _key(hooked)
    with shared.shared_model_calls(hooked, tmp_path, key, "cpu") as recording:
        first = _calls(hooked, recording, tokens)
    assert recording.counters.computed == 3 and recording.counters.reused == 0
    assert (tmp_path / shared.ENTRY / shared.MANIFEST).exists()
    counts = _forwards(hooked)
    try:
        calls = shared.shared_model_calls(hooked, tmp_path, key, "cpu")
        with calls as replaying:
            second = _calls(hooked, replaying, tokens)
        assert counts["n"] == 0 and calls.summary["reused"] == 3 and calls.status == "replayed"
    finally:
        del hooked.forward
    for (out_a, act_a), (out_b, act_b) in zip(first, second):
        assert torch.equal(out_a, out_b) and torch.equal(act_a, act_b)
        assert act_a.dtype == act_b.dtype


def test_hooked_calls_and_other_arguments_pass_through(hooked, tmp_path):
    tokens = torch.randint(0, hooked.cfg.d_vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    key = _key(hooked)
    with shared.shared_model_calls(hooked, tmp_path, key, "cpu") as recording:
        clean = recording.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
    with shared.shared_model_calls(hooked, tmp_path, key, "cpu") as replaying:
        with hooked.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda act, hook: act * 0.5)]):
            hooked_act = replaying.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
        other = replaying.run_with_cache(tokens, names_filter=[HOOK], stop_at_layer=2)[1][HOOK]
        assert replaying.counters.reused == 0 and replaying.counters.passed_through == 1
        assert replaying.counters.computed == 1  # another argument: another call, computed
    assert not torch.equal(clean, hooked_act)
    assert torch.equal(clean, other)  # the same activations, computed


def test_changed_weights_change_the_key(hooked, tmp_path):
    changed = copy.deepcopy(hooked)
    with torch.no_grad():
        changed.blocks[0].mlp.W_in.mul_(0.5)
    tokens = torch.randint(0, hooked.cfg.d_vocab, (2, 16), generator=torch.Generator().manual_seed(2))
    with shared.shared_model_calls(hooked, tmp_path / "dense", _key(hooked), "cpu") as recording:
        dense = recording.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
    assert _key(changed) != _key(hooked)
    # the changed model's entry sits under its own key: opening the dense entry with it finds no match
    assert shared.SharedWorkEntry.open(tmp_path / "dense", _key(changed)) is None
    with shared.shared_model_calls(changed, tmp_path / "changed", _key(changed), "cpu") as other:
        act = other.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
    assert other.counters.computed == 1 and not torch.equal(act, dense)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_broken_entry_is_recomputed_not_served(hooked, tmp_path, damage):
    tokens = torch.randint(0, hooked.cfg.d_vocab, (2, 16), generator=torch.Generator().manual_seed(3))
    key = _key(hooked)
    with shared.shared_model_calls(hooked, tmp_path, key, "cpu") as recording:
        good = recording.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
    manifest = json.loads((tmp_path / shared.ENTRY / shared.MANIFEST).read_text())
    name = next(iter(manifest["calls"].values()))
    path = tmp_path / shared.ENTRY / name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    counts = _forwards(hooked)
    try:
        calls = shared.shared_model_calls(hooked, tmp_path, key, "cpu")
        with calls as again:
            act = again.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
    finally:
        del hooked.forward
    assert counts["n"] == 1 and torch.equal(act, good)
    if damage == "truncate":  # caught on open: deleted and recorded afresh
        assert calls.status == "recorded"
        assert shared.SharedWorkEntry.open(tmp_path, key) is not None
    else:  # caught when read: not served, deleted at the end
        assert calls.status == "discarded"
        assert not (tmp_path / shared.ENTRY).exists()


def _absorption(lm, sae, artifacts: Path, share: bool):
    from sae_core.metrics import run_metric

    family = METRICS["absorption"]
    previous, family.share_model_work = family.share_model_work, share
    try:
        result = run_metric("absorption", sae, lm.hooked_cached, lm.hf_model, lm.tokenizer,
                            settings=family.toy_defaults, profile="hub", artifacts_dir=artifacts)
    finally:
        family.share_model_work = previous
    assert result.status == "ok", result.reason
    return {k: v for k, v in result.raw.items() if k not in VOLATILE}, result.headline, dict(family.last_shared_work)


def test_absorption_with_shared_calls_is_identical(spelling_lm, tmp_path):
    spelling_lm.hooked_cached = spelling_lm.hooked()
    second, first = (sampled_sae(spelling_lm.hooked_cached, d_sae=256, seed=s) for s in (1, 2))
    # SAEBench's draws (in-context examples) depend on whether the first-letter probe was trained in
    # this run or loaded from the cache, so both modes evaluate `first` (probe trained) before `second`
    _absorption(spelling_lm, first, tmp_path / "plain", share=False)
    plain = _absorption(spelling_lm, second, tmp_path / "plain", share=False)
    assert plain[2]["status"] == "off"
    recorded = _absorption(spelling_lm, first, tmp_path / "shared", share=True)
    assert recorded[2]["status"] == "recorded" and recorded[2]["computed"] > 0
    replayed = _absorption(spelling_lm, second, tmp_path / "shared", share=True)
    # the words absorption probes are picked through the SAE (its features' false negatives) and every
    # prompt gets random in-context examples, so another SAE's prompt batches rarely match: whatever
    # is served must leave every number as without sharing
    assert replayed[2]["status"] == "replayed"
    assert replayed[2]["reused"] + replayed[2]["computed"] > 0 and replayed[2]["passed_through"] == 0
    assert json.dumps(replayed[:2], sort_keys=True) == json.dumps(plain[:2], sort_keys=True)

    # the compressed model's weights changed: nothing of the dense entry is read
    changed = copy.deepcopy(spelling_lm)
    changed.hooked_cached = copy.deepcopy(spelling_lm.hooked_cached)
    with torch.no_grad():
        changed.hooked_cached.blocks[0].mlp.W_in.mul_(0.9)
    again = _absorption(changed, second, tmp_path / "shared", share=True)
    assert again[2]["status"] == "recorded" and again[2]["reused"] == 0
