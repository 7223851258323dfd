"""SAE variants (sae_core.variants) on tiny SAEs and synthetic activations whose answers are known.

- spec text: parsing, errors naming the bad part, duplicates, canonical round trip;
- every method: a NEW SAE of the same class and width, unit-norm rows, save_sae -> SAE.load_from_disk
  round trip, the original untouched;
- recalibrate undoes a constant shift; refit_decoder equals an independent numpy solve of its
  shrinkage estimator (plain lstsq in the λ -> 0 limit) and its unit-norm fold keeps the function; on a
  slightly perturbed TopK case it beats transfer and keeps identity; the affine fold reproduces the original's codes exactly;
  finetune starts from the original and spends FRACTION of the retrain budget;
- identity: self, a permuted copy, one rotated decoder row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens import SAE

from sae_core.sae_io import clone_sae, decoder_norm_deviation, new_sae, save_sae
from sae_core.variants import (METHODS, VariantInputs, VariantSpec, build_variant, code_fidelity, decoder_identity,
                               match_latents, parse_variant, parse_variants)
from sae_core.variants.folding import fold_affine_into_encoder
from sae_core.variants.refit_decoder import SHRINK_GRID, refit_decoder_

HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE, K = 16, 64, 8
ARCHS = [("standard", None), ("topk", K), ("jumprelu", None)]
TRAIN = {"train_tokens": 2048, "lr": 1e-3, "batch_size": 256}


# ------------------------------------------------------------------ a world with a known answer
def _world(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(D_SAE, D_IN, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    mu = torch.randn(D_IN, generator=g)
    return D, mu


def make_sae(arch: str, k: int | None, seed: int = 0) -> SAE:
    """Tied SAE reading the world's dictionary: latent j <-> direction D[j], b_dec = data mean."""
    D, mu = _world(seed)
    sae = new_sae(arch, D_IN, D_SAE, HOOK, k=k, seed=seed)
    with torch.no_grad():
        sae.W_dec.copy_(D)
        sae.W_enc.copy_(D.T)
        sae.b_dec.copy_(mu)
        sae.b_enc.fill_(-0.3 if arch == "standard" else 0.0)
        if arch == "jumprelu":
            sae.threshold.fill_(0.3)
    return sae


def make_acts(n: int = 4096, seed: int = 1, world_seed: int = 0) -> torch.Tensor:
    """Each token: 3 random dictionary directions with amplitudes in [0.5, 2], plus the mean and noise."""
    D, mu = _world(world_seed)
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(n, D_SAE)
    idx = torch.stack([torch.randperm(D_SAE, generator=g)[:3] for _ in range(n)])
    codes.scatter_(1, idx, 0.5 + 1.5 * torch.rand(n, 3, generator=g))
    return mu + codes @ D + 0.01 * torch.randn(n, D_IN, generator=g)


def batches(x: torch.Tensor, size: int = 512) -> list[torch.Tensor]:
    return list(x.split(size))


