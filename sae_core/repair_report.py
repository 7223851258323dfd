"""What it costs to fix the SAE: the cost–quality frontier of SAE variants (issue 19).

The product compares ways to get an SAE for a compressed LLM: ``transfer`` (the original SAE, unchanged,
free), ``retrain`` (a fresh SAE, the expensive reference) and the fixes in between (``recalibrate``,
``refit_decoder``, ``affine``, ``finetune:FRACTION``, ``prune:RULE:S``). Input is the variants table
(one row per variant x compressed model x hook x seed, with ``variant_spec``, ``seed`` and cost
columns: see the repair contract) and, optionally, the ``feature_identity`` metric rows. Output:

- :func:`frontier_table`: per (hook, compression) x variant, quality and cost over seeds, the fraction
  of the transfer -> retrain gap closed (paired within seed), identity figures, separation marks;
- :func:`finetune_budget`: the token budget at which fine-tuning closes 50% / 90% of the gap;
- :func:`frontier_plot`: quality against cost (log), PNG bytes;
- :func:`frontier_markdown`: the report's section "What it costs to fix the SAE".

Quality: ``explained_variance_centred`` (EV, higher is better) and ``ce_delta`` (ΔCE = CE with the SAE
spliced in minus clean CE, nats, lower is better). Gap closed, per seed s, is
``(q_fix,s − q_transfer,s) / (q_retrain,s − q_transfer,s)``: 0 = no better than transfer, 1 = as good
as retrain, for both measures (the ratio has the same orientation whichever way "better" points).

Separation rule (one rule, used everywhere, stated in the markdown as :data:`SEPARATION_RULE`): two
variants are *separated* on a measure when their paired per-seed differences (same seed, same hook,
same compressed model) all have the same sign (none zero) AND ``|mean| > 2 · sd / sqrt(n)`` (sd with
ddof=1). With fewer than 2 paired seeds the mark is ``"n/a (one seed)"``: no ordering is claimed.
The gap itself (retrain − transfer, per seed) is tested with the same rule; when it is not separated
from 0, gap-closed figures read ``"gap not resolved"`` instead of a number.

Plain library: pandas / numpy / matplotlib, no prefect, no torch.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sae_core.report import _figure_to_png, _markdown_table, current_columns

# measure column -> (short name in the table's columns, display name, +1 when higher is better)
QUALITY = {"explained_variance_centred": ("ev", "EV (centred)", +1), "ce_delta": ("ce_delta", "ΔCE (nats)", -1),
           "kl_div_score": ("kl", "KL score (SAEBench core)", +1)}
# Quality measures that are not columns of the variant rows but metric rows, joined on sae_prefix + model_prefix:
# (family, metric) -> column. Why KL beside ΔCE: an SAE trained on the dense model can *lower* the compressed model's
# CE when spliced in (it pulls the activations back towards the dense model's: docs/results-repair.md, gemma-3-270m),
# so ΔCE rewards undoing the compression; the KL score measures faithfulness to the compressed model's own outputs.
JOINED_QUALITY = {("core", "kl_div_score"): "kl_div_score"}
COSTS = ("tokens_used", "wall_time_s", "gradient_steps")
IDENTITY_FAMILY = "feature_identity"
IDENTITY_METRICS = ("identity_kept_fraction", "decoder_cosine_kept_fraction", "matched_fraction", "survived_pct", "mean_r")
KEEPS_IDENTITY_AT = 0.9  # identity_kept_fraction at or above which the plot's marker is filled
GROUP = ["hook", "compression"]
ONE_SEED = "n/a (one seed)"
GAP_NOT_RESOLVED = "gap not resolved"
RETRAIN_WORSE = "retrain worse than transfer"  # a resolved gap pointing the wrong way: nothing to close
SELF = "—"  # a reference compared with itself
BUDGET_TARGETS = (0.5, 0.9)
SEPARATION_RULE = (
    "Two variants are **separated** on a measure when their paired per-seed differences (same seed, hook and "
    "compressed model) all have the same sign and |mean| > 2 × sd / √n (sd over seeds, ddof = 1). With one seed "
    "the mark is \"n/a (one seed)\" and no ordering is claimed. The transfer → retrain gap is tested the same "
    "way; where it is not separated from 0, gap-closed figures read \"gap not resolved\".")
PUBLISHED = (
    "Published comparison points: a warm-start fine-tune on ≈ 0.6% of a from-scratch token budget was competitive with "
    "a from-scratch SAE (Kissane et al. 2024, Mistral-7B base → chat); a short KL + MSE fine-tune closed 20–50% of the "
    "CE-loss gap (Karvonen 2025, arXiv 2503.17272); LoRA on the model around a frozen SAE closed 30–55% (Chen, Engels "
    "& Tegmark 2025, arXiv 2501.19406).")


# ------------------------------------------------------------------ inputs
def has_variant_spec(variants: pd.DataFrame | None) -> bool:
    """Whether the variants rows are of the repair era (a ``variant_spec`` column with a value)."""
    return variants is not None and not variants.empty and "variant_spec" in variants and variants["variant_spec"].notna().any()


def identity_rows(metrics: pd.DataFrame | None) -> pd.DataFrame:
    """The metric rows the frontier joins onto the variant rows, out of a tidy metrics table (empty when none):
    the ``feature_identity`` family's, and the :data:`JOINED_QUALITY` measures (SAEBench core's KL score)."""
    if metrics is None or metrics.empty or "metric_family" not in metrics:
        return pd.DataFrame()
    joined = pd.Series(list(zip(metrics["metric_family"], metrics.get("metric_name", pd.Series("", index=metrics.index)))),
                       index=metrics.index).isin(list(JOINED_QUALITY))
    return metrics[(metrics["metric_family"] == IDENTITY_FAMILY) | joined].reset_index(drop=True)


def _joined_quality_wide(rows: pd.DataFrame | None) -> pd.DataFrame | None:
    """(sae_prefix, model_prefix) -> the :data:`JOINED_QUALITY` columns, from tidy metric rows."""
    if rows is None or rows.empty or not {"sae_prefix", "model_prefix", "metric_family", "metric_name"} <= set(rows.columns):
        return None
    keys = pd.Series(list(zip(rows["metric_family"], rows["metric_name"])), index=rows.index)
    rows = rows[keys.isin(list(JOINED_QUALITY))]
    if "status" in rows:
        rows = rows[rows["status"].fillna("ok") == "ok"]
    if rows.empty:
        return None
    rows = rows.assign(column=[JOINED_QUALITY[(f, m)] for f, m in zip(rows["metric_family"], rows["metric_name"])],
                       value=pd.to_numeric(rows["value"], errors="coerce")).dropna(subset=["value"])
    return rows.pivot_table(index=["sae_prefix", "model_prefix"], columns="column", values="value", aggfunc="mean").reset_index()


def _identity_wide(identity: pd.DataFrame | None) -> pd.DataFrame | None:
    """(sae_prefix, model_prefix) -> identity figures, from tidy metric rows (or a table already wide)."""
    if identity is None or identity.empty or not {"sae_prefix", "model_prefix"} <= set(identity.columns):
        return None
    if "metric_name" not in identity:  # already one column per figure
        cols = [c for c in IDENTITY_METRICS if c in identity]
        return identity.groupby(["sae_prefix", "model_prefix"])[cols].mean().reset_index() if cols else None
    rows = identity
    if "metric_family" in rows:
        rows = rows[rows["metric_family"] == IDENTITY_FAMILY]
    if "status" in rows:
        rows = rows[rows["status"].fillna("ok") == "ok"]
    rows = rows[rows["metric_name"].isin(IDENTITY_METRICS)]
    rows = rows.assign(value=pd.to_numeric(rows["value"], errors="coerce")).dropna(subset=["value"])
    if rows.empty:
        return None
    return rows.pivot_table(index=["sae_prefix", "model_prefix"], columns="metric_name", values="value", aggfunc="mean").reset_index()


def _prepared(variants: pd.DataFrame | None, identity: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """Repair-era variant rows with every column the frontier reads (NaN where absent), identity joined."""
    if not has_variant_spec(variants):
        return None
    frame = current_columns(variants)
    frame = frame[frame["variant_spec"].notna() & (frame["variant_spec"].astype(str).str.strip() != "")].copy()
    frame["variant_spec"] = frame["variant_spec"].astype(str)
    if "compression" not in frame:
        frame["compression"] = [f"strength {s:g}" for s in frame["strength"]] if "strength" in frame else "?"
    frame["compression"] = frame["compression"].fillna("none").astype(str)
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").fillna(0).astype(int) if "seed" in frame else 0
    if "variant_method" not in frame:
        frame["variant_method"] = frame["variant_spec"].str.split(":").str[0]
    frame["variant_method"] = frame["variant_method"].fillna(frame["variant_spec"].str.split(":").str[0]).astype(str)
    joined = _joined_quality_wide(identity)
    if joined is not None and {"sae_prefix", "model_prefix"} <= set(frame.columns):
        frame = frame.drop(columns=[c for c in joined.columns if c in frame and c not in ("sae_prefix", "model_prefix")])
        frame = frame.merge(joined, on=["sae_prefix", "model_prefix"], how="left")
    for column in [*QUALITY, *COSTS]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    wide = _identity_wide(identity)
    for column in IDENTITY_METRICS:
        frame = frame.drop(columns=column) if column in frame else frame
    if wide is not None and {"sae_prefix", "model_prefix"} <= set(frame.columns):
        frame = frame.merge(wide, on=["sae_prefix", "model_prefix"], how="left")
    for column in IDENTITY_METRICS:
        if column not in frame:
            frame[column] = np.nan
    return frame.reset_index(drop=True)


# ------------------------------------------------------------------ statistics
def separation(differences) -> str:
    """The separation mark of paired per-seed differences: ``"yes"``, ``"no"`` or ``"n/a (one seed)"``.

    ``"yes"`` only when every difference has the same sign (none zero) AND |mean| > 2 · sd / sqrt(n)
    (sd with ddof = 1); fewer than 2 finite differences give ``"n/a (one seed)"``."""
    d = np.asarray([x for x in differences if x is not None and np.isfinite(x)], dtype=float)
    if len(d) < 2:
        return ONE_SEED
    same_sign = bool(np.all(d > 0) or np.all(d < 0))
    return "yes" if same_sign and abs(d.mean()) > 2.0 * d.std(ddof=1) / math.sqrt(len(d)) else "no"


def _mean_sd(values) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else float("nan")), int(len(v))


def _spread_text(mean: float, sd: float, n: int, count: bool = False) -> str:
    """``mean ± sd`` at 4 significant digits (no spread with one seed); ``count``: a cost such as tokens,
    as a whole number, without a spread of 0 (a cost the seeds do not change)."""
    if n == 0 or not np.isfinite(mean):
        return ""
    text = _count(mean) if count else f"{mean:.4g}"
    if n == 1 or not np.isfinite(sd) or (count and sd == 0):
        return text
    return f"{text} ± {_count(sd) if count else f'{sd:.4g}'}"


def _count(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _per_seed(frame: pd.DataFrame, spec: str, column: str) -> pd.Series:
    """seed -> value of one variant (means over duplicate rows of a seed)."""
    rows = frame[frame["variant_spec"] == spec]
    return rows.groupby("seed")[column].mean().dropna()


def _reference(series: pd.Series, seeds) -> pd.Series:
    """A reference (transfer / retrain) per seed; one seed-independent row (e.g. a loaded, not trained,
    original SAE) stands for every seed."""
    if len(series) == 1:
        return pd.Series(series.iloc[0], index=list(seeds), dtype=float)
    return series.reindex(list(seeds))


def _spec_order(spec: str, tokens: float, wall: float) -> tuple:
    rank = 0 if spec == "transfer" else 2 if spec == "retrain" else 1
    return (rank, tokens if np.isfinite(tokens) else math.inf, wall if np.isfinite(wall) else math.inf, spec)


# ------------------------------------------------------------------ the table
def frontier_table(variants: pd.DataFrame, identity: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (hook, compression, variant_spec): quality and cost over seeds, gap closed, identity, marks.

    Columns, for each quality measure ``m`` in ``ev`` (``explained_variance_centred``) and ``ce_delta``:
    ``m_mean``, ``m_sd`` (NaN with one seed), ``m_minus_transfer`` / ``m_minus_retrain`` (mean of the
    paired per-seed differences), ``m_separated_from_transfer`` / ``m_separated_from_retrain``
    (``"yes"`` / ``"no"`` / ``"n/a (one seed)"``, ``"—"`` for a reference against itself, by
    :func:`separation`), ``m_gap_resolved`` (the gap retrain − transfer of the group, same rule),
    ``m_gap_closed`` / ``m_gap_closed_sd`` / ``m_gap_closed_n`` (per seed
    ``(q_fix − q_transfer) / (q_retrain − q_transfer)``, then mean and sd over seeds; NaN when the gap
    is not resolved) and ``m_gap_closed_text`` (what people read: ``"0.52 ± 0.03"``, ``"0.5 (n=1)"``
    or ``"gap not resolved"``). Costs: ``tokens_used_mean`` / ``_sd``, ``wall_time_s_mean`` / ``_sd``,
    ``gradient_steps_mean`` / ``_sd``. Identity (mean over seeds of the ``feature_identity`` rows
    joined on ``sae_prefix`` + ``model_prefix``): the :data:`IDENTITY_METRICS`. ``n_seeds`` counts
    the seeds of the variant. Rows without ``variant_spec`` (old storage roots): an empty table.
    """
    frame = _prepared(variants, identity)
    if frame is None or frame.empty:
        return pd.DataFrame()
    out = []
    for (hook, compression), group in frame.groupby(GROUP, sort=True):
        gaps = {}
        for column, (short, _, better) in QUALITY.items():
            transfer, retrain = _per_seed(group, "transfer", column), _per_seed(group, "retrain", column)
            seeds = sorted(set(transfer.index) | set(retrain.index))
            if transfer.empty or retrain.empty:
                missing = [name for name, ref in (("transfer", transfer), ("retrain", retrain)) if ref.empty]
                measured = group[column].notna().any()
                gaps[column] = (None if transfer.empty else transfer, None if retrain.empty else retrain,
                                f"no {' or '.join(missing)} rows" if measured else "not measured")
                continue
            t, r = _reference(transfer, seeds), _reference(retrain, seeds)
            # two single, seed-independent references are one observation, whatever their seed labels
            gap = (r - t).dropna().iloc[:1] if len(transfer) == 1 and len(retrain) == 1 else (r - t).dropna()
            resolved = separation(gap.values)
            if resolved == ONE_SEED and len(gap) == 1 and gap.iloc[0] == 0:
                resolved = "no"
            if resolved == "yes" and better * float(gap.mean()) < 0:
                resolved = RETRAIN_WORSE  # e.g. a fresh SAE with a worse spliced CE: fixes are compared with transfer only
            gaps[column] = (transfer, retrain, resolved)
        for spec, rows in group.groupby("variant_spec", sort=False):
            row = {"hook": hook, "compression": compression, "variant_spec": spec,
                   "variant_method": rows["variant_method"].iloc[0], "n_seeds": int(rows["seed"].nunique())}
            for column, (short, _, _) in QUALITY.items():
                per_seed = rows.groupby("seed")[column].mean()
                row[f"{short}_mean"], row[f"{short}_sd"], _ = _mean_sd(per_seed.values)
                row.update(_paired(spec, per_seed.dropna(), *gaps[column], short))
            for column in COSTS:
                row[f"{column}_mean"], row[f"{column}_sd"], _ = _mean_sd(rows.groupby("seed")[column].mean().values)
            for column in IDENTITY_METRICS:
                row[column] = _mean_sd(rows.groupby("seed")[column].mean().values)[0]
            out.append(row)
    table = pd.DataFrame(out)
    order = sorted(range(len(table)), key=lambda i: (table["hook"].iloc[i], table["compression"].iloc[i],
                                                       *_spec_order(table["variant_spec"].iloc[i], table["tokens_used_mean"].iloc[i],
                                                                    table["wall_time_s_mean"].iloc[i])))
    return table.iloc[order].reset_index(drop=True)


