"""Tests of sae_core.sae_io: sae-lens folder round trips, source parsing, building, hook checks.

No hub access: SAEs are built from configs with random weights; pretrained-release loading
is exercised only for its validation paths (and with ``SAE.from_pretrained`` stubbed out).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

try:
    import sae_core  # noqa: F401
except ImportError:  # running `pytest` without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAE
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_core.sae_io import (
    SAESource,
    check_sae_matches_hook,
    clone_sae,
    decoder_norm_deviation,
    load_sae,
    new_sae,
    parse_sae_source,
    sae_hook_name,
    save_sae,
    validate_pretrained,
)

HOOK = "blocks.0.hook_resid_post"
ARCHS = [("standard", None), ("topk", 3), ("jumprelu", None)]
CLASSES = {"standard": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE"}


def random_sae(arch: str, k: int | None, d_in: int = 16, d_sae: int = 24, seed: int = 0, **kw) -> SAE:
    """An SAE with every parameter (biases and thresholds included) random and non-zero."""
    sae = new_sae(arch, d_in, d_sae, HOOK, k=k, seed=seed, **kw)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        if hasattr(sae, "threshold"):
            sae.threshold.abs_().mul_(0.1)
    return sae


@pytest.fixture(scope="module")
def tiny_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_vocab=100, act_fn="gelu", d_mlp=64, seed=0
    )
    return HookedTransformer(cfg).eval()


def _same_state(a: SAE, b: SAE) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("arch,k", ARCHS)
def test_save_then_sae_lens_load_from_disk_round_trips(tmp_path, arch, k):
    sae = random_sae(arch, k, apply_b_dec_to_input=False)
    folder = save_sae(sae, tmp_path / "sae")
    assert (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()

    loaded = SAE.load_from_disk(folder)
    assert type(loaded).__name__ == CLASSES[arch]
    assert _same_state(sae, loaded)
    assert loaded.cfg.d_in == 16 and loaded.cfg.d_sae == 24
    assert loaded.cfg.apply_b_dec_to_input is False
    assert sae_hook_name(loaded) == HOOK
    if k is not None:
        assert loaded.cfg.k == k
    x = torch.randn(5, 16)
    assert torch.equal(sae(x), loaded(x))
    # our loader opens the same folder identically
    assert _same_state(load_sae(folder), sae)
    assert _same_state(load_sae(str(folder)), sae)


def test_training_sae_is_saved_as_its_inference_class(tmp_path):
    training = new_sae("jumprelu", 8, 12, HOOK, training=True, seed=0)
    assert isinstance(training, TrainingSAE)
    loaded = SAE.load_from_disk(save_sae(training, tmp_path / "t"))
    assert type(loaded).__name__ == "JumpReLUSAE"
    assert torch.equal(loaded.W_enc, training.W_enc) and torch.equal(loaded.threshold, training.threshold)


def test_clone_is_independent():
    sae = random_sae("topk", 3)
    twin = clone_sae(sae)
    assert type(twin) is type(sae) and _same_state(sae, twin)
    twin.W_enc.data.zero_()
    assert not torch.equal(sae.W_enc, twin.W_enc)
    assert twin.cfg is not sae.cfg and twin.cfg.k == 3


def test_decoder_norm_deviation_agrees_with_saebench_check():
    """Our figure is max |‖W_dec[j]‖ - 1|; SAEBench's check passes iff it is within 1e-5 (float32)."""
    from sae_bench.sae_bench_utils.general_utils import check_decoder_norms

    sae = random_sae("standard", None)
    norms = sae.W_dec.detach().norm(dim=1)
    assert decoder_norm_deviation(sae) == pytest.approx((norms - 1).abs().max().item(), rel=1e-6)
    with pytest.warns(UserWarning, match="not normalized"):
        assert not check_decoder_norms(sae.W_dec.data)
    sae.fold_W_dec_norm()
    assert decoder_norm_deviation(sae) < 1e-5 and check_decoder_norms(sae.W_dec.data)
    with torch.no_grad():
        sae.W_dec[3] *= 1.001  # one row off by 1e-3 is enough to fail both
    assert decoder_norm_deviation(sae) == pytest.approx(1e-3, rel=1e-2)
    with pytest.warns(UserWarning, match="not normalized"):
        assert not check_decoder_norms(sae.W_dec.data)


# --------------------------------------------------------------------------- sources


