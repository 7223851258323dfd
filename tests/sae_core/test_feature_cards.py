"""Feature cards (sae_core.feature_cards) and what the audit records for them (CardRecorder).

- the top-K the audit records in its single pass against a brute-force top-K over the very same
  dense codes (the independent reference), and its histograms against np.histogram;
- selection on a hand-built audit table; an empty audit; an undecodable token; the rendered
  fragment (one fc-card per selected latent, token text escaped).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from sae_core import feature_audit as fa
from sae_core import feature_cards as fc
from sae_core.datasets import token_batch

HOOK = "blocks.1.hook_resid_post"
DATASET = "toy-corpus:1"


# ------------------------------------------------------------------ the recorder against brute force
def test_recorder_top_k_and_histograms_match_brute_force_over_uneven_batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(900, 6, generator=gen) - 0.2)
    y = torch.relu(x + 0.8 * torch.randn(900, 6, generator=gen))  # compressed: reordered by the noise
    x[:, 5] = 0.0  # never fires on the dense side: no recorded context
    x[:3, 4], x[3:, 4] = torch.tensor([3.0, 2.0, 1.0]), 0.0  # fires on 3 tokens only: fewer than k contexts
    window, position = torch.arange(900) // 30, torch.arange(900) % 30
    recorder = fa.CardRecorder(6, k=5)
    for start, stop in [(0, 1), (1, 2), (2, 301), (301, 900)]:  # a one-row batch, a batch smaller than k
        recorder.update(x[start:stop], y[start:stop], window[start:stop], position[start:stop])
    table = recorder.topk_table()
    for j in range(5):
        got = table[table["feature"] == j]
        values, rows = x[:, j].topk(5)
        rows = rows[values > 0]
        assert list(got["rank"]) == list(range(len(rows)))
        assert list(zip(got["window"], got["position"])) == [(int(window[r]), int(position[r])) for r in rows]
        np.testing.assert_allclose(got["dense_value"], x[rows, j].numpy(), rtol=1e-6)
        np.testing.assert_allclose(got["compressed_value"], y[rows, j].numpy(), rtol=1e-6)
        # A recorder that ranked by the compressed activation would pick other rows: the data tells the two apart.
        assert set(y[:, j].topk(5).indices.tolist()) != set(rows.tolist()) or j == 4
    assert 5 not in set(table["feature"]) and len(table[table["feature"] == 4]) == 3
    edges = fa.histogram_edges()
    hist = recorder.histogram_table()
    for j in range(6):
        for side, acts in (("dense_counts", x), ("compressed_counts", y)):
            fired = acts[:, j][acts[:, j] > 0].double().numpy()
            reference = np.histogram(fired, bins=np.r_[edges[:-1], max(1e4, 2 * fired.max(initial=0))])[0]  # [a, b) bins
            np.testing.assert_array_equal(hist.loc[j, side], reference)


@pytest.fixture(scope="module")
def card_world(toy_model):
    """The toy model, a copy with its weights rounded to 3 bits (every latent moves a little), and a
    hand-built ReLU SAE whose latent j reads one random direction, firing on about a third of the tokens."""
    from sae_core.activations import hook_activations, special_token_ids
    from sae_core.models import resolve_processing, to_hooked_transformer
    from sae_core.sae_io import new_sae

    hooked = toy_model.hooked()
    tokens = token_batch(toy_model.tokenizer, DATASET, 24, 64, skip_sequences=700)
    hf = copy.deepcopy(toy_model.hf_model)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 2 and ".h." in name:
                scale = p.abs().amax(dim=0, keepdim=True).clamp(min=1e-12) / 3
                p.copy_((p / scale).round().clamp(-4, 3) * scale)
    compressed = to_hooked_transformer(hf, toy_model.tokenizer, toy_model.name, resolve_processing(None))
    acts = hook_activations(hooked, tokens, HOOK).reshape(-1, hooked.cfg.d_model)
    directions = torch.randn(12, hooked.cfg.d_model, generator=torch.Generator().manual_seed(3))
    directions = directions / directions.norm(dim=1, keepdim=True)
    sae = new_sae("standard", hooked.cfg.d_model, 12, HOOK, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(directions.T)
        sae.b_enc.copy_(-(acts @ directions.T).quantile(0.67, dim=0))
        sae.b_dec.zero_()
        sae.W_dec.copy_(directions)
    return {"dense": hooked, "compressed": compressed, "tokens": tokens, "sae": sae, "exclude": special_token_ids(toy_model.tokenizer),
            "tokenizer": toy_model.tokenizer}


def _brute_force_codes(model, sae, tokens, exclude) -> torch.Tensor:
    """[windows, seq, d_sae] codes at every position, the audit's batches, excluded positions -inf."""
    from sae_core.activations import hook_activations

    acts = hook_activations(model, tokens, HOOK, batch_size=16)
    codes = sae.encode(acts.reshape(-1, acts.shape[-1])).reshape(*tokens.shape, -1).detach()
    return codes.masked_fill(torch.isin(tokens, torch.tensor(sorted(exclude)))[..., None], -torch.inf)