def _paired(spec: str, fix: pd.Series, transfer, retrain, resolved: str, short: str) -> dict:
    """The paired-within-seed figures of one variant on one measure."""
    nan = float("nan")
    row = {f"{short}_minus_transfer": nan, f"{short}_minus_retrain": nan, f"{short}_separated_from_transfer": "",
           f"{short}_separated_from_retrain": "", f"{short}_gap_resolved": resolved, f"{short}_gap_closed": nan,
           f"{short}_gap_closed_sd": nan, f"{short}_gap_closed_n": 0, f"{short}_gap_closed_text": ""}
    if fix.empty:
        return row
    for name, ref in (("transfer", transfer), ("retrain", retrain)):  # either may be missing: marks against the other
        if ref is None:
            continue
        other = "retrain" if name == "transfer" else "transfer"
        diff = (fix - _reference(ref, fix.index)).dropna()
        row[f"{short}_minus_{name}"] = _mean_sd(diff.values)[0]
        row[f"{short}_separated_from_{name}"] = SELF if spec == name else resolved if spec == other else separation(diff.values)
    if transfer is None or retrain is None:
        row[f"{short}_gap_closed_text"] = resolved
        return row
    t, r = _reference(transfer, fix.index), _reference(retrain, fix.index)
    gap = r - t
    if resolved in ("no", RETRAIN_WORSE):
        row[f"{short}_gap_closed_text"] = GAP_NOT_RESOLVED if resolved == "no" else RETRAIN_WORSE
        return row
    closed = ((fix - t) / gap.where(gap != 0)).dropna()
    mean, sd, n = _mean_sd(closed.values)
    row.update({f"{short}_gap_closed": mean, f"{short}_gap_closed_sd": sd, f"{short}_gap_closed_n": n})
    row[f"{short}_gap_closed_text"] = ("" if n == 0 else f"{mean:.4g} (n=1)" if n == 1 else f"{mean:.4g} ± {sd:.4g} (n={n})")
    return row


