"""The compression side of the report: one row per (hook, compressed model) of the feature audit.

- a table of methods x (perplexity change, SAEBench core CE-loss score and explained variance of
  the transferred (original) SAE, survived / degraded / damaged % with the token-subset spread);
- "perplexity change vs feature survival": one point per method and strength, the subset std as
  error bars (Duan's point: perplexity can miss feature damage);
- the per-feature r histogram of each method (active features), with the class thresholds.

Inputs are the feature-fidelity task manifests, the tidy metrics table and the per-feature tables;
outputs are PNG bytes and markdown. Plain library: no prefect.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sae_core.feature_audit import DAMAGE_THRESHOLD, SURVIVAL_THRESHOLD

CORE_COLUMNS = {"ce_loss_score": "core_ce_loss_score", "explained_variance": "core_explained_variance"}


def method_label(compression: dict) -> str:
    """'wanda:0.5', 'rtn:4', ... from a compression block (``sae_core.model_ref.compression_of``); its spec text,
    or built from its fields when it has none."""
    for key in ("spec", "text", "label"):
        if isinstance(compression.get(key), str):
            return compression[key]
    method = compression.get("method", "?")
    if compression.get("bits") is not None:
        return f"{method}:{compression['bits']}" + (f"g{compression['group_size']}" if compression.get("group_size") else "")
    structure = compression.get("structure")
    if structure and structure != "unstructured":
        return f"{method}:{structure}"
    return f"{method}:{float(compression.get('sparsity') or 0):g}"


def strength(compression: dict) -> float:
    """The compression knob: bit width for quantization, fraction zeroed for pruning."""
    return float(compression["bits"]) if compression.get("bits") is not None else float(compression.get("sparsity") or 0.0)


def _held_out_delta_pct(perplexity: dict | None) -> float:
    if not perplexity:
        return float("nan")
    compressed = perplexity.get("compressed", perplexity.get("pruned"))
    dense = perplexity.get("dense")
    return 100.0 * (compressed / dense - 1.0) if compressed and dense else float("nan")


def compression_table(audits: list[dict], metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per audit: method, perplexity change, the original SAE's core scores, feature classes (%)."""
    rows = []
    for audit in audits:
        s, compression = audit["summary"], audit.get("compression") or {}
        row = {"hook": audit["hook"], "method": method_label(compression), "family": compression.get("method", "?"),
               "strength": strength(compression),
               "ppl_delta_pct": (audit.get("audit_perplexity") or {}).get("delta_pct", float("nan")),
               "ppl_delta_pct_held_out": _held_out_delta_pct(audit.get("perplexity"))}
        for name, column in CORE_COLUMNS.items():
            row[column] = _core_value(metrics, audit, name)
        for name in ("survived", "degraded", "damaged", "dead_after"):
            row[f"{name}_pct"] = 100.0 * _num(s.get(f"{name}_frac"))
        row["survived_pct_subset_std"] = 100.0 * _num(s.get("survived_frac_subset_std"))
        row["mean_r"], row["n_active"] = _num(s.get("mean_r")), s.get("n_active")
        row["auc_survival"] = _num((audit.get("auc") or {}).get("auc_mean"))
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["hook", "family", "strength"], ignore_index=True)


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _core_value(metrics: pd.DataFrame, audit: dict, name: str) -> float:
    if metrics.empty or "model_prefix" not in metrics:
        return float("nan")
    hit = metrics[(metrics["metric_family"] == "core") & (metrics["metric_name"] == name) & (metrics["sae_variant"] == "original")
                  & (metrics["hook"] == audit["hook"]) & (metrics["model_prefix"] == audit["model_prefix"])]
    return float(hit["value"].mean()) if len(hit) else float("nan")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def perplexity_vs_survival_plot(table: pd.DataFrame) -> bytes | None:
    """ΔPPL (%) against survived (%), one point per method and strength, subset std as x error bars."""
    from sae_core.report import _figure_to_png

    if table.empty:
        return None
    plt = _pyplot()
    hooks = sorted(table["hook"].unique())
    figure, axes = plt.subplots(1, len(hooks), figsize=(5.5 * len(hooks), 4.2), squeeze=False)
    for ax, hook in zip(axes.flat, hooks):
        for family, group in table[table["hook"] == hook].groupby("family"):
            group = group.sort_values("strength")
            ax.errorbar(group["survived_pct"], group["ppl_delta_pct"], xerr=group["survived_pct_subset_std"].fillna(0),
                        marker="o", capsize=3, label=family)
            for _, row in group.iterrows():
                ax.annotate(row["method"].split(":", 1)[-1], (row["survived_pct"], row["ppl_delta_pct"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("features survived (r > 0.9, % of active)")
        ax.set_ylabel("perplexity change on the audit tokens (%)")
        ax.set_title(hook, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle("Perplexity change vs feature survival (error bars: std over token subsets)", fontsize=10)
    figure.tight_layout()
    return _figure_to_png(figure)


def survival_histograms(audits: list[dict], tables: dict[str, pd.DataFrame]) -> bytes | None:
    """Per hook, the distribution of per-feature r (active features) for each method."""
    from sae_core.report import _figure_to_png

    present = [a for a in audits if a.get("table_key") in tables]
    if not present:
        return None
    plt = _pyplot()
    hooks = sorted({a["hook"] for a in present})
    figure, axes = plt.subplots(1, len(hooks), figsize=(5.5 * len(hooks), 3.8), squeeze=False)
    for ax, hook in zip(axes.flat, hooks):
        chosen = sorted((a for a in present if a["hook"] == hook), key=lambda a: method_label(a.get("compression") or {}))
        r_all = [tables[a["table_key"]].query("active")["r"].to_numpy() for a in chosen]
        low = min([0.0] + [float(r.min()) for r in r_all if len(r)])
        bins = np.linspace(low, 1.0, 41)
        for audit, r in zip(chosen, r_all):
            ax.hist(r, bins=bins, histtype="step", linewidth=1.4, label=method_label(audit.get("compression") or {}))
        for threshold in (DAMAGE_THRESHOLD, SURVIVAL_THRESHOLD):
            ax.axvline(threshold, color="gray", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("per-feature r (dense vs compressed)")
        ax.set_ylabel("active features")
        ax.set_title(hook, fontsize=9)
        ax.legend(fontsize=7)
    figure.tight_layout()
    return _figure_to_png(figure)


def compression_plots(audits: list[dict], tables: dict[str, pd.DataFrame], metrics: pd.DataFrame) -> dict[str, bytes]:
    plots = {}
    scatter = perplexity_vs_survival_plot(compression_table(audits, metrics))
    if scatter:
        plots["compression_ppl_vs_survival.png"] = scatter
    histograms = survival_histograms(audits, tables)
    if histograms:
        plots["compression_r_histograms.png"] = histograms
    return plots


def markdown_section(results: list[dict], metrics: pd.DataFrame) -> str:
    """'## Feature audit' with the method table and the matched-perplexity overlaps, from the task
    manifests among ``results`` (kinds 'feature_fidelity', 'feature_overlap'); empty when none."""
    from sae_core.report import _markdown_table

    table = compression_table([r for r in results if r.get("kind") == "feature_fidelity"], metrics)
    if table.empty:
        return ""
    shown = table.assign(survived=table.apply(lambda r: f"{r['survived_pct']:.1f} ± {r['survived_pct_subset_std']:.1f}", axis=1))
    columns = ["hook", "method", "ppl_delta_pct", "ppl_delta_pct_held_out", "core_ce_loss_score", "core_explained_variance",
               "survived", "degraded_pct", "damaged_pct", "dead_after_pct", "mean_r", "n_active", "auc_survival"]
    return "\n".join([
        "## Feature audit: what compression did to each feature of the original SAE", "",
        f"Per feature, Pearson r of the original SAE's activations on the dense vs the compressed model (same tokens). "
        f"Of the active features: survived r > {SURVIVAL_THRESHOLD}, degraded {DAMAGE_THRESHOLD} ≤ r ≤ {SURVIVAL_THRESHOLD}, "
        f"damaged r < {DAMAGE_THRESHOLD} (%). Survived ± the std over disjoint token subsets (the noise floor). "
        "ΔPPL % on the audit tokens; `_held_out` from the compression step. Core scores: the transferred (original) SAE.", "",
        _markdown_table(shown[columns]), "", *overlap_section([r for r in results if r.get("kind") == "feature_overlap"])])


def overlap_section(overlaps: list[dict]) -> list[str]:
    """Matched-perplexity pairs: do the two methods damage the same features?"""
    from sae_core.report import _markdown_table

    if not overlaps:
        return []
    rows = []
    for o in overlaps:
        ppl = o.get("perplexity") or {}
        rows.append({"hook": o["hook"], "reference": o["reference"], "matched": o["matched"],
                     "ppl_delta_pct": " vs ".join(f"{_num((ppl.get(k) or {}).get('delta_pct')):.2f}" for k in (o["reference"], o["matched"])),
                     **{k: o["overlap"].get(k) for k in ("n_shared_active", "jaccard_non_survived", "jaccard_damaged", "spearman_damage",
                                                         "pearson_damage", "non_survived_only_a", "non_survived_only_b", "non_survived_both")}})
    return ["### Matched perplexity: do two methods damage the same features?", "",
            "Over features active under both: Jaccard of the non-survived (r ≤ 0.9) and damaged (r < 0.5) sets, Spearman / "
            "Pearson of the damage scores 1 − r; only-A = reference only, only-B = matched only.", "",
            _markdown_table(pd.DataFrame(rows)), ""]
