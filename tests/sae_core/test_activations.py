"""Activation caching: streamed shards, resumable, read back as batches."""

from __future__ import annotations

import pytest
import torch

import sae_core.activations as activations
from sae_core.activations import ActivationCacheSpec, ActivationShards, cache_activations, hook_activations
from sae_core.storage import Storage

SPEC = dict(hook_name="blocks.1.hook_resid_post", dataset="toy-corpus:7", n_tokens=3000, seq_len=32,
            batch_sequences=8, shard_sequences=16)


def test_cache_matches_a_direct_forward_pass_and_reads_back(toy_model, storage_url):
    storage = Storage(storage_url)
    spec = ActivationCacheSpec(**SPEC)
    manifest = cache_activations(toy_model.hooked(), toy_model.tokenizer, spec, storage, "acts/a", progress=False)
    assert manifest["n_tokens"] == 3000 and manifest["d_in"] == toy_model.hooked().cfg.d_model
    assert len(manifest["shards"]) > 1  # streamed, not one blob
    rows = torch.cat(list(ActivationShards(storage, "acts/a", batch_size=500)))
    assert rows.shape == (3000, manifest["d_in"])
    # The first shard's rows equal the hook activations of its windows, special tokens removed.
    from sae_core.datasets import iter_texts, token_windows
    import itertools

    windows = torch.stack(list(itertools.islice(token_windows(toy_model.tokenizer, iter_texts("toy-corpus:7"), 32), 16)))
    direct = hook_activations(toy_model.hooked(), windows, spec.hook_name)
    keep = ~torch.isin(windows, torch.tensor(sorted(activations.special_token_ids(toy_model.tokenizer))))
    first = storage.get_tensors(manifest["shards"][0]["key"])["activations"]
    assert torch.allclose(first, direct[keep], atol=1e-5)


def test_interrupted_cache_resumes_from_the_last_complete_shard(toy_model, tmp_path, monkeypatch):
    storage = Storage(f"file://{tmp_path}")
    spec = ActivationCacheSpec(**SPEC)
    real_write = activations._write_shard
    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(args[7])
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(activations, "_write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(toy_model.hooked(), toy_model.tokenizer, spec, storage, "acts/r", progress=False)
    assert not storage.is_committed("acts/r")
    with pytest.raises(FileNotFoundError, match="no complete activation cache"):
        ActivationShards(storage, "acts/r")
    done_before = storage.get_bytes("acts/r/shard-00000.safetensors")

    calls.clear()
    monkeypatch.setattr(activations, "_write_shard", lambda *a, **k: (calls.append(a[7]), real_write(*a, **k))[1])
    manifest = cache_activations(toy_model.hooked(), toy_model.tokenizer, spec, storage, "acts/r", progress=False)
    assert calls[0] == 2, "shards 0 and 1 were complete and must not be recomputed"
    assert storage.get_bytes("acts/r/shard-00000.safetensors") == done_before
    fresh = cache_activations(toy_model.hooked(), toy_model.tokenizer, spec, Storage(f"file://{tmp_path}/fresh"), "acts/r", progress=False)
    assert manifest["n_tokens"] == fresh["n_tokens"]
    resumed_rows = torch.cat(list(ActivationShards(storage, "acts/r", batch_size=1000)))
    fresh_rows = torch.cat(list(ActivationShards(Storage(f"file://{tmp_path}/fresh"), "acts/r", batch_size=1000)))
    assert torch.equal(resumed_rows, fresh_rows)


def test_shuffled_reading_is_a_seeded_permutation(toy_model, tmp_path):
    storage = Storage(f"file://{tmp_path}")
    cache_activations(toy_model.hooked(), toy_model.tokenizer, ActivationCacheSpec(**SPEC), storage, "acts/s", progress=False)
    plain = torch.cat(list(ActivationShards(storage, "acts/s", batch_size=256)))
    shuffled = torch.cat(list(ActivationShards(storage, "acts/s", batch_size=256, shuffle=True, seed=1)))
    again = torch.cat(list(ActivationShards(storage, "acts/s", batch_size=256, shuffle=True, seed=1)))
    assert torch.equal(shuffled, again) and not torch.equal(plain, shuffled)
    assert torch.allclose(plain.sum(0), shuffled.sum(0), atol=1e-2)
    limited = list(ActivationShards(storage, "acts/s", batch_size=256, max_tokens=1000))
    assert sum(len(b) for b in limited) == 1000


@pytest.mark.parametrize("bad, message", [
    ({"n_tokens": 0}, "greater than 0"),
    ({"n_tokens": -5}, "greater than 0"),
    ({"n_tokens": 10**12}, "less than or equal"),
    ({"dtype": "int8"}, "int8"),
    ({"dataset": "toy-corpus:x"}, "integer seed"),
    ({"seq_len": 1}, "greater than or equal to 2"),
])
def test_bad_specs_are_rejected_before_any_work(bad, message):
    with pytest.raises(ValueError, match=message):
        ActivationCacheSpec(**{**SPEC, **bad})


# ------------------------------------------------------------------ the HF forward for residual hooks
PROCESSINGS = [
    None,  # TransformerLens' defaults: fold_ln, center_writing_weights, center_unembed, fold_value_biases
    {"center_writing_weights": False},
    {"fold_ln": False, "center_writing_weights": False, "center_unembed": False, "fold_value_biases": False},
    {"refactor_factored_attn_matrices": True},
]


@pytest.mark.parametrize("processing", PROCESSINGS, ids=["default", "uncentred", "unprocessed", "refactored"])
@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre",
                                  "blocks.1.hook_resid_post"])