def test_local_folder_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="no-such-dir"):
        load_sae(tmp_path / "no-such-dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="missing"):
        load_sae(tmp_path / "empty")


def test_release_syntax():
    src = parse_sae_source("release:gpt2-small-res-jb?id=blocks.0.hook_resid_pre")
    assert src == SAESource("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
    assert str(src) == "release:gpt2-small-res-jb?id=blocks.0.hook_resid_pre"
    assert parse_sae_source("some/local/dir") == Path("some/local/dir")
    for bad in ("release:gpt2-small-res-jb", "release:?id=x", "release:x?id="):
        with pytest.raises(ValueError, match="malformed"):
            parse_sae_source(bad)


def test_unknown_release_or_id_rejected_before_any_download(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("from_pretrained must not be called for invalid sources")

    monkeypatch.setattr(SAE, "from_pretrained", no_network)
    with pytest.raises(ValueError, match="no-such-release"):
        load_sae("release:no-such-release?id=blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match="blocks.99.hook_resid_pre"):
        load_sae(SAESource("gpt2-small-res-jb", "blocks.99.hook_resid_pre"))
    with pytest.raises(ValueError, match="jbloom/GPT2"):
        validate_pretrained("jbloom/GPT2-Small-SAEs-Reformatted", "blocks.0.hook_resid_pre")


def test_valid_release_is_handed_to_sae_lens(monkeypatch):
    calls = []
    stub = random_sae("standard", None)

    def fake_from_pretrained(release, sae_id, device="cpu", dtype="float32", **kw):
        calls.append((release, sae_id, device, dtype))
        return stub

    monkeypatch.setattr(SAE, "from_pretrained", fake_from_pretrained)
    out = load_sae("release:gpt2-small-res-jb?id=blocks.0.hook_resid_pre")
    assert out is stub
    assert calls == [("gpt2-small-res-jb", "blocks.0.hook_resid_pre", "cpu", "float32")]

    def failing(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(SAE, "from_pretrained", failing)
    with pytest.raises(RuntimeError, match="gpt2-small-res-jb"):
        load_sae("release:gpt2-small-res-jb?id=blocks.0.hook_resid_pre")


# --------------------------------------------------------------------------- new_sae


@pytest.mark.parametrize("arch,k", ARCHS)
def test_new_sae_like_copies_shape_and_settings(arch, k):
    ref = random_sae(arch, k, apply_b_dec_to_input=False, normalize_activations="layer_norm")
    ref.cfg.metadata.hook_head_index = None
    ref.cfg.metadata.model_name = "tiny"
    fresh = new_sae(like=ref, seed=3)
    assert type(fresh) is type(ref)
    assert (fresh.cfg.d_in, fresh.cfg.d_sae) == (16, 24)
    assert fresh.cfg.apply_b_dec_to_input is False
    assert fresh.cfg.normalize_activations == "layer_norm"
    assert sae_hook_name(fresh) == HOOK and fresh.cfg.metadata.model_name == "tiny"
    if k is not None:
        assert fresh.cfg.k == k
    assert not torch.equal(fresh.W_dec, ref.W_dec)
    assert _same_state(fresh, new_sae(like=ref, seed=3))  # seeded
    assert not torch.equal(fresh.W_dec, new_sae(like=ref, seed=4).W_dec)

    trainable = new_sae(like=ref, training=True, seed=3)
    assert isinstance(trainable, TrainingSAE) and trainable.cfg.architecture() == arch
    assert trainable.cfg.normalize_activations == "layer_norm"


def test_new_sae_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="'gated'"):
        new_sae("gated", 8, 16, HOOK)
    with pytest.raises(ValueError, match="k=None"):
        new_sae("topk", 8, 16, HOOK)
    with pytest.raises(ValueError, match="k=17"):
        new_sae("topk", 8, 16, HOOK, k=17)
    with pytest.raises(ValueError, match="d_in"):
        new_sae("standard", 0, 16, HOOK)
    with pytest.raises(ValueError, match="l1_coef"):
        new_sae("standard", 8, 16, HOOK, training=True, l1_coef=3.0)
    with pytest.raises(ValueError, match="k=4"):
        new_sae("standard", 8, 16, HOOK, k=4)


# --------------------------------------------------------------------------- hooks


def test_check_sae_matches_hook(tiny_model):
    sae = new_sae("standard", 32, 64, HOOK, seed=0)
    assert check_sae_matches_hook(sae, tiny_model) == 32
    assert check_sae_matches_hook(sae, tiny_model, HOOK) == 32

    with pytest.raises(ValueError, match="blocks.0.hook_resid_postt"):
        check_sae_matches_hook(sae, tiny_model, "blocks.0.hook_resid_postt", allow_other_hook=True)
    with pytest.raises(ValueError, match="blocks.1.hook_resid_post"):
        check_sae_matches_hook(sae, tiny_model, "blocks.1.hook_resid_post")
    assert check_sae_matches_hook(sae, tiny_model, "blocks.1.hook_resid_post", allow_other_hook=True) == 32

    narrow = new_sae("standard", 16, 64, HOOK, seed=0)
    with pytest.raises(ValueError, match="d_in=16.*width 32"):
        check_sae_matches_hook(narrow, tiny_model)

    # attention z: [n_heads=4, d_head=8]
    z_hook = "blocks.0.attn.hook_z"
    z_sae = new_sae("standard", 32, 64, z_hook, reshape_activations="hook_z", seed=0)
    assert check_sae_matches_hook(z_sae, tiny_model) == 32
    flat_sae = new_sae("standard", 32, 64, z_hook, seed=0)
    with pytest.raises(ValueError, match="per-token shape"):
        check_sae_matches_hook(flat_sae, tiny_model)
    head_sae = new_sae("standard", 8, 16, z_hook, seed=0)
    head_sae.cfg.metadata.hook_head_index = 2
    assert check_sae_matches_hook(head_sae, tiny_model) == 8
