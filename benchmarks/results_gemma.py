"""Regenerate the tables of docs/results-gemma-3-270m.md from a storage root's Parquet (generated, not typed).

Reads one experiment's results (``--experiment``, default ``gemma-3-270m-study``) from a storage root:

- its metric rows: ``metrics/<family>/*.parquet`` rows whose ``experiment`` is that name (SAEBench families,
  feature identity, the feature audit's ``feature_fidelity`` rows);
- its SAE variants: the ``variants.parquet`` of every report folder ``reports/<experiment>-*/`` (the rows of
  exactly the runs of this experiment), so that another preset's rows on the same root never mix in;
- the audit's own summaries (``feature_audit/<key>.json``: survival-predictor AUC, perplexity on the audit
  tokens) and the compressed models' manifests (held-out perplexity).

Every figure is a mean over SAE seeds with its sd (``mean ± sd``; no spread with one seed; ``n`` = seeds).
The doc's prose stays as written: the script replaces only what lies between the markers
``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` (NAME: ``source``, ``saes``, ``variants``, ``metrics``,
``spread``, ``depth``, ``audit``, ``literature``, ``plots``), and writes a fresh doc with every section when ``--out``
does not exist yet. Without ``--out`` it prints the generated sections.

The plots are the study's own report PNGs (training curves, each metric against layer, perplexity against
feature survival, the audit's r histograms), copied from its report folder next to the doc as
``<experiment>-<name>.png`` (``--plots-dir``, default: the doc's folder) and linked from the ``plots`` block.

    .venv/bin/python benchmarks/results_gemma.py --storage file:///path/to/root [--experiment NAME] \
        [--out docs/results-gemma-3-270m.md] [--plots-dir docs]

Exit status 1 when the root holds no results of that experiment. The frontier tables of the repair ladder
are ``benchmarks/repair_results.py``'s (docs/results-repair.md); this script reuses its loading and
spread helpers.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_core import depth_report  # noqa: E402
from sae_core import repair_report as rr  # noqa: E402
from sae_core import spread  # noqa: E402
from sae_core.metrics.registry import render_reliability  # noqa: E402
from sae_core.report import _markdown_table, current_columns, plotted_metrics, variant_label  # noqa: E402
from sae_core.storage import Storage  # noqa: E402

SECTIONS = ("source", "saes", "variants", "metrics", "spread", "depth", "audit", "literature", "plots")
# Issue 21's bar for SAEs worth judging: held-out EV (centred) and dead latents on the model each SAE is for.
SAE_TARGET_EV, SAE_TARGET_DEAD = 0.95, 0.05
# What the metrics table shows per family (where present), in this order; other families: their plotted metric.
DOC_METRICS = ["core/ce_loss_score", "core/kl_div_score", "core/cossim", "core/l0",
               "absorption/mean_absorption_fraction_score", "absorption/mean_full_absorption_score",
               "scr/scr_metric_threshold_2", "scr/scr_metric_threshold_20", "tpp/tpp_threshold_2_total_metric",
               "tpp/tpp_threshold_20_total_metric", "sparse_probing/sae_top_1_test_accuracy",
               "sparse_probing/sae_top_5_test_accuracy", "sparse_probing/sae_test_accuracy",
               "ravel/disentanglement_score", "ravel/cause_score", "ravel/isolation_score",
               "feature_identity/identity_kept_fraction"]
VARIANT_COLUMNS = [("explained_variance_centred", "EV (centred)", False), ("dead_latents", "dead latents", True),
                   ("ce_loss_score", "CE-loss score (ours)", False), ("ce_delta", "ΔCE (nats)", False),
                   ("tokens_used", "tokens", True), ("wall_time_s", "wall (s)", False)]
AUDIT_FIGURES = [("survived_frac", "survived %", 100), ("degraded_frac", "degraded %", 100), ("damaged_frac", "damaged %", 100),
                 ("dead_after_frac", "dead after %", 100), ("mean_r", "mean r", 1), ("survived_frac_subset_std", "subset sd of survived (pp)", 100),
                 ("n_active", "active latents", 1)]
AUDIT_FAMILY = "feature_fidelity"
# The report PNGs the doc shows (prefixes of the names tasks/report.py gives them), in this order.
DOC_PLOTS = ("training_curves", "depth_", "compression_ppl_vs_survival", "compression_r_histograms")
# Duan et al.: share of SAE features that survive weight quantization, by bit width (their Table / text figures),
# and the AUC of predicting survival from dense statistics.
DUAN_SURVIVAL = {8: {"Pythia-70M": 98.3, "Gemma-2-2B": 99.1}, 7: {"Pythia-70M": 86.3, "Gemma-2-2B": 81.3},
                 6: {"Pythia-70M": 62.4, "Gemma-2-2B": 51.3}, 4: {"Pythia-70M": 14.5, "Gemma-2-2B": 12.4}}
DUAN_AUC = (0.92, 0.97)


# ------------------------------------------------------------------ loading
def load(storage_url: str, experiment: str) -> dict:
    """The experiment's metric rows (with each row's seed and variant spec), variant rows, audit extras."""
    storage = Storage(storage_url)
    reports = sorted({k.split("/")[1] for k in storage.list("reports") if k.split("/")[1].startswith(f"{experiment}-")
                      and re.fullmatch(rf"{re.escape(experiment)}-[0-9a-f]+", k.split("/")[1])})
    frames = [storage.get_parquet(f"reports/{r}/variants.parquet") for r in reports if storage.exists(f"reports/{r}/variants.parquet")]
    variants = current_columns(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()
    if not variants.empty:
        variants = variants.drop_duplicates(["sae_prefix", "model_prefix"], keep="last").reset_index(drop=True)
    rows, audit_extra, item_results = [], {}, []
    for key in storage.list("metrics"):
        if not key.endswith(".parquet"):
            continue
        frame = storage.get_parquet(key)
        if "experiment" not in frame or not (frame["experiment"] == experiment).any():
            continue
        rows.append(frame[frame["experiment"] == experiment])
        family = key.split("/")[1]
        if family in spread.ITEM_FAMILIES:  # the per-item outputs, where tasks/metrics.py stored them
            item_results.append({"metric": family, "rows_key": key,
                                 "raw_key": f"metrics_raw/{family}/{key.rsplit('/', 1)[1].removesuffix('.parquet')}.json"})
        if key.startswith(f"metrics/{AUDIT_FAMILY}/"):
            summary_key = f"feature_audit/{key.rsplit('/', 1)[1].removesuffix('.parquet')}.json"
            if storage.exists(summary_key):
                first = frame.iloc[0]
                audit_extra[(first["sae_prefix"], first["model_prefix"])] = storage.get_json(summary_key)
    metrics = current_columns(pd.concat(rows, ignore_index=True)) if rows else pd.DataFrame()
    if not metrics.empty:
        metrics = metrics.sort_values("timestamp").drop_duplicates(["sae_prefix", "model_prefix", "metric_family", "metric_name"], keep="last")
        if not variants.empty:
            seeds = variants[["sae_prefix", "model_prefix", "seed"]]
            metrics = metrics.drop(columns=[c for c in ("seed",) if c in metrics]).merge(seeds, on=["sae_prefix", "model_prefix"], how="left")
        metrics = metrics.reset_index(drop=True)
    if not variants.empty and "sae_prefix" in variants:
        variants = variants.assign(cached_tokens=[_cached_tokens(storage, p) for p in variants["sae_prefix"]])
    perplexity = {}
    for prefix in sorted(set(metrics.get("model_prefix", pd.Series(dtype=str))) | set(variants.get("model_prefix", pd.Series(dtype=str)))):
        if isinstance(prefix, str) and storage.exists(f"{prefix}/manifest.json"):
            perplexity[prefix] = storage.manifest(prefix).get("perplexity") or {}
    items = spread.stored_items(storage, item_results) if item_results else pd.DataFrame()
    return {"metrics": metrics, "variants": variants, "audit_extra": audit_extra, "perplexity": perplexity, "reports": reports,
            "storage": storage.url, "experiment": experiment, "originals": original_quality(storage.url, variants), "items": items}


def _cached_tokens(storage: Storage, sae_prefix) -> float:
    """The size of the activation cache an SAE was trained on (its manifest's ``source.trained_on``): with its
    ``tokens_used``, the number of epochs. NaN for SAEs not trained here (pruned, refit, transfer rows)."""
    if not isinstance(sae_prefix, str) or not storage.exists(f"{sae_prefix}/manifest.json"):
        return float("nan")
    source = (storage.manifest(sae_prefix).get("source") or {}).get("trained_on")
    if not isinstance(source, str) or not storage.exists(f"{source}/manifest.json"):
        return float("nan")
    return float(storage.manifest(source).get("n_tokens") or "nan")


def original_quality(storage_url: str, variants: pd.DataFrame) -> pd.DataFrame:
    """Each original SAE (the ``transfer`` rows' SAE) on the *dense* model's held-out activations of its hook:
    EV (centred) and dead latents, as the variant rows measure them on the compressed model
    (``sae_core.sae_quality.reconstruction_stats``), with its training tokens and wall time from its manifest.
    The dense held-out cache is the one the feature-identity rows read (stored when identity or the audit is on)."""
    from sae_core.sae_quality import reconstruction_stats
    from tasks.common import activation_batches, load_stored_sae

    storage = Storage(storage_url)
    if variants.empty or "variant_spec" not in variants:
        return pd.DataFrame()
    held_out = {}
    for key in storage.list("activations"):
        if key.endswith("/manifest.json"):
            manifest = storage.get_json(key)
            spec, model = manifest.get("spec") or {}, manifest.get("model") or {}
            if model.get("dense") and spec.get("skip_sequences"):
                held_out.setdefault(spec.get("hook_name"), {"prefix": key.removesuffix("/manifest.json"), **manifest})
    rows = []
    for r in variants[variants["variant_spec"] == "transfer"].drop_duplicates("sae_prefix").itertuples():
        acts = held_out.get(r.hook)
        manifest = storage.manifest(r.sae_prefix) if storage.exists(f"{r.sae_prefix}/manifest.json") else {}
        row = {"hook": r.hook, "seed": r.seed, "sae_prefix": r.sae_prefix, "tokens_used": manifest.get("tokens_used"),
               "wall_time_s": manifest.get("wall_time_s"), "cached_tokens": _cached_tokens(storage, r.sae_prefix)}
        if acts is not None and manifest:
            stats = reconstruction_stats(load_stored_sae(storage, r.sae_prefix), activation_batches(storage, acts))
            row.update(explained_variance_centred=float(stats["explained_variance"]),
                       dead_latents=int(round(int(r.d_sae) * (1.0 - float(stats["alive_fraction"])))), d_sae=int(r.d_sae),
                       held_out_tokens=int(acts.get("n_tokens") or 0))
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ tables
def saes_markdown(originals: pd.DataFrame, variants: pd.DataFrame) -> str:
    """The original SAE on the dense model and the retrained one on the compressed model, per hook: held-out EV and
    dead latents (mean ± sd over seeds, and each seed), against the bar (EV >= 0.95, <= 5% dead)."""
    if originals.empty:
        return "_No original SAE rows (or no dense held-out activations: run with the audit or feature identity on)._"
    retrained = _labelled(variants) if not variants.empty else variants
    retrained = retrained[retrained["variant"] == "retrain"] if not retrained.empty else retrained
    lines = []
    for hook, group in originals.groupby("hook", sort=False):
        table = []
        for label, rows, on in (("original (dense model)", group, "dense"),
                                ("retrain (compressed model)", retrained[retrained["hook"] == hook] if len(retrained) else retrained, "compressed")):
            if rows is None or rows.empty or "explained_variance_centred" not in rows:
                continue
            ev, dead = rows["explained_variance_centred"], rows["dead_latents"]
            d_sae = rows["d_sae"].astype(float) if "d_sae" in rows else pd.Series(np.nan, index=rows.index)
            met = bool((ev >= SAE_TARGET_EV).all() and ((dead / d_sae) <= SAE_TARGET_DEAD).all())
            per_seed = ", ".join(f"s{int(s)}: {e:.4f} / {int(d)}" for s, e, d in sorted(zip(rows["seed"], ev, dead)))
            width = f" of {int(d_sae.iloc[0]):,}" if np.isfinite(d_sae.iloc[0]) else ""
            table.append({"SAE": label, "n": int(rows["seed"].nunique()), "held-out EV (centred)": _cell(ev),
                          "dead latents": _cell(dead, count=True) + width,
                          "per seed (EV / dead)": per_seed, "tokens": _cell(rows["tokens_used"], count=True),
                          "epochs over the cache": _epochs(rows), "wall (s)": _cell(rows["wall_time_s"]), f"EV >= {SAE_TARGET_EV}, <= {SAE_TARGET_DEAD:.0%} dead": "met" if met else "**not met**"})
        lines += [f"**{hook}**", "", _markdown_table(pd.DataFrame(table)), ""]
    return "\n".join(lines)


def _epochs(rows: pd.DataFrame) -> str:
    """'7 × 100,000' (passes over the cached token set × its size), from tokens used and the cache's size."""
    if "cached_tokens" not in rows:
        return ""
    pairs = {(round(float(t) / float(c), 1), int(c)) for t, c in zip(rows["tokens_used"], rows["cached_tokens"])
             if pd.notna(t) and pd.notna(c) and float(c) > 0}
    return ", ".join(f"{e:g} × {c:,}" for e, c in sorted(pairs))


def _cell(values, count: bool = False, scale: float = 1.0) -> str:
    mean, sd, n = rr._mean_sd([float(v) * scale for v in values if v is not None and np.isfinite(float(v))])
    return rr._spread_text(mean, sd, n, count=count)


def _spec_order(specs) -> list[str]:
    """transfer first, retrain last, the rest as they first appear (the config's ladder order)."""
    specs = list(dict.fromkeys(specs))
    return sorted(specs, key=lambda s: (0 if s == "transfer" else 2 if s == "retrain" else 1, specs.index(s)))


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["variant"] = frame["variant_spec"].where(frame["variant_spec"].notna(), frame.apply(variant_label, axis=1))
    return frame


def variants_markdown(variants: pd.DataFrame) -> str:
    """Per (hook, compression): variant × reconstruction / cost on the compressed model, mean ± sd over seeds."""
    if variants.empty:
        return "_No SAE variant rows._"
    frame, lines = _labelled(variants), []
    for (hook, compression), group in frame.groupby(["hook", "compression"], sort=True):
        table = []
        for spec in _spec_order(group["variant"]):
            rows = group[group["variant"] == spec]
            table.append({"variant": f"`{spec}`", "n": int(rows["seed"].nunique()) if "seed" in rows else len(rows),
                          **{title: _cell(rows[c], count) for c, title, count in VARIANT_COLUMNS if c in rows},
                          **({"epochs over the cache": _epochs(rows)} if _epochs(frame) else {})})
        lines += [f"**{hook}, {compression}**", "", _markdown_table(pd.DataFrame(table)), ""]
    return "\n".join(lines)


def _metric_names(metrics: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(metrics["metric_family"] + "/" + metrics["metric_name"]))
    chosen = [m for m in DOC_METRICS if m in present]
    extra = [m for m in plotted_metrics(present, 50) if m not in chosen and not m.startswith(AUDIT_FAMILY + "/")]
    return chosen + [m for m in extra if m.split("/")[0] not in {c.split("/")[0] for c in chosen}]


def metrics_markdown(metrics: pd.DataFrame) -> str:
    """Per (hook, compression): family/metric × variant, mean ± sd over seeds (n in the header)."""
    frame = metrics[(metrics["metric_family"] != AUDIT_FAMILY)] if not metrics.empty else metrics
    if frame.empty:
        return "_No metric rows._"
    frame = _labelled(frame[frame["status"].fillna("ok") == "ok"] if "status" in frame else frame)
    frame = frame.assign(metric=frame["metric_family"] + "/" + frame["metric_name"], value=pd.to_numeric(frame["value"], errors="coerce"))
    names, lines = _metric_names(frame), []
    marked, notes = render_reliability(names)  # registry.RELIABILITY: SCR / TPP low reliability, absorption's version
    for (hook, compression), group in frame.groupby(["hook", "compression"], sort=True):
        specs = _spec_order(group["variant"])
        seeds = {s: group[group["variant"] == s]["sae_prefix"].nunique() for s in specs}
        higher = group.drop_duplicates("metric").set_index("metric")["higher_is_better"] if "higher_is_better" in group else {}
        table = []
        for name in [n for n in names if n in set(group["metric"])]:
            arrow = {True: " ↑", False: " ↓"}.get(higher.get(name) if hasattr(higher, "get") else None, "")
            data = group[group["metric"] == name]
            table.append({"family / metric": f"{marked.get(name, name)}{arrow}",
                          **{f"`{s}` (n={seeds[s]})": _cell(data[data["variant"] == s]["value"]) for s in specs}})
        lines += [f"**{hook}, {compression}**", "", _markdown_table(pd.DataFrame(table)), ""]
    return "\n".join(lines + notes)


def spread_markdown(metrics: pd.DataFrame, variants: pd.DataFrame, items: pd.DataFrame | None) -> str:
    """The run report's spread section (sae_core.spread) on the study's rows: per (hook, compressed model) the
    seed spread, every pair of variants with the separation rule's mark (paired over seeds), the smallest
    detectable paired difference per metric, and the bootstrap intervals over test items."""
    frame = metrics[metrics["metric_family"] != AUDIT_FAMILY] if not metrics.empty else metrics
    text = spread.markdown_section(frame, variants if not variants.empty else None, items if items is not None and len(items) else None)
    if not text:
        return "_One seed and no per-item outputs: no spread to show._"
    lines = text.splitlines()
    if lines and lines[0].startswith("## "):
        lines = lines[1:]
    return "\n".join(("#" + line) if line.startswith("### ") else line for line in lines).strip("\n")


def depth_markdown(metrics: pd.DataFrame) -> str:
    if metrics.empty:
        return "_No metric rows._"
    frame = metrics[metrics["metric_family"] != AUDIT_FAMILY]
    frame = frame.assign(variant_spec=frame["variant_spec"].where(frame["variant_spec"].notna(), frame.apply(variant_label, axis=1)))
    if frame["hook"].nunique() < 2:
        return f"_One layer only ({', '.join(sorted(frame['hook'].unique()))}): no per-layer table._"
    # variant_label shows the spec text for fixes; the paper's three keep their names (original, retrained, pruned-…).
    names = [n for n in _metric_names(frame) if not n.startswith("feature_identity/")][:8]
    return depth_report.depth_markdown(frame, names)


def audit_markdown(metrics: pd.DataFrame, audit_extra: dict, perplexity: dict) -> str:
    """Per hook: compression × the audit's classes (mean ± sd over the seeds' original SAEs), perplexities, AUC."""
    rows = metrics[metrics["metric_family"] == AUDIT_FAMILY] if not metrics.empty else metrics
    if rows.empty:
        return "_No feature-audit rows._"
    rows = rows.assign(value=pd.to_numeric(rows["value"], errors="coerce"))
    lines = []
    for hook, group in rows.groupby("hook", sort=True):
        table = []
        for compression, data in sorted(group.groupby("compression"), key=lambda kv: _compression_order(kv[0])):
            audits = data.drop_duplicates(["sae_prefix", "model_prefix"])[["sae_prefix", "model_prefix"]].itertuples(index=False)
            extras = [audit_extra.get((a.sae_prefix, a.model_prefix), {}) for a in audits]
            ppl = perplexity.get(data["model_prefix"].iloc[0], {})
            compressed = ppl.get("compressed", ppl.get("pruned"))
            row = {"compression": compression, "n": int(data["sae_prefix"].nunique()),
                   "perplexity dense → compressed": f"{ppl['dense']:.2f} → {compressed:.2f}" if ppl.get("dense") and compressed else ""}
            for name, title, scale in AUDIT_FIGURES:
                row[title] = _cell(data[data["metric_name"] == name]["value"], count=name == "n_active", scale=scale)
            row["survival AUC"] = _cell([(e.get("auc") or {}).get("auc_mean") for e in extras if (e.get("auc") or {}).get("auc_mean") is not None])
            table.append(row)
        lines += [f"**{hook}**", "", _markdown_table(pd.DataFrame(table)), ""]
    return "\n".join(lines)


def _audit_figures(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (hook, compression): survived % and its token-subset sd (pp), mean r, as the audit stored them
    (seed 0's original SAE, or the mean over the audited seeds)."""
    rows = metrics[metrics["metric_family"] == AUDIT_FAMILY] if not metrics.empty else metrics
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(value=pd.to_numeric(rows["value"], errors="coerce"))
    table = rows.pivot_table(index=["hook", "compression"], columns="metric_name", values="value", aggfunc="mean").reset_index()
    for name in ("survived_frac", "survived_frac_subset_std", "mean_r"):
        if name not in table:
            table[name] = np.nan
    return table.assign(survived=100 * table["survived_frac"], sd=100 * table["survived_frac_subset_std"])


def _separated(a: float, sd_a: float, b: float, sd_b: float) -> bool:
    """a and b differ by more than twice the combined token-subset sd (conservative: the sd is per subset,
    not of the mean over all tokens)."""
    scale = math.sqrt((sd_a if np.isfinite(sd_a) else 0.0) ** 2 + (sd_b if np.isfinite(sd_b) else 0.0) ** 2)
    return bool(np.isfinite(a) and np.isfinite(b) and abs(a - b) > 2.0 * scale)


def _pct(value: float, sd: float = float("nan")) -> str:
    if not np.isfinite(value):
        return "—"
    return f"{value:.1f}%" + (f" ± {sd:.1f}" if np.isfinite(sd) else "")


def literature_markdown(metrics: pd.DataFrame, audit_extra: dict) -> str:
    """The audit's figures beside Duan et al.'s (survival by bit width, survival AUC) and Borobia et al.'s
    (WANDA preserves features better than magnitude pruning at equal sparsity), with a verdict each, from
    the stored audit rows. Separation: more than 2 × the combined token-subset sd."""
    table = _audit_figures(metrics)
    if table.empty:
        return "_No feature-audit rows._"
    lines = []
    for hook, group in table.groupby("hook", sort=True):
        by = {str(r.compression): r for r in group.itertuples()}
        get = lambda spec: (by[spec].survived, by[spec].sd) if spec in by else (float("nan"), float("nan"))  # noqa: E731
        rows = []
        for bits in sorted(DUAN_SURVIVAL, reverse=True):
            rtn, gptq = get(f"rtn:{bits}"), get(f"gptq:{bits}")
            rows.append({"bits": f"INT{bits}", "ours: RTN": _pct(*rtn), "ours: GPTQ": _pct(*gptq),
                         **{f"Duan: {m}": f"{v:.1f}%" for m, v in DUAN_SURVIVAL[bits].items()}})
        lines += [f"**{hook}: survival by bit width** (ours: features with r > 0.9 between dense and compressed, % of active; "
                  "± token-subset sd in pp)", "", _markdown_table(pd.DataFrame(rows)), ""]
        verdicts = []
        ladder = [(bits, *get(f"rtn:{bits}")) for bits in sorted(DUAN_SURVIVAL, reverse=True) if f"rtn:{bits}" in by]
        if len(ladder) >= 2:
            steps = list(zip(ladder, ladder[1:]))
            falls = all(hi[1] > lo[1] for hi, lo in steps)
            separated = all(_separated(hi[1], hi[2], lo[1], lo[2]) for hi, lo in steps)
            chain = " > ".join(f"INT{b} {v:.1f}%" for b, v, _ in ladder)
            verdicts.append(f"- Duan, survival falls monotonically with bits: **{'holds' if falls else 'does not hold'}** for RTN "
                            f"({chain}; every step {'beyond' if separated else 'not all beyond'} 2 × the subset sd).")
        aucs = [(e.get("auc") or {}).get("auc_mean") for (_sae, model), e in audit_extra.items()
                if (e.get("hook") in (None, hook)) and (e.get("auc") or {}).get("auc_mean") is not None]
        aucs = [float(a) for a in aucs if np.isfinite(float(a))]
        if aucs:
            inside = all(DUAN_AUC[0] <= a <= DUAN_AUC[1] for a in aucs)
            verdicts.append(f"- Duan, survival predictable from dense statistics (AUC {DUAN_AUC[0]:.2f}–{DUAN_AUC[1]:.2f}): ours "
                            f"{min(aucs):.2f}–{max(aucs):.2f} over {len(aucs)} audits "
                            f"({'inside' if inside else 'not all inside'} their range).")
        if "wanda:0.5" in by and "magnitude:0.5" in by:
            (w, sw), (m, sm) = get("wanda:0.5"), get("magnitude:0.5")
            if _separated(w, sw, m, sm):
                verdict = "holds" if w > m else "reversed"
            else:
                verdict = "not separated"
            extra = ""
            if "sparsegpt:0.5" in by:
                extra = f"; SparseGPT 50%: {_pct(*get('sparsegpt:0.5'))}"
            verdicts.append(f"- Borobia, WANDA preserves features better than magnitude at equal sparsity: **{verdict}** "
                            f"(survived at 50%: WANDA {_pct(w, sw)}, magnitude {_pct(m, sm)}; mean r "
                            f"{by['wanda:0.5'].mean_r:.3f} vs {by['magnitude:0.5'].mean_r:.3f}{extra}).")
        lines += verdicts + [""]
    return "\n".join(lines).rstrip()


def report_plots(storage_url: str, experiment: str, reports: list[str]) -> dict[str, bytes]:
    """The doc's PNGs (:data:`DOC_PLOTS`) from the study's report folder: the one with the most variant rows
    (a resumed run with the same config writes the same folder)."""
    storage = Storage(storage_url)
    best, size = None, -1
    for report in reports:
        key = f"reports/{report}/variants.parquet"
        n = len(storage.get_parquet(key)) if storage.exists(key) else 0
        if n > size:
            best, size = report, n
    if best is None or not storage.exists(f"reports/{best}/plots.json"):
        return {}
    names = storage.get_json(f"reports/{best}/plots.json").get("plots") or []
    chosen = [n for prefix in DOC_PLOTS for n in sorted(names) if n.startswith(prefix)]
    return {f"{experiment}-{n}": storage.get_bytes(f"reports/{best}/{n}") for n in chosen if storage.exists(f"reports/{best}/{n}")}


def plots_markdown(names: list[str], relative_to: str = "") -> str:
    if not names:
        return "_No report plots in storage (the study's report folder has none yet)._"
    return "\n\n".join(f"![{n}]({relative_to}{n})" for n in names)


def _compression_order(spec: str) -> tuple:
    method, _, strength = str(spec).partition(":")
    try:
        value = float(strength.split(":")[0].rstrip("g0123456789") or strength.split("g")[0])
    except ValueError:
        value = 0.0
    return (method, -value if method in ("rtn", "gptq") else value, spec)


def source_markdown(data: dict) -> str:
    metrics, variants = data["metrics"], data["variants"]
    hooks = sorted(set(variants.get("hook", [])) | set(metrics.get("hook", [])))
    seeds = sorted({int(s) for s in variants.get("seed", []) if pd.notna(s)})
    families = sorted(set(metrics.get("metric_family", [])))
    versions = sorted({str(v) for v in metrics.get("sae_bench_version", []) if isinstance(v, str) and v})
    return "\n".join([
        f"Generated by `benchmarks/results_gemma.py --storage {data['storage']} --experiment {data['experiment']}` "
        f"from {len(data['reports'])} report folder(s) ({', '.join(f'`reports/{r}`' for r in data['reports']) or 'none'}) "
        f"and {len(metrics)} metric rows: hooks {', '.join(f'`{h}`' for h in hooks) or '—'}; SAE seeds {seeds or '—'}; "
        f"families {', '.join(families) or '—'}; SAEBench {', '.join(versions) or '—'}. "
        "Cells are mean ± sd over SAE seeds (sd with ddof = 1; a single value has no spread); `n` counts seeds.", ""])


def generate(data: dict, plot_names: list[str] | None = None, plots_relative: str = "") -> dict[str, str]:
    return {"source": source_markdown(data), "saes": saes_markdown(data.get("originals", pd.DataFrame()), data["variants"]),
            "variants": variants_markdown(data["variants"]), "metrics": metrics_markdown(data["metrics"]),
            "spread": spread_markdown(data["metrics"], data["variants"], data.get("items")),
            "depth": depth_markdown(data["metrics"]), "audit": audit_markdown(data["metrics"], data["audit_extra"], data["perplexity"]),
            "literature": literature_markdown(data["metrics"], data["audit_extra"]),
            "plots": plots_markdown(plot_names or [], plots_relative)}


# ------------------------------------------------------------------ the doc
TITLES = {"source": "Where these tables come from", "saes": "SAEs worth judging: held-out EV and dead latents", "variants": "SAE variants: reconstruction and cost on the compressed model",
          "metrics": "SAEBench families and feature identity, by variant", "depth": "By layer",
          "audit": "The feature audit of the original SAE on each compressed model",
          "spread": "Spread: paired orderings and intervals over test items",
          "literature": "The audit beside Duan et al. and Borobia et al.", "plots": "Plots from the study's report"}


def _block(name: str, body: str) -> str:
    return f"<!-- generated:{name} -->\n{body.rstrip()}\n<!-- /generated:{name} -->"


def render(template: str | None, sections: dict[str, str]) -> str:
    """``template`` with each marked block replaced (prose kept), or a fresh doc with every section."""
    if template is None:
        parts = ["# Gemma 3 270M: the study", "", "Tables generated from storage by `benchmarks/results_gemma.py`; "
                 "text outside the `generated` markers is kept when it is run again.", ""]
        for name in SECTIONS:
            parts += [f"## {TITLES[name]}", "", _block(name, sections[name]), ""]
        return "\n".join(parts)
    text = template
    for name in SECTIONS:
        pattern = re.compile(rf"<!-- generated:{name} -->.*?<!-- /generated:{name} -->", re.S)
        text = pattern.sub(lambda _m, name=name: _block(name, sections[name]), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--storage", required=True, help="storage root URL (file://... or s3://...)")
    parser.add_argument("--experiment", default="gemma-3-270m-study", help="experiment name (the preset's `name`)")
    parser.add_argument("--out", type=Path, help="the doc to update in place (its marked blocks), or to write")
    parser.add_argument("--plots-dir", type=Path, help="where the report's PNGs are copied (default: the doc's folder; "
                                                         "without --out, none are copied)")
    args = parser.parse_args(argv)

    data = load(args.storage, args.experiment)
    if data["metrics"].empty and data["variants"].empty:
        print(f"no results of experiment {args.experiment!r} under {args.storage} (no report folders reports/{args.experiment}-*, "
              "no metric rows with that experiment name)", file=sys.stderr)
        return 1
    if args.out is None:
        print(render(None, generate(data)))
        return 0
    template = args.out.read_text() if args.out.exists() else None
    if template is not None and not any(f"<!-- generated:{n} -->" in template for n in SECTIONS):
        print(f"{args.out} has no <!-- generated:NAME --> markers; add them where the tables go (NAME: {', '.join(SECTIONS)})",
              file=sys.stderr)
        return 1
    plots_dir = args.plots_dir or args.out.resolve().parent
    plots = report_plots(args.storage, args.experiment, data["reports"])
    plots_dir.mkdir(parents=True, exist_ok=True)
    for name, png in plots.items():
        tmp = plots_dir / f".{name}.tmp"
        tmp.write_bytes(png)
        os.replace(tmp, plots_dir / name)  # all or nothing per file
    relative = os.path.relpath(plots_dir.resolve(), args.out.resolve().parent)
    sections = generate(data, list(plots), "" if relative == "." else relative.rstrip("/") + "/")
    tmp_doc = args.out.with_name(f".{args.out.name}.tmp")
    tmp_doc.write_text(render(template, sections))
    os.replace(tmp_doc, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
