"""SAEBench core's SAE-independent work (token draws, clean and zero-ablated forward passes, hook
activations) recorded once per model and replayed for the next SAE (sae_core.metrics.shared_work).

How a wrong variant would be caught:
* serving recorded tensors that differ from what SAEBench computes (another batch, a rounding cast,
  another dtype) breaks the bit-for-bit equality of every core number with a run without sharing;
* replaying the first SAE's *spliced* pass for the second SAE (a hook mistaken for the ablation)
  makes the second SAE's numbers equal the first's instead of its own unshared run's;
* a key without the weights' fingerprint would reuse the dense model's clean logits for the
  changed model: its passes would not rerun, and its ``ce_loss_without_sae`` -- which differs
  from the dense model's, asserted below -- would be the dense one;
* trusting a truncated or bit-flipped file would fail to load or serve wrong logits; the tests
  count the passes rerun and compare with the unshared run.

The counts are taken on the real ``HookedTransformer.forward``, independently of the module's own
counters: a forward with no hooks and no ``stop_at_layer`` is SAEBench's clean pass, one with
``stop_at_layer`` its hook-activation pass, one with a hook active the spliced or the ablated pass.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from sae_core.metrics import run_metric
from sae_core.metrics.registry import METRICS

HOOK = "blocks.1.hook_resid_post"
N_RECON, N_SPARSE = 2, 3
SETTINGS = {"n_eval_reconstruction_batches": N_RECON, "n_eval_sparsity_variance_batches": N_SPARSE}
# Fields SAEBench stamps per run (a uuid and the clock), not metrics.
VOLATILE = {"eval_id", "datetime_epoch_millis"}


@pytest.fixture(scope="module")
def hooked(toy_model):
    return toy_model.hooked()


def make_sae(hooked_model, seed: int, d_sae: int = 128):
    """A TopK SAE whose decoder rows are normalised activation samples at HOOK (alive, deterministic)."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(seed)
    d_in = hooked_model.cfg.d_model
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8, metadata=SAEMetadata(
        hook_name=HOOK, model_name="toy", context_size=64, prepend_bos=True)))
    tokens = torch.randint(0, hooked_model.cfg.d_vocab, (16, 32), generator=gen)
    with torch.no_grad():
        _, cache = hooked_model.run_with_cache(tokens, names_filter=[HOOK])
        acts = cache[HOOK].reshape(-1, d_in)
        mean = acts.mean(0)
        directions = acts[torch.randperm(len(acts), generator=gen)[:d_sae]] - mean
        directions = directions / directions.norm(dim=-1, keepdim=True)
        sae.W_dec.data = directions.clone()
        sae.W_enc.data = directions.T.clone()
        sae.b_dec.data = mean.clone()
    return sae


@contextlib.contextmanager
def counted_passes(model):
    """Count the real model's forward passes by kind (see the module docstring)."""
    counts: Counter = Counter()
    original = model.forward

    def forward(*args, **kwargs):
        hooked_now = any(hp.fwd_hooks for hp in model.hook_dict.values())
        if kwargs.get("stop_at_layer") is not None:
            counts["hook_acts"] += 1
        elif hooked_now:
            counts["with_hook"] += 1  # spliced or ablated
        else:
            counts["clean"] += 1
        return original(*args, **kwargs)

    model.forward = forward
    try:
        yield counts
    finally:
        del model.forward


@contextlib.contextmanager
def sharing(on: bool):
    family = METRICS["core"]
    before = family.share_model_work
    family.share_model_work = on
    try:
        yield family
    finally:
        family.share_model_work = before


def core(sae, model, toy_model, artifacts: Path, *, share: bool, scratch: Path):
    with sharing(share) as family, counted_passes(model) as counts:
        result = run_metric("core", sae, model, toy_model.hf_model, toy_model.tokenizer, settings=SETTINGS,
                            profile="toy", artifacts_dir=artifacts, scratch_dir=scratch)
    assert result.status == "ok", result.reason
    return result, dict(counts), dict(family.last_shared_work)


def stable(result) -> dict:
    """The result without SAEBench's per-run uuid and clock; everything else compared exactly."""
    raw = {k: v for k, v in result.raw.items() if k not in VOLATILE}
    return {"raw": json.loads(json.dumps(raw)), "headline": result.headline}