# ------------------------------------------------------------------ fine-tune budget
def finetune_budget(variants: pd.DataFrame, identity: pd.DataFrame | None = None) -> pd.DataFrame:
    """The token budget at which fine-tuning from the original closes 50% and 90% of the gap.

    Per (hook, compression) and quality measure, the curve runs through transfer (0 tokens, 0 closed)
    and the ``finetune:F`` points (seed means of ``tokens_used`` and of the paired gap closed), in
    order of tokens. A target's budget is linearly interpolated in log-tokens between the first point
    that reaches it and the one before; when that one is transfer (0 tokens, no logarithm) the
    smallest fine-tune's tokens are an upper bound (``"≤ N"``). ``"not reached"`` when no fine-tune
    reaches the target. Retrain closes 100% at its full budget by definition: it is the reference
    (``retrain_tokens``) that budgets are expressed against (``fraction_of_retrain_*``), not a point
    to interpolate towards. A gap that is not resolved gives ``"gap not resolved"``.
    """
    table = frontier_table(variants, identity)
    if table.empty:
        return pd.DataFrame()
    out = []
    for (hook, compression), group in table.groupby(GROUP, sort=True):
        retrain = group[group["variant_spec"] == "retrain"]
        retrain_tokens = float(retrain["tokens_used_mean"].iloc[0]) if not retrain.empty else float("nan")
        finetunes = group[group["variant_method"] == "finetune"].sort_values("tokens_used_mean")
        for column, (short, display, _) in QUALITY.items():
            if group[f"{short}_mean"].isna().all():  # not measured in this run (e.g. no SAEBench core rows for the KL score)
                continue
            resolved = group[f"{short}_gap_resolved"].iloc[0]
            points = [(float(tok), float(c)) for tok, c in zip(finetunes["tokens_used_mean"], finetunes[f"{short}_gap_closed"])
                      if np.isfinite(tok) and np.isfinite(c)]
            row = {"hook": hook, "compression": compression, "measure": column, "gap_resolved": resolved,
                   "n_seeds": int(group["n_seeds"].max()), "retrain_tokens": retrain_tokens,
                   "finetune_points": ", ".join(f"{tok:.4g} tokens: {c:.0%}" for tok, c in points)}
            for target in BUDGET_TARGETS:
                pct = int(round(100 * target))
                tokens, text, note = _budget(points, target, resolved, finetunes.empty)
                fraction = tokens / retrain_tokens if np.isfinite(tokens) and retrain_tokens > 0 else float("nan")
                if np.isfinite(fraction):
                    note = "; ".join(x for x in (f"{'≤ ' if text.startswith('≤') else ''}{100 * fraction:.3g}% of the retrain budget", note) if x)
                text += f" ({note})" if note else ""
                row.update({f"tokens_to_{pct}pct": tokens, f"fraction_of_retrain_{pct}pct": fraction, f"budget_{pct}pct": text})
            out.append(row)
    return pd.DataFrame(out)


