"""Tests of sae_core.sae_prune against a naive reference written here.

The reference recomputes the SAE's encoder input / pre-activations / latents /
reconstruction by hand in float64 (not through sae-lens or the library) and picks the
pruned weights with Python loops and ``sorted`` - independent of the vectorised code.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

try:
    import sae_core  # noqa: F401
except ImportError:  # running `pytest` without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sae_lens import SAE

from sae_core.sae_io import new_sae, save_sae
from sae_core.sae_prune import RULES, SAENorms, accumulate_sae_norms, prune_sae

HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE = 16, 24
ARCHS = [("standard", None), ("topk", 5), ("jumprelu", None)]


def random_sae(arch: str, k: int | None, seed: int = 0) -> SAE:
    sae = new_sae(arch, D_IN, D_SAE, HOOK, k=k, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        if hasattr(sae, "threshold"):
            sae.threshold.abs_().mul_(0.2)
    return sae


def calibration(seed: int = 1, n_batches: int = 4, rows: int = 37) -> list[torch.Tensor]:
    """Batches of different sizes and scales, so mean-of-batch-norms != true norm."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(rows + 5 * b, D_IN, generator=gen) * (1 + 2 * b) + 0.3 for b in range(n_batches)]


# --------------------------------------------------------------------------- reference


