"""Tests of the compression package (sae_core.compression): spec parsing, SparseGPT against an
independent port of the published rules, the Cholesky damping ladder, RTN against its formula,
GPTQ sanity, and the one ``compress_model`` interface.

The SparseGPT port below is written from the published algorithm (IST-DASLab/sparsegpt
``fasterprune``, also ``locuslab/wanda:lib/sparsegpt.py``) but organised differently from the
library so that a shared bookkeeping bug cannot hide: it inverts ``H`` with ``torch.linalg.inv``
instead of ``cholesky_inverse``, and it applies the OBS update *eagerly* to every remaining
column after each column instead of the lazy block-wise update (mathematically the same).
Everything runs in float64 on tiny random layers and models (no hub access).
"""

from __future__ import annotations

import copy
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from sae_core.compression import compress_model, parse_spec
from sae_core.compression.gptq import gptq_quantize_
from sae_core.compression.rtn import rtn_quantize
from sae_core.compression.sparsegpt import HessianAccumulator, HessianError, sparsegpt_prune_
from sae_core.compression.modules import Target, find_prunable_modules
from sae_core.compression.wanda import prune_weight_


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- helpers


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:  # Conv1D modules; mlp.c_proj has 256 inputs = 2 column blocks
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).double().eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:  # nn.Linear modules, grouped-query attention
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).double().eval()


