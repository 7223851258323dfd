"""Each metric against layer, per variant, with the spread over seeds."""

from __future__ import annotations

import io

import pandas as pd

from sae_core import depth_report as dr


def _rows(layers=(3, 6, 12), seeds=(0, 1, 2), compressions=("wanda:0.5",)):
    rows = []
    for compression in compressions:
        for layer in layers:
            for seed in seeds:
                for variant, spec, offset in (("original", "transfer", 0.0), ("retrained", "retrain", 0.05), ("recalibrate", "recalibrate", 0.02)):
                    for family, name, base in (("core", "ce_loss_score", 0.9), ("sparse_probing", "sae_top_1_test_accuracy", 0.7)):
                        rows.append({"hook": f"blocks.{layer}.hook_resid_post", "layer": layer, "compression": compression, "strength": 0.5,
                                     "sae_variant": variant, "variant_spec": spec, "sae_scoring_rule": "", "sae_sparsity": 0.0,
                                     "metric_family": family, "metric_name": name, "value": base + offset - 0.01 * layer + 0.001 * seed,
                                     "status": "ok", "sae_prefix": f"saes/{spec}/{layer}-{seed}"})
    return pd.DataFrame(rows)


def test_depth_table_means_and_spreads_over_seeds():
    table = dr.depth_table(_rows())
    cell = table[(table["metric"] == "core/ce_loss_score") & (table["variant"] == "recalibrate") & (table["layer"] == 6)].iloc[0]
    assert cell["n"] == 3 and abs(cell["mean"] - (0.92 - 0.06 + 0.001)) < 1e-12 and abs(cell["sd"] - 0.001) < 1e-12
    assert sorted(table["layer"].unique()) == [3, 6, 12] and set(table["variant"]) == {"original", "retrained", "recalibrate"}


def test_one_figure_per_compressed_model_with_several_layers_and_none_with_one():
    from PIL import Image

    plots = dr.depth_plots(_rows(compressions=("wanda:0.5", "rtn:4")))
    assert sorted(plots) == ["depth_resid_post_rtn-4.png", "depth_resid_post_wanda-0.5.png"]
    assert Image.open(io.BytesIO(plots["depth_resid_post_wanda-0.5.png"])).size[0] > 600
    assert dr.depth_plots(_rows(layers=(6,))) == {}
    assert dr.depth_plots(pd.DataFrame()) == {}
    one_seed = dr.depth_plots(_rows(seeds=(0,)))  # no error bars, still a figure
    assert len(one_seed) == 1


def test_layer_is_read_from_the_hook_name_when_rows_lack_it_and_failed_rows_are_left_out():
    rows = _rows(layers=(0, 1)).drop(columns="layer")
    rows.loc[0, "status"], rows.loc[0, "value"] = "error", float("nan")
    table = dr.depth_table(rows)
    assert sorted(table["layer"].unique()) == [0, 1]
    markdown = dr.depth_markdown(rows, ["core/ce_loss_score"])
    assert "| variant | layer 0 | layer 1 |" in markdown and "| original | 0.9015 ± 0.00071 | 0.891 ± 0.001 |"  # seed 0 of layer 0 failed in markdown


def test_per_layer_seeds_show_a_spread_where_there_are_several_and_the_value_alone_elsewhere():
    """layer_seeds {3: [0], 12: [0]} with seeds 0-2: layer 6 has three seeds, layers 3 and 12 one each. The depth table,
    plot and markdown and the report's spread section all render; a one-seed cell is the value without a spread."""
    from sae_core import report, spread

    rows = pd.concat([_rows(layers=(6,)), _rows(layers=(3, 12), seeds=(0,))], ignore_index=True)
    rows["seed"] = rows["sae_prefix"].str.rsplit("-", n=1).str[1].astype(int)
    table = dr.depth_table(rows)
    assert dict(table.groupby("layer")["n"].max()) == {3: 1, 6: 3, 12: 1}
    assert len(dr.depth_plots(rows)) == 1
    markdown = dr.depth_markdown(rows, ["core/ce_loss_score"])
    assert "| original | 0.87 | 0.841 ± 0.001 | 0.78 |" in markdown, markdown
    section = spread.markdown_section(rows)
    one_seed = section.split("### blocks.12.hook_resid_post")[1].split("###")[0]
    assert "±" not in one_seed and "(n=" not in one_seed and "0.78" in one_seed and "Paired orderings" not in one_seed
    several = section.split("### blocks.6.hook_resid_post")[1].split("###")[0]
    assert "± 0.001 (n=3)" in several and "Paired orderings" in several
    assert "blocks.3.hook_resid_post" in report.markdown_summary(rows, pd.DataFrame(), [], [])