def ref_norms(sae: SAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Norms over all tokens, by hand, float64."""
    W_enc, W_dec = sae.W_enc.double(), sae.W_dec.double()
    b_enc, b_dec = sae.b_enc.double(), sae.b_dec.double()
    x = x.double()
    sae_in = x - b_dec if sae.cfg.apply_b_dec_to_input else x
    pre = sae_in @ W_enc + b_enc
    arch = sae.cfg.architecture()
    if arch == "standard":
        f = pre.clamp(min=0)
    elif arch == "jumprelu":
        f = pre.clamp(min=0) * (pre > sae.threshold.double())
    else:  # topk: keep the k largest pre-activations (relu'd) per token
        f = torch.zeros_like(pre)
        for t in range(pre.shape[0]):
            top = sorted(range(pre.shape[1]), key=lambda j: -pre[t, j].item())[: sae.cfg.k]
            for j in top:
                f[t, j] = max(pre[t, j].item(), 0.0)
    recon = f @ W_dec + b_dec
    sq = lambda a: a.pow(2).sum(0).sqrt()  # noqa: E731
    return {"input": sq(sae_in), "preact": sq(pre), "latent": sq(f), "recon": sq(recon)}


def _lowest(scores: list[float], n: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: scores[i])[:n]


def ref_masks(sae: SAE, rule: str, sparsity: float, norms: dict[str, torch.Tensor]):
    W_enc, W_dec = sae.W_enc.detach().double(), sae.W_dec.detach().double()
    d_in, d_sae = W_enc.shape
    enc = torch.zeros(d_in, d_sae, dtype=torch.bool)
    dec = torch.zeros(d_sae, d_in, dtype=torch.bool)
    if rule == "wanda":
        for j in range(d_sae):  # each latent: its d_in input weights
            scores = [abs(W_enc[i, j].item()) * norms["input"][i].item() for i in range(d_in)]
            for i in _lowest(scores, int(sparsity * d_in)):
                enc[i, j] = True
        for i in range(d_in):  # each output dim: its d_sae incoming weights
            scores = [abs(W_dec[j, i].item()) * norms["latent"][j].item() for j in range(d_sae)]
            for j in _lowest(scores, int(sparsity * d_sae)):
                dec[j, i] = True
    elif rule == "paper":
        for i in range(d_in):  # each input dim: its d_sae outgoing weights
            scores = [abs(W_enc[i, j].item()) * norms["preact"][j].item() for j in range(d_sae)]
            for j in _lowest(scores, int(sparsity * d_sae)):
                enc[i, j] = True
        for j in range(d_sae):  # each latent: its d_in outgoing weights
            scores = [abs(W_dec[j, i].item()) * norms["recon"][i].item() for i in range(d_in)]
            for i in _lowest(scores, int(sparsity * d_in)):
                dec[j, i] = True
    else:  # magnitude, one threshold per matrix
        for W, mask in ((W_enc, enc), (W_dec, dec)):
            cells = [(r, c) for r in range(W.shape[0]) for c in range(W.shape[1])]
            scores = [abs(W[r, c].item()) for r, c in cells]
            for idx in _lowest(scores, int(sparsity * len(cells))):
                mask[cells[idx]] = True
    return enc, dec


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


# --------------------------------------------------------------------------- masks


def ref_unit_norm_weights(sae: SAE, enc_mask: torch.Tensor, dec_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The documented rule by hand, float64: mask, switch off zero-row latents, fold row norms."""
    W_enc = sae.W_enc.detach().double() * ~enc_mask
    W_dec = sae.W_dec.detach().double() * ~dec_mask
    b_enc = sae.b_enc.detach().double().clone()
    n = W_dec.norm(dim=1)
    off = n == 0
    W_enc[:, off] = 0.0
    b_enc[off] = 0.0
    orig = sae.W_dec.detach().double()
    W_dec[off] = orig[off] / orig[off].norm(dim=1, keepdim=True)
    n = torch.where(off, torch.ones_like(n), n)
    out = {"W_enc": W_enc * n, "b_enc": b_enc * n, "W_dec": W_dec / n[:, None], "off": off, "row_norm": n}
    if hasattr(sae, "threshold"):
        out["threshold"] = sae.threshold.detach().double() * n
    return out


def ref_forward(sae: SAE, enc_mask: torch.Tensor, dec_mask: torch.Tensor, x: torch.Tensor):
    """(latents, reconstruction) of the *unfolded* masked SAE, by hand in float64.

    TopK selects the k largest ``pre_j * ||masked row j||`` (the documented semantics); a
    zero-row latent contributes nothing and, being switched off, is never active.
    """
    W_enc = sae.W_enc.detach().double() * ~enc_mask
    W_dec = sae.W_dec.detach().double() * ~dec_mask
    b_enc, b_dec = sae.b_enc.detach().double(), sae.b_dec.detach().double()
    x = x.double()
    pre = (x - b_dec if sae.cfg.apply_b_dec_to_input else x) @ W_enc + b_enc
    n = W_dec.norm(dim=1)
    off = n == 0
    arch = sae.cfg.architecture()
    if arch == "standard":
        f = pre.clamp(min=0)
    elif arch == "jumprelu":
        f = pre.clamp(min=0) * (pre > sae.threshold.double())
    else:
        score = pre * n
        f = torch.zeros_like(pre)
        for t in range(pre.shape[0]):
            for j in sorted(range(pre.shape[1]), key=lambda j: -score[t, j].item())[: sae.cfg.k]:
                f[t, j] = max(score[t, j].item(), 0.0)
        f = f / torch.where(off, torch.ones_like(n), n)  # back to the unfolded scale
    f[:, off] = 0.0
    return f, f @ W_dec + b_dec


# --------------------------------------------------------------------------- masks and the documented rule


@pytest.mark.filterwarnings("ignore:original TopK SAE selects on raw pre-activations")
@pytest.mark.parametrize("arch,k", ARCHS)
@pytest.mark.parametrize("rule", RULES)
def test_masks_match_reference_and_weights_follow_the_documented_rule(arch, k, rule):
    """Masks against the loop reference; then the stored weights against the unit-norm rule by hand.

    A wrong variant is caught: kept weights not scaled by the *masked* row norm (or scaled by
    the original's) fail the weight comparison; a JumpReLU threshold left unscaled, a TopK
    selecting on raw pre-activations, or a zero-row latent left firing fail the forward
    comparison; a pruned weight revived (other than a switched-off row) fails the zero pattern.
    """
    sae = random_sae(arch, k)
    before = {name: t.clone() for name, t in sae.state_dict().items()}
    batches = calibration()
    norms = accumulate_sae_norms(sae, batches)
    ref = ref_norms(sae, torch.cat(batches))
    x = torch.cat(batches)

    for sparsity in (0.5, 0.3):
        pruned, report = prune_sae(sae, rule, sparsity, norms)
        enc_ref, dec_ref = ref_masks(sae, rule, sparsity, ref)
        want = ref_unit_norm_weights(sae, enc_ref, dec_ref)
        off = want["off"]
        # zero pattern: exactly the masks, plus switched-off encoder columns, minus their restored rows
        assert torch.equal(pruned.W_enc == 0, enc_ref | off[None, :]), (rule, sparsity)
        assert torch.equal(pruned.W_dec == 0, dec_ref & ~off[:, None]), (rule, sparsity)
        assert report["switched_off_latents"] == int(off.sum())

        # kept weights: the original's times the per-latent fold factor; b_dec untouched
        for name in ("W_enc", "b_enc", "W_dec", "threshold"):
            if name in want:
                torch.testing.assert_close(getattr(pruned, name).double(), want[name], rtol=1e-5, atol=1e-6)
        assert torch.equal(_bits(pruned.b_dec), _bits(before["b_dec"]))
        norms_now = pruned.W_dec.norm(dim=1)
        assert (norms_now - 1).abs().max() < 1e-5 and report["decoder_norm_max_deviation"] < 1e-5

        # same function as the masked SAE under the documented semantics; switched-off latents silent
        f_ref, recon_ref = ref_forward(sae, enc_ref, dec_ref, x)
        with torch.no_grad():
            f = pruned.encode(x)
            recon = pruned.decode(f)
        torch.testing.assert_close(recon.double(), recon_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(f.double(), f_ref * want["row_norm"], rtol=1e-4, atol=1e-4)
        assert (f[:, off] == 0).all()

        # exact sparsity per comparison group (on the masked weights)
        n_in, n_sae = int(sparsity * D_IN), int(sparsity * D_SAE)
        if rule == "wanda":
            assert (enc_ref.sum(0) == n_in).all() and (dec_ref.sum(0) == n_sae).all()
        elif rule == "paper":
            assert (enc_ref.sum(1) == n_sae).all() and (dec_ref.sum(1) == n_in).all()
            assert not off.any()  # paper never empties a whole row
        else:
            assert enc_ref.sum() == int(sparsity * D_IN * D_SAE)
            assert dec_ref.sum() == int(sparsity * D_IN * D_SAE)
        assert report["rule"] == rule and report["sparsity"] == sparsity
        enc_zero = pruned.W_enc == 0
        assert report["achieved_encoder_sparsity"] == pytest.approx(enc_zero.float().mean().item())
        assert report["achieved_decoder_sparsity"] == pytest.approx(dec_ref.float().mean().item())
        both = (enc_zero.sum() + dec_ref.sum()).item() / (2 * D_IN * D_SAE)
        assert report["achieved_sparsity"] == pytest.approx(both)
        assert type(pruned) is type(sae)
        assert pruned.cfg.metadata.sae_transfer_pruning["decoder_rows"].startswith("unit norm")
        if arch == "topk":
            assert pruned.cfg.rescale_acts_by_decoder_norm and "topk_selection" in report

    # the original SAE is not modified
    assert all(torch.equal(before[n], t) for n, t in sae.state_dict().items())


@pytest.mark.filterwarnings("ignore:original TopK SAE selects on raw pre-activations")
@pytest.mark.parametrize("arch,k", ARCHS)
def test_a_latent_whose_decoder_row_is_pruned_away_never_fires(arch, k):
    """Latent 0 never fires on the calibration set, so wanda empties its decoder row.

    Afterwards it is switched off: never active even on inputs that drive its original
    pre-activation far above every other latent's (where, left on, it would take a TopK slot).
    """
    sae = random_sae(arch, k)
    with torch.no_grad():
        sae.b_enc[0] = -1e4  # dead on calibration data
    pruned, report = prune_sae(sae, "wanda", 0.5, accumulate_sae_norms(sae, calibration()))
    assert report["switched_off_latents"] >= 1 and pruned.W_enc[:, 0].abs().sum() == 0 and pruned.b_enc[0] == 0
    assert pruned.W_dec[0].norm().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(pruned.W_dec[0], sae.W_dec[0] / sae.W_dec[0].norm())  # its original direction
    # inputs along latent 0's encoder direction: hugely positive for it in the original
    x = sae.W_enc[:, 0].detach()[None, :] * torch.linspace(1, 50, 20)[:, None]
    with torch.no_grad():
        sae.b_enc[0] = 0.0
        assert (sae.encode(x)[:, 0] > 0).all()  # the original (revived) would fire ...
        assert (pruned.encode(x)[:, 0] == 0).all()  # ... the pruned copy never does


def test_zero_sparsity_only_folds_and_magnitude_needs_no_norms():
    """Nothing pruned: the copy is the original with its row norms folded away, same function."""
    x = torch.cat(calibration())
    for arch, k in ARCHS:
        sae = random_sae(arch, k)
        if arch == "topk":  # folding is exact for TopK only under the rescale semantics
            sae.cfg.rescale_acts_by_decoder_norm = True
        pruned, report = prune_sae(sae, "magnitude", 0.0)
        assert report["achieved_encoder_sparsity"] == 0.0 and report["calibration_tokens"] == 0
        assert report["switched_off_latents"] == 0 and report["decoder_norm_max_deviation"] < 1e-5
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), sae(x), rtol=1e-4, atol=1e-4)
            assert torch.equal(pruned.encode(x) != 0, sae.encode(x) != 0)


