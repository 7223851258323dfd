"""benchmarks/results_gemma.py: docs/results-gemma-3-270m.md's tables from a storage root's Parquet, prose kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from sae_core.storage import Storage

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "results_gemma.py"


def _script():
    spec = importlib.util.spec_from_file_location("results_gemma", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metric(experiment, hook, layer, compression, spec, variant, family, name, value, sae, model, higher=True):
    return {"run_id": "r", "experiment": experiment, "model": "toy", "compression": compression, "strength": 0.5, "hook": hook, "layer": layer,
            "sae_variant": variant, "sae_scoring_rule": "", "sae_sparsity": 0.0, "metric_family": family, "metric_name": name,
            "value": value, "higher_is_better": higher, "status": "ok", "reason": "", "eval_config_hash": "h", "sae_bench_version": "0.6.0",
            "sae_prefix": sae, "model_prefix": model, "timestamp": "2026-12-03T00:00:00+00:00", "variant_spec": spec}


def _toy_storage(root: Path) -> Storage:
    storage = Storage(f"file://{root}")
    model = "compressed_models/m1"
    storage.put_json(f"{model}/manifest.json", {"kind": "model", "perplexity": {"dense": 25.3, "compressed": 51.86}})
    variants, n = [], 0
    for layer in (3, 6):
        hook = f"blocks.{layer}.hook_resid_post"
        for seed in (0, 1):
            for spec, variant, ev in (("transfer", "original", 0.88), ("retrain", "retrained", 0.90)):
                sae = f"saes/{spec}/{layer}-{seed}"
                variants.append({"hook": hook, "model_prefix": model, "compression": "wanda:0.5", "strength": 0.5, "variant_spec": spec,
                                 "variant_method": spec, "sae_variant": variant, "sae_scoring_rule": "", "sae_sparsity": 0.0, "seed": seed,
                                 "tokens_used": 0 if spec == "transfer" else 99840, "wall_time_s": 0.0 if spec == "transfer" else 29.0 + seed,
                                 "sae_prefix": sae, "explained_variance_centred": ev + 0.01 * seed - 0.001 * layer, "dead_latents": 100 + seed,
                                 "ce_loss_score": 0.96, "ce_delta": 0.4})
                rows = [_metric("gemma-3-270m-study", hook, layer, "wanda:0.5", spec, variant, "core", "ce_loss_score", 0.98 + 0.002 * seed, sae, model),
                        _metric("gemma-3-270m-study", hook, layer, "wanda:0.5", spec, variant, "ravel", "disentanglement_score", 0.3 + 0.02 * seed, sae, model)]
                storage.put_parquet(f"metrics/core/{n}.parquet", pd.DataFrame(rows))
                n += 1
            original = f"saes/transfer/{layer}-{seed}"
            audit = [_metric("gemma-3-270m-study", hook, layer, "wanda:0.5", "transfer", "original", "feature_fidelity", name, value, original, model)
                     for name, value in (("survived_frac", 0.20 + 0.02 * seed), ("damaged_frac", 0.3), ("mean_r", 0.7), ("n_active", 1000.0))]
            storage.put_parquet(f"metrics/feature_fidelity/a{layer}{seed}.parquet", pd.DataFrame(audit))
            storage.put_json(f"feature_audit/a{layer}{seed}.json", {"auc": {"auc_mean": 0.9 + 0.01 * seed}, "summary": {}, "perplexity": {}})
    storage.put_parquet("reports/gemma-3-270m-study-0123456789/variants.parquet", pd.DataFrame(variants))
    # Another experiment on the same root: its rows must not mix in.
    other = [_metric("toy", "blocks.6.hook_resid_post", 6, "wanda:0.5", "transfer", "original", "core", "ce_loss_score", -5.0, "saes/x", model)]
    storage.put_parquet("metrics/core/other.parquet", pd.DataFrame(other))
    storage.put_parquet("reports/toy-abcdef0123/variants.parquet", pd.DataFrame([{**variants[0], "sae_prefix": "saes/x", "explained_variance_centred": -1.0}]))
    return storage


def test_tables_from_storage_with_spread_and_prose_kept(tmp_path):
    script = _script()
    storage = _toy_storage(tmp_path / "store")
    doc = tmp_path / "results.md"
    doc.write_text("# Title\n\nHand-written prose stays.\n\n<!-- generated:metrics -->\nold table\n<!-- /generated:metrics -->\n\n"
                   "More prose.\n\n<!-- generated:audit -->\n<!-- /generated:audit -->\n\n<!-- generated:depth -->\n<!-- /generated:depth -->\n")
    assert script.main(["--storage", storage.url, "--out", str(doc)]) == 0
    text = doc.read_text()
    assert "Hand-written prose stays." in text and "More prose." in text and "old table" not in text
    assert "| core/ce_loss_score ↑ | 0.981 ± 0.001414 | 0.981 ± 0.001414 |" in text  # seeds 0, 1: mean ± sd
    assert "`transfer` (n=2)" in text and "ravel/disentanglement_score" in text
    assert "-5" not in text and "saes/x" not in text  # the other experiment's rows are not mixed in
    assert "| variant | layer 3 | layer 6 |" in text  # the per-layer table
    assert "**blocks.3.hook_resid_post**" in text and "25.30 → 51.86" in text and "21 ± 1.414" in text and "0.905 ± 0.007071" in text
    again = doc.read_text()
    assert script.main(["--storage", storage.url, "--out", str(doc)]) == 0 and doc.read_text() == again  # re-runnable, same output


def test_fresh_doc_every_section_and_an_empty_root_says_so(tmp_path, capsys):
    script = _script()
    storage = _toy_storage(tmp_path / "store")
    out = tmp_path / "new.md"
    assert script.main(["--storage", storage.url, "--out", str(out)]) == 0
    text = out.read_text()
    for name in script.SECTIONS:
        assert f"<!-- generated:{name} -->" in text and f"<!-- /generated:{name} -->" in text
    assert "| `retrain` | 2 | 0.8990 ± 0.007071 |" in text or "| `retrain` | 2 | 0.899 ± 0.007071 |" in text
    assert script.main(["--storage", f"file://{tmp_path / 'empty'}"]) == 1
    assert "no results of experiment 'gemma-3-270m-study'" in capsys.readouterr().err


def test_saes_section_checks_the_bar_per_seed():
    script = _script()
    originals = pd.DataFrame([{"hook": "blocks.6.hook_resid_post", "seed": s, "sae_prefix": f"saes/original/{s}", "tokens_used": 699904,
                               "wall_time_s": 90.0, "explained_variance_centred": ev, "dead_latents": dead, "d_sae": 2048}
                              for s, ev, dead in ((0, 0.955, 4), (1, 0.957, 2))])
    variants = pd.DataFrame([{"hook": "blocks.6.hook_resid_post", "variant_spec": "retrain", "sae_variant": "retrained", "sae_scoring_rule": "", "sae_sparsity": 0.0, "seed": s, "explained_variance_centred": ev,
                              "dead_latents": dead, "d_sae": 2048, "tokens_used": 699904, "wall_time_s": 100.0, "compression": "wanda:0.5"}
                             for s, ev, dead in ((0, 0.951, 3), (1, 0.948, 200))])
    text = script.saes_markdown(originals, variants)
    original_line = next(line for line in text.splitlines() if line.startswith("| original"))
    retrain_line = next(line for line in text.splitlines() if line.startswith("| retrain"))
    assert "| met |" in original_line and "s0: 0.9550 / 4, s1: 0.9570 / 2" in original_line
    assert "**not met**" in retrain_line  # seed 1 misses both: EV 0.948 < 0.95 and 200 of 2,048 dead (9.8%)
    assert "of 2,048" in original_line


def _audit_rows(hook, specs):
    model = "compressed_models/m1"
    rows = []
    for spec, survived, sd, mean_r in specs:
        rows += [_metric("gemma-3-270m-study", hook, 6, spec, "transfer", "original", "feature_fidelity", name, value, "saes/o", f"cm/{spec}")
                 for name, value in (("survived_frac", survived), ("survived_frac_subset_std", sd), ("mean_r", mean_r))]
    del model
    return pd.DataFrame(rows)


def test_literature_verdicts_follow_the_numbers_and_their_subset_spread():
    """Duan's monotone fall with bits and Borobia's WANDA > magnitude, each with a verdict that a wrong
    comparison would flip: a reversed ladder reads 'does not hold', WANDA below magnitude 'reversed', a gap
    inside twice the combined subset sd 'not separated'."""
    script = _script()
    hook = "blocks.6.hook_resid_post"
    good = _audit_rows(hook, [("rtn:8", 0.99, 0.002, 0.99), ("rtn:6", 0.80, 0.01, 0.95), ("rtn:4", 0.10, 0.01, 0.6),
                              ("gptq:4", 0.2, 0.01, 0.7), ("wanda:0.5", 0.30, 0.01, 0.85), ("magnitude:0.5", 0.10, 0.01, 0.7)])
    text = script.literature_markdown(good, {("saes/o", "cm/rtn:8"): {"auc": {"auc_mean": 0.95}}})
    assert "| INT8 | 99.0% ± 0.2 | — | 98.3% | 99.1% |" in text and "| INT7 | — | — | 86.3% | 81.3% |" in text
    assert "monotonically with bits: **holds**" in text and "every step beyond" in text
    assert "0.95–0.95 over 1 audits (inside their range)" in text
    assert "magnitude at equal sparsity: **holds**" in text
    reversed_ = _audit_rows(hook, [("rtn:8", 0.5, 0.01, 0.9), ("rtn:4", 0.6, 0.01, 0.9), ("wanda:0.5", 0.10, 0.01, 0.7),
                                   ("magnitude:0.5", 0.30, 0.01, 0.8)])
    text = script.literature_markdown(reversed_, {})
    assert "**does not hold**" in text and "equal sparsity: **reversed**" in text
    close = _audit_rows(hook, [("wanda:0.5", 0.30, 0.02, 0.8), ("magnitude:0.5", 0.28, 0.02, 0.8)])
    assert "**not separated**" in script.literature_markdown(close, {})  # 2 pp < 2 × √(2² + 2²) ≈ 5.7 pp


def test_spread_reliability_epochs_and_plots_from_storage(tmp_path):
    script = _script()
    storage = _toy_storage(tmp_path / "store")
    # SCR rows carry the low-reliability mark; a stored per-item output gives a bootstrap interval.
    for spec, variant, sae, base in (("transfer", "original", "saes/transfer/6-0", 0.1), ("retrain", "retrained", "saes/retrain/6-0", 0.2)):
        rows = [_metric("gemma-3-270m-study", "blocks.6.hook_resid_post", 6, "wanda:0.5", spec, variant, "scr", "scr_metric_threshold_20",
                        base, sae, "compressed_models/m1")]
        storage.put_parquet(f"metrics/scr/{spec}.parquet", pd.DataFrame(rows))
    # An SAE trained 7 epochs over a 100k-token cache.
    storage.put_json("activations/a1/manifest.json", {"kind": "activations", "n_tokens": 100000})
    for layer in (3, 6):
        for seed in (0, 1):
            storage.put_json(f"saes/retrain/{layer}-{seed}/manifest.json", {"kind": "sae", "tokens_used": 700000,
                                                                              "source": {"trained_on": "activations/a1"}})
    report = "reports/gemma-3-270m-study-0123456789"
    storage.put_bytes(f"{report}/training_curves.png", b"\x89PNG curves")
    storage.put_bytes(f"{report}/depth_resid_post_wanda_0.5.png", b"\x89PNG depth")
    storage.put_bytes(f"{report}/cost_per_variant.png", b"\x89PNG not in the doc")
    storage.put_json(f"{report}/plots.json", {"plots": ["cost_per_variant.png", "depth_resid_post_wanda_0.5.png", "training_curves.png"]})
    docs = tmp_path / "docs"
    docs.mkdir()
    out = docs / "results.md"
    assert script.main(["--storage", storage.url, "--out", str(out), "--plots-dir", str(docs / "img")]) == 0
    text = out.read_text()
    assert "scr/scr_metric_threshold_20 [low reliability]" in text and "arXiv 2605.18229" in text
    assert "Paired orderings" in text and "not separated" in text  # seeds 0, 1 of every variant, paired
    assert "Smallest detectable paired difference" in text
    assert "| 1 × 100,000 |" in text  # the retrained SAEs: 99,840 tokens over a 100k-token cache: one epoch
    assert (docs / "img" / "gemma-3-270m-study-training_curves.png").read_bytes() == b"\x89PNG curves"
    assert not (docs / "img" / "gemma-3-270m-study-cost_per_variant.png").exists()
    assert text.index("img/gemma-3-270m-study-training_curves.png") < text.index("img/gemma-3-270m-study-depth_resid_post_wanda_0.5.png")
    assert not list(docs.glob(".*.tmp")) and not list((docs / "img").glob(".*.tmp"))
