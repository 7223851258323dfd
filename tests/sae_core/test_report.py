"""The report people read: a compact headline table, what was not measured and why, plots."""

from __future__ import annotations

import pandas as pd

from sae_core import report as rep


def _rows() -> pd.DataFrame:
    rows = []
    for variant, rule, sparsity, shift in [("original", None, 0.0, 0.0), ("pruned", "wanda", 0.25, -0.01),
                                          ("pruned", "wanda", 0.5, -0.05), ("retrained", None, 0.0, 0.01)]:
        for family, name, value in [("core", "ce_loss_score", 0.99), ("core", "explained_variance", 0.9), ("core", "mse", 0.01),
                                    ("core", "l0", 16.0), ("tpp", "tpp_threshold_20_total_metric", 0.05),
                                    ("tpp", "tpp_threshold_2_total_metric", 0.01)]:
            rows.append({"hook": "blocks.1.hook_resid_post", "strength": 0.5, "sae_variant": variant,
                         "sae_scoring_rule": rule, "sae_sparsity": sparsity, "metric_family": family, "metric_name": name,
                         "value": value + shift, "status": "ok", "reason": None})
        rows.append({"hook": "blocks.1.hook_resid_post", "strength": 0.5, "sae_variant": variant, "sae_scoring_rule": rule,
                     "sae_sparsity": sparsity, "metric_family": "absorption", "metric_name": "skipped", "value": float("nan"),
                     "status": "skipped", "reason": "answer tokens [' Q'] are not single tokens"})
    return pd.DataFrame(rows)


def test_compact_headline_keeps_the_preferred_metric_of_each_family():
    table = rep.compact_headline_table(_rows())
    assert list(table.columns) == ["hook", "strength", "variant", "core/ce_loss_score", "core/explained_variance",
                                   "core/l0", "tpp/tpp_threshold_20_total_metric"]  # skipped families: no column
    assert sorted(table["variant"]) == ["original", "pruned-wanda-25%", "pruned-wanda-50%", "retrained"]
    # The wide table keeps everything for files.
    assert "core/mse" in rep.headline_table(_rows()).columns


def test_summary_says_what_was_not_measured_and_why():
    summary = rep.markdown_summary(_rows(), pd.DataFrame(), [], ["a.png"])
    assert "## Headline metrics" in summary and "core/mse" not in summary
    missing = summary.split("## Not measured", 1)[1]
    assert "- **absorption** (skipped) for original, pruned-wanda-25%, pruned-wanda-50%, retrained:" in missing
    assert "answer tokens [' Q'] are not single tokens" in missing
    assert "![a.png](a.png)" in summary


def test_nothing_missing_means_no_section():
    rows = _rows()
    assert "## Not measured" not in rep.markdown_summary(rows[rows["status"] == "ok"], pd.DataFrame(), [], [])


def test_not_measured_reasons_are_wrapping_text_not_a_wide_table():
    missing = rep.markdown_summary(_rows(), pd.DataFrame(), [], []).split("## Not measured", 1)[1]
    line = next(l for l in missing.splitlines() if l.startswith("- **absorption**"))
    assert "original, pruned-wanda-25%, pruned-wanda-50%, retrained" in line and "not single tokens" in line
    assert "| reason |" not in missing


def _variant_rows() -> pd.DataFrame:
    return pd.DataFrame([
        {"model_prefix": "compressed_models/abc123", "hook": "blocks.1.hook_resid_post", "strength": 0.5,
         "sae_variant": v, "sae_scoring_rule": r, "sae_sparsity": sp, "wall_time_s": t, "tokens_used": 100,
         "achieved_sparsity": sp, "mse": 0.0123456789, "explained_variance": 0.9948243821305708, "l0": 8.0,
         "ce_loss_score": 0.97, "sae_prefix": "saes/x/abc"}
        for v, r, sp, t in [("original", "", 0.0, 0.0), ("pruned", "wanda", 0.5, 1.5), ("retrained", "", 0.0, 120.0)]])