# --------------------------------------------------------------------------- norms


@pytest.mark.parametrize("arch,k", ARCHS)
def test_norms_accumulate_over_all_tokens(arch, k):
    sae = random_sae(arch, k)
    batches = calibration()
    full = torch.cat(batches)
    acc = accumulate_sae_norms(sae, batches)
    one = accumulate_sae_norms(sae, [full])
    ref = ref_norms(sae, full)
    assert acc.n_tokens == one.n_tokens == full.shape[0]
    assert acc.input_sq.dtype == torch.float32
    for key, got in acc.norms().items():
        torch.testing.assert_close(got, one.norms()[key], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.double(), ref[key], rtol=1e-4, atol=1e-4)

    # NOT the mean of per-batch norms
    per_batch = torch.stack([accumulate_sae_norms(sae, [b]).norms()["input"] for b in batches]).mean(0)
    assert not torch.allclose(per_batch, acc.norms()["input"], rtol=1e-2)

    # merge() of shards == one pass; state_dict round trip
    merged = accumulate_sae_norms(sae, batches[:2]).merge(accumulate_sae_norms(sae, batches[2:]))
    torch.testing.assert_close(merged.input_sq, acc.input_sq, rtol=1e-5, atol=1e-4)
    assert merged.n_tokens == acc.n_tokens
    back = SAENorms.from_state_dict(acc.state_dict())
    assert torch.equal(back.recon_sq, acc.recon_sq) and back.n_tokens == acc.n_tokens