def _budget(points: list[tuple[float, float]], target: float, resolved: str, no_finetunes: bool) -> tuple[float, str, str]:
    """(tokens, text, note) of one target on one curve (see :func:`finetune_budget`)."""
    nan = float("nan")
    if resolved not in ("yes", ONE_SEED):
        return nan, GAP_NOT_RESOLVED if resolved == "no" else resolved, ""
    if no_finetunes or not points:
        return nan, "no fine-tune points", ""
    one_seed = "one seed" if resolved == ONE_SEED else ""
    previous = (0.0, 0.0)
    for tokens, closed in points:
        if closed >= target:
            (t0, c0), (t1, c1) = previous, (tokens, closed)
            if t0 <= 0:
                return t1, f"≤ {_count(t1)} tokens", "; ".join(x for x in (f"the smallest fine-tune already closes {c1:.0%}", one_seed) if x)
            w = (target - c0) / (c1 - c0) if c1 != c0 else 1.0
            value = float(math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0))))
            return value, f"{_count(value)} tokens", one_seed
        previous = (tokens, closed)
    return nan, f"not reached (the largest fine-tune closes {points[-1][1]:.0%})", one_seed


# ------------------------------------------------------------------ the plot
def _floor(values) -> float:
    positive = [v for v in values if np.isfinite(v) and v > 0]
    return float(f"{min(positive) / 10:.1g}") if positive else 1.0


