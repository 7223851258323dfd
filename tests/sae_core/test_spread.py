"""Spread on the compared figures: seed summaries, paired orderings, bootstrap over items (hand-built tables)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sae_core import spread
from sae_core.repair_report import ONE_SEED


def rows(values: dict[str, list[float]], metric=("core", "explained_variance"), higher=True, hook="blocks.1.hook_resid_post"):
    """Metric rows for variants -> per-seed values (seed = position), on one compressed model."""
    out = []
    for spec, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            out.append({"hook": hook, "compression": "wanda:0.5", "strength": 0.5, "sae_variant": spec, "sae_scoring_rule": "",
                        "sae_sparsity": 0.0, "variant_spec": spec, "metric_family": metric[0], "metric_name": metric[1],
                        "value": value, "higher_is_better": higher, "status": "ok", "seed": seed,
                        "sae_prefix": f"saes/{spec}/{seed}", "model_prefix": "m"})
    return pd.DataFrame(out)


def mark(values, **kwargs):
    pairs = spread.pairwise_marks(rows(values, **kwargs))
    assert len(pairs) == 1
    return pairs.iloc[0]


def test_clearly_separated_variants_are_ordered_in_the_metrics_direction():
    row = mark({"transfer": [0.80, 0.81, 0.79], "retrain": [0.90, 0.92, 0.91]})
    assert row["n"] == 3 and row["mark"] == "retrain better than transfer"
    lower = mark({"transfer": [0.80, 0.81, 0.79], "retrain": [0.90, 0.92, 0.91]}, higher=False)
    assert lower["mark"] == "transfer better than retrain"
    descriptive = mark({"transfer": [8.0, 8.1, 7.9], "retrain": [9.0, 9.2, 9.1]}, higher=None)
    assert descriptive["mark"] == "retrain > transfer"
    assert row["detectable"] == pytest.approx(2 * row["sd_difference"] / math.sqrt(3))


def test_overlapping_variants_are_not_separated():
    # the differences change sign across seeds
    assert mark({"transfer": [0.80, 0.90, 0.85], "retrain": [0.82, 0.88, 0.86]})["mark"] == spread.NOT_SEPARATED
    # same sign, but the mean is small against its spread (|mean| <= 2 sd / sqrt n)
    assert mark({"transfer": [0.0, 0.0, 0.0], "retrain": [0.01, 0.01, 0.4]})["mark"] == spread.NOT_SEPARATED


def test_one_seed_makes_no_claim():
    row = mark({"transfer": [0.5], "retrain": [0.9]})
    assert row["mark"] == ONE_SEED and row["n"] == 1 and math.isnan(row["detectable"])
    assert spread.markdown_section(rows({"transfer": [0.5], "retrain": [0.9]})) == ""  # nothing to show


def test_seed_summary_and_detectable_difference():
    table = rows({"transfer": [0.80, 0.81, 0.79], "retrain": [0.90, 0.92, 0.91], "finetune:0.05": [0.85, 0.86, 0.88]})
    summary = spread.seed_summary(table).set_index("variant")
    assert summary.loc["retrain", "mean"] == pytest.approx(0.91) and summary.loc["retrain", "sd"] == pytest.approx(0.01)
    assert (summary["n_seeds"] == 3).all()
    pairs = spread.pairwise_marks(table)
    assert len(pairs) == 3
    det = spread.detectable_differences(pairs)
    rms = math.sqrt((pairs["sd_difference"] ** 2).mean())
    assert det.iloc[0]["n"] == 3 and det.iloc[0]["detectable"] == pytest.approx(2 * rms / math.sqrt(3))


def test_seeds_are_joined_from_the_variants_table_when_metric_rows_lack_them():
    table = rows({"transfer": [0.80, 0.81], "retrain": [0.90, 0.92]})
    variants = table[["sae_prefix", "model_prefix", "seed"]].drop_duplicates()
    joined = spread.with_seeds(table.drop(columns="seed"), variants)
    assert sorted(joined["seed"]) == [0, 0, 1, 1]
    assert spread.pairwise_marks(table.drop(columns="seed"), variants).iloc[0]["n"] == 2


def test_bootstrap_interval_is_deterministic_for_a_seed():
    values = [0.1, 0.4, 0.35, 0.8, 0.55, 0.6, 0.2]
    first = spread.bootstrap_interval(values, seed=3)
    assert first == spread.bootstrap_interval(values, seed=3)
    assert first != spread.bootstrap_interval(values, seed=4)
    mean, low, high = first
    assert mean == pytest.approx(sum(values) / len(values)) and low < mean < high
    assert spread.bootstrap_interval([0.5]) == (0.5, 0.5, 0.5)
    assert all(math.isnan(x) for x in spread.bootstrap_interval([]))


def test_item_values_read_each_familys_stored_output():
    sp = {"eval_result_details": [{"dataset_name": "a_results", "sae_top_1_test_accuracy": 0.7, "llm_test_accuracy": 0.9},
                                  {"dataset_name": "b_results", "sae_top_1_test_accuracy": 0.6, "llm_test_accuracy": 0.8}]}
    items = spread.item_values("sparse_probing", sp)
    assert set(items["item"]) == {"a_results", "b_results"}
    assert items[items["metric_name"] == "sae_top_1_test_accuracy"]["value"].mean() == pytest.approx(0.65)
    assert spread.item_values("sparse_probing_sae_probes", sp).equals(items)  # sae-probes: the same per-dataset details
    tpp = {"eval_result_unstructured": {"ds": {"0": {"tpp_threshold_2_total_metric": 0.1}, "1": {"tpp_threshold_2_total_metric": 0.3}}}}
    assert spread.item_values("tpp", tpp)["item"].tolist() == ["ds/0", "ds/1"]
    ravel = {"eval_result_unstructured": {"city_results": {"city_Country": {"disentangle_score": 0.4, "cause_score": 0.5,
                                                                           "isolation_score": 0.3}}}}
    assert set(spread.item_values("ravel", ravel)["metric_name"]) == {"disentanglement_score", "cause_score", "isolation_score"}
    absorption = {"eval_result_details": [{"first_letter": "a", "mean_absorption_fraction": 0.2, "full_absorption_rate": 0.1,
                                           "num_split_features": 1}]}
    assert spread.item_values("absorption", absorption).set_index("metric_name").loc["mean_absorption_fraction_score", "value"] == 0.2
    scr = {"eval_result_details": [{"dataset_name": "x_scr_a_b_results", "scr_metric_threshold_2": 0.05, "scr_dir1_threshold_2": 0.1}]}
    assert spread.item_values("scr", scr)["metric_name"].tolist() == ["scr_metric_threshold_2"]
    assert spread.item_values("core", {"eval_result_details": [{"x": 1}]}).empty


def test_markdown_section_shows_spread_orderings_and_item_intervals():
    table = rows({"transfer": [0.60, 0.62, 0.61], "retrain": [0.70, 0.72, 0.71]},
                 metric=("sparse_probing", "sae_top_1_test_accuracy"))
    items = []
    for r in table.itertuples():
        for i, delta in enumerate((-0.05, 0.0, 0.05)):
            items.append({"metric_family": r.metric_family, "sae_prefix": r.sae_prefix, "model_prefix": r.model_prefix,
                          "item": f"d{i}", "metric_name": r.metric_name, "value": r.value + delta})
    text = spread.markdown_section(table, items=pd.DataFrame(items))
    assert "± 0.01 (n=3)" in text and "retrain better than transfer" in text
    assert "Smallest detectable paired difference" in text and "Bootstrap 95% interval" in text
    intervals = spread.item_intervals(table, pd.DataFrame(items))
    assert (intervals["n_items"] == 3).all() and (intervals["n_seeds"] == 3).all() and (intervals["low"] < intervals["mean"]).all()
    assert len(intervals) == 2  # one per variant: items averaged over seeds


def test_report_renders_the_spread_section_through_one_function():
    from sae_core.report import markdown_summary

    table = rows({"transfer": [0.60, 0.62, 0.61], "retrain": [0.70, 0.72, 0.71]}, metric=("core", "explained_variance"))
    variants = table.drop_duplicates("sae_prefix")[["hook", "compression", "strength", "sae_variant", "sae_scoring_rule", "sae_sparsity",
                                                    "variant_spec", "seed", "sae_prefix", "model_prefix"]]
    variants = variants.assign(variant_method=variants["variant_spec"], explained_variance_centred=[0.5, 0.52, 0.51, 0.9, 0.91, 0.92],
                               dead_latents=[10, 12, 11, 2, 1, 3], wall_time_s=1.0)
    text = markdown_summary(table, variants, [], [])
    assert "## Spread: seeds, paired orderings, test items" in text
    assert "variants/explained_variance_centred" in text and "retrain better than transfer" in text
    one_seed = markdown_summary(table[table["seed"] == 0], variants[variants["seed"] == 0], [], [])
    assert "## Spread" not in one_seed


def test_stored_items_read_the_metric_tasks_outputs(tmp_path):
    from sae_core.storage import Storage

    storage = Storage(f"file://{tmp_path}/store")
    table = rows({"transfer": [0.6]}, metric=("sparse_probing", "sae_top_1_test_accuracy"))
    storage.put_parquet("metrics/sparse_probing/k.parquet", table)
    storage.put_json("metrics_raw/sparse_probing/k.json", {"raw": {"eval_result_details": [
        {"dataset_name": "a", "sae_top_1_test_accuracy": 0.5}, {"dataset_name": "b", "sae_top_1_test_accuracy": 0.7}]}})
    manifests = [{"metric": "sparse_probing", "rows_key": "metrics/sparse_probing/k.parquet", "raw_key": "metrics_raw/sparse_probing/k.json"},
                 {"metric": "sparse_probing", "rows_key": "metrics/missing.parquet", "raw_key": "metrics_raw/missing.json"},
                 {"kind": "feature_fidelity"}]
    items = spread.stored_items(storage, manifests)
    assert sorted(items["item"]) == ["a", "b"] and set(items["sae_prefix"]) == {"saes/transfer/0"}
    assert spread.item_intervals(table, items).iloc[0]["n_items"] == 2


def test_sections_follow_layer_order_not_text_order():
    values = {"transfer": [0.60, 0.62, 0.61], "retrain": [0.70, 0.72, 0.71]}
    table = pd.concat([rows(values, hook=f"blocks.{layer}.hook_resid_post") for layer in (12, 3, 6)])
    text = spread.markdown_section(table)
    positions = [text.index(f"### blocks.{layer}.hook_resid_post") for layer in (3, 6, 12)]
    assert positions == sorted(positions)  # text order would put blocks.12 first
