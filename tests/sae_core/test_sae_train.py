"""Tests of sae_core.sae_train (sae-lens training on cached activations) and sae_core.sae_quality.

Activations come from a tiny randomly initialised HookedTransformer; token budgets are a few
thousand tokens so that every training run takes well under a second on CPU.
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

from sae_bench.sae_bench_utils.general_utils import check_decoder_norms
from sae_lens import SAE
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_core.sae_io import decoder_norm_deviation, new_sae, save_sae
from sae_core.sae_prune import prune_sae
from sae_core.activations import hook_activations
from sae_core.sae_quality import dense_patched_ce, reconstruction_stats, spliced_ce
from sae_core.sae_train import train_sae, training_to_inference_sae

HOOK = "blocks.0.hook_resid_post"
D_MODEL = 32


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=D_MODEL, n_ctx=32, d_head=8, n_heads=4, d_vocab=100, act_fn="gelu", d_mlp=64, seed=0
    )
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 100, (96, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def acts(model, tokens) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    flat = cache[HOOK].reshape(-1, D_MODEL)  # 3072 tokens
    return {"train": flat[:2048], "held_out": flat[2048:]}


def batches(x: torch.Tensor, size: int = 200) -> list[torch.Tensor]:
    return list(x.split(size))  # uneven last batch on purpose


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("arch,k", [("standard", None), ("topk", 8), ("jumprelu", None)])
def test_retrained_sae_beats_its_random_init(acts, arch, k):
    like = new_sae(arch, D_MODEL, 64, HOOK, k=k, seed=1)
    # exactly what training starts from (same seed, sae-lens training init), as an inference SAE
    flag = {"rescale_acts_by_decoder_norm": True} if k else {}  # train_sae trains TopK with it
    init = training_to_inference_sae(new_sae(like=like, training=True, seed=0, **flag))
    trained, report = train_sae(
        like, batches(acts["train"]), total_tokens=8192, batch_size=256, lr=3e-3,
        l1_coefficient=0.05, l0_coefficient=0.01, seed=0, progress=False,
    )
    assert type(trained) is type(like)
    assert (trained.cfg.d_in, trained.cfg.d_sae) == (D_MODEL, 64)
    assert trained.cfg.metadata.hook_name == HOOK
    if k is not None:
        assert trained.cfg.k == k
    assert report["tokens_used"] == 8192 and report["steps"] == 32 and report["tokens_requested"] == 8192
    assert report["data_passes"] >= 4  # 2048 training tokens reused
    assert report["wall_time_s"] > 0 and report["final_mse"] > 0 and report["final_l0"] > 0

    before = reconstruction_stats(init, batches(acts["held_out"]))
    after = reconstruction_stats(trained, batches(acts["held_out"]))
    assert after["mse"] < 0.5 * before["mse"], (before, after)
    assert after["explained_variance"] > before["explained_variance"] + 0.2, (before, after)
    assert after["explained_variance"] > 0.3, after

    # unit-norm decoder rows, every latent (dead ones too), as SAEBench's own check wants
    assert (trained.W_dec.norm(dim=1) - 1).abs().max() < 1e-5
    assert report["decoder_norm_max_deviation"] < 1e-5
    assert check_decoder_norms(trained.W_dec.data)
    if k is not None:
        assert trained.cfg.rescale_acts_by_decoder_norm


def test_latents_that_never_fire_in_training_end_unit_norm_too(acts):
    """JumpReLU thresholds far above every pre-activation: no latent ever fires, so no decoder row
    gets a gradient and all keep sae-lens' initial norm 0.1 - until the fold."""
    like = new_sae("jumprelu", D_MODEL, 48, HOOK, seed=0)
    trained, report = train_sae(like, batches(acts["train"]), total_tokens=512, batch_size=256, progress=False,
                                sae_overrides={"jumprelu_init_threshold": 1e3})
    assert reconstruction_stats(trained, batches(acts["held_out"]))["alive_fraction"] == 0.0
    assert (trained.W_dec.norm(dim=1) - 1).abs().max() < 1e-5 and check_decoder_norms(trained.W_dec.data)
    assert report["decoder_norm_max_deviation"] < 1e-5