def frontier_plot(variants: pd.DataFrame, identity: pd.DataFrame | None = None) -> bytes | None:
    """Quality against cost, one row of panels per (hook, compression): EV and ΔCE against tokens
    consumed and against wall seconds (log axes). One point per variant at its seed means, vertical
    error bars the sd over seeds (none with one seed), labelled with its spec text; the band between
    the transfer and retrain means is shaded. Markers are filled when the variant keeps identity
    (``identity_kept_fraction`` ≥ 0.9) and hollow otherwise or when not measured. Zero-cost points
    (transfer, fixes without tokens) are drawn at a floor one decade below the smallest positive cost,
    which the axis label states. ``None`` for rows without ``variant_spec`` (old storage roots)."""
    table = frontier_table(variants, identity)
    if table.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    measures = [(c, short, display, sign) for c, (short, display, sign) in QUALITY.items() if table[f"{short}_mean"].notna().any()]
    if not measures:
        return None
    costs = [("tokens_used", "tokens consumed"), ("wall_time_s", "wall time to build (s)")]
    floors = {cost: _floor(table[f"{cost}_mean"]) for cost, _ in costs}
    groups = list(table.groupby(GROUP, sort=True))
    ncols = len(measures)  # per (hook, compression): a row against tokens, a row against wall seconds
    figure, axes = plt.subplots(len(costs) * len(groups), ncols, figsize=(5.2 * ncols, 3.4 * len(costs) * len(groups)), squeeze=False)
    methods = list(dict.fromkeys(table["variant_method"]))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for g, ((hook, compression), group) in enumerate(groups):
        panels = [(axes[len(costs) * g + i, j], cost, label, m) for i, (cost, label) in enumerate(costs) for j, m in enumerate(measures)]
        for ax, cost, cost_label, (column, short, display, sign) in panels:
            floor = floors[cost]
            refs = {s: group.loc[group["variant_spec"] == s, f"{short}_mean"] for s in ("transfer", "retrain")}
            if all(len(v) and np.isfinite(v.iloc[0]) for v in refs.values()):
                lo, hi = sorted([refs["transfer"].iloc[0], refs["retrain"].iloc[0]])
                ax.axhspan(lo, hi, color="0.6", alpha=0.18, zorder=0)
            zero = False
            for rec in group.itertuples(index=False):
                y, sd = getattr(rec, f"{short}_mean"), getattr(rec, f"{short}_sd")
                x = getattr(rec, f"{cost}_mean")
                if not np.isfinite(y) or not np.isfinite(x):
                    continue
                if x <= 0:
                    x, zero = floor, True
                colour = colours[rec.variant_method]
                kept = np.isfinite(rec.identity_kept_fraction) and rec.identity_kept_fraction >= KEEPS_IDENTITY_AT
                ax.errorbar([x], [y], yerr=[sd] if np.isfinite(sd) else None, fmt="o", ms=7, color=colour,
                            markerfacecolor=colour if kept else "none", markeredgecolor=colour, capsize=3, zorder=3)
                ax.annotate(rec.variant_spec, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
            if zero:
                ax.axvline(floor, color="0.4", linestyle=":", linewidth=0.8, zorder=1)
            ax.set_xscale("log")
            ax.set_xlabel(f"{cost_label}, log" + (f" (0 drawn at {floor:g})" if zero else ""), fontsize=8)
            ax.set_ylabel(f"{display} {'↑' if sign > 0 else '↓'}", fontsize=8)
            ax.set_title(f"{hook} — {compression}", fontsize=9)
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[m], label=m) for m in methods]
    handles += [Line2D([], [], marker="o", linestyle="", color="0.3", label=f"filled: keeps identity (identity_kept_fraction ≥ {KEEPS_IDENTITY_AT:g})"),
                Line2D([], [], marker="o", linestyle="", color="0.3", markerfacecolor="none", label="hollow: does not, or not measured"),
                plt.Rectangle((0, 0), 1, 1, color="0.6", alpha=0.18, label="transfer–retrain gap (means)")]
    figure.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.01))
    figure.suptitle("What it costs to fix the SAE: quality on the compressed model against cost\n(error bars: sd over seeds; "
                    "dotted line: zero cost)", fontsize=10)
    figure.tight_layout(rect=(0, 0.1 / len(groups), 1, 1 - 0.05 / len(groups)))
    return _figure_to_png(figure)