def calib(vocab: int, n: int = 6, seq: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def w_out_in(module: nn.Module) -> torch.Tensor:
    return (module.weight.t() if isinstance(module, Conv1D) else module.weight).detach().clone()


def layer(kind: str, n_in: int, n_out: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return (nn.Linear(n_in, n_out) if kind == "linear" else Conv1D(n_out, n_in)).double()


def correlated_inputs(n_in: int, n_tokens: int = 400, seed: int = 1) -> torch.Tensor:
    """Inputs with correlated columns of very different scales (where OBS updates matter)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_tokens, n_in // 2, generator=g, dtype=torch.float64)
    mix = torch.randn(n_in // 2, n_in, generator=g, dtype=torch.float64)
    scales = torch.rand(n_in, generator=g, dtype=torch.float64) * 3 + 0.1
    return (z @ mix + 0.1 * torch.randn(n_tokens, n_in, generator=g, dtype=torch.float64)) * scales


def hessian_of(x: torch.Tensor, n_seq: int) -> torch.Tensor:
    """``2/n_seq * X^T X`` summed directly (the library keeps a running mean over batches)."""
    return 2.0 / n_seq * x.T @ x


# --------------------------------------------------------------------------- the SparseGPT port


def port_sparsegpt(w: torch.Tensor, H: torch.Tensor, sparsity: float, nm=None, blocksize: int = 128,
                   percdamp: float = 0.01, *, per_row_threshold=False, obs_update=True, identity_hinv=False):
    """Independent port of the published SparseGPT rules on an ``[out, in]`` float64 weight.

    The keyword flags build the *wrong* variants the tests must tell apart from the real one:
    ``per_row_threshold`` (WANDA-like per-row selection), ``obs_update=False`` (mask only, no
    error compensation) and ``identity_hinv`` (llm-compressor's fallback on Cholesky failure).
    """
    W = w.clone().double()
    H = H.clone().double()
    n_out, n_in = W.shape
    dead = torch.diag(H) == 0
    for j in range(n_in):
        if dead[j]:
            H[j, j] = 1.0
            W[:, j] = 0.0
    H = H + percdamp * torch.diag(H).mean() * torch.eye(n_in, dtype=H.dtype)
    U = torch.eye(n_in, dtype=H.dtype) if identity_hinv else torch.linalg.cholesky(torch.linalg.inv(H)).T  # upper
    mask = torch.zeros_like(W, dtype=torch.bool)
    for b0 in range(0, n_in, blocksize):
        b1 = min(b0 + blocksize, n_in)
        d = torch.diag(U)[b0:b1]
        if nm is None and sparsity > 0:
            score = W[:, b0:b1] ** 2 / d**2
            if per_row_threshold:
                k = int(score.shape[1] * sparsity)
                thr = score.sort(dim=1).values[:, k : k + 1]
                mask[:, b0:b1] = score <= thr
            else:  # the quantile of the whole block, flattened over rows
                thr = score.flatten().sort().values[int(score.numel() * sparsity)]
                mask[:, b0:b1] = score <= thr
        for j in range(b0, b1):
            if nm is not None and (j - b0) % nm[1] == 0:
                n, m = nm
                hi = min(j + m, b1)
                score = W[:, j:hi] ** 2 / torch.diag(U)[j:hi] ** 2
                for r in range(n_out):
                    for c in score[r].argsort()[:n].tolist():
                        mask[r, j + c] = True
            q = W[:, j].clone()
            q[mask[:, j]] = 0.0
            err = (W[:, j] - q) / U[j, j]
            W[:, j] = q
            if obs_update:
                W[:, j + 1 :] -= torch.outer(err, U[j, j + 1 :])  # eager: every remaining column at once
    return W, mask


def sparsegpt_layer(module: nn.Module, x: torch.Tensor, sparsity: float, nm=None) -> dict:
    acc = HessianAccumulator(Target("m", "m", "mlp", 0, module))
    for chunk in x.split(100):  # 4 "sequences" of 100 tokens, running-mean updates
        acc.add(chunk.unsqueeze(0))
    return sparsegpt_prune_(module, acc.H, sparsity, nm, name="m")


# --------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize("text, canonical, strength", [
    ("wanda:0.5", "wanda:0.5", 0.5), ("sparsegpt:2:4", "sparsegpt:2:4", 0.5), ("magnitude:0.25", "magnitude:0.25", 0.25),
    ("magnitude_row:0.5", "magnitude:0.5", 0.5), ("magnitude_matrix:0.5", "magnitude_matrix:0.5", 0.5),
    ("rtn:8", "rtn:8", 8.0), ("RTN:4g128", "rtn:4g128", 4.0), ("gptq:3", "gptq:3", 3.0), ("wanda:0", "wanda:0", 0.0),
])
def test_spec_parses_to_canonical_text(text, canonical, strength):
    spec = parse_spec(text)
    assert spec.text == canonical and spec.strength == strength
    assert parse_spec(spec.text) == spec


@pytest.mark.parametrize("text, message", [
    ("prune:0.5", "unknown compression method 'prune'"), ("wanda:1.0", "sparsity must be in [0, 1), got 1.0"),
    ("sparsegpt:-0.1", "sparsity must be in [0, 1), got -0.1"), ("wanda:nan", "sparsity must be in [0, 1), got nan"),
    ("wanda:4:2", "N=4, M=2"), ("sparsegpt:2:2", "N=2, M=2"), ("magnitude_matrix:2:4", "cannot use N:M"),
    ("rtn:9", "bits must be in [2, 8], got 9"), ("rtn:1", "bits must be in [2, 8], got 1"), ("rtn:0.5", "bit width"),
    ("gptq:4g0", "group size must be >= 1"), ("wanda", "METHOD:STRENGTH"), ("wanda:half", "'half'"),
])
def test_bad_specs_raise_naming_the_value(text, message):
    with pytest.raises(ValueError) as err:
        parse_spec(text)
    assert message in str(err.value)


# --------------------------------------------------------------------------- SparseGPT vs the port


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("sparsity, nm", [(0.5, None), (0.3, None), (0.5, (2, 4))])
def test_sparsegpt_layer_matches_port(kind, sparsity, nm):
    n_in, n_out = 300, 24  # 3 column blocks, the last one ragged (44 columns)
    module = layer(kind, n_in, n_out)
    x = correlated_inputs(n_in)
    x[:, 7] = 0.0  # a dead input: H_77 == 0
    w0 = w_out_in(module)
    bias0 = module.bias.detach().clone()
    facts = sparsegpt_layer(module, x, sparsity, nm)
    expected, mask = port_sparsegpt(w0, hessian_of(x, 4), sparsity, nm)
    got = w_out_in(module)
    assert torch.equal(got == 0, expected == 0)  # the same mask (and the dead column pruned)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)  # the same updated weights
    assert torch.equal(module.bias, bias0) and facts == {"damping": 0.01, "damping_retries": 0}
    assert bool((got[:, 7] == 0).all())
    if nm is not None:  # exactly N zeros in every group of M of every row
        assert bool(((got == 0).reshape(n_out, -1, nm[1]).sum(-1) >= nm[0]).all())

    # How wrong variants are caught on these very inputs: each gives another result.
    kept = ~mask
    assert not torch.equal(got[kept], w0[kept])  # no OBS update would leave kept weights unchanged
    assert not torch.equal(port_sparsegpt(w0, hessian_of(x, 4), sparsity, nm, obs_update=False)[0], expected)
    assert not torch.equal(port_sparsegpt(w0, hessian_of(x, 4), sparsity, nm, identity_hinv=True)[1], mask)
    if nm is None:
        assert not torch.equal(port_sparsegpt(w0, hessian_of(x, 4), sparsity, per_row_threshold=True)[1], mask)
        per_row = mask[:, :128].sum(1)  # the block-wide threshold leaves rows unequally sparse
        assert per_row.min() < per_row.max()


def test_sparsegpt_models_match_sequential_port():
    """Whole models, block by block: the port prunes each block from inputs produced by the
    already pruned blocks (gathered with the full model's forward, no catcher)."""
    for dense, ids in ((tiny_gpt2(), calib(97)), (tiny_llama(), calib(96))):
        model = copy.deepcopy(dense)
        report = compress_model(model, "sparsegpt:0.5", ids, batch_size=4, progress=False)
        ref = copy.deepcopy(dense)
        for block_targets in find_prunable_modules(ref):
            inputs: dict[str, list[torch.Tensor]] = {t.name: [] for t in block_targets}
            handles = [t.module.register_forward_pre_hook(
                lambda m, a, name=t.name: inputs[name].append(a[0].reshape(-1, a[0].shape[-1]))) for t in block_targets]
            with torch.no_grad():
                ref(input_ids=ids)
            for h in handles:
                h.remove()
            for t in block_targets:  # every module of the block from the same (dense-block) inputs
                w, _ = port_sparsegpt(w_out_in(t.module), hessian_of(torch.cat(inputs[t.name]), ids.shape[0]), 0.5)
                with torch.no_grad():
                    (t.module.weight.t() if isinstance(t.module, Conv1D) else t.module.weight).copy_(w)
        for (name, p), (_, r) in zip(model.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p, r, rtol=1e-7, atol=1e-9, msg=name)
        assert report.calibration_tokens == ids.numel() and 0.5 < report.overall_sparsity < 0.52


def test_sparsegpt_reconstructs_layer_outputs_better_than_wanda():
    """At the same sparsity and calibration inputs, ||WX - W_hat X|| of SparseGPT < WANDA's."""
    for kind in ("linear", "conv1d"):
        x = correlated_inputs(192, n_tokens=600, seed=3)
        errors = {}
        for method in ("sparsegpt", "wanda"):
            module = layer(kind, 192, 48, seed=5)
            w0 = w_out_in(module)
            if method == "sparsegpt":
                sparsegpt_layer(module, x[:400], 0.5)
            else:
                prune_weight_(module, 0.5, "unstructured", "wanda", x[:400].pow(2).sum(0))
            held_out = x[400:]  # also on inputs neither method saw
            errors[method] = [float(torch.linalg.norm(xs @ (w0 - w_out_in(module)).T)) for xs in (x[:400], held_out)]
        assert errors["sparsegpt"][0] < 0.8 * errors["wanda"][0], errors
        assert errors["sparsegpt"][1] < errors["wanda"][1], errors


# --------------------------------------------------------------------------- Cholesky failures


def test_indefinite_hessian_raises_damping_and_says_so():
    module = layer("linear", 4, 3)
    H = torch.tensor([[1.0, 2.5], [2.5, 1.0]], dtype=torch.float64)  # eigenvalues 3.5, -1.5
    H = torch.block_diag(H, H)
    with pytest.warns(RuntimeWarning, match=r"Hessian of blk.0.fc failed with damping 0.01 .* succeeded with 10 x"):
        facts = sparsegpt_prune_(module, H.clone(), 0.5, name="blk.0.fc")
    assert facts == {"damping": pytest.approx(10.0), "damping_retries": 3}
    expected, _ = port_sparsegpt(w_out_in(layer("linear", 4, 3)), H, 0.5, percdamp=10.0)
    torch.testing.assert_close(w_out_in(module), expected)


@pytest.mark.parametrize("H, message", [
    (torch.tensor([[1.0, 1e6], [1e6, 1.0]], dtype=torch.float64), "failed even with damping 100"),
    (torch.tensor([[float("nan"), 0.0], [0.0, 1.0]], dtype=torch.float64), "not finite"),
])
def test_hopeless_hessian_raises_naming_the_module(H, message):
    module = layer("linear", 2, 3)
    w0 = w_out_in(module)
    with pytest.raises(HessianError, match=r"transformer\.h\.3\.mlp\.c_fc") as err:
        sparsegpt_prune_(module, H, 0.5, name="transformer.h.3.mlp.c_fc")
    assert message in str(err.value)
    assert torch.equal(w_out_in(module), w0)  # never an identity-inverse fallback: the weight is untouched


def test_damping_shows_in_the_report():
    model = tiny_gpt2()
    ids = calib(97, n=1, seq=4)  # 4 tokens: mlp.c_proj's 256x256 Hessian has rank <= 4
    report = compress_model(model, "sparsegpt:0.5", ids, progress=False)
    rows = report.to_rows()
    assert all(r["damping"] >= 0.01 for r in rows) and len(rows) == 8
    assert report.summary()["max_damping"] >= 0.01


# --------------------------------------------------------------------------- RTN


def ref_rtn(w: torch.Tensor, bits: int, group: int | None = None) -> torch.Tensor:
    """Duan's formula, row by row (and group by group), in float32."""
    qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    w = w.float()
    out = torch.empty_like(w)
    g = group or w.shape[1]
    for r in range(w.shape[0]):
        for c0 in range(0, w.shape[1], g):
            seg = w[r, c0 : c0 + g]
            scale = seg.abs().max() / qmax
            if scale == 0:
                scale = torch.tensor(1.0)
            out[r, c0 : c0 + g] = torch.clamp(torch.round(seg / scale), qmin, qmax) * scale
    return out


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("bits, group", [(8, None), (4, None), (2, None), (4, 16)])
def test_rtn_matches_the_formula(kind, bits, group):
    module = layer(kind, 64, 24).float()
    with torch.no_grad():
        w_out_in_view = module.weight.t() if kind == "conv1d" else module.weight
        w_out_in_view[3] = 0.0  # an all-zero output channel: scale 1, stays zero
    w0 = w_out_in(module)
    got = rtn_quantize(w0, bits, group)
    assert torch.equal(got, ref_rtn(w0, bits, group))
    assert bool((got[3] == 0).all())
    levels = (got / (w0.abs().amax(1, keepdim=True).clamp_min(1e-30) / (2 ** (bits - 1) - 1)))
    if group is None:
        assert torch.allclose(levels[torch.arange(24) != 3], levels[torch.arange(24) != 3].round(), atol=1e-3)


def test_rtn_changes_only_block_weights_and_error_grows_as_bits_fall():
    dense = tiny_gpt2().float()
    errors = []
    for bits in (8, 6, 4, 3, 2):
        model = copy.deepcopy(dense)
        report = compress_model(model, f"rtn:{bits}", progress=False)
        changed = {n for (n, p), (_, q) in zip(model.named_parameters(), dense.named_parameters()) if not torch.equal(p, q)}
        assert changed == {f"transformer.h.{b}.{m}.weight" for b in range(2)
                           for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert report.calibration_tokens == 0 and report.summary()["bits"] == bits
        errors.append(report.relative_error)
    assert errors[0] < 1e-2  # 8 bits: per-channel absmax error is tiny (~ step / sqrt(12) ~ 0.007 here)
    assert all(a < b for a, b in zip(errors, errors[1:])), errors  # monotone as bits fall


def test_rtn_module_groups_and_group_divisibility():
    model = tiny_llama().float()
    before = {n: p.clone() for n, p in model.named_parameters()}
    compress_model(model, "rtn:4", module_groups=["mlp"], progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".mlp." in n for n in changed)
    with pytest.raises(ValueError, match="group size 48 .* does not divide the input dimension 64"):
        compress_model(model, "rtn:4g48", progress=False)


# --------------------------------------------------------------------------- GPTQ


def test_gptq_equals_rtn_for_identity_hessian_and_beats_it_on_correlated_inputs():
    module = layer("conv1d", 128, 16, seed=2).float()
    w0 = w_out_in(module)
    gptq_quantize_(module, torch.eye(128), 4, name="m")
    torch.testing.assert_close(w_out_in(module), rtn_quantize(w0, 4), rtol=0, atol=1e-6)

    x = correlated_inputs(128, n_tokens=500, seed=4).float()
    errors = {}
    for method in ("gptq", "rtn"):
        module = layer("linear", 128, 16, seed=2).float()
        w0 = w_out_in(module)
        if method == "gptq":
            gptq_quantize_(module, 2.0 / 500 * x.T @ x, 3, name="m")
        else:
            compressed = rtn_quantize(w0, 3)
            with torch.no_grad():
                module.weight.copy_(compressed)
        errors[method] = float(torch.linalg.norm(x @ (w0 - w_out_in(module)).T))
    assert errors["gptq"] < 0.8 * errors["rtn"], errors


# --------------------------------------------------------------------------- the one interface


@pytest.mark.parametrize("spec", ["wanda:0.5", "magnitude:0.5", "magnitude_matrix:0.5", "wanda:2:4"])
def test_compress_model_matches_the_independent_references_bit_for_bit(spec):
    """compress_model against the slow references of tests/sae_core/compression/test_wanda.py (float64: no near-ties)."""
    from tests.sae_core.compression.test_wanda import (GPT2_TARGETS, ref_magnitude_matrix_mask, ref_magnitude_row_mask,
                                              sequential_reference)

    dense = tiny_gpt2().double()
    ids = calib(97)
    parsed = parse_spec(spec)
    names = GPT2_TARGETS["attention"] + GPT2_TARGETS["mlp"]
    if parsed.method == "wanda":
        a = sequential_reference(dense, "transformer.h", names, ids, parsed.sparsity, parsed.structure)
    else:
        a = copy.deepcopy(dense)
        for name, module in a.named_modules():
            if any(name.endswith(t) for t in names) and name.startswith("transformer.h."):
                w = w_out_in(module)
                mask = (ref_magnitude_matrix_mask(w, parsed.sparsity) if parsed.method == "magnitude_matrix"
                        else ref_magnitude_row_mask(w, parsed.sparsity, parsed.nm))
                with torch.no_grad():
                    (module.weight.t() if isinstance(module, Conv1D) else module.weight).masked_fill_(mask, 0)
    b = copy.deepcopy(dense)
    report = compress_model(b, spec, ids, batch_size=4, progress=False)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
    assert report.overall_sparsity == pytest.approx(0.5)
    row = report.to_rows()[0]
    assert row["spec"] == parsed.text and row["achieved_sparsity"] == pytest.approx(0.5)
    assert all(isinstance(v, (str, int, float)) for r in report.to_rows() for v in r.values())


@pytest.mark.parametrize("spec, ids, message", [
    ("sparsegpt:0.5", None, "needs calibration_input_ids"),
    ("sparsegpt:1:3", "ok", "M=3 does not divide"),
    ("wanda:0.5", "float", "integer token ids"),
])
def test_compress_model_rejects_bad_input_before_touching_the_model(spec, ids, message):
    model = tiny_gpt2()
    before = {n: p.clone() for n, p in model.named_parameters()}
    ids = {"ok": calib(97), "float": calib(97).double(), None: None}[ids]
    with pytest.raises(ValueError, match=message):
        compress_model(model, spec, ids, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_every_method_keeps_a_working_float_model():
    dense = tiny_llama().float()
    ids = calib(96, n=4, seq=16)
    for spec in ("wanda:0.5", "sparsegpt:2:4", "magnitude:0.5", "rtn:4", "gptq:4g32"):
        model = copy.deepcopy(dense)
        report = compress_model(model, spec, ids, progress=False)
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        assert torch.isfinite(logits).all(), spec
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert len(report.modules) == 14 and not math.isnan(report.relative_error) and report.relative_error > 0


def test_report_lists_every_compressed_model_and_keeps_specs_apart():
    import pandas as pd

    from sae_core import report as rep

    def manifest(spec, sparsity, bits, ppl):
        parsed = parse_spec(spec)
        return {"prefix": f"compressed_models/{spec}", "perplexity": {"dense": 10.0, "compressed": ppl, "pruned": ppl},
                "compression": {"spec": spec, "method": parsed.method, "structure": parsed.structure,
                                "strength": parsed.strength, "bits": bits, "achieved_sparsity": sparsity,
                                "wall_time_s": 1.5, "calibration_tokens": 64}}

    legacy = {"prefix": "pruned_models/old", "perplexity": {"dense": 10.0, "pruned": 12.0},  # from before the rename
              "pruning": {"method": "wanda", "structure": "unstructured", "sparsity": 0.5, "achieved_sparsity": 0.5,
                          "wall_time_s": 2.0}}
    models = [manifest("sparsegpt:0.5", 0.5, None, 11.0), manifest("rtn:4", 0.01, 4, 10.5), legacy]
    text = rep.markdown_summary(pd.DataFrame(), pd.DataFrame(), models, [])
    assert "## Compressed language models" in text
    assert "| sparsegpt:0.5 | sparsegpt unstructured | 0.5 | 0.500 | 10.000 → 11.000 | 1.5 | 64 |" in text
    assert "| rtn:4 | rtn per_channel | 4 | 4 bits | 10.000 → 10.500 |" in text
    assert "| wanda:0.5 | wanda unstructured | 0.5 | 0.500 | 10.000 → 12.000 | 2.0 | 0 |" in text

    rows = [{"hook": "h", "compression": spec, "strength": float(spec[-1]), "sae_variant": variant, "sae_scoring_rule": "",
             "sae_sparsity": 0.0, "metric_family": "core", "metric_name": "ce_loss_score", "value": v,
             "higher_is_better": True} for spec, v in (("rtn:8", 0.9), ("rtn:4", 0.5)) for variant in ("original", "retrained")]
    table = rep.headline_table(pd.DataFrame(rows))
    assert sorted(table["compression"].unique()) == ["rtn:4", "rtn:8"] and len(table) == 4  # not averaged together
    assert sorted(rep.metric_vs_sparsity_plots(pd.DataFrame(rows))) == ["metrics_h_rtn-4.png", "metrics_h_rtn-8.png"]


def test_sparsegpt_nm_groups_stay_aligned_when_m_does_not_divide_the_block():
    module = layer("linear", 300, 8, seed=6)  # M=3 does not divide 128: blocks of 126 columns keep groups aligned
    sparsegpt_layer(module, correlated_inputs(300, seed=6), 1 / 3, (1, 3))
    zeros = (w_out_in(module) == 0).reshape(8, 100, 3).sum(-1)
    assert bool((zeros == 1).all())


def test_registry_entries_load_their_method_and_parsing_needs_no_torch():
    import subprocess
    import sys

    from sae_core.compression.registry import METHODS, method_class

    for name in METHODS:
        assert method_class(name).name == name
    # Configs and the CLI validate specs before anything heavy loads: no transformers import for parsing.
    code = "import sys; from sae_core.config import build_config; build_config('toy', {'compression': ['rtn:4']}); " \
           "print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_config_parses_specs_once_and_the_deprecated_llm_pruning_key_still_works():
    from sae_core.compression import CompressionSpec
    from sae_core.config import ExperimentConfig, build_config

    config = build_config("toy", {"compression": ["magnitude_row:0.5", "rtn:4"]})
    assert all(isinstance(s, CompressionSpec) for s in config.compression)
    assert [s.text for s in config.compression] == ["magnitude:0.5", "rtn:4"] and config.compression[1].strength == 4.0
    dumped = config.model_dump(mode="json")
    assert dumped["compression"] == ["magnitude:0.5", "rtn:4"] and "llm_pruning" not in dumped
    assert ExperimentConfig.model_validate(dumped) == config  # canonical text validates back to the same specs

    with pytest.warns(DeprecationWarning) as caught:
        old = build_config("toy", {"llm_pruning": {"method": "magnitude_row", "sparsities": [0.25, 0.5], "n_calibration_samples": 8,
                                                   "calibration_dataset": "toy-corpus:3"}})
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message == ("config key 'llm_pruning' is deprecated; write calibration: {dataset: 'toy-corpus:3', n_samples: 8} "
                       "and compression: ['magnitude_row:0.25', 'magnitude_row:0.5'] instead")
    assert [s.text for s in old.compression] == ["magnitude:0.25", "magnitude:0.5"]
    assert old.calibration.n_samples == 8 and old.calibration.dataset == "toy-corpus:3" and old.calibration.seq_len == 128
    with pytest.warns(DeprecationWarning):  # calibration fields only: the preset's compression stays
        assert [s.text for s in build_config("toy", {"llm_pruning": {"seq_len": 64}}).compression] == ["wanda:0.5"]
    with pytest.raises(ValueError, match="field: llm_pruning.sparsities"):  # a bad old section is named as written
        build_config("toy", {"llm_pruning": {"sparsities": [-0.1]}})
