"""Depth: each headline metric against layer, one line per SAE variant (the paper's per-layer view).

Input is the tidy metrics table (one row per metric value, with ``layer``, or a ``hook`` naming it). A run
with SAEs at two or more layers of one hook type gets, per (hook type, compressed model), one figure with
one panel per headline metric (``sae_core.report.plotted_metrics``): x = layer, y = the metric, a line per
variant (``sae_core.report.variant_label``), the mean over the rows of one (layer, variant): one per SAE
seed, so error bars are the sd over seeds where there are several (none with one seed).
:func:`depth_table` is the same data as rows (layer × variant: mean, sd, n) for tables and docs.

Plain library: pandas / matplotlib, no prefect, no torch.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from sae_core.report import _figure_to_png, model_keys, plotted_metrics, variant_label

_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _with_depth(metrics: pd.DataFrame) -> pd.DataFrame:
    """Rows with a value, their layer, hook type (the hook name without its layer), variant and metric names."""
    frame = metrics[pd.to_numeric(metrics["value"], errors="coerce").notna()].copy()
    if "status" in frame:
        frame = frame[frame["status"].fillna("ok") == "ok"]
    if frame.empty:
        return frame
    parsed = frame["hook"].astype(str).str.extract(_HOOK)
    layer = pd.to_numeric(frame["layer"], errors="coerce") if "layer" in frame else pd.Series(np.nan, index=frame.index)
    frame["layer"] = layer.fillna(pd.to_numeric(parsed[0], errors="coerce"))
    frame["hook_type"] = parsed[1].str.removeprefix("hook_").fillna(frame["hook"].astype(str))
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["variant"] = frame.apply(variant_label, axis=1)
    frame["metric"] = frame["metric_family"] + "/" + frame["metric_name"]
    return frame[frame["layer"].notna()]


def depth_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """(hook type, compressed model, metric, variant, layer) -> mean, sd (over seeds; NaN with one), n."""
    if metrics is None or metrics.empty or not {"hook", "value", "metric_family", "metric_name"} <= set(metrics.columns):
        return pd.DataFrame()
    frame = _with_depth(metrics)
    if frame.empty:
        return pd.DataFrame()
    keys = ["hook_type", *model_keys(frame), "metric", "variant", "layer"]
    table = frame.groupby(keys, dropna=False)["value"].agg(mean="mean", sd="std", n="count").reset_index()
    table["layer"] = table["layer"].astype(int)
    return table


def depth_plots(metrics: pd.DataFrame, max_metrics: int = 12) -> dict[str, bytes]:
    """``depth_<hook type>_<compression>.png`` per (hook type, compressed model) with at least two layers."""
    table = depth_table(metrics)
    if table.empty:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    models = model_keys(table)
    rows = _with_depth(metrics)
    higher = dict(zip(rows["metric"], rows["higher_is_better"])) if "higher_is_better" in rows else {}
    for (hook_type, *model), group in table.groupby(["hook_type", *models]):
        layers = sorted(group["layer"].unique())
        if len(layers) < 2:
            continue
        names = plotted_metrics(list(dict.fromkeys(group["metric"])), max_metrics)
        cols = min(3, len(names))
        rows = -(-len(names) // cols)
        figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        variants = list(dict.fromkeys(group["variant"]))
        for ax, name in zip(axes.flat, names):
            data = group[group["metric"] == name]
            for i, variant in enumerate(variants):
                line = data[data["variant"] == variant].sort_values("layer")
                if line.empty:
                    continue
                errors = line["sd"].where(line["n"] > 1)
                ax.errorbar(line["layer"], line["mean"], yerr=None if errors.isna().all() else errors.fillna(0.0).to_numpy(),
                            marker="o", capsize=3, color=f"C{i % 10}", label=variant)
            ax.set_title(name + {True: " ↑", False: " ↓"}.get(higher.get(name), ""), fontsize=9)
            ax.set_xlabel("layer")
            ax.set_xticks(layers)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=max(1, min(len(labels), 5)), fontsize=8, bbox_to_anchor=(0.5, -0.02))
        seeds = int(group["n"].max())
        spread = f"mean ± sd over {seeds} seeds" if seeds > 1 else "one seed, no spread"
        compressed = f"compressed with {model[0]}" if "compression" in models else f"pruned to {float(model[0]):.0%}"
        figure.suptitle(f"{hook_type} by layer: SAEs on the LLM {compressed} ({spread})", fontsize=11)
        figure.tight_layout(rect=(0, 0.06, 1, 1))
        label = str(model[0]).replace(":", "-") if model else "model"
        plots[f"depth_{hook_type}_{label}.png"] = _figure_to_png(figure)
    return plots


def depth_markdown(metrics: pd.DataFrame, metric_names: list[str] | None = None, digits: int = 4) -> str:
    """Per (hook type, compressed model) and metric: layer × variant cells ``mean ± sd`` (markdown)."""
    table = depth_table(metrics)
    if table.empty:
        return ""
    lines: list[str] = []
    models = model_keys(table)
    for (hook_type, *model), group in table.groupby(["hook_type", *models]):
        names = metric_names or plotted_metrics(list(dict.fromkeys(group["metric"])), 12)
        for name in [n for n in names if n in set(group["metric"])]:
            data = group[group["metric"] == name]
            layers = sorted(data["layer"].unique())
            lines += [f"**{name}**, {hook_type}, {model[0]}:", "", "| variant | " + " | ".join(f"layer {l}" for l in layers) + " |",
                      "|---|" + "---|" * len(layers)]
            for variant, rows in data.groupby("variant", sort=False):
                cells = {int(r.layer): mean_sd_text(r.mean, r.sd, r.n, digits) for r in rows.itertuples()}
                lines.append(f"| {variant} | " + " | ".join(cells.get(l, "") for l in layers) + " |")
            lines.append("")
    return "\n".join(lines)


def mean_sd_text(mean: float, sd: float, n: int, digits: int = 4) -> str:
    """``mean ± sd`` (sd to 2 significant digits); ``mean`` alone with one value."""
    if not np.isfinite(mean):
        return ""
    if n > 1 and np.isfinite(sd):
        return f"{mean:.{digits}g} ± {sd:.2g}"
    return f"{mean:.{digits}g}"