def test_audit_records_the_top_k_positions_of_the_dense_activations(card_world):
    """Independent reference: torch.topk over the dense codes of every kept position, computed here
    directly (no CardRecorder). Windows can share their first tokens, so equal activations (ties)
    are real: the recorded values must be the reference's top values, and each recorded
    (window, position) must hold its recorded value in the reference codes. A recorder that took
    the top-K over the compressed codes, lost a batch's window offset (``start``) or mixed up
    subsets' positions fails one of the two; the guard below shows the compressed top-K really
    differs from the dense one here."""
    w = card_world
    audit = fa.audit_feature_fidelity(w["dense"], w["compressed"], w["sae"], w["tokens"], HOOK, exclude_ids=w["exclude"],
                                      batch_sequences=16, with_perplexity=False, card_top_k=6)
    plain = fa.audit_feature_fidelity(w["dense"], w["compressed"], w["sae"], w["tokens"], HOOK, exclude_ids=w["exclude"],
                                      batch_sequences=16, with_perplexity=False)
    pd.testing.assert_frame_equal(audit.table, plain.table)  # recording changes nothing else
    assert audit.summary == plain.summary and plain.cards is None
    dense = _brute_force_codes(w["dense"], w["sae"], w["tokens"], w["exclude"])
    compressed = _brute_force_codes(w["compressed"], w["sae"], w["tokens"], w["exclude"])
    recorded, differs = audit.cards.topk_table(), 0
    for j in range(12):
        values, flat = dense[..., j].flatten().topk(6)
        values = values[values > 0]
        got = recorded[recorded["feature"] == j]
        np.testing.assert_allclose(got["dense_value"], values.numpy(), rtol=1e-5, atol=1e-6)
        where = (torch.as_tensor(got["window"].to_numpy()), torch.as_tensor(got["position"].to_numpy()))
        assert len(set(zip(*map(torch.Tensor.tolist, where)))) == len(got)  # distinct positions
        np.testing.assert_allclose(dense[where][:, j].numpy(), got["dense_value"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compressed[where][:, j].numpy(), got["compressed_value"], rtol=1e-4, atol=1e-5)
        top_compressed = compressed[..., j].flatten().topk(6).values
        differs += not np.allclose(top_compressed.numpy(), compressed[where][:, j].numpy(), rtol=1e-3)
    assert differs >= 6, "the compressed model's top-K should differ from the dense one's positions for most latents"
    # Histograms: every non-zero kept activation, on each side, counted once.
    hist = audit.cards.histogram_table()
    for side, codes in (("dense_counts", dense), ("compressed_counts", compressed)):
        np.testing.assert_array_equal(np.stack(hist[side]).sum(1), (codes > 0).reshape(-1, 12).sum(0).numpy())
    with pytest.raises(ValueError, match="card_top_k"):
        fa.audit_feature_fidelity(w["dense"], w["compressed"], w["sae"], w["tokens"], HOOK, card_top_k=-1)


# ------------------------------------------------------------------ selection
def _audit_table(rows: list[tuple[int, float, bool, bool, float]]) -> pd.DataFrame:
    """(feature, r, active, dead_after, dense firing rate) -> an audit table with the audit's classes."""
    feature, r, active, dead, rate = map(np.array, zip(*rows))
    return pd.DataFrame({"feature": feature, "r": r, "dense_firing_rate": rate, "compressed_firing_rate": rate / 2,
                         "firing_jaccard": 0.5, "magnitude_ratio": 1.0, "dense_mean": 0.1, "dense_max": 1.0, "active": active,
                         "fidelity_class": fa.classify(r, active), "dead_after": dead})


def test_selection_picks_the_right_classes():
    rows = [(0, 0.95, True, False, 0.1), (1, 0.99, True, False, 0.1), (2, 0.7, True, False, 0.1), (3, 0.6, True, False, 0.1),
            (4, 0.8, True, False, 0.1), (5, 0.3, True, False, 0.1), (6, 0.1, True, False, 0.1), (7, -0.2, True, False, 0.1),
            (8, 0.0, True, True, 0.05), (9, 0.0, True, True, 0.2), (10, 0.05, False, False, 0.0001), (11, 0.45, True, False, 0.1)]
    table = _audit_table(rows)
    chosen = fc.select_latents(table, {"damaged": 3, "dead_after": 5, "degraded": 2, "survived": 1})
    by_class = chosen.groupby("card_class")["feature"].apply(list).to_dict()
    assert by_class["damaged"] == [7, 6, 5]  # lowest r first; 11 (r 0.45) is the fourth; dead-after ones are not "damaged"
    assert by_class["dead_after"] == [9, 8]  # most frequent on the dense model first
    assert set(by_class["degraded"]) <= {2, 3, 4} and len(by_class["degraded"]) == 2
    assert len(by_class["survived"]) == 1 and by_class["survived"][0] in (0, 1)
    assert 10 not in set(chosen["feature"])  # inactive: never a card
    assert list(chosen["card_class"].drop_duplicates()) == ["damaged", "dead_after", "degraded", "survived"]
    assert chosen.equals(fc.select_latents(table, {"damaged": 3, "dead_after": 5, "degraded": 2, "survived": 1}))  # seeded
    # Only latents with a recorded context qualify.
    assert 7 not in set(fc.select_latents(table, has_contexts=[0, 1, 2, 5, 6, 8])["feature"])


def test_an_audit_with_no_active_latent_gives_empty_cards_and_a_message():
    table = _audit_table([(0, 0.0, False, False, 0.0), (1, 0.0, False, False, 0.0)])
    cards = fc.build_cards(None, None, None, None, None, HOOK, table, pd.DataFrame(columns=["feature"]), pd.DataFrame(),
                           fa.histogram_edges())
    assert cards.status == "empty" and cards.frame.empty and "no active latent" in cards.message
    html = fc.render_cards(None, {"kind": "feature_cards", "status": "empty", "message": cards.message, "hook": HOOK})
    assert '<p class="fc-message">' in html and "no active latent" in html and "fc-card" not in html.replace("fc-cards", "")


# ------------------------------------------------------------------ built cards, undecodable tokens, rendering
class _BrokenTokenizer:
    """Decodes like the toy tokenizer, except that it raises for one token id."""

    def __init__(self, tokenizer, broken: int):
        self.tokenizer, self.broken = tokenizer, broken

    def decode(self, ids):
        if self.broken in list(ids):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return self.tokenizer.decode(ids)


@pytest.fixture(scope="module")
def built_cards(card_world):
    w = card_world
    audit = fa.audit_feature_fidelity(w["dense"], w["compressed"], w["sae"], w["tokens"], HOOK, exclude_ids=w["exclude"],
                                      with_perplexity=False, card_top_k=fa.CARD_TOP_K)
    topk = audit.cards.topk_table()
    feature = int(topk["feature"].iloc[0])
    broken = int(w["tokens"][int(topk["window"].iloc[0]), int(topk["position"].iloc[0])])  # the max token of a shown context
    cards = fc.build_cards(w["dense"], w["compressed"], w["sae"], _BrokenTokenizer(w["tokenizer"], broken), w["tokens"], HOOK,
                           audit.table, topk, audit.cards.histogram_table(), fa.histogram_edges(), exclude_ids=w["exclude"],
                           selection={"damaged": 12, "dead_after": 12, "degraded": 12, "survived": 12})
    return {"audit": audit, "cards": cards, "broken": broken, "feature": feature}


def test_cards_hold_contexts_on_both_models_histograms_figures_and_promoted_tokens(built_cards, card_world):
    cards, audit = built_cards["cards"], built_cards["audit"]
    frame = cards.frame
    assert cards.status == "ok" and list(frame.columns) == fc.CARD_COLUMNS
    active = audit.table[audit.table["active"]]
    assert len(frame) == len(active)  # asked for more than there are: every active latent gets a card
    for card in frame.to_dict(orient="records"):
        stats = audit.table.set_index("feature").loc[card["feature"]]
        assert card["r"] == pytest.approx(stats["r"]) and card["fidelity_class"] == stats["fidelity_class"]
        expected = "dead_after" if stats["dead_after"] else stats["fidelity_class"]
        assert card["card_class"] == expected
        assert 1 <= len(card["ctx_tokens"]) <= fc.CONTEXTS_PER_CARD
        assert len(set(card["ctx_window"])) == len(card["ctx_window"])  # one context per window
        for i, tokens in enumerate(card["ctx_tokens"]):
            assert len(tokens) == len(card["ctx_dense_acts"][i]) == len(card["ctx_compressed_acts"][i]) <= fc.CONTEXT_BEFORE + fc.CONTEXT_AFTER + 1
            center = card["ctx_center"][i]
            # The re-run over only the shown windows finds the value the audit recorded at the maximum, on both models.
            assert card["ctx_dense_acts"][i][center] == pytest.approx(card["ctx_recorded_dense"][i], rel=1e-4, abs=1e-5)
            assert card["ctx_compressed_acts"][i][center] == pytest.approx(card["ctx_recorded_compressed"][i], rel=1e-3, abs=1e-4)
        assert len(card["hist_dense"]) == len(card["hist_edges"]) - 1 and sum(card["hist_dense"]) > 0
        assert len(card["promoted_dense"]) == len(card["promoted_compressed"]) == fc.PROMOTED_K
        assert list(card["promoted_dense_logits"]) == sorted(card["promoted_dense_logits"], reverse=True)
    # Promoted tokens are W_dec[j] @ W_U (fold_ln: the final norm's weight is inside W_U), centred as the final LayerNorm does.
    w = card_world
    j = int(frame["feature"].iloc[0])
    direction = w["sae"].W_dec[j].detach()
    logits = (direction - direction.mean()) @ w["dense"].W_U.detach()
    assert frame["promoted_dense"].iloc[0] == [fc.decode_token(w["tokenizer"], t) for t in logits.topk(fc.PROMOTED_K).indices.tolist()]


def test_a_token_the_tokenizer_cannot_decode_shows_a_placeholder(built_cards):
    frame, broken = built_cards["cards"].frame, built_cards["broken"]
    card = frame.set_index("feature").loc[built_cards["feature"]]
    first = card["ctx_token_ids"][0]
    assert broken in first
    assert all(text == fc.UNDECODABLE for t, text in zip(first, card["ctx_tokens"][0]) if t == broken)
    assert fc.decode_token(None, 3) == fc.UNDECODABLE  # no decode method at all: a placeholder too


def test_rendered_fragment_has_one_card_per_latent_and_escapes_token_text(built_cards, tmp_path):
    from sae_core.storage import Storage

    frame = built_cards["cards"].frame.copy()
    frame.at[0, "ctx_tokens"] = [["<script>alert(1)</script>", " a\nb\t"] + list(frame.at[0, "ctx_tokens"][0][2:])] + \
        list(frame.at[0, "ctx_tokens"][1:])
    storage = Storage(f"file://{tmp_path}/store")
    storage.put_parquet("feature_cards/x.parquet", frame)  # through Parquet, as the task stores them
    manifest = {"kind": "feature_cards", "status": "ok", "message": "test cards", "cards_key": "feature_cards/x.parquet",
                "hook": HOOK, "sae_prefix": "saes/original/<b>x</b>", "model_prefix": "m", "compression": "rtn:3"}
    page = fc.render_cards(storage, manifest)
    assert page.count('<section class="fc-card"') == len(frame)
    for feature, card_class in zip(frame["feature"], frame["card_class"]):
        assert f'<section class="fc-card" data-latent="{feature}" data-class="{card_class}">' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>x</b>" not in page  # manifest text is escaped too
    assert "\u21b5" in page and "\u21e5" in page and "\u00b7" in page  # newline, tab, space made visible
    assert "<svg" in page and "background: rgba(" in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert fc.UNDECODABLE in page
    assert "<html" not in page and all(c.startswith("fc-") for c in _classes(page))
    assert ".fc-card" in fc.CARDS_CSS


def _classes(page: str) -> set[str]:
    import re

    return {c for attr in re.findall(r'(?<![\w-])class="([^"]*)"', page) for c in attr.split()}


def test_rendering_never_raises_for_missing_or_broken_cards(tmp_path):
    from sae_core.storage import Storage

    storage = Storage(f"file://{tmp_path}/store")
    missing = fc.render_cards(storage, {"status": "ok", "cards_key": "feature_cards/none.parquet", "hook": HOOK})
    assert '<p class="fc-message">' in missing and "could not be read" in missing
    storage.put_parquet("feature_cards/bad.parquet", pd.DataFrame({"feature": [3], "card_class": ["damaged"], "ctx_tokens": [5]}))
    broken = fc.render_cards(storage, {"status": "ok", "cards_key": "feature_cards/bad.parquet"})
    assert '<section class="fc-card" data-latent="3" data-class="damaged">' in broken and "fc-message" in broken
    assert "fc-message" in fc.render_cards(storage, None)
