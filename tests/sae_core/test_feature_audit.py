"""The feature-level audit (sae_core.feature_audit) against independent references.

- streaming sums vs one-shot numpy (np.corrcoef, set counts) on the same data;
- the strict null (dense vs dense) must give r == 1 exactly and nothing damaged;
- a known perturbation (one residual direction removed at the hook) must damage exactly the
  features that read it and keep the others;
- overlap and AUC against scipy / set arithmetic / synthetic labels; bisection on a known curve;
- the task writes METRIC_COLUMNS rows and serves a second call from storage.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from sae_core import feature_audit as fa
from sae_core.datasets import token_batch

HOOK = "blocks.1.hook_resid_post"
DATASET = "toy-corpus:1"


# ------------------------------------------------------------------ streaming vs one-shot
def _sparse_pair(seed: int = 0, n: int = 700, d: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(n, d)) - 0.3, 0)
    y = np.maximum(x + rng.normal(scale=0.4, size=(n, d)) * (rng.random((n, d)) < 0.5), 0)
    y[:, 3] = 0.0  # dies after compression: constant on the compressed side
    y[:, 4] = 1.5  # constant but non-zero
    x[:, 5] = 0.0  # never fires on the dense side
    return x, y


def test_streaming_equals_one_shot_numpy():
    x, y = _sparse_pair()
    moments = fa.FeatureMoments(x.shape[1])
    for start, stop in [(0, 1), (1, 250), (250, 251), (251, 700)]:  # uneven batches, a one-row batch
        moments.update(torch.tensor(x[start:stop], dtype=torch.float32), torch.tensor(y[start:stop], dtype=torch.float32))
    table = moments.table()
    xf, yf = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        reference_r = np.array([np.corrcoef(xf[:, j], yf[:, j])[0, 1] for j in range(x.shape[1])])
    reference_r = np.nan_to_num(reference_r, nan=0.0)  # corrcoef is NaN for a constant column; the audit says 0
    np.testing.assert_allclose(table["r"], reference_r, atol=1e-9)
    assert table.loc[3, "r"] == 0.0 and table.loc[4, "r"] == 0.0 and table.loc[5, "r"] == 0.0
    fx, fy = xf > 0, yf > 0
    np.testing.assert_allclose(table["dense_firing_rate"], fx.mean(0))
    np.testing.assert_allclose(table["compressed_firing_rate"], fy.mean(0))
    union = (fx | fy).sum(0)
    np.testing.assert_allclose(table["firing_jaccard"], np.where(union > 0, (fx & fy).sum(0) / np.maximum(union, 1), np.nan))
    both = fx & fy
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(table["magnitude_ratio"], (yf * both).sum(0) / (xf * both).sum(0))
    np.testing.assert_allclose(table["dense_mean"], xf.mean(0))
    np.testing.assert_allclose(table["dense_max"], xf.max(0))
    assert bool(table.loc[3, "dead_after"]) and not bool(table.loc[4, "dead_after"]) and not bool(table.loc[5, "active"])
    # Merging two halves is the same as one pass (the subset -> total path).
    a, b = fa.FeatureMoments(7), fa.FeatureMoments(7)
    a.update(torch.tensor(x[:300]), torch.tensor(y[:300]))
    b.update(torch.tensor(x[300:]), torch.tensor(y[300:]))
    one_pass = fa.FeatureMoments(7)
    one_pass.update(torch.tensor(x), torch.tensor(y))
    pd.testing.assert_frame_equal(a.merged(b).table(), one_pass.table(), rtol=1e-12)


def test_classes_and_summary_follow_the_thresholds():
    r = np.array([0.95, 0.9, 0.5, 0.49, -0.2, 0.99])
    active = np.array([True, True, True, True, True, False])
    # Boundaries: 0.9 is degraded (not > 0.9), 0.5 is degraded (not < 0.5); inactive features are not classed.
    assert list(fa.classify(r, active)) == ["survived", "degraded", "degraded", "damaged", "damaged", "inactive"]
    table = pd.DataFrame({"feature": range(6), "r": r, "active": active, "fidelity_class": fa.classify(r, active),
                          "dead_after": [False, False, False, False, True, False], "firing_jaccard": 0.5, "magnitude_ratio": 1.0})
    summary = fa.summarize(table, n_tokens=10)
    assert summary["n_active"] == 5 and summary["survived_frac"] == pytest.approx(0.2)
    assert summary["degraded_frac"] == pytest.approx(0.4) and summary["damaged_frac"] == pytest.approx(0.4)
    assert summary["dead_after_frac"] == pytest.approx(0.2) and summary["median_r"] == pytest.approx(0.5)


# ------------------------------------------------------------------ on the toy model
def _hand_sae(d_in: int, directions: torch.Tensor, bias: torch.Tensor):
    """A standard (ReLU) SAE whose feature j reads exactly ``directions[j]`` (no b_dec shift)."""
    from sae_core.sae_io import new_sae

    sae = new_sae("standard", d_in, len(directions), HOOK, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(directions.T)
        sae.b_enc.copy_(bias)
        sae.b_dec.zero_()
        sae.W_dec.copy_(directions)
    return sae


@pytest.fixture(scope="module")
def audit_world(toy_model):
    from sae_core.activations import hook_activations, special_token_ids

    hooked = toy_model.hooked()
    tokens = token_batch(toy_model.tokenizer, DATASET, 30, 64, skip_sequences=500)
    acts = hook_activations(hooked, tokens, HOOK).reshape(-1, hooked.cfg.d_model)
    # u: the direction of largest variance; the other features read directions orthogonal to it.
    centred = acts - acts.mean(0)
    u = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    gen = torch.Generator().manual_seed(0)
    others = torch.randn(11, hooked.cfg.d_model, generator=gen)
    others = others - (others @ u)[:, None] * u
    others = others / others.norm(dim=1, keepdim=True)
    directions = torch.cat([u[None], u[None], others])  # features 0 and 1 read u
    bias = -(acts @ directions.T).median(0).values  # each feature fires on about half the tokens
    bias[1] = bias[1] - 1e-3 if bias[1] > 0 else bias[1]
    return {"hooked": hooked, "tokens": tokens, "sae": _hand_sae(hooked.cfg.d_model, directions, bias), "u": u,
            "exclude": special_token_ids(toy_model.tokenizer)}


def test_strict_null_dense_vs_dense_is_exactly_one(audit_world):
    w = audit_world
    audit = fa.audit_feature_fidelity(w["hooked"], w["hooked"], w["sae"], w["tokens"], HOOK, exclude_ids=w["exclude"])
    active = audit.table[audit.table["active"]]
    assert len(active) == 13
    assert (active["r"] == 1.0).all()  # exactly: identical sums give num == den
    assert audit.summary["survived_frac"] == 1.0 and audit.summary["damaged_frac"] == 0.0
    assert audit.summary["dead_after_frac"] == 0.0 and audit.summary["survived_frac_subset_std"] == 0.0
    assert (active["firing_jaccard"] == 1.0).all() and np.allclose(active["magnitude_ratio"], 1.0)
    assert audit.perplexity["dense"] == audit.perplexity["compressed"] and audit.perplexity["delta_pct"] == 0.0
    # BOS and EOS positions are not audited: tokens counted = positions minus excluded ones.
    assert audit.summary["n_tokens"] + audit.summary["n_excluded_positions"] == w["tokens"].numel()
    assert audit.summary["n_excluded_positions"] >= len(w["tokens"])  # at least each window's BOS


def test_a_second_sae_with_permuted_latents_is_compared_latent_for_latent(audit_world):
    """compressed_sae + latent_permutation: a permuted copy, matched back, is the strict null again."""
    from sae_core.sae_io import clone_sae

    w = audit_world
    sae = w["sae"]
    perm = torch.randperm(sae.cfg.d_sae, generator=torch.Generator().manual_seed(1))
    shuffled = clone_sae(sae)
    with torch.no_grad():
        inverse = torch.argsort(perm)  # shuffled latent i = original latent perm[i] -> original j sits at inverse[j]
        shuffled.W_enc.data = sae.W_enc.data[:, perm].clone()
        shuffled.b_enc.data = sae.b_enc.data[perm].clone()
        shuffled.W_dec.data = sae.W_dec.data[perm].clone()
    audit = fa.audit_feature_fidelity(w["hooked"], w["hooked"], sae, w["tokens"], HOOK, exclude_ids=w["exclude"],
                                      with_perplexity=False, compressed_sae=shuffled, latent_permutation=inverse)
    active = audit.table[audit.table["active"]]
    assert len(active) == 13 and (active["r"] == 1.0).all()
    unmatched = fa.audit_feature_fidelity(w["hooked"], w["hooked"], sae, w["tokens"], HOOK, exclude_ids=w["exclude"],
                                          with_perplexity=False, compressed_sae=shuffled)
    assert unmatched.summary["survived_frac"] < 1.0
    with pytest.raises(ValueError, match="latent_permutation"):
        fa.audit_feature_fidelity(w["hooked"], w["hooked"], sae, w["tokens"], HOOK, compressed_sae=shuffled,
                                  latent_permutation=inverse[:3])


def test_removing_one_direction_damages_exactly_its_readers(audit_world):
    w = audit_world
    compressed = copy.deepcopy(w["hooked"])
    u = w["u"]
    compressed.add_hook(HOOK, lambda act, hook: act - (act @ u)[..., None] * u, is_permanent=True)
    audit = fa.audit_feature_fidelity(w["hooked"], compressed, w["sae"], w["tokens"], HOOK, exclude_ids=w["exclude"])
    table = audit.table
    # Features 0, 1 read u only: their input becomes constant -> r = 0 -> damaged. A wrong r formula
    # (e.g. not flooring the denominator or not zeroing constants) would give NaN or noise here.
    assert list(table.loc[[0, 1], "fidelity_class"]) == ["damaged", "damaged"]
    assert (table.loc[[0, 1], "r"] == 0.0).all()
    # The others read directions orthogonal to u: unchanged up to float rounding.
    assert (table.loc[2:, "fidelity_class"] == "survived").all() and (table.loc[2:, "r"] > 0.999).all()
    assert audit.summary["damaged_frac"] == pytest.approx(2 / 13)
    assert audit.summary["dead_after_frac"] == pytest.approx(sum(bool(table.loc[j, "dead_after"]) for j in (0, 1)) / 13)
    assert bool(table.loc[1, "dead_after"])  # its bias is negative: it can never fire again


def test_rounding_the_weights_harder_damages_more(toy_model, audit_world):
    """RTN-like fake quantization by hand (per output channel, symmetric): fewer bits, fewer survivors."""
    w = audit_world
    summaries = {bits: fa.audit_feature_fidelity(w["hooked"], _rounded(toy_model, bits), w["sae"], w["tokens"], HOOK,
                                                 exclude_ids=w["exclude"]).summary for bits in (8, 3)}
    assert summaries[8]["mean_r"] > summaries[3]["mean_r"]
    assert summaries[8]["survived_frac"] >= summaries[3]["survived_frac"] and summaries[8]["mean_r"] > 0.99


def _rounded(toy_model, bits: int):
    """The toy model with its block weights rounded to ``bits`` per output channel (RTN-like, by hand)."""
    from sae_core.models import resolve_processing, to_hooked_transformer

    hf = copy.deepcopy(toy_model.hf_model)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 2 and ".h." in name:  # GPT-2 Conv1D weights [in, out]: one scale per output
                qmax = 2 ** (bits - 1) - 1
                scale = p.abs().amax(dim=0, keepdim=True).clamp(min=1e-12) / qmax
                p.copy_((p / scale).round().clamp(-qmax - 1, qmax) * scale)
    return to_hooked_transformer(hf, toy_model.tokenizer, toy_model.name, resolve_processing(None))


def test_perplexity_on_fewer_tokens_leaves_every_feature_figure_as_it_was(toy_model, audit_world, monkeypatch):
    """perplexity_tokens: only the first windows covering that many tokens run to the logits (one batch straddles
    the limit and scores only its windows inside it); the rest stop at the hook. The per-feature table, the
    subset summaries and the cards are identical to the all-tokens audit's, bit for bit; only the perplexity's
    token count (and so its value) differs."""
    w, compressed = audit_world, _rounded(toy_model, 4)
    seq = w["tokens"].shape[1]
    calls = []
    real_forward = fa._forward
    monkeypatch.setattr(fa, "_forward", lambda hooked, batch, hook, with_loss: calls.append((len(batch), with_loss))
                        or real_forward(hooked, batch, hook, with_loss))
    kwargs = dict(exclude_ids=w["exclude"], batch_sequences=4, card_top_k=3)
    everything = fa.audit_feature_fidelity(w["hooked"], compressed, w["sae"], w["tokens"], HOOK, **kwargs)
    assert everything.perplexity["tokens"] == w["tokens"].shape[0] * (seq - 1) and all(loss for _, loss in calls)
    calls.clear()
    few = fa.audit_feature_fidelity(w["hooked"], compressed, w["sae"], w["tokens"], HOOK, perplexity_tokens=5 * (seq - 1) + 10, **kwargs)
    # 6 windows cover 5 x 63 + 10 tokens: batch 0 (windows 0-3) and batch 1 (4-7, scoring 4 and 5) run to the logits.
    assert few.perplexity["tokens"] == few.summary["perplexity_tokens"] == 6 * (seq - 1)
    assert [loss for _, loss in calls] == [True] * 4 + [False] * (2 * (len(calls) // 2 - 2)), calls
    pd.testing.assert_frame_equal(few.table, everything.table, check_exact=True)
    assert few.subset_summaries == everything.subset_summaries
    assert {k: v for k, v in few.summary.items() if k != "perplexity_tokens"} == \
        {k: v for k, v in everything.summary.items() if k != "perplexity_tokens"}
    for name, state in few.cards.state.items():
        assert torch.equal(state.nan_to_num(-7), everything.cards.state[name].nan_to_num(-7)), name
    # The perplexity is the one of those 6 windows (computed alone, in other batches: equal up to float rounding).
    alone = fa.audit_feature_fidelity(w["hooked"], compressed, w["sae"], w["tokens"][:6], HOOK, exclude_ids=w["exclude"])
    assert few.perplexity["dense"] == pytest.approx(alone.perplexity["dense"], rel=1e-6)
    assert few.perplexity["compressed"] == pytest.approx(alone.perplexity["compressed"], rel=1e-6)
    # More tokens than the audit has: every window, as without the limit; a limit below one token is refused.
    more = fa.audit_feature_fidelity(w["hooked"], compressed, w["sae"], w["tokens"], HOOK, perplexity_tokens=10**9, **kwargs)
    assert more.perplexity == everything.perplexity
    with pytest.raises(ValueError, match="perplexity_tokens must be >= 1.*got 0"):
        fa.audit_feature_fidelity(w["hooked"], compressed, w["sae"], w["tokens"], HOOK, perplexity_tokens=0)


def test_architecture_mismatch_fails_before_any_forward(audit_world, monkeypatch):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    w = audit_world
    other = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, n_ctx=64, d_vocab=w["hooked"].cfg.d_vocab,
                                                      act_fn="gelu_new", normalization_type="LN"))

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran before the architecture check")

    monkeypatch.setattr(fa, "_forward", no_forward)
    with pytest.raises(ValueError, match="architecture differs.*d_model"):
        fa.audit_feature_fidelity(w["hooked"], other, w["sae"], w["tokens"], HOOK)


# ------------------------------------------------------------------ overlap, AUC, bisection
def _table(r: np.ndarray, active: np.ndarray | None = None) -> pd.DataFrame:
    active = np.ones(len(r), dtype=bool) if active is None else active
    return pd.DataFrame({"feature": np.arange(len(r)), "r": r, "active": active})


def test_compare_methods_matches_sets_and_scipy():
    rng = np.random.default_rng(3)
    ra, rb = rng.uniform(0, 1, 200), rng.uniform(0, 1, 200)
    active_a, active_b = rng.random(200) < 0.9, rng.random(200) < 0.9
    out = fa.compare_methods(_table(ra, active_a), _table(rb, active_b))
    shared = np.flatnonzero(active_a & active_b)
    a = {j for j in shared if ra[j] <= 0.9}
    b = {j for j in shared if rb[j] <= 0.9}
    assert out["n_shared_active"] == len(shared)
    assert out["jaccard_non_survived"] == pytest.approx(len(a & b) / len(a | b))
    assert (out["non_survived_only_a"], out["non_survived_only_b"], out["non_survived_both"]) == (len(a - b), len(b - a), len(a & b))
    da, db = {j for j in shared if ra[j] < 0.5}, {j for j in shared if rb[j] < 0.5}
    assert out["jaccard_damaged"] == pytest.approx(len(da & db) / len(da | db))
    assert out["spearman_damage"] == pytest.approx(stats.spearmanr(1 - ra[shared], 1 - rb[shared]).statistic)
    assert out["pearson_damage"] == pytest.approx(np.corrcoef(1 - ra[shared], 1 - rb[shared])[0, 1])
    # Same table twice: full overlap; nothing damaged on either side: undefined, not 0 or 1.
    same = fa.compare_methods(_table(ra), _table(ra))
    assert same["jaccard_non_survived"] == 1.0 and same["spearman_damage"] == pytest.approx(1.0)
    assert np.isnan(fa.compare_methods(_table(np.full(5, 0.95)), _table(np.full(5, 0.97)))["jaccard_damaged"])


def _predictor_table(survived: np.ndarray, rate: np.ndarray) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = len(rate)
    mean = rate * rng.uniform(0.5, 2, n)
    return pd.DataFrame({"feature": np.arange(n), "r": np.where(survived, 0.95, 0.3), "active": True,
                         "fidelity_class": np.where(survived, "survived", "damaged"), "dense_firing_rate": rate,
                         "dense_mean": mean, "dense_max": mean * rng.uniform(5, 50, n)})


def test_survival_auc_separable_random_and_too_small():
    rng = np.random.default_rng(0)
    rate = 10 ** rng.uniform(-3, -0.5, 400)
    separable = fa.survival_auc(_predictor_table(rate < 0.01, rate))  # rare features survive: rarity separates
    assert separable["status"] == "ok" and separable["auc_mean"] > 0.97 and separable["coefficients"]["rarity"] > 0
    random = fa.survival_auc(_predictor_table(rng.random(400) < 0.5, rate))
    assert abs(random["auc_mean"] - 0.5) < 0.12
    few = fa.survival_auc(_predictor_table(np.arange(400) < 3, rate))
    assert few["status"] == "skipped" and "3 survived" in few["reason"] and np.isnan(few["auc_mean"])


def test_match_strength_finds_a_known_target():
    calls = []

    def ppl(sparsity: float) -> float:
        calls.append(sparsity)
        return 10 + 100 * sparsity ** 2

    found = fa.match_strength(ppl, target=ppl(0.3), lo=0.0, hi=0.8, steps=8)
    assert abs(found.strength - 0.3) <= 0.8 / 2 ** 8 and len(found.trace) == 8
    assert found.value == min((v for _, v in found.trace), key=lambda v: abs(v - found.target))
    # A knob that weakens compression as it grows (bits): the metric falls with it.
    bits = fa.match_strength(lambda b: 100 / b, target=100 / 5.0, lo=2, hi=16, steps=10, increasing=False)
    assert abs(bits.strength - 5.0) < 0.05
    with pytest.raises(ValueError, match="lo < hi"):
        fa.match_strength(ppl, 1.0, 0.5, 0.5)


# ------------------------------------------------------------------ the task
@pytest.fixture(scope="module")
def stored_world(toy_world, tmp_path_factory):
    """Storage holding the toy model as the dense model and a random TopK SAE as the original SAE."""
    from sae_core.sae_io import new_sae
    from sae_core.storage import Storage
    from tasks.common import store_sae

    storage = Storage(f"file://{tmp_path_factory.mktemp('audit') / 'store'}")
    storage.upload_dir(toy_world.model_dir, "dense_model", {"kind": "model", "content_hash": "dense"})
    store_sae(storage, new_sae("topk", 64, 96, HOOK, k=8, seed=0), "saes/original/x", {"variant": "original", "hook": HOOK, "processing": {}})
    return {"storage": storage, "dense": {"kind": "model", "prefix": "dense_model", "content_hash": "dense", "dense": True},
            "original": {"kind": "sae", "prefix": "saes/original/x", "hook": HOOK, "processing": {}}}


def test_task_writes_metric_rows_and_serves_a_second_call_from_storage(stored_world, toy_model, tmp_path, monkeypatch):
    import tasks.feature_audit as task_module
    from sae_core.metrics.rows import METRIC_COLUMNS

    storage, dense, original = stored_world["storage"], stored_world["dense"], stored_world["original"]
    pruned_dir = tmp_path / "pruned"
    hf = copy.deepcopy(toy_model.hf_model)
    with torch.no_grad():  # magnitude-prune a third of every block matrix, by hand
        for name, p in hf.named_parameters():
            if p.ndim == 2 and ".h." in name:
                p[p.abs() <= p.abs().flatten().kthvalue(p.numel() // 3).values] = 0
    hf.save_pretrained(pruned_dir, safe_serialization=True)
    toy_model.tokenizer.save_pretrained(pruned_dir)
    storage.upload_dir(pruned_dir, "pruned_model", {"kind": "model", "content_hash": "pruned"})
    compressed = {"kind": "model", "prefix": "pruned_model", "content_hash": "pruned", "dense": False, "base_model": "toy",
                  "compression": {"spec": "magnitude_matrix:0.33", "method": "magnitude_matrix", "strength": 0.33, "sparsity": 0.33},
                  "perplexity": {"dense": 1.0, "pruned": 1.1}}
    audit = {"n_tokens": 3000, "seq_len": 64, "batch_sequences": 16, "subsets": 3, "skip_sequences": 400}

    first = task_module.feature_fidelity.fn(original, dense, compressed, audit, DATASET, "test", storage.url)
    rows = storage.get_parquet(first["rows_key"])
    assert list(rows.columns) == list(METRIC_COLUMNS)
    assert set(rows["metric_family"]) == {"feature_fidelity"} and set(rows["sae_variant"]) == {"original"}
    assert set(rows["compression"]) == {"magnitude_matrix:0.33"} and set(rows["model_prefix"]) == {"pruned_model"}
    assert set(rows["strength"]) == {0.33}
    values = dict(zip(rows["metric_name"], rows["value"]))
    assert values["n_tokens"] >= 3000 and 0 <= values["survived_frac"] <= 1
    assert values["survived_frac"] + values["degraded_frac"] + values["damaged_frac"] == pytest.approx(1.0)
    assert values["ppl_delta_pct_audit_tokens"] > 0  # pruning a third of every matrix costs perplexity
    table = storage.get_parquet(first["table_key"])
    assert len(table) == 96 and list(table.columns) == fa.TABLE_COLUMNS
    # One read over metrics/ sees these rows beside any other family's.
    assert "feature_fidelity" in set(pd.read_parquet(storage.local_path("metrics"))["metric_family"])

    def no_work(*args, **kwargs):
        raise AssertionError("the audit ran again")

    assert values["ppl_audit_tokens"] == storage.get_json(first["summary_key"])["summary"]["perplexity_tokens"] \
        == first["audit_perplexity"]["tokens"] == 63 * task_module.audit_windows(audit)
    # perplexity_tokens: another audit (its settings key it), perplexity on the first 8 windows only, same feature figures.
    capped = task_module.feature_fidelity.fn(original, dense, compressed, {**audit, "perplexity_tokens": 500}, DATASET, "test", storage.url)
    assert capped["rows_key"] != first["rows_key"] and capped["audit_perplexity"]["tokens"] == 63 * 8
    capped_values = dict(zip(*storage.get_parquet(capped["rows_key"])[["metric_name", "value"]].T.values))
    assert capped_values["ppl_audit_tokens"] == 504 and capped_values["survived_frac"] == values["survived_frac"]

    monkeypatch.setattr(task_module, "_audit_and_store", no_work)
    assert task_module.feature_fidelity.fn(original, dense, compressed, audit, DATASET, "test", storage.url) == first


# ------------------------------------------------------------------ the report's compression section
def test_compression_report_table_plots_and_markdown():
    from sae_core import compression_report as crep

    rng = np.random.default_rng(0)
    audits, tables, metric_rows = [], {}, []
    for method, spec, delta, survived in [("wanda", {"method": "wanda", "sparsity": 0.5}, 12.0, 0.7),
                                          ("rtn", {"method": "rtn", "bits": 4}, 30.0, 0.4), ("rtn", {"method": "rtn", "bits": 8}, 1.0, 0.98)]:
        key = f"feature_audit/{method}{spec.get('bits', '')}.parquet"
        r = np.clip(rng.normal(0.8, 0.2, 50), -1, 1)
        tables[key] = pd.DataFrame({"feature": range(50), "r": r, "active": True})
        prefix = f"models/{method}{spec.get('bits', '')}"
        audits.append({"kind": "feature_fidelity", "hook": HOOK, "table_key": key, "model_prefix": prefix, "compression": spec,
                       "perplexity": {"dense": 10.0, "compressed": 10.0 * (1 + delta / 100)},
                       "audit_perplexity": {"delta_pct": delta}, "auc": {"auc_mean": 0.8},
                       "summary": {"survived_frac": survived, "degraded_frac": 1 - survived, "damaged_frac": 0.0, "dead_after_frac": 0.0,
                                   "survived_frac_subset_std": 0.01, "mean_r": 0.9, "n_active": 50}})
        for variant, value in (("original", 0.9), ("retrained", 0.5)):  # only the original SAE's score is reported
            metric_rows.append({"metric_family": "core", "metric_name": "ce_loss_score", "sae_variant": variant, "hook": HOOK,
                                "model_prefix": prefix, "value": value})
    table = crep.compression_table(audits, pd.DataFrame(metric_rows))
    assert list(table["method"]) == ["rtn:4", "rtn:8", "wanda:0.5"]
    assert (table["core_ce_loss_score"] == 0.9).all() and table["core_explained_variance"].isna().all()
    assert table.loc[0, "survived_pct"] == pytest.approx(40.0) and table.loc[0, "survived_pct_subset_std"] == pytest.approx(1.0)
    assert table.loc[2, "ppl_delta_pct_held_out"] == pytest.approx(12.0)
    plots = crep.compression_plots(audits, tables, pd.DataFrame(metric_rows))
    assert sorted(plots) == ["compression_ppl_vs_survival.png", "compression_r_histograms.png"]
    assert all(png.startswith(b"\x89PNG") for png in plots.values())
    section = crep.markdown_section(audits, pd.DataFrame(metric_rows))
    assert "## Feature audit" in section and "| 40.0 ± 1.0 |" in section
    assert crep.markdown_section([], pd.DataFrame()) == ""


def test_matched_perplexity_tasks_tune_audit_and_compare(stored_world):
    """match-compression bisects magnitude sparsity to WANDA's perplexity; feature-overlap compares the audits."""
    from sae_core import compression_report as crep
    from sae_core.compression import CompressionSpec
    from tasks.compression import compress_llm
    from tasks.compression import match_compression
    from tasks.feature_audit import feature_fidelity, feature_overlap
    from sae_core.metrics.rows import METRIC_COLUMNS

    storage, dense, original = stored_world["storage"], stored_world["dense"], stored_world["original"]
    calibration = {"dataset": "toy-corpus:2", "n_samples": 4, "seq_len": 64, "seed": 0, "module_groups": ["attention", "mlp"]}
    reference = compress_llm.fn(dense, CompressionSpec.model_validate("wanda:0.4"), calibration, storage.url)
    tuned = match_compression.fn(dense, {"method": "magnitude", "lo": 0.0, "hi": 0.8, "steps": 3}, reference, calibration, storage.url)
    search = tuned["match"]
    assert [round(s, 4) for s, _ in search["trace"]][0] == 0.4 and len(search["trace"]) == 3
    assert search["strength"] == min(search["trace"], key=lambda sv: abs(sv[1] - search["target_perplexity"]))[0]
    assert tuned["compression"]["spec"] == f"magnitude:{search['strength']:g}"
    audit = {"n_tokens": 1500, "seq_len": 64, "batch_sequences": 16, "subsets": 3, "skip_sequences": 400}
    pair = [feature_fidelity.fn(original, dense, m, audit, DATASET, "test", storage.url) for m in (reference, tuned)]
    overlap = feature_overlap.fn(*pair, "test", storage.url)
    rows = storage.get_parquet(overlap["rows_key"])
    assert list(rows.columns) == list(METRIC_COLUMNS) and set(rows["metric_family"]) == {"feature_overlap"}
    direct = fa.compare_methods(storage.get_parquet(pair[0]["table_key"]), storage.get_parquet(pair[1]["table_key"]))
    assert overlap["overlap"]["non_survived_both"] == direct["non_survived_both"]
    assert overlap["reference"] == "wanda:0.4" and overlap["matched"] == tuned["compression"]["spec"]
    assert "### Matched perplexity" in crep.markdown_section([*pair, overlap], pd.DataFrame())