def test_mean_decoder_bias_init_keeps_latents_alive_under_a_large_common_direction(acts):
    """A residual stream whose mean dwarfs its spread (as Gemma's mid layers: mean ~98% of a token's
    norm): TopK with b_dec = 0 keeps choosing the few latents aligned with the mean, the rest die;
    starting b_dec at the mean (what ``b_dec_init="mean"`` does) keeps most alive. A variant that
    ignored the option (or subtracted nothing) is caught by the b_dec check at a zero learning rate."""
    offset = 40.0 * torch.nn.functional.normalize(torch.randn(D_MODEL, generator=torch.Generator().manual_seed(5)), dim=0)
    train, held = acts["train"] + offset, acts["held_out"] + offset
    like = new_sae("topk", D_MODEL, 128, HOOK, k=4, seed=0)

    # With a learning rate of ~0 the trained b_dec is the initial one: the mean of the first batches.
    still, _ = train_sae(like, batches(train, 256), total_tokens=512, batch_size=256, lr=1e-12, progress=False,
                         b_dec_init="mean", n_batches_for_norm_estimate=2)
    assert torch.allclose(still.b_dec, train[:512].mean(0), atol=1e-3)
    zero, _ = train_sae(like, batches(train, 256), total_tokens=512, batch_size=256, lr=1e-12, progress=False)
    assert zero.b_dec.abs().max() < 1e-3

    alive = {}
    for init in ("zeros", "mean"):
        trained, report = train_sae(like, batches(train), total_tokens=8192, batch_size=256, lr=3e-3, seed=0,
                                    progress=False, b_dec_init=init)
        assert report["tokens_used"] == 8192  # the batches read for the mean are trained on too
        alive[init] = reconstruction_stats(trained, batches(held))["alive_fraction"]
    assert alive["mean"] > alive["zeros"] + 0.2, alive

    with pytest.raises(ValueError, match="b_dec_init must be 'zeros' or 'mean', got 'median'"):
        train_sae(like, batches(train), total_tokens=512, batch_size=256, progress=False, b_dec_init="median")


def _random_training_sae(arch: str, k: int | None, n_dead: int = 5) -> SAE:
    """A training SAE with decoder row norms spread over [0.05, 2] and ``n_dead`` latents that never fire."""
    flag = {"rescale_acts_by_decoder_norm": True} if arch == "topk" else {}
    sae = new_sae(arch, D_MODEL, 64, HOOK, k=k, training=True, seed=0, **flag)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) * 0.3)
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=gen) * 0.1)
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=gen) * 0.1)
        rows = torch.randn(sae.W_dec.shape, generator=gen)
        scale = 0.05 + 1.95 * torch.rand(64, 1, generator=gen)
        sae.W_dec.copy_(rows / rows.norm(dim=1, keepdim=True) * scale)
        sae.b_enc[:n_dead] = -1e3  # never fire (and never reach a TopK slot with a positive value)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(0.05 * torch.rand(64, generator=gen))
    return sae


