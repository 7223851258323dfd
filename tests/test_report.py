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
            rows.append({"hook": "blocks.1.hook_resid_post", "model_sparsity": 0.5, "sae_variant": variant,
                         "sae_scoring_rule": rule, "sae_sparsity": sparsity, "metric_family": family, "metric_name": name,
                         "value": value + shift, "status": "ok", "reason": None})
        rows.append({"hook": "blocks.1.hook_resid_post", "model_sparsity": 0.5, "sae_variant": variant, "sae_scoring_rule": rule,
                     "sae_sparsity": sparsity, "metric_family": "absorption", "metric_name": "skipped", "value": float("nan"),
                     "status": "skipped", "reason": "answer tokens [' Q'] are not single tokens"})
    return pd.DataFrame(rows)


def test_compact_headline_keeps_the_preferred_metric_of_each_family():
    table = rep.compact_headline_table(_rows())
    assert list(table.columns) == ["hook", "model_sparsity", "variant", "core/ce_loss_score", "core/explained_variance",
                                   "core/l0", "tpp/tpp_threshold_20_total_metric"]  # skipped families: no column
    assert sorted(table["variant"]) == ["original", "pruned-wanda-25%", "pruned-wanda-50%", "retrained"]
    # The wide table keeps everything for files.
    assert "core/mse" in rep.headline_table(_rows()).columns


def test_summary_says_what_was_not_measured_and_why():
    summary = rep.markdown_summary(_rows(), pd.DataFrame(), [], ["a.png"])
    assert "## Headline metrics" in summary and "core/mse" not in summary
    missing = summary.split("## Not measured", 1)[1]
    assert "absorption | skipped | original, pruned-wanda-25%, pruned-wanda-50%, retrained |" in missing
    assert "answer tokens [' Q'] are not single tokens" in missing
    assert "![a.png](a.png)" in summary


def test_nothing_missing_means_no_section():
    rows = _rows()
    assert "## Not measured" not in rep.markdown_summary(rows[rows["status"] == "ok"], pd.DataFrame(), [], [])