def test_norms_see_the_input_as_the_encoder_does():
    """apply_b_dec_to_input changes what W_enc multiplies, so it changes the input norms."""
    sae = random_sae("standard", None)
    x = calibration()
    with_bias = accumulate_sae_norms(sae, x).norms()["input"]
    sae.cfg.apply_b_dec_to_input = False
    without = accumulate_sae_norms(sae, x).norms()["input"]
    torch.testing.assert_close(without.double(), torch.cat(x).double().pow(2).sum(0).sqrt(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(with_bias, without)


# --------------------------------------------------------------------------- storage


@pytest.mark.parametrize("arch,k", ARCHS)
@pytest.mark.filterwarnings("ignore:original TopK SAE selects on raw pre-activations")
def test_pruned_sae_round_trips_through_sae_lens(tmp_path, arch, k):
    sae = random_sae(arch, k)
    pruned, report = prune_sae(sae, "wanda", 0.5, accumulate_sae_norms(sae, calibration()))
    folder = save_sae(pruned, tmp_path / "pruned")
    loaded = SAE.load_from_disk(folder)
    assert type(loaded) is type(sae)
    for name, t in pruned.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    assert loaded.cfg.metadata.sae_transfer_pruning["rule"] == "wanda"
    assert (loaded.W_dec.norm(dim=1) - 1).abs().max() < 1e-5
    if arch == "topk":
        assert loaded.cfg.rescale_acts_by_decoder_norm
    x = torch.cat(calibration())
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    json.dumps(report)  # report is JSON-serialisable


def test_topk_selection_semantics_change_is_warned_only_when_it_changes_anything():
    """An original that already selects by pre-activation x row norm (or has unit rows) needs no warning."""
    flagged = new_sae("topk", D_IN, D_SAE, HOOK, k=4, seed=0, rescale_acts_by_decoder_norm=True)
    unit = random_sae("topk", 4)
    with torch.no_grad():
        unit.W_dec.div_(unit.W_dec.norm(dim=1, keepdim=True))
    for sae in (flagged, unit):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, report = prune_sae(sae, "magnitude", 0.5)
        assert report["topk_selection"].startswith("k largest pre-activation x decoder-row norm")
    plain = random_sae("topk", 4)  # raw pre-activation selection, non-unit rows
    with pytest.warns(UserWarning, match="selects on raw pre-activations"):
        _, report = prune_sae(plain, "magnitude", 0.5)
    assert any("raw pre-activations" in note for note in report["notes"])


# --------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    sae = random_sae("standard", None)
    norms = accumulate_sae_norms(sae, calibration())
    for bad in (1.0, -0.1, 1.5, math.nan, True, "0.5"):
        with pytest.raises(ValueError, match="sparsity"):
            prune_sae(sae, "wanda", bad, norms)
    with pytest.raises(ValueError, match="'wandaa'"):
        prune_sae(sae, "wandaa", 0.5, norms)
    for rule in ("wanda", "paper"):
        with pytest.raises(ValueError, match=f"'{rule}' needs calibration norms"):
            prune_sae(sae, rule, 0.5, None)
    other = accumulate_sae_norms(new_sae("standard", D_IN, 8, HOOK, seed=0), calibration())
    with pytest.raises(ValueError, match="d_sae=8"):
        prune_sae(sae, "wanda", 0.5, other)
    with pytest.raises(ValueError, match=r"\(7, 3\)"):
        accumulate_sae_norms(sae, [torch.randn(7, 3)])
    with pytest.raises(ValueError, match="no activations"):
        accumulate_sae_norms(sae, [])


def test_hook_z_sae_accepts_per_head_or_flat_batches():
    sae = new_sae("standard", 32, 48, "blocks.0.attn.hook_z", reshape_activations="hook_z", seed=0)
    x = torch.randn(50, 4, 8, generator=torch.Generator().manual_seed(0))
    per_head = accumulate_sae_norms(sae, [x])
    flat = accumulate_sae_norms(sae, [x.reshape(50, 32)])
    for key, value in per_head.state_dict().items():
        assert torch.equal(value, flat.state_dict()[key]), key
    assert sae.hook_z_reshaping_mode  # restored afterwards
    pruned, _ = prune_sae(sae, "wanda", 0.25, flat)
    assert pruned.cfg.reshape_activations == "hook_z" and pruned(x).shape == x.shape