@pytest.mark.parametrize("arch,k", [("standard", None), ("topk", 8), ("jumprelu", None)])
def test_conversion_folds_decoder_norms_without_changing_the_function(acts, arch, k):
    """training_to_inference_sae (what train_sae returns through) gives unit rows, same function.

    A wrong variant is caught: rescaling W_dec without the encoder changes the reconstruction;
    a JumpReLU threshold left unscaled changes which latents fire; leaving dead latents out
    of the fold leaves rows of norm 0.05-2 behind.
    """
    training = _random_training_sae(arch, k)
    x = acts["held_out"]
    with torch.no_grad():
        f_before = training.encode(x)
        recon_before = training.decode(f_before)
        row_norms = training.W_dec.norm(dim=1)
    assert (row_norms - 1).abs().max() > 0.5  # far from unit before
    sae = training_to_inference_sae(training)
    with torch.no_grad():
        f_after = sae.encode(x)
        recon_after = sae.decode(f_after)
    torch.testing.assert_close(recon_after, recon_before, rtol=1e-5, atol=1e-5)
    assert torch.equal(f_after != 0, f_before != 0)  # same latents fire
    scale = 1.0 if arch == "topk" else row_norms  # TopK acts were already on the unit-row scale
    torch.testing.assert_close(f_after, f_before * scale, rtol=1e-5, atol=1e-5)
    assert (f_after[:, :5] == 0).all()  # the dead latents ...
    assert (sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-5  # ... are unit-norm like the rest
    assert decoder_norm_deviation(sae) < 1e-5 and check_decoder_norms(sae.W_dec.data)
    assert training.W_dec.norm(dim=1).equal(row_norms)  # the training SAE is not modified


def test_training_is_deterministic_and_round_trips(acts, tmp_path):
    like = new_sae("topk", D_MODEL, 48, HOOK, k=6, seed=0)
    kw = dict(total_tokens=2048, batch_size=256, lr=3e-3, progress=False, shuffle_buffer_batches=2)
    a, _ = train_sae(like, batches(acts["train"]), seed=0, **kw)
    b, _ = train_sae(like, batches(acts["train"]), seed=0, **kw)
    c, _ = train_sae(like, batches(acts["train"]), seed=1, **kw)
    assert all(torch.equal(a.state_dict()[n], t) for n, t in b.state_dict().items())
    assert not torch.equal(a.W_enc, c.W_enc)

    loaded = SAE.load_from_disk(save_sae(a, tmp_path / "retrained"))
    assert all(torch.equal(loaded.state_dict()[n], t) for n, t in a.state_dict().items())
    assert loaded.cfg.metadata.sae_transfer_training["tokens_used"] == 2048


def test_training_reads_a_one_shot_stream_and_reports_when_it_runs_dry(acts):
    like = new_sae("standard", D_MODEL, 48, HOOK, seed=0)
    stream = (b for b in batches(acts["train"]))  # 2048 tokens, not re-iterable
    _, report = train_sae(like, stream, total_tokens=1024, batch_size=256, progress=False)
    assert report["tokens_used"] == 1024 and report["data_passes"] == 1

    stream = (b for b in batches(acts["train"]))
    with pytest.raises(ValueError, match="ran out after 2048 tokens"):
        train_sae(like, stream, total_tokens=4096, batch_size=256, progress=False)


def test_training_bad_inputs_name_the_value(acts):
    like = new_sae("standard", D_MODEL, 48, HOOK, seed=0)
    data = batches(acts["train"])
    with pytest.raises(ValueError, match="total_tokens=100"):
        train_sae(like, data, total_tokens=100, batch_size=256, progress=False)
    with pytest.raises(ValueError, match="total_tokens must be a positive int, got 0"):
        train_sae(like, data, total_tokens=0, progress=False)
    with pytest.raises(ValueError, match=r"\(10, 16\)"):
        train_sae(like, [torch.randn(10, 16)], total_tokens=512, batch_size=256, progress=False)
    with pytest.raises(ValueError, match="not_a_field"):
        train_sae(like, data, total_tokens=512, batch_size=256, progress=False, trainer_overrides={"not_a_field": 1})
    with pytest.raises(ValueError, match="lr"):
        train_sae(like, data, total_tokens=512, batch_size=256, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm=False"):
        train_sae(new_sae("topk", D_MODEL, 48, HOOK, k=4, seed=0), data, total_tokens=512, batch_size=256,
                  progress=False, sae_overrides={"rescale_acts_by_decoder_norm": False})


# --------------------------------------------------------------------------- quality


def identity_sae(d: int) -> SAE:
    """ReLU SAE with W_enc=[I, -I], W_dec=[I; -I], zero biases: x̂ = relu(x) - relu(-x) = x."""
    sae = new_sae("standard", d, 2 * d, HOOK, seed=0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae(d: int) -> SAE:
    sae = new_sae("standard", d, 2 * d, HOOK, seed=0)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae


def test_reconstruction_stats_accumulate_over_all_batches(acts):
    x = acts["held_out"]
    sae = new_sae("jumprelu", D_MODEL, 64, HOOK, seed=2)
    split = reconstruction_stats(sae, batches(x, 100))
    whole = reconstruction_stats(sae, [x])
    for key in ("mse", "explained_variance", "cosine_similarity", "l0"):
        assert split[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-12), key
    with torch.no_grad():
        x_hat = sae(x).double()
    xd = x.double()
    ev = 1 - (xd - x_hat).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum()
    assert whole["explained_variance"] == pytest.approx(ev.item(), rel=1e-9)
    assert whole["mse"] == pytest.approx((xd - x_hat).pow(2).mean().item(), rel=1e-9)
    assert whole["n_tokens"] == x.shape[0]

    perfect = reconstruction_stats(identity_sae(D_MODEL), batches(x))
    assert perfect["mse"] == 0.0 and perfect["explained_variance"] == 1.0
    assert perfect["cosine_similarity"] == pytest.approx(1.0)

    # heavily pruned / all-zero SAEs give finite numbers, never NaN
    pruned, _ = prune_sae(sae, "magnitude", 0.99)
    for stats in (reconstruction_stats(pruned, batches(x)), reconstruction_stats(zero_sae(D_MODEL), batches(x))):
        assert all(v == v and abs(v) != float("inf") for v in stats.values()), stats
    assert reconstruction_stats(zero_sae(D_MODEL), batches(x))["cosine_similarity"] == 0.0

    with pytest.raises(ValueError, match="no activations"):
        reconstruction_stats(sae, [])


def test_spliced_ce(model, tokens):
    toks = tokens[:12]
    clean = model(toks, return_type="loss").item()

    perfect = spliced_ce(model, identity_sae(D_MODEL), toks, batch_size=5)
    assert perfect["ce_clean"] == pytest.approx(clean, rel=1e-5)
    assert perfect["ce_with_sae"] == pytest.approx(clean, rel=1e-5)
    assert perfect["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)
    assert perfect["ce_zero_ablation"] != pytest.approx(clean, rel=1e-3)
    assert perfect["ce_tokens"] == 12 * 31

    ablated = spliced_ce(model, zero_sae(D_MODEL), toks, batch_size=12)
    assert ablated["ce_with_sae"] == pytest.approx(ablated["ce_zero_ablation"], rel=1e-6)
    assert ablated["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)

    # The default batch keeps one logits tensor small; losses are sums over tokens, so it changes nothing else.
    auto = spliced_ce(model, zero_sae(D_MODEL), toks)
    assert auto == pytest.approx(ablated, rel=1e-6)

    with pytest.raises(ValueError, match="d_in=16"):
        spliced_ce(model, new_sae("standard", 16, 32, HOOK, seed=0), toks)
    with pytest.raises(ValueError, match="tokens must be an integer tensor"):
        spliced_ce(model, identity_sae(D_MODEL), toks.float())


def test_dense_patch_control_patches_the_other_models_activations(model, tokens):
    """The control's two passes: ``hook_activations`` (stops at the hook's block) equals a full
    forward's cache; a model patched with its own activations loses nothing; patched with another
    model's, the loss is what a hand-written hook gives. Patching the wrong hook, or the model's own
    activations instead of the other's, or dropping the stop-early forward's last block, fails here."""
    toks = tokens[:10]
    other = HookedTransformer(model.cfg.to_dict() | {"seed": 1}).eval()
    with torch.no_grad():
        _, full_cache = other.run_with_cache(toks, names_filter=HOOK)
    other_acts = hook_activations(other, toks, HOOK, batch_size=3)
    assert other_acts.shape == (10, 32, D_MODEL)
    torch.testing.assert_close(other_acts, full_cache[HOOK], rtol=0, atol=1e-6)

    own = dense_patched_ce(model, hook_activations(model, toks, HOOK), toks, HOOK, batch_size=4)
    assert own["delta_ce_dense_patch"] == pytest.approx(0.0, abs=1e-6)
    assert own["ce_clean"] == pytest.approx(model(toks, return_type="loss").item(), rel=1e-5)

    patched = dense_patched_ce(model, other_acts, toks, HOOK, batch_size=4)
    with torch.no_grad():
        by_hand = model.run_with_hooks(toks, return_type="loss", fwd_hooks=[(HOOK, lambda act, hook: full_cache[HOOK])]).item()
    assert patched["ce_dense_patched"] == pytest.approx(by_hand, rel=1e-5)
    assert abs(patched["delta_ce_dense_patch"]) > 1e-3 and patched["ce_tokens"] == 10 * 31
    with pytest.raises(ValueError, match=r"do not cover tokens \(12, 32\)"):
        dense_patched_ce(model, other_acts, tokens[:12], HOOK)


def test_logit_batches_fit_a_big_vocabulary_in_memory():
    """Gemma 3's 262,144-row vocabulary at 128 tokens: 8 sequences of float32 logits are 1.07 GB per
    tensor, and a cold run peaked at 12.9 GB; the helper takes 2. Small vocabularies keep 8."""
    from sae_core.lm_eval import LOGITS_BUDGET_BYTES, logits_batch_size

    assert logits_batch_size(262_144, 128) == 2 and 2 * 128 * 262_144 * 4 <= LOGITS_BUDGET_BYTES
    assert logits_batch_size(1024, 128) == 8 and logits_batch_size(50_257, 1024) == 1