# ------------------------------------------------------------------ markdown
def _num(value, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float, np.floating)) and np.isfinite(value) else ""


def _display_table(group: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for rec in group.to_dict(orient="records"):
        row = {"variant": f"`{rec['variant_spec']}`", "n": rec["n_seeds"]}
        for column, (short, display, _) in QUALITY.items():
            row[display] = _spread_text(rec[f"{short}_mean"], rec[f"{short}_sd"], rec["n_seeds"])
        row["tokens"] = _spread_text(rec["tokens_used_mean"], rec["tokens_used_sd"], rec["n_seeds"], count=True)
        row["wall s"] = _spread_text(rec["wall_time_s_mean"], rec["wall_time_s_sd"], rec["n_seeds"])
        row["grad steps"] = _spread_text(rec["gradient_steps_mean"], rec["gradient_steps_sd"], rec["n_seeds"], count=True)
        for column, (short, display, _) in QUALITY.items():
            name = display.split(" ")[0]
            closed = rec[f"{short}_gap_closed_text"]
            if rec["variant_spec"] in ("transfer", "retrain") and np.isfinite(rec[f"{short}_gap_closed"]):
                closed = "0 (reference)" if rec["variant_spec"] == "transfer" else "1 (reference)"
            row[f"{name} gap closed"] = closed
            marks = (rec[f"{short}_separated_from_transfer"], rec[f"{short}_separated_from_retrain"])
            row[f"{name} sep. transfer / retrain"] = " / ".join(marks) if any(marks) else ""
        row["identity kept"] = _num(rec["identity_kept_fraction"])
        row["survived %"] = _num(rec["survived_pct"])
        rows.append(row)
    return pd.DataFrame(rows)


def cheapest_fix(group: pd.DataFrame, short: str) -> str | None:
    """The cheapest fix (fewest tokens, then least wall time) that is separated from transfer in the
    improving direction and not separated from retrain on measure ``short``; ``None`` when none is."""
    sign = next(s for _, (sh, _, s) in QUALITY.items() if sh == short)
    fixes = group[~group["variant_spec"].isin(["transfer", "retrain"])]
    ok = fixes[(fixes[f"{short}_separated_from_transfer"] == "yes") & (fixes[f"{short}_separated_from_retrain"] == "no")
               & (sign * fixes[f"{short}_minus_transfer"] > 0)]
    if ok.empty:
        return None
    ok = ok.assign(_t=ok["tokens_used_mean"].fillna(math.inf), _w=ok["wall_time_s_mean"].fillna(math.inf))
    return str(ok.sort_values(["_t", "_w", "variant_spec"]).iloc[0]["variant_spec"])


def _verdict(group: pd.DataFrame, hook: str, compression: str) -> str:
    parts = []
    for column, (short, display, _) in QUALITY.items():
        name = display.split(" ")[0]
        if group[f"{short}_mean"].isna().all():
            continue
        resolved = group[f"{short}_gap_resolved"].iloc[0]
        if resolved == ONE_SEED:
            parts.append(f"on {name}, one seed only: no ordering is claimed")
        elif resolved == "no":
            parts.append(f"on {name}, transfer and retrain are not separated (gap not resolved): no fix is needed or claimed")
        elif resolved == RETRAIN_WORSE:
            sign = QUALITY[column][2]
            better = [spec for spec, sep, diff in zip(group["variant_spec"], group[f"{short}_separated_from_transfer"],
                                                       group[f"{short}_minus_transfer"])
                      if spec not in ("transfer", "retrain") and sep == "yes" and sign * diff > 0]
            parts.append(f"on {name}, retrain is worse than transfer (no gap to close); "
                         + (f"better than transfer, separated: {', '.join(f'`{b}`' for b in better)}" if better
                            else "no fix is separated from transfer in the better direction"))
        elif resolved != "yes":
            parts.append(f"on {name}, {resolved}: no gap to close")
        else:
            best = cheapest_fix(group, short)
            if best is None:
                parts.append(f"on {name}, no fix is both separated from transfer and not separated from retrain")
            else:
                rec = group[group["variant_spec"] == best].iloc[0]
                parts.append(f"on {name}, the cheapest fix separated from transfer and not from retrain is `{best}` "
                             f"({_count(rec['tokens_used_mean'])} tokens, {_num(rec['wall_time_s_mean'])} s; "
                             f"gap closed {rec[f'{short}_gap_closed_text']})")
    return f"**{hook}, {compression}:** " + ("; ".join(parts) if parts else "no quality measured") + "."


def frontier_markdown(table: pd.DataFrame, budget: pd.DataFrame | None = None) -> str:
    """The report's section "What it costs to fix the SAE" ("" without a frontier table)."""
    if table is None or table.empty:
        return ""
    lines = ["## What it costs to fix the SAE", "",
             "Each way of getting an SAE for the compressed model, from `transfer` (the original SAE, unchanged, free) to "
             "`retrain` (a fresh SAE): quality on the compressed model's held-out activations (EV centred, higher is better; "
             "ΔCE = CE with the SAE spliced in − clean CE, nats, lower is better; KL score = SAEBench core's `kl_div_score`, "
             "1 when the spliced model's next-token distribution equals the compressed model's own, higher is better: "
             "unlike ΔCE it does not reward an SAE that undoes the compression) and what the fix cost (tokens consumed, "
             "wall seconds to build it, gradient steps), mean ± sd over seeds (n = seeds; one seed: no spread). "
             "**Gap closed** = (q_fix − q_transfer) / (q_retrain − q_transfer), per seed and then averaged "
             "(0 = no better than transfer, 1 = as good as retrain, for both measures). **Identity kept** is the share "
             "of latents that keep their meaning (labels carry over; `feature_identity` rows); a retrained SAE is "
             "matched to the original first. The figure is `frontier.png`; every column is in `frontier.parquet`.", "",
             SEPARATION_RULE, ""]
    for (hook, compression), group in table.groupby(GROUP, sort=False):
        lines += [f"### {hook} — {compression}", "", _markdown_table(_display_table(group)), "", _verdict(group, hook, compression), ""]
        if budget is not None and not budget.empty:
            rows = budget[(budget["hook"] == hook) & (budget["compression"] == compression) & (budget["budget_50pct"] != "no fine-tune points")
                          & budget["gap_resolved"].isin(["yes", "no", ONE_SEED])]
            for rec in rows.to_dict(orient="records"):
                display = QUALITY[rec["measure"]][1].split(" ")[0]
                lines.append(f"- Fine-tune budget on {display} (retrain: {_count(rec['retrain_tokens'])} tokens): 50% of the gap at "
                             f"{rec['budget_50pct']}; 90% at {rec['budget_90pct']}"
                             + (f" (points: {rec['finetune_points']})" if rec["finetune_points"] else "") + ".")
            if len(rows):
                lines.append("")
    lines += [PUBLISHED, ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ what the report task calls
def cache_inputs(variants: pd.DataFrame, metrics: pd.DataFrame | None) -> list[str]:
    """What the frontier plot depends on beyond the variants rows (the identity rows), for a plot cache
    key; empty for rows without ``variant_spec``, so the old report's key is unchanged."""
    if not has_variant_spec(variants):
        return []
    ids = identity_rows(metrics)
    return [ids.to_json(orient="records", double_precision=15) if not ids.empty else "no identity rows"]


def report_section(variants: pd.DataFrame, metrics: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame, str] | None:
    """(frontier table, fine-tune budget, markdown section) for the report; ``None`` for rows without
    ``variant_spec`` (the report is then as before)."""
    if not has_variant_spec(variants):
        return None
    table = frontier_table(variants, identity_rows(metrics))
    if table.empty:
        return None
    budget = finetune_budget(variants, identity_rows(metrics))
    return table, budget, frontier_markdown(table, budget)