def mse(sae: SAE, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((sae.decode(sae.encode(x)) - x).pow(2).mean())


def state(sae: SAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ spec text
def test_specs_parse_round_trip_and_reject_bad_parts():
    texts = ["transfer", "retrain", "prune:wanda:0.5", "prune:paper:0", "prune:magnitude:0.25", "finetune:0.05",
             "finetune:1", "recalibrate", "refit_decoder", "affine"]
    for text in texts:
        spec = parse_variant(text)
        assert parse_variant(spec.text) == spec and spec.text == text and str(spec) == text
    assert parse_variant(" Prune:WANDA:0.50 ") == VariantSpec("prune", rule="wanda", sparsity=0.5)
    assert parse_variant("finetune:0.1").fraction == 0.1 and parse_variant("finetune:1e-3").text == "finetune:0.001"
    odd = VariantSpec("finetune", fraction=0.1 + 0.2)
    assert parse_variant(odd.text) == odd  # exact round trip of a float that %g would round
    from sae_core.sae_prune import RULES
    from sae_core.variants.registry import PRUNE_RULES

    assert PRUNE_RULES == RULES  # one source: sae_core.sae_prune_rules
    assert set(METHODS) == {"transfer", "retrain", "prune", "finetune", "recalibrate", "refit_decoder", "affine"}
    assert METHODS["affine"].needs_dense_activations and not METHODS["recalibrate"].needs_dense_activations
    assert METHODS["retrain"].trains and not METHODS["retrain"].keeps_identity and METHODS["finetune"].trains
    for bad, match in [("reboot", r"unknown SAE variant 'reboot'.*known: \['affine'"), ("finetune:0", r"\(0, 1\]"),
                       ("finetune:1.5", r"\(0, 1\]"), ("finetune", "FRACTION"), ("finetune:abc", "must be a number"),
                       ("finetune:nan", "must be a number"), ("prune:foo:0.5", r"unknown prune rule 'foo'.*wanda"),
                       ("prune:wanda:1", r"\[0, 1\)"), ("prune:wanda", "RULE:SPARSITY"), ("transfer:1", "takes no argument"),
                       ("boost", "not implemented.*d_sae|not implemented.*width"), ("", "non-empty")]:
        with pytest.raises(ValueError, match=match):
            parse_variant(bad)
    assert [s.text for s in parse_variants(["transfer", "prune:wanda:0.5"])] == ["transfer", "prune:wanda:0.5"]
    with pytest.raises(ValueError, match="duplicate.*prune:wanda:0.5"):
        parse_variants(["prune:wanda:0.5", "transfer", "PRUNE:wanda:0.50"])
    with pytest.raises(ValueError, match="list"):
        parse_variants("transfer")


# ------------------------------------------------------------------ every method's output
SPECS = ["transfer", "prune:wanda:0.3", "prune:magnitude:0.3", "recalibrate", "refit_decoder", "affine", "retrain",
         "finetune:0.5"]


@pytest.mark.parametrize("arch,k", ARCHS)
@pytest.mark.parametrize("spec", SPECS)
def test_every_variant_is_a_new_unit_norm_sae_that_round_trips(arch, k, spec, tmp_path):
    original = make_sae(arch, k)
    before = state(original)
    x = make_acts()
    inputs = VariantInputs(compressed=batches(x + 0.2), dense=batches(x), n_tokens=3000, train=dict(TRAIN), seed=0)
    sae, report = build_variant(spec, original, inputs)
    assert same_state(state(original), before)  # the original is untouched
    assert sae is not original and type(sae) is type(original)
    assert not any(p.data_ptr() == q.data_ptr() for p in sae.parameters() for q in original.parameters())
    assert sae.cfg.architecture() == arch and (sae.cfg.d_in, sae.cfg.d_sae) == (D_IN, D_SAE)
    assert getattr(sae.cfg, "k", None) == k and sae.cfg.metadata.hook_name == HOOK
    assert decoder_norm_deviation(sae) < 1e-5
    assert report.spec == parse_variant(spec) and report.wall_time_s >= 0
    summary = report.summary()
    assert summary["spec"] == spec and summary["details"]["decoder_norm_max_deviation"] < 1e-5
    if METHODS[report.spec.method].trains:
        assert report.gradient_steps > 0 and report.tokens > 0
    else:
        assert report.gradient_steps == 0
    if spec in ("transfer", "prune:magnitude:0.3"):
        assert report.tokens == 0
    elif not METHODS[report.spec.method].trains:
        assert report.tokens == 3000  # n_tokens caps what the fits read
    save_sae(sae, tmp_path / "v")
    loaded = SAE.load_from_disk(tmp_path / "v")
    assert type(loaded) is type(sae) and same_state(state(loaded), state(sae))
    assert loaded.cfg.metadata.sae_transfer_variant["spec"] == spec
    probe = x[:256] + 0.2
    with torch.no_grad():
        assert torch.allclose(loaded.decode(loaded.encode(probe)), sae.decode(sae.encode(probe)))


def test_methods_refuse_what_they_cannot_fold_and_missing_inputs_by_name():
    x = batches(make_acts(1024))
    ln = new_sae("standard", D_IN, D_SAE, HOOK, seed=0, normalize_activations="layer_norm")
    ln.fold_W_dec_norm()
    for spec in ("refit_decoder", "affine", "recalibrate"):
        with pytest.raises(ValueError, match=rf"'{spec}'.*'standard'.*{HOOK}.*layer_norm"):
            build_variant(spec, ln, VariantInputs(compressed=x, dense=x))
    stretched = make_sae("topk", K)
    with torch.no_grad():
        stretched.W_dec.mul_(2.0)
    with pytest.raises(ValueError, match=r"'transfer'.*'topk'.*not unit norm"):
        build_variant("transfer", stretched)
    with pytest.warns(UserWarning, match="selects on raw pre-activations"):  # sae_prune folds any norms itself
        build_variant("prune:magnitude:0.5", stretched)
    with pytest.raises(ValueError, match="'affine' needs dense-model activations"):
        build_variant("affine", make_sae("standard", None), VariantInputs(compressed=x))
    with pytest.raises(ValueError, match="'refit_decoder' needs compressed-model activations"):
        build_variant("refit_decoder", make_sae("standard", None))
    with pytest.raises(ValueError, match="'finetune:0.1' trains.*train_tokens"):
        build_variant("finetune:0.1", make_sae("standard", None), VariantInputs(compressed=x))
    with pytest.raises(ValueError, match="re-iterable"):
        build_variant("recalibrate", make_sae("standard", None), VariantInputs(compressed=iter(x)))
    with pytest.raises(ValueError, match="same tokens"):
        build_variant("affine", make_sae("standard", None), VariantInputs(compressed=x, dense=x[:-1]))


# ------------------------------------------------------------------ recalibrate
@pytest.mark.parametrize("arch,k", ARCHS)
def test_recalibrate_undoes_a_constant_shift(arch, k):
    original = make_sae(arch, k)
    x = make_acts()
    shift = 1.5 * torch.randn(D_IN, generator=torch.Generator().manual_seed(5))
    shifted = x + shift
    base, transfer = mse(original, x), mse(original, shifted)
    assert transfer > 5 * base
    fixed, report = build_variant("recalibrate", original, VariantInputs(compressed=batches(shifted), dense=batches(x)))
    assert report.details["scale"] == pytest.approx(1.0, abs=1e-6)
    assert report.details["mean_shift_norm"] == pytest.approx(float(shift.norm()), rel=1e-4)
    assert mse(fixed, shifted) <= base * 1.01  # back at the unshifted error (the bias step can only lower it)
    # a scaled and shifted copy: the frame map's scale re-estimate undoes it too (ReLU/TopK: exactly)
    stretched = 1.7 * (x - x.mean(0)) + x.mean(0) + shift
    fixed2, rep2 = build_variant("recalibrate", original, VariantInputs(compressed=batches(stretched), dense=batches(x)))
    assert rep2.details["scale"] == pytest.approx(1.7, rel=1e-3)
    assert mse(fixed2, stretched) <= 1.7**2 * base * 1.05 < mse(original, stretched)
    if arch == "jumprelu":  # thresholds keep every latent's dense firing rate
        with torch.no_grad():
            rate_dense = (original.encode(x) > 0).float().mean(0)
            rate_fixed = (fixed2.encode(stretched) > 0).float().mean(0)
        assert rep2.details["thresholds_matched"] > 0 and (rate_fixed - rate_dense).abs().max() < 0.01
    # without dense activations only the bias moves (codes unchanged): never worse than transfer
    alone, rep3 = build_variant("recalibrate", original, VariantInputs(compressed=batches(shifted)))
    with torch.no_grad():
        assert torch.allclose(alone.encode(shifted), original.encode(shifted), atol=1e-4)
    assert mse(alone, shifted) <= transfer and rep3.details["used_dense"] is False and rep3.details["notes"]
    assert rep3.details["fit_mse_after"] == pytest.approx(mse(alone, shifted), rel=1e-3)


# ------------------------------------------------------------------ refit_decoder
@pytest.mark.parametrize("arch,k", ARCHS)
def test_refit_decoder_is_the_least_squares_decoder_and_folds_exactly(arch, k):
    original = make_sae(arch, k)
    x = make_acts() @ (torch.eye(D_IN) + 0.2 * torch.randn(D_IN, D_IN, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        F = original.encode(x).double().numpy()
    fired = (F != 0).any(0)
    X = x.double().numpy()
    W0 = original.W_dec.detach().double().numpy()
    # the λ -> 0 limit (ridge 0, shrink 0) is plain least squares: numpy lstsq of [F 1] against X
    plain = clone_sae(original)
    details = refit_decoder_(plain, original, batches(x), None, ridge=0.0, fold=False, shrink=0.0)
    assert details["lambda"] == 0.0 and details["shrink_chosen_by"] == "option"
    ref = np.linalg.lstsq(np.hstack([F[:, fired], np.ones((len(F), 1))]), X, rcond=None)[0]
    assert np.abs(plain.W_dec.detach().double().numpy()[fired] - ref[:-1]).max() < 1e-5
    assert np.abs(plain.b_dec.detach().double().numpy() - ref[-1]).max() < 1e-5
    # the shrinkage estimator (c chosen on held-back tokens): an independent numpy solve of
    # min ||X - F W - 1 b||² + λ ||W - W_orig||², i.e. lstsq of [F 1; sqrt(λ) I 0] against [X; sqrt(λ) W_orig]
    unfolded = clone_sae(original)
    details = refit_decoder_(unfolded, original, batches(x), None, ridge=1e-6, fold=False)
    assert details["shrink"] in SHRINK_GRID and details["shrink_chosen_by"].startswith("validation")
    assert details["validation_tokens"] == len(x) // 5 and len(details["shrink_validation_mse"]) == len(SHRINK_GRID)
    lam = details["lambda"]
    energies = (F ** 2).sum(0)
    assert lam == pytest.approx(1e-6 * energies.mean() + details["shrink"] * np.median(energies[energies > 0]), rel=1e-9)
    aug = np.block([[F, np.ones((len(F), 1))], [np.sqrt(lam) * np.eye(D_SAE), np.zeros((D_SAE, 1))]])
    target = np.vstack([X, np.sqrt(lam) * W0])
    ref = np.linalg.lstsq(aug, target, rcond=None)[0]
    W_ref, b_ref = ref[:D_SAE], ref[D_SAE]
    assert np.abs(unfolded.W_dec.detach().double().numpy()[fired] - W_ref[fired]).max() < 1e-5
    assert np.abs(unfolded.b_dec.detach().double().numpy() - b_ref).max() < 1e-5
    assert torch.equal(unfolded.W_dec[~torch.from_numpy(fired)], original.W_dec[~torch.from_numpy(fired)])
    with torch.no_grad():  # the encoder is frozen: b_dec moved, the codes did not
        assert torch.allclose(unfolded.encode(x), original.encode(x), atol=1e-4)
    assert mse(unfolded, x) <= mse(original, x)  # the original decoder has zero penalty: the fit cannot be worse
    assert details["fit_mse_after"] == pytest.approx(mse(unfolded, x), rel=1e-3)
    # the unit-norm fold keeps the function: ReLU / JumpReLU exactly as refit; TopK exactly as the
    # refit SAE under rescale_acts_by_decoder_norm (the semantics the folded SAE adopts)
    folded, report = build_variant("refit_decoder", original, VariantInputs(compressed=batches(x), options={"ridge": 1e-6}))
    assert report.details["shrink"] == details["shrink"] and report.details["lambda"] == pytest.approx(lam)
    reference = unfolded
    if arch == "topk":
        reference = clone_sae(unfolded)
        reference.cfg.rescale_acts_by_decoder_norm = True
        assert folded.cfg.rescale_acts_by_decoder_norm
    with torch.no_grad():
        assert torch.allclose(folded.decode(folded.encode(x)), reference.decode(reference.encode(x)), atol=1e-4)
    assert decoder_norm_deviation(folded) < 1e-5 and mse(folded, x) <= mse(original, x)
    assert report.details["fit_mse_after"] <= report.details["fit_mse_before"]


def _zipf_acts(n: int, seed: int, zipf: float = 1.2) -> torch.Tensor:
    """Like make_acts, but latent j is drawn with probability ~ 1 / (j+1)^zipf: some latents fire rarely."""
    D, mu = _world(0)
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, D_SAE + 1).double() ** zipf
    idx = torch.multinomial((p / p.sum()).expand(n, -1), 3, replacement=False, generator=g)
    codes = torch.zeros(n, D_SAE).scatter_(1, idx, 0.5 + 1.5 * torch.rand(n, 3, generator=g))
    return mu + codes @ D + 0.01 * torch.randn(n, D_IN, generator=g)


def test_topk_refit_of_a_slightly_perturbed_model_beats_transfer_and_keeps_identity():
    """A TopK SAE trained on dense activations; the "compressed" activations are the dense ones through
    I + 0.05 M plus a little noise. The old estimator (plain least squares, shrink 0) fails this test:
    latents that fire a handful of times get noisy rows of large norm, which after the unit-norm fold
    win TopK selections the fit never assumed; held-out EV fell to 0.65 against transfer's 0.70, and
    only ~73% of latents kept decoder cosine > 0.9. Shrinkage towards the original rows keeps both."""
    from sae_core.sae_quality import reconstruction_stats
    from sae_core.sae_train import train_sae

    sae, _ = train_sae(new_sae("topk", D_IN, D_SAE, HOOK, k=4, seed=0), batches(_zipf_acts(8192, 0)), 16384,
                       lr=3e-3, batch_size=256, progress=False, b_dec_init="mean")
    g = torch.Generator().manual_seed(7)
    M = torch.eye(D_IN) + 0.05 * torch.randn(D_IN, D_IN, generator=g) / D_IN**0.5
    fit, held = (_zipf_acts(n, seed) @ M + 0.005 * torch.randn(n, D_IN, generator=g) for n, seed in ((2000, 1), (4000, 2)))

    def ev(s):
        return reconstruction_stats(s, batches(held))["explained_variance"]

    transfer = ev(sae)
    fixed, report = build_variant("refit_decoder", sae, VariantInputs(compressed=batches(fit)))
    assert report.details["shrink"] > 0 and report.details["shrink_chosen_by"].startswith("validation")
    assert ev(fixed) >= transfer
    assert decoder_identity(sae, fixed)["kept_frac"] >= 0.9
    old, _ = build_variant("refit_decoder", sae, VariantInputs(compressed=batches(fit), options={"shrink": 0.0}))
    assert ev(old) < transfer or decoder_identity(sae, old)["kept_frac"] < 0.9  # the old behaviour, pinned
    dense = _zipf_acts(2000, 1)  # the affine fix keeps it too (its map shrinks towards the identity)
    fixed_affine, _ = build_variant("affine", sae, VariantInputs(compressed=batches(fit), dense=batches(dense)))
    assert ev(fixed_affine) >= transfer and decoder_identity(sae, fixed_affine)["kept_frac"] >= 0.9


# ------------------------------------------------------------------ affine
@pytest.mark.parametrize("arch,k", ARCHS)
def test_affine_fix_reproduces_the_original_codes_of_an_exact_affine_copy(arch, k):
    original = make_sae(arch, k)
    dense = make_acts()
    g = torch.Generator().manual_seed(4)
    M = torch.eye(D_IN) + 0.3 * torch.randn(D_IN, D_IN, generator=g) / D_IN**0.5  # well-conditioned, invertible
    v = torch.randn(D_IN, generator=g)
    compressed = (dense.double() @ M.double() + v.double()).float()
    from sae_core.variants.affine import fit_affine

    A, c, fit = fit_affine(original, batches(compressed), batches(dense), None, ridge=0.0)
    assert fit["affine_explained_variance"] > 1 - 1e-9
    encoder_only = clone_sae(original)
    fold_affine_into_encoder(encoder_only, A, c)
    with torch.no_grad():
        want = original.encode(dense)
        assert torch.allclose(encoder_only.encode(compressed), want, atol=1e-4)
        # A wrong fold is caught here: dropping the b_dec-centring term (b_enc' = b_enc + (c - b_dec) W_enc,
        # as if the new encoder did not subtract b_dec before A) shifts every pre-activation by b_dec (A - I) W_enc.
        wrong = clone_sae(original)
        wrong.W_enc.copy_((A @ original.W_enc.double()).float())
        wrong.b_enc.copy_((original.b_enc.double() + (c - original.b_dec.double()) @ original.W_enc.double()).float())
        assert not torch.allclose(wrong.encode(compressed), want, atol=1e-2)
    # the whole method: codes are the original's up to each latent's decoder-norm factor, so r = 1
    fixed, report = build_variant("affine", original, VariantInputs(compressed=batches(compressed), dense=batches(dense)))
    table, summary = code_fidelity(original, fixed, batches(dense), batches(compressed))
    active = table[table["active"]]
    if arch == "topk":  # the unit-norm fold selects on pre x row norm (refit norms differ): selections change
        assert active["r"].min() > 0.8 and summary["survived_frac"] > 0.75
    else:
        assert (active["r"] > 0.9999).all() and summary["survived_frac"] == 1.0
    assert mse(fixed, compressed) <= mse(original, dense) * float(torch.linalg.matrix_norm(M, 2)) ** 2 * 1.1
    assert report.details["affine_explained_variance"] > 0.999 and decoder_norm_deviation(fixed) < 1e-5


# ------------------------------------------------------------------ finetune
def test_finetune_starts_from_the_original_and_spends_its_fraction():
    from sae_core.sae_train import train_sae, training_to_inference_sae, warm_start_training_sae

    original = make_sae("topk", K)
    x = make_acts()
    start = warm_start_training_sae(new_sae(like=original, training=True, rescale_acts_by_decoder_norm=True), original)
    step0 = training_to_inference_sae(start)
    assert same_state(state(step0), state(original)) or all(
        torch.allclose(a, b, atol=1e-6) for a, b in zip(state(step0).values(), state(original).values()))
    with torch.no_grad():
        assert torch.allclose(start.encode(x[:64]), original.encode(x[:64]), atol=1e-5)
    # end to end: a vanishing learning rate leaves train_sae(init="keep") at the original
    still, rep = train_sae(original, batches(x), 512, lr=1e-12, batch_size=256, init="keep", progress=False)
    assert rep["init"] == "keep"
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(state(still).values(), state(original).values()))
    with pytest.raises(ValueError, match="init='keep'.*b_dec_init"):
        train_sae(original, batches(x), 512, batch_size=256, init="keep", b_dec_init="mean")
    with pytest.raises(ValueError, match="init must be"):
        train_sae(original, batches(x), 512, batch_size=256, init="warm")
    seen = []

    def spy(like, data, total_tokens, **kwargs):
        seen.append((like, total_tokens, kwargs))
        return train_sae(like, data, total_tokens, **kwargs)

    budget = {"train_tokens": 20_000, "lr": 1e-3, "batch_size": 256, "b_dec_init": "mean"}
    sae, report = build_variant("finetune:0.05", original, VariantInputs(compressed=batches(x + 0.1), train=budget,
                                                                         train_fn=spy))
    assert seen[0][0] is original and seen[0][2]["init"] == "keep" and "b_dec_init" not in seen[0][2]
    assert abs(report.tokens - 0.05 * 20_000) <= 256 and report.gradient_steps == report.tokens // 256
    assert report.details["retrain_budget"] == 20_000 and report.details["notes"]
    ident = decoder_identity(original, sae)
    assert ident["kept_frac"] > 0.9  # a short warm start keeps the latents


# ------------------------------------------------------------------ identity
def test_identity_self_permuted_copy_and_one_rotated_row():
    original = make_sae("standard", None)
    x = make_acts(2048)
    me = decoder_identity(original, original)
    assert me["kept_frac"] == 1.0 and np.allclose(me["cosine"], 1.0)
    table, summary = code_fidelity(original, original, batches(x), batches(x))
    assert (table[table["active"]]["r"] == 1.0).all() and summary["survived_frac"] == 1.0
    perm = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(2))
    shuffled = clone_sae(original)
    with torch.no_grad():
        shuffled.W_enc.copy_(original.W_enc[:, perm])
        shuffled.b_enc.copy_(original.b_enc[perm])
        shuffled.W_dec.copy_(original.W_dec[perm])
    assert decoder_identity(original, shuffled)["kept_frac"] < 0.1
    match = match_latents(original, shuffled)
    want = torch.argsort(perm).numpy()  # original latent j sits at shuffled index want[j]
    assert match["one_to_one"] and match["matched_frac"] == 1.0 and (match["permutation"] == want).all()
    assert (match["greedy"] == want).all() and match["greedy_matched_frac"] == 1.0
    table, summary = code_fidelity(original, shuffled, batches(x), batches(x), permutation=match["permutation"])
    assert (table[table["active"]]["r"] > 0.999999).all() and summary["survived_frac"] == 1.0
    # one decoder row rotated by 60 degrees: exactly that latent is lost
    rotated = clone_sae(original)
    with torch.no_grad():
        d = original.W_dec[5]
        other = torch.randn(D_IN, generator=torch.Generator().manual_seed(9))
        other = other - (other @ d) * d
        rotated.W_dec[5] = 0.5 * d + (3**0.5 / 2) * other / other.norm()
    lost = decoder_identity(original, rotated)
    assert np.flatnonzero(~lost["kept"]).tolist() == [5] and lost["cosine"][5] == pytest.approx(0.5, abs=1e-5)
    with pytest.raises(ValueError, match="d_sae"):
        decoder_identity(original, new_sae("standard", D_IN, 32, HOOK))