def test_variant_table_puts_key_columns_first_and_names_its_explained_variance():
    table = rep.variants_for_display(_variant_rows())
    assert list(table.columns[:3]) == ["hook", "strength", "variant"]
    assert "explained_variance_centred" in table and "explained_variance" not in table  # legacy rows renamed
    assert list(table.columns[-2:]) == ["model_prefix", "sae_prefix"]  # storage keys last
    summary = rep.markdown_summary(pd.DataFrame(), _variant_rows(), [], [])
    assert "explained_variance_centred" in summary and "`core/explained_variance`" in summary


def test_tables_for_people_are_rounded():
    table = rep.rounded(rep.variants_for_display(_variant_rows()))
    assert table["explained_variance_centred"].iloc[0] == 0.9948 and table["mse"].iloc[0] == 0.01235
    assert table["hook"].iloc[0] == "blocks.1.hook_resid_post"


def test_cost_plot_does_not_invent_a_cost_for_the_free_original(monkeypatch):
    import matplotlib.axes

    drawn = {}
    real_barh = matplotlib.axes.Axes.barh

    def spy(self, names, widths, **kw):
        drawn.update(zip(names, widths))
        return real_barh(self, names, widths, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "barh", spy)
    assert rep.cost_plot(_variant_rows())[:4] == b"\x89PNG"
    # A wrong version clipped 0 to 1e-3 s and drew it as a bar on the log axis.
    assert drawn["original"] == 0.0 and drawn["retrained"] == 120.0


def test_a_cached_rerun_reads_the_plots_back_instead_of_drawing_them(tmp_path, monkeypatch):
    """Drawing is most of the report task's time; with unchanged inputs and plotting code the PNGs
    come back from storage byte for byte. Changed inputs draw again (a version that reused plots by
    report folder alone would show stale figures: caught by the last assertion)."""
    from sae_core.storage import Storage
    from tasks import report as report_task

    storage = Storage(f"file://{tmp_path}")
    metrics, variants = _rows(), _variant_rows()
    results = [{"rows_key": "metrics/core/abc.parquet"}]
    drawn = []
    real = rep.metric_vs_sparsity_plots
    monkeypatch.setattr(rep, "metric_vs_sparsity_plots", lambda m: drawn.append(1) or real(m))

    first = report_task._rendered_plots(storage, "reports/x", metrics, variants, results, [])
    assert drawn == [1] and first and all(png[:4] == b"\x89PNG" for png in first.values())
    again = report_task._rendered_plots(storage, "reports/x", metrics, variants, results, [])
    assert drawn == [1] and again == first

    changed = variants.copy()
    changed.loc[changed.index[0], changed.columns[-1]] = 12345
    report_task._rendered_plots(storage, "reports/x", metrics, changed, results, [])
    assert drawn == [1, 1]


def _seeded_rows(seeds: int) -> pd.DataFrame:
    """Core rows of ``seeds`` SAE seeds (one sae_prefix each) plus the feature audit's original-only rows."""
    rows = []
    for seed in range(seeds):
        for variant, rule, sparsity in [("original", "", 0.0), ("pruned", "wanda", 0.5), ("retrained", "", 0.0)]:
            rows.append({"hook": "h", "compression": "wanda:0.5", "strength": 0.5, "sae_variant": variant, "sae_scoring_rule": rule,
                         "sae_sparsity": sparsity, "metric_family": "core", "metric_name": "explained_variance",
                         "value": 0.9 - sparsity / 10 + 0.01 * seed, "status": "ok", "reason": "",
                         "sae_prefix": f"saes/{variant}-{sparsity}-{seed}"})
        rows.append({"hook": "h", "compression": "wanda:0.5", "strength": 0.5, "sae_variant": "original", "sae_scoring_rule": "",
                     "sae_sparsity": 0.0, "metric_family": "feature_fidelity", "metric_name": "survived_frac", "value": 0.8,
                     "status": "ok", "reason": "", "sae_prefix": f"saes/original-0.0-{seed}"})
    return pd.DataFrame(rows)