def test_hf_forward_gives_the_transformer_lens_activations(toy_model, processing, hook):
    """Residual hooks are read from the HF model's own forward, stopped at the hook's layer: the same
    function as TransformerLens' view under every weight processing (centring under LayerNorm included).
    Float32 rounding of the two implementations (fused vs einsum matmuls, folded LayerNorm) differs by
    ~1e-6 of an activation of norm ~10: 1e-4 absolute is far below any SAE's reconstruction error."""
    from sae_core.datasets import iter_texts, token_windows
    import itertools

    reader = activations.activation_reader(toy_model, hook, processing)
    assert reader.forward.startswith("hf:transformer.h.")
    tokens = torch.stack(list(itertools.islice(token_windows(toy_model.tokenizer, iter_texts("toy-corpus:3"), 48), 6)))
    expected = hook_activations(toy_model.hooked(processing), tokens, hook)
    got = reader(tokens)
    assert got.shape == expected.shape == (6, 48, 64)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if processing is None and hook.endswith("resid_post"):  # centring is really there: HF's raw stream is not centred
        raw = activations.activation_reader(toy_model, hook, {"center_writing_weights": False})(tokens)
        assert (raw - expected).abs().max() > 1e-2


@pytest.mark.parametrize("hook", ["blocks.1.hook_mlp_out", "blocks.1.attn.hook_z", "blocks.1.hook_resid_mid"])
def test_hooks_without_an_hf_counterpart_go_through_transformer_lens(toy_model, hook):
    reader = activations.activation_reader(toy_model, hook)
    assert reader.forward == "transformer_lens"
    tokens = torch.randint(0, 1000, (2, 16))
    assert torch.equal(reader(tokens), hook_activations(toy_model.hooked(), tokens, hook))
    with pytest.raises(ValueError, match="is not in model"):
        activations.activation_reader(toy_model, "blocks.7.hook_resid_post")  # past the last block: TL's clear error


def test_cache_through_the_loaded_model_equals_the_cache_through_transformer_lens(toy_model, tmp_path):
    """What the pipeline's caching task stores (LoadedModel, HF forward) is what caching the
    TransformerLens view stored before, shard by shard and token by token."""
    spec = ActivationCacheSpec(**SPEC)
    fast_store, tl_store = Storage(f"file://{tmp_path}/hf"), Storage(f"file://{tmp_path}/tl")
    fast = cache_activations(toy_model, toy_model.tokenizer, spec, fast_store, "acts", progress=False)
    slow = cache_activations(toy_model.hooked(), toy_model.tokenizer, spec, tl_store, "acts", progress=False)
    assert fast["forward"] == "hf:transformer.h.1:output:centred" and slow["forward"] == "transformer_lens"
    assert [s["rows"] for s in fast["shards"]] == [s["rows"] for s in slow["shards"]]
    for a, b in zip(fast["shards"], slow["shards"]):
        fa, sa = fast_store.get_tensors(a["key"]), tl_store.get_tensors(b["key"])
        assert torch.equal(fa["token_ids"], sa["token_ids"])
        torch.testing.assert_close(fa["activations"], sa["activations"], atol=1e-4, rtol=1e-4)