COLD = {"clean": N_RECON, "with_hook": 2 * N_RECON, "hook_acts": N_SPARSE}  # SAEBench's own passes
WARM = {"with_hook": N_RECON}  # only the spliced pass is left


def test_shared_work_gives_identical_core_results(hooked, toy_model, tmp_path):
    sae = make_sae(hooked, seed=0)
    plain, plain_counts, plain_status = core(sae, hooked, toy_model, tmp_path / "a", share=False, scratch=tmp_path / "s")
    recorded, rec_counts, rec_status = core(sae, hooked, toy_model, tmp_path / "a", share=True, scratch=tmp_path / "s")
    replayed, rep_counts, rep_status = core(sae, hooked, toy_model, tmp_path / "a", share=True, scratch=tmp_path / "s")
    assert plain_status["status"] == "off" and rec_status["status"] == "recorded" and rep_status["status"] == "replayed"
    assert plain_counts == COLD and rec_counts == COLD and rep_counts == WARM
    # Bit for bit: no tolerance. The replayed tensors are SAEBench's own outputs loaded from safetensors,
    # and SAEBench's formulas run on them unchanged, in the same order.
    assert stable(recorded) == stable(plain)
    assert stable(replayed) == stable(plain)
    values = plain.headline_dict()
    assert all(replayed.headline_dict()[k] == v or (v != v) for k, v in values.items())
    assert values["ce_loss_without_sae"] > 0 and values["kl_div_score"] == replayed.headline_dict()["kl_div_score"]


def test_second_sae_reuses_the_first_ones_work(hooked, toy_model, tmp_path):
    first, second = make_sae(hooked, seed=0), make_sae(hooked, seed=1)
    _, counts_1, status_1 = core(first, hooked, toy_model, tmp_path / "run", share=True, scratch=tmp_path / "s")
    result_2, counts_2, status_2 = core(second, hooked, toy_model, tmp_path / "run", share=True, scratch=tmp_path / "s")
    assert counts_1 == COLD and status_1["status"] == "recorded"
    # The clean and zero-ablated passes ran once (for the first SAE), not twice; so did the hook activations.
    assert counts_2 == WARM and status_2["status"] == "replayed"
    assert status_2["reused"] == {"clean": N_RECON, "ablated": N_RECON, "hook_acts": N_SPARSE,
                                  "draws": N_RECON + N_SPARSE}
    assert status_2["computed"] == {"clean": 0, "ablated": 0, "hook_acts": 0, "draws": 0}
    # The second SAE's numbers are its own (its spliced pass ran), identical to its unshared run.
    alone, _, _ = core(second, hooked, toy_model, tmp_path / "other", share=False, scratch=tmp_path / "s")
    assert stable(result_2) == stable(alone)
    assert result_2.headline_dict()["ce_loss_with_sae"] != core(first, hooked, toy_model, tmp_path / "run", share=True,
                                                                scratch=tmp_path / "s")[0].headline_dict()["ce_loss_with_sae"]


def test_other_weights_invalidate_the_shared_work(hooked, toy_model, tmp_path):
    sae = make_sae(hooked, seed=0)
    dense, _, _ = core(sae, hooked, toy_model, tmp_path / "run", share=True, scratch=tmp_path / "s")
    changed = copy.deepcopy(hooked)
    with torch.no_grad():
        changed.blocks[1].mlp.W_out[:8] = 0.0  # a "pruned" copy: same name, same config, other weights
    result, counts, status = core(sae, changed, toy_model, tmp_path / "run", share=True, scratch=tmp_path / "s")
    assert counts == COLD and status["status"] == "recorded"  # passes run again
    alone, _, _ = core(sae, changed, toy_model, tmp_path / "other", share=False, scratch=tmp_path / "s")
    assert stable(result) == stable(alone)
    # What a key without the fingerprint would have served (the dense model's clean loss) is detectably wrong:
    assert dense.headline_dict()["ce_loss_without_sae"] != alone.headline_dict()["ce_loss_without_sae"]
    # and both entries now live side by side
    assert len(list((tmp_path / "run").glob("core/*/shared/manifest.json"))) == 2


