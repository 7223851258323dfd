"""sae_core.metrics.encode_memo on a small sae-lens SAE: what is served from memory, what is not.
SCR's whole SAEBench output with and without the memo: tests/sae_core/metrics/test_families.py."""

from __future__ import annotations

import pytest
import torch

from sae_core.metrics import encode_memo
from sae_core.metrics.encode_memo import memoised_codes, memoised_feature_ablations


@pytest.fixture()
def sae():
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=64, k=4))
    sae.W_enc.data = torch.randn(16, 64)
    sae.W_dec.data = torch.randn(64, 16)
    return sae


def test_repeated_views_are_served_and_copies_are_private(sae):
    acts = torch.randn(10, 5, 16)
    with memoised_codes(sae, max_bytes=1 << 20) as memo:
        first = sae.encode(acts[0:4])
        expected = first.clone()
        recon = sae.decode(first)
        first[..., :8] = 0.0  # SAEBench zeroes the ablated latents in place
        ablated = sae.decode(first)
        again = sae.encode(acts[0:4])  # a new view of the same rows
        assert torch.equal(again, expected)  # not the zeroed copy
        assert torch.equal(sae.decode(again), recon)
        assert torch.equal(sae.encode(acts[4:8]), type(sae).encode(sae, acts[4:8]))  # other rows: computed
    assert (memo.encode_hits, memo.encode_misses, memo.decode_hits) == (1, 2, 1)
    assert torch.equal(ablated, type(sae).decode(sae, first))
    assert "encode" not in vars(sae) and "decode" not in vars(sae)  # the SAE's own methods again


def test_an_input_changed_in_place_is_recomputed(sae):
    acts = torch.randn(4, 5, 16)
    with memoised_codes(sae, max_bytes=1 << 20) as memo:
        sae.encode(acts)
        acts.mul_(2.0)
        codes = sae.encode(acts)
    assert memo.encode_hits == 0 and memo.encode_misses == 2
    assert torch.equal(codes, type(sae).encode(sae, acts))


def test_the_size_limit_stops_storing_not_answering(sae, monkeypatch):
    acts = torch.randn(4, 5, 16)
    with memoised_codes(sae, max_bytes=100) as memo:  # one batch's codes are 4*5*64*4 bytes
        assert torch.equal(sae.encode(acts), sae.encode(acts))
    assert memo.encode_hits == 0 and memo.bytes == 0
    monkeypatch.setenv(encode_memo.MAX_BYTES_ENV, "0")
    with memoised_codes(sae) as memo:
        assert "encode" not in vars(sae)  # off: nothing installed
    monkeypatch.setenv(encode_memo.MAX_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match="SAE_TRANSFER_ENCODE_MEMO_MAX_BYTES.*'lots'"):
        encode_memo.memo_max_bytes()


def test_the_ablation_loop_wrapper_is_scoped_to_each_call(sae):
    class Module:
        @staticmethod
        def perform_feature_ablations(probes, sae_, acts):
            assert "encode" in vars(sae_)
            return [sae_.encode(acts) for _ in range(3)]

    module, acts = Module(), torch.randn(2, 3, 16)
    original = module.perform_feature_ablations
    with memoised_feature_ablations(module) as memos:
        module.perform_feature_ablations(None, sae, acts)
        module.perform_feature_ablations(None, sae, acts)
    assert module.perform_feature_ablations is original
    assert [(m.encode_hits, m.encode_misses) for m in memos] == [(2, 1), (2, 1)]  # nothing carried between calls
    assert "encode" not in vars(sae)
