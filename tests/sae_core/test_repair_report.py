"""The cost–quality frontier of SAE fixes (sae_core/repair_report.py), on synthetic variant rows only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sae_core import repair_report as rr

HOOK = "blocks.1.hook_resid_post"
SAE_VARIANT = {"transfer": "original", "retrain": "retrained", "prune": "pruned"}


def _row(spec: str, seed: int, ev: float, ce: float, tokens: float, wall: float = 1.0, steps: int = 0,
         compression: str = "wanda:0.5") -> dict:
    method = spec.split(":")[0]
    return {"hook": HOOK, "model_prefix": f"compressed_models/{compression}", "compression": compression, "strength": 0.5,
            "sae_prefix": f"saes/{spec}/{seed}", "d_sae": 128, "variant_spec": spec, "variant_method": method,
            "sae_variant": SAE_VARIANT.get(method, method), "sae_scoring_rule": "", "sae_sparsity": 0.0, "seed": seed,
            "tokens_used": tokens, "gradient_steps": steps, "wall_time_s": wall, "explained_variance_centred": ev,
            "mse": 0.01, "l0": 8.0, "dead_latents": 0, "alive_fraction": 1.0, "ce_clean": 3.0, "ce_with_sae": 3.0 + ce,
            "ce_delta": ce, "ce_loss_score": 0.9}


def _rows(values: dict[str, list[tuple[float, float]]], tokens: dict[str, float], **kw) -> pd.DataFrame:
    """spec -> [(EV, ΔCE) per seed]; seeds 0, 1, ..."""
    return pd.DataFrame([_row(spec, seed, ev, ce, tokens[spec], wall=1.0 + tokens[spec] / 100, **kw)
                         for spec, per_seed in values.items() for seed, (ev, ce) in enumerate(per_seed)])


def _one(table: pd.DataFrame, spec: str) -> pd.Series:
    return table[table["variant_spec"] == spec].iloc[0]


# ------------------------------------------------------------------ gap closed
HAND = {  # 3 seeds: EV and ΔCE of transfer, retrain and one fix, numbers chosen so the paired mean differs from the unpaired one
    "transfer": [(0.50, 0.50), (0.60, 0.60), (0.70, 0.40)],
    "retrain": [(0.80, 0.10), (0.70, 0.20), (0.80, 0.20)],
    "refit_decoder": [(0.74, 0.30), (0.62, 0.50), (0.75, 0.30)],
}
HAND_TOKENS = {"transfer": 0, "retrain": 10_000, "refit_decoder": 200}


def test_gap_closed_is_paired_within_seed_for_both_measures():
    """By hand, per seed (q_fix − q_transfer) / (q_retrain − q_transfer):
    EV: gaps 0.3, 0.1, 0.1, fix − transfer 0.24, 0.02, 0.05 -> 0.8, 0.2, 0.5: mean 0.5, sd 0.3 (n = 3).
    ΔCE (lower is better): gaps −0.4, −0.4, −0.2, fix − transfer −0.2, −0.1, −0.1 -> 0.5, 0.25, 0.5:
    mean 0.41667, sd 0.14434.
    A version that divided the mean differences (unpaired) would give 0.62 on EV and 0.4 on ΔCE; one that
    flipped the gap's sign for ΔCE (treating "lower is better" as (q_transfer − q_fix) / (q_retrain − q_transfer))
    would give −0.41667: both fail the assertions below."""
    table = rr.frontier_table(_rows(HAND, HAND_TOKENS), None)
    fix = _one(table, "refit_decoder")
    assert fix["n_seeds"] == 3 and fix["ev_gap_closed_n"] == 3
    assert fix["ev_gap_closed"] == pytest.approx(0.5) and fix["ev_gap_closed_sd"] == pytest.approx(0.3)
    assert fix["ce_delta_gap_closed"] == pytest.approx(5 / 12) and fix["ce_delta_gap_closed_sd"] == pytest.approx(math.sqrt(1 / 48))
    assert fix["ev_gap_closed_text"] == "0.5 ± 0.3 (n=3)"
    # the references close 0 and 1 of their own gap; means and sds over seeds
    assert _one(table, "transfer")["ev_gap_closed"] == 0 and _one(table, "retrain")["ce_delta_gap_closed"] == pytest.approx(1)
    assert fix["ev_mean"] == pytest.approx(0.70333333) and fix["ev_sd"] == pytest.approx(np.std([0.74, 0.62, 0.75], ddof=1))
    assert fix["tokens_used_mean"] == 200 and fix["gradient_steps_mean"] == 0
    assert list(table["variant_spec"]) == ["transfer", "refit_decoder", "retrain"]  # transfer, fixes by cost, retrain


# ------------------------------------------------------------------ separation
SEP = {
    "transfer": [(0.50, 0.50), (0.52, 0.48), (0.48, 0.52)],
    "retrain": [(0.90, 0.10), (0.91, 0.11), (0.89, 0.09)],
    "recalibrate": [(0.55, 0.45), (0.50, 0.50), (0.53, 0.46)],  # cheap, overlaps transfer (EV diffs +, −, +)
    "refit_decoder": [(0.70, 0.30), (0.71, 0.29), (0.69, 0.31)],  # clearly between the two
    "finetune:0.1": [(0.905, 0.10), (0.88, 0.12), (0.90, 0.08)],  # as good as retrain (diffs of both signs)
    "finetune:0.5": [(0.90, 0.10), (0.90, 0.11), (0.90, 0.09)],
}
SEP_TOKENS = {"transfer": 0, "recalibrate": 50, "refit_decoder": 200, "finetune:0.1": 1000, "finetune:0.5": 5000, "retrain": 10_000}


def test_separation_rule():
    assert rr.separation([0.2, 0.19, 0.21]) == "yes"
    assert rr.separation([0.05, -0.02, 0.05]) == "no"  # signs differ
    assert rr.separation([0.3, 0.01, 0.02]) == "no"  # same sign, but |mean| < 2 sd / sqrt(n)
    assert rr.separation([0.2]) == rr.ONE_SEED and rr.separation([0.2, float("nan")]) == rr.ONE_SEED


def test_separation_marks_in_the_table():
    table = rr.frontier_table(_rows(SEP, SEP_TOKENS), None)
    refit, finetune, recal = _one(table, "refit_decoder"), _one(table, "finetune:0.1"), _one(table, "recalibrate")
    assert (refit["ev_separated_from_transfer"], refit["ev_separated_from_retrain"]) == ("yes", "yes")
    assert (finetune["ev_separated_from_transfer"], finetune["ev_separated_from_retrain"]) == ("yes", "no")
    assert recal["ev_separated_from_transfer"] == "no"
    assert _one(table, "transfer")["ev_separated_from_transfer"] == rr.SELF
    assert _one(table, "retrain")["ev_separated_from_transfer"] == "yes"  # the gap itself
    assert rr.cheapest_fix(table, "ev") == "finetune:0.1"  # recalibrate is cheaper but not separated from transfer


def test_one_seed_claims_no_ordering():
    one = {spec: per_seed[:1] for spec, per_seed in SEP.items()}
    table = rr.frontier_table(_rows(one, SEP_TOKENS), None)
    refit = _one(table, "refit_decoder")
    assert refit["n_seeds"] == 1 and math.isnan(refit["ev_sd"])
    assert refit["ev_separated_from_transfer"] == rr.ONE_SEED and refit["ev_separated_from_retrain"] == rr.ONE_SEED
    assert refit["ev_gap_closed_text"] == "0.5 (n=1)"
    assert rr.cheapest_fix(table, "ev") is None
    markdown = rr.frontier_markdown(table, rr.finetune_budget(_rows(one, SEP_TOKENS)))
    assert "one seed only: no ordering is claimed" in markdown and "cheapest fix separated" not in markdown


def test_an_unresolved_gap_gives_no_gap_closed_numbers():
    values = {"transfer": [(0.50, 0.5), (0.52, 0.5), (0.48, 0.5)], "retrain": [(0.51, 0.4), (0.50, 0.4), (0.49, 0.4)],
              "refit_decoder": [(0.505, 0.45), (0.51, 0.45), (0.50, 0.45)]}
    table = rr.frontier_table(_rows(values, HAND_TOKENS), None)
    refit = _one(table, "refit_decoder")
    assert refit["ev_gap_resolved"] == "no" and refit["ev_gap_closed_text"] == rr.GAP_NOT_RESOLVED
    assert math.isnan(refit["ev_gap_closed"])
    assert refit["ce_delta_gap_resolved"] == "yes" and refit["ce_delta_gap_closed"] == pytest.approx(0.5)  # ΔCE's gap is clear
    markdown = rr.frontier_markdown(table, None)
    assert "gap not resolved" in markdown and "on EV, transfer and retrain are not separated" in markdown


# ------------------------------------------------------------------ identity
def test_identity_rows_are_joined_on_sae_and_model():
    variants = _rows(SEP, SEP_TOKENS)
    identity = pd.DataFrame([
        {"metric_family": "feature_identity", "metric_name": name, "value": value, "status": "ok",
         "sae_prefix": f"saes/{spec}/{seed}", "model_prefix": "compressed_models/wanda:0.5"}
        for spec, kept in [("refit_decoder", 0.95), ("retrain", 0.3)] for seed in range(3)
        for name, value in [("identity_kept_fraction", kept + 0.01 * seed), ("survived_pct", 80.0)]]
        + [{"metric_family": "core", "metric_name": "identity_kept_fraction", "value": 0.0, "status": "ok",  # another family
            "sae_prefix": "saes/refit_decoder/0", "model_prefix": "compressed_models/wanda:0.5"}])
    table = rr.frontier_table(variants, identity)
    assert _one(table, "refit_decoder")["identity_kept_fraction"] == pytest.approx(0.96)
    assert _one(table, "retrain")["identity_kept_fraction"] == pytest.approx(0.31)
    assert _one(table, "refit_decoder")["survived_pct"] == 80.0 and math.isnan(_one(table, "recalibrate")["identity_kept_fraction"])


# ------------------------------------------------------------------ fine-tune budget
def test_finetune_budget_interpolates_in_log_tokens():
    """Gap 0.4 (EV) and −0.4 (ΔCE); finetune:0.01 closes 20% with 100 tokens, finetune:0.1 80% with 1000:
    50% lies halfway in log-tokens, sqrt(100 · 1000) = 316.2 tokens, 3.162% of retrain's 10,000; 90% is not
    reached by any fine-tune."""
    values = {"transfer": [(0.50, 0.50)] * 2, "retrain": [(0.90, 0.10)] * 2,
              "finetune:0.01": [(0.58, 0.42)] * 2, "finetune:0.1": [(0.82, 0.18)] * 2}
    tokens = {"transfer": 0, "retrain": 10_000, "finetune:0.01": 100, "finetune:0.1": 1000}
    budget = rr.finetune_budget(_rows(values, tokens))
    assert list(budget["measure"]) == ["explained_variance_centred", "ce_delta"]
    for row in budget.to_dict(orient="records"):
        assert row["tokens_to_50pct"] == pytest.approx(math.sqrt(100 * 1000))
        assert row["fraction_of_retrain_50pct"] == pytest.approx(math.sqrt(100 * 1000) / 10_000)
        assert row["budget_50pct"] == "316.2 tokens (3.16% of the retrain budget)"
        assert math.isnan(row["tokens_to_90pct"]) and row["budget_90pct"].startswith("not reached")
        assert row["retrain_tokens"] == 10_000
    # the smallest fine-tune already past the target: its tokens are an upper bound, not an interpolation from 0
    low = rr.finetune_budget(_rows({**values, "finetune:0.01": [(0.80, 0.20)] * 2}, tokens))
    assert low["tokens_to_50pct"].iloc[0] == 100 and low["budget_50pct"].iloc[0].startswith("≤ 100 tokens")


# ------------------------------------------------------------------ plot
def test_plot_draws_zero_cost_points_at_a_stated_floor(monkeypatch):
    import matplotlib.axes

    drawn, labels = [], []
    real_errorbar, real_xlabel = matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.set_xlabel

    def spy(self, x, y, **kw):
        drawn.append((x[0], y[0], kw.get("markerfacecolor")))
        return real_errorbar(self, x, y, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", lambda self, text, **kw: labels.append(text) or real_xlabel(self, text, **kw))
    values = {**SEP, "prune:magnitude:0.5": [(0.45, 0.6)] * 3}  # a zero-token fix beside transfer
    tokens = {**SEP_TOKENS, "prune:magnitude:0.5": 0}
    identity = pd.DataFrame([{"metric_family": "feature_identity", "metric_name": "identity_kept_fraction", "value": 1.0,
                              "sae_prefix": f"saes/refit_decoder/{s}", "model_prefix": "compressed_models/wanda:0.5"} for s in range(3)])
    png = rr.frontier_plot(_rows(values, tokens), identity)
    assert png[:4] == b"\x89PNG"
    xs = [x for x, _, _ in drawn]
    assert 5.0 in xs and 0 not in xs  # tokens: smallest positive 50 -> zero drawn at 5 (one decade below)
    assert any("0 drawn at 5)" in label for label in labels)
    faces = {round(y, 4): face for _, y, face in drawn}
    assert faces[0.7] != "none" and faces[0.5] == "none"  # refit keeps identity (filled); transfer not measured (hollow)


def test_old_rows_give_no_frontier():
    old = pd.DataFrame([_row("transfer", 0, 0.5, 0.5, 0)]).drop(columns=["variant_spec", "variant_method", "seed", "gradient_steps"])
    assert rr.frontier_plot(old) is None and rr.frontier_table(old, None).empty
    assert rr.report_section(old, pd.DataFrame()) is None and rr.cache_inputs(old, None) == []
    assert rr.frontier_plot(pd.DataFrame()) is None and rr.frontier_markdown(pd.DataFrame(), None) == ""


# ------------------------------------------------------------------ markdown
def test_markdown_names_the_cheapest_separated_fix_and_the_rule():
    variants = _rows(SEP, SEP_TOKENS)
    table, budget = rr.frontier_table(variants, None), rr.finetune_budget(variants)
    markdown = rr.frontier_markdown(table, budget)
    assert markdown.startswith("## What it costs to fix the SAE")
    assert rr.SEPARATION_RULE in markdown
    assert "on EV, the cheapest fix separated from transfer and not from retrain is `finetune:0.1`" in markdown
    assert "Fine-tune budget on EV" in markdown and "Kissane" in markdown and "20–50%" in markdown
    assert "| `refit_decoder` | 3 | 0.7 ± 0.01 |" in markdown  # 4 significant digits, sd over seeds


def test_markdown_says_when_no_fix_qualifies():
    values = {spec: SEP[spec] for spec in ("transfer", "retrain", "recalibrate", "refit_decoder")}
    markdown = rr.frontier_markdown(rr.frontier_table(_rows(values, SEP_TOKENS), None), None)
    assert "on EV, no fix is both separated from transfer and not separated from retrain" in markdown


# ------------------------------------------------------------------ the report task
@pytest.mark.parametrize("with_spec", [True, False])
def test_report_task_renders_with_and_without_variant_spec(tmp_path, monkeypatch, with_spec):
    from sae_core.storage import Storage
    from tasks import report as report_task

    artifacts = []
    for name in ("create_table_artifact", "create_markdown_artifact", "create_link_artifact"):
        monkeypatch.setattr(report_task, name, lambda name=name, **kw: artifacts.append((name, kw)))
    storage = Storage(f"file://{tmp_path}")
    rows = _rows(SEP, SEP_TOKENS)
    if not with_spec:
        rows = rows[rows["variant_spec"].isin(["transfer", "retrain"])].drop(columns=["variant_spec", "variant_method", "seed",
                                                                                      "gradient_steps"])
    identity = pd.DataFrame([{"run_id": "r", "metric_family": "feature_identity", "metric_name": "identity_kept_fraction",
                              "value": 1.0, "status": "ok", "reason": None, "hook": HOOK, "strength": 0.5,
                              "compression": "wanda:0.5", "sae_variant": "original", "sae_scoring_rule": "", "sae_sparsity": 0.0,
                              "sae_prefix": f"saes/transfer/{s}", "model_prefix": "compressed_models/wanda:0.5"} for s in range(3)])
    storage.put_parquet("metrics/feature_identity/abc.parquet", identity)
    variants = [{"row": row, "sae_uri": storage.uri(row["sae_prefix"]), "hook": row["hook"]} for row in rows.to_dict(orient="records")]
    out = report_task.write_report.fn("exp", {"name": "exp"}, [], variants, [{"rows_key": "metrics/feature_identity/abc.parquet"}],
                                      storage.url)
    summary = storage.get_bytes(f"{out['prefix']}/summary.md").decode()
    ui = next(kw["markdown"] for name, kw in artifacts if name == "create_markdown_artifact")
    assert storage.exists(f"{out['prefix']}/variants.parquet") and "cost_per_variant.png" in out["plots"]
    if with_spec:
        assert "frontier.png" in out["plots"] and storage.exists(f"{out['prefix']}/frontier.png")
        frontier = storage.get_parquet(f"{out['prefix']}/frontier.parquet")
        assert set(frontier["variant_spec"]) == set(SEP) and _one(frontier, "transfer")["identity_kept_fraction"] == 1.0
        assert "## What it costs to fix the SAE" in summary and "![frontier.png](frontier.png)" in summary
        variants_section = summary.split("## SAE variants", 1)[1].split("\n## ", 1)[0]
        assert "| finetune:0.1 |" in variants_section  # the variants table labels new fixes by their spec text
        assert "data:image/png;base64," in ui and "What it costs to fix the SAE" in ui
    else:  # rows from before specs: sae_core.report.current_columns names them from their labels (transfer, retrain)
        frontier = storage.get_parquet(f"{out['prefix']}/frontier.parquet")
        assert set(frontier["variant_spec"]) == {"transfer", "retrain"} and "frontier.png" in out["plots"]
        assert "## What it costs to fix the SAE" in summary


def test_results_script_prints_the_frontier_of_a_storage_root(tmp_path, capsys):
    """benchmarks/repair_results.py: the doc's tables come from a root's Parquet, not typed by hand."""
    import importlib.util
    from pathlib import Path

    from sae_core.storage import Storage

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "repair_results.py"
    spec = importlib.util.spec_from_file_location("repair_results", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    storage = Storage(f"file://{tmp_path}")
    assert script.main(["--storage", storage.url]) == 1  # an empty root: says so, no traceback
    for i, row in enumerate(_rows(SEP, SEP_TOKENS).to_dict(orient="records")):
        storage.put_parquet(f"variants/{i:03d}.parquet", pd.DataFrame([row]))
    storage.put_parquet("metrics/feature_identity/a.parquet", pd.DataFrame([
        {"metric_family": "feature_identity", "metric_name": "identity_kept_fraction", "value": 0.97, "status": "ok",
         "sae_prefix": f"saes/finetune:0.1/{s}", "model_prefix": "compressed_models/wanda:0.5"} for s in range(3)]))
    capsys.readouterr()
    assert script.main(["--storage", storage.url, "--plot", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## What it costs to fix the SAE") and "`finetune:0.1`" in out and "| 0.97 |" in out
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_references_or_measures_do_not_crash():
    """No retrain rows: marks against transfer still come, gap closed says why it is absent; ΔCE not measured."""
    values = {spec: SEP[spec] for spec in ("transfer", "refit_decoder", "finetune:0.1")}
    variants = _rows(values, SEP_TOKENS).assign(ce_delta=float("nan"))
    table = rr.frontier_table(variants, None)
    refit = _one(table, "refit_decoder")
    assert refit["ev_separated_from_transfer"] == "yes" and refit["ev_gap_closed_text"] == "no retrain rows"
    assert math.isnan(refit["ce_delta_mean"]) and refit["ce_delta_gap_closed_text"] == ""
    assert "on EV, no retrain rows: no gap to close" in rr.frontier_markdown(table, rr.finetune_budget(variants))
    assert rr.frontier_plot(variants)[:4] == b"\x89PNG"


def test_a_gap_pointing_the_wrong_way_is_named_not_turned_into_ratios():
    """Retrain worse than transfer on ΔCE (seen on the toy preset): gap-closed ratios would flip sign and
    read as nonsense (a fix better than transfer would 'close' a negative fraction); the table says so instead."""
    rows = []
    for seed in range(3):
        for spec, ce in (("transfer", 0.027), ("affine", 0.023), ("retrain", 0.032)):
            rows.append({"hook": HOOK, "compression": "wanda:0.5", "strength": 0.5, "variant_spec": spec,
                         "variant_method": spec, "sae_variant": spec, "seed": seed, "explained_variance_centred": 0.9,
                         "ce_delta": ce + 1e-4 * seed, "tokens_used": 0 if spec == "transfer" else 1000, "wall_time_s": 1.0,
                         "gradient_steps": 0, "sae_prefix": f"saes/{spec}/{seed}", "model_prefix": "compressed_models/x"})
    table = rr.frontier_table(pd.DataFrame(rows), None)
    affine = table[table["variant_spec"] == "affine"].iloc[0]
    assert affine["ce_delta_gap_resolved"] == "retrain worse than transfer"
    assert affine["ce_delta_gap_closed_text"] == "retrain worse than transfer" and np.isnan(affine["ce_delta_gap_closed"])
    markdown = rr.frontier_markdown(table, rr.finetune_budget(pd.DataFrame(rows)))
    assert "retrain is worse than transfer (no gap to close); better than transfer, separated: `affine`" in markdown


def test_kl_score_is_joined_from_core_rows_as_a_third_quality_measure():
    """SAEBench core's KL score per (SAE, model) becomes the frontier's ``kl`` columns, paired per seed like EV:
    transfer 0.97, retrain 0.99, refit_decoder 0.985 in every seed -> 75% of the KL gap closed. A join on the SAE alone
    would mix in the row of another compressed model (0.0 here) and a join that ignored the metric name would read
    the explained-variance row (0.5)."""
    variants = _rows({s: HAND[s] for s in ("transfer", "retrain", "refit_decoder")}, HAND_TOKENS)
    kl = {"transfer": 0.97, "retrain": 0.99, "refit_decoder": 0.985}
    core = [{"metric_family": "core", "metric_name": name, "value": value, "status": "ok", "sae_prefix": r.sae_prefix, "model_prefix": model}
            for r in variants.itertuples()
            for name, value, model in (("kl_div_score", kl[r.variant_spec], r.model_prefix), ("explained_variance", 0.5, r.model_prefix),
                                       ("kl_div_score", 0.0, "compressed_models/other"))]
    joined = rr.identity_rows(pd.DataFrame(core))
    assert set(joined["metric_name"]) == {"kl_div_score"}  # the other core metrics are not joined
    table = rr.frontier_table(variants, joined)
    assert _one(table, "refit_decoder")["kl_mean"] == pytest.approx(0.985)
    assert _one(table, "refit_decoder")["kl_gap_closed"] == pytest.approx(0.75)
    assert "KL gap closed" in rr.frontier_markdown(table)
    without = rr.frontier_table(variants)  # no core rows: the KL columns are NaN and the budget skips the measure
    assert without["kl_mean"].isna().all()
    assert "kl_div_score" not in set(rr.finetune_budget(variants)["measure"]) if len(rr.finetune_budget(variants)) else True