def _entry(artifacts: Path) -> Path:
    (manifest,) = artifacts.glob("core/*/shared/manifest.json")
    return manifest.parent


@pytest.mark.parametrize("damage", ["truncate_call", "truncate_draws", "flip_bytes", "no_manifest", "bad_manifest"])
def test_a_damaged_entry_is_recomputed_never_trusted(damage, hooked, toy_model, tmp_path):
    sae = make_sae(hooked, seed=0)
    artifacts = tmp_path / "run"
    plain, _, _ = core(sae, hooked, toy_model, tmp_path / "plain", share=False, scratch=tmp_path / "s")
    core(sae, hooked, toy_model, artifacts, share=True, scratch=tmp_path / "s")
    entry = _entry(artifacts)
    calls = sorted(entry.glob("call_*.safetensors"), key=lambda p: p.stat().st_size)
    if damage == "truncate_call":
        target = calls[-1]  # the largest: a clean / ablated logits file
        os.truncate(target, target.stat().st_size // 2)
    elif damage == "truncate_draws":
        os.truncate(entry / "draws.safetensors", 10)
    elif damage == "flip_bytes":  # same size, other content: only the checksum can tell
        target = calls[-1]
        data = bytearray(target.read_bytes())
        data[-5] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "no_manifest":  # as a writer killed before its last step would leave it
        (entry / "manifest.json").unlink()
    else:
        (entry / "manifest.json").write_text('{"format": 1, "key": ')
    result, counts, status = core(sae, hooked, toy_model, artifacts, share=True, scratch=tmp_path / "s")
    assert status["status"] == "recorded"  # recomputed
    if damage == "flip_bytes":  # found when the file is read mid-replay: the spliced passes done before it are redone
        assert counts["clean"] == N_RECON and counts["hook_acts"] == N_SPARSE and counts["with_hook"] > 2 * N_RECON
    else:  # found when the entry is opened
        assert counts == COLD
    assert stable(result) == stable(plain)
    # the rewritten entry is whole again and serves the next run
    again, counts, status = core(sae, hooked, toy_model, artifacts, share=True, scratch=tmp_path / "s")
    assert status["status"] == "replayed" and counts == WARM and stable(again) == stable(plain)
    assert not [p for p in (entry.parent).iterdir() if p.name != "shared"]  # no staging or discarded folders left


def test_entries_are_safetensors_and_json_only(hooked, toy_model, tmp_path):
    core(make_sae(hooked, seed=0), hooked, toy_model, tmp_path / "run", share=True, scratch=tmp_path / "s")
    entry = _entry(tmp_path / "run")
    assert {p.suffix for p in entry.iterdir()} == {".safetensors", ".json"}
    manifest = json.loads((entry / "manifest.json").read_text())
    key = manifest["key"]
    assert key["model_fingerprint"] and key["versions"]["sae-bench"] and key["hook"]["hook_name"] == HOOK
    assert key["llm_dtype"] == "float32" and key["settings"]["n_eval_reconstruction_batches"] == N_RECON


def test_too_big_an_entry_is_not_shared(hooked, toy_model, tmp_path, monkeypatch):
    from sae_core.metrics import shared_work

    monkeypatch.setattr(shared_work, "MAX_BYTES", 1000)
    sae = make_sae(hooked, seed=0)
    _, counts, status = core(sae, hooked, toy_model, tmp_path / "run", share=True, scratch=tmp_path / "s")
    assert status["status"] == "too_big" and counts == COLD
    assert not list((tmp_path / "run").glob("core/*/shared"))


def test_only_saebench_zero_ablation_hook_counts_as_ablation():
    import functools

    import sae_bench.evals.core.main as core_main

    from sae_core.metrics.shared_work import is_zero_ablation

    def standard_zero_ablate_hook(activations, hook):  # same name, not SAEBench's
        return activations * 0

    assert not is_zero_ablation([("h", standard_zero_ablate_hook)])
    assert not is_zero_ablation([("h", functools.partial(standard_zero_ablate_hook))])
    assert not is_zero_ablation([])
    assert core_main.get_recons_loss.__module__ == "sae_bench.evals.core.main"