def test_metric_plot_draws_seed_spread_and_no_single_point_panel(monkeypatch):
    """Several SAE seeds: error bars (the s.d. over seeds) on every plotted point, a band around the
    retrained reference; a metric measured for the original SAE alone (feature_fidelity) gets no panel."""
    import matplotlib.axes

    bars, titles, bands = [], [], []
    real_errorbar, real_title, real_span = matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.set_title, matplotlib.axes.Axes.axhspan
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, x, y, yerr=None, **kw: bars.append(yerr) or real_errorbar(self, x, y, yerr=yerr, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, **kw: titles.append(t) or real_title(self, t, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "axhspan", lambda self, lo, hi, **kw: bands.append(hi - lo) or real_span(self, lo, hi, **kw))

    plots = rep.metric_vs_sparsity_plots(_seeded_rows(3))
    assert list(plots) == ["metrics_h_wanda-0.5.png"]
    assert titles == ["core/explained_variance"]  # no feature_fidelity panel
    assert all(b is not None and all(abs(v - 0.01) < 1e-9 for v in b) for b in bars)  # s.d. of 0.00, 0.01, 0.02
    assert len(bands) == 1 and abs(bands[0] - 0.02) < 1e-9

    bars.clear(), bands.clear()
    rep.metric_vs_sparsity_plots(_seeded_rows(1))  # one seed: no bars, no band (nothing to show)
    assert bars and all(b is None for b in bars) and bands == []


def test_original_only_metrics_alone_draw_no_figure():
    rows = _seeded_rows(2)
    assert rep.metric_vs_sparsity_plots(rows[rows["metric_family"] == "feature_fidelity"]) == {}


def test_headline_table_marks_low_reliability_families_and_states_the_saebench_version():
    """SCR / TPP carry the low-reliability mark with its citation, absorption the installed SAEBench
    version, all from the registry's ``RELIABILITY`` data; unmarked families pass unchanged."""
    from importlib.metadata import version

    from sae_core.metrics.registry import METRICS, RELIABILITY, render_reliability

    rows = _rows()
    extra = rows[rows["metric_family"] == "tpp"].copy()
    extra["metric_family"], extra["metric_name"] = "absorption", "mean_absorption_fraction_score"
    scr = extra.copy()
    scr["metric_family"], scr["metric_name"] = "scr", "scr_metric_threshold_20"
    summary = rep.markdown_summary(pd.concat([rows, extra, scr]), pd.DataFrame(), [], [])
    headline = summary.split("## Headline metrics", 1)[1].split("## Not measured", 1)[0]
    header = next(line for line in headline.splitlines() if line.startswith("| hook"))
    assert "| tpp/tpp_threshold_20_total_metric [low reliability] |" in header
    assert "| scr/scr_metric_threshold_20 [low reliability] |" in header
    assert f"| absorption/mean_absorption_fraction_score [SAEBench {version('sae-bench')}] |" in header
    assert "| core/ce_loss_score |" in header  # no mark
    assert headline.count("arXiv 2605.18229") == 2  # one note per marked family: scr, tpp
    assert "- **absorption** [SAEBench" in headline and "changed the absorption fraction's definition" in headline
    # one source: the registry entries carry the facts, the renderer reads them
    assert METRICS["scr"].reliability is RELIABILITY["scr"] and METRICS["core"].reliability is None
    marked, notes = render_reliability(["hook", "core/l0", "sparse_probing_sae_probes/sae_top_1_test_accuracy"])
    assert marked == {"sparse_probing_sae_probes/sae_top_1_test_accuracy":
                      "sparse_probing_sae_probes/sae_top_1_test_accuracy [most reliable]"}
    assert any("Chanin 2026" in line for line in notes)
    assert render_reliability(["hook", "core/l0"]) == ({}, [])
