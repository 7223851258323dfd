"""Spread on every compared figure: seeds, paired orderings, and intervals over test items.

Three questions a table of metric values must answer before two variants are called different:

1. **How much do the figures move between SAE seeds?** :func:`seed_summary` gives, per (hook,
   compressed model, variant, metric), the mean over seeds and the standard deviation (sd, ddof = 1;
   *not* a 95% interval: the tables print ``mean ± sd``, n = seeds).
2. **Does the spread support an ordering of two variants?** :func:`pairwise_marks` pairs the two
   variants' values seed by seed (same seed, hook and compressed model: the transfer SAE of seed s
   against the retrained SAE of seed s, ...) and applies the one separation rule of the repair
   report (:func:`sae_core.repair_report.separation`, reused, not re-implemented): *separated* when
   every paired difference has the same sign (none zero) AND ``|mean| > 2 · sd / √n``. With one
   paired seed there is no claim (``"n/a (one seed)"``); otherwise the pair is ordered or reads
   ``"not separated"``.

   Why paired: the seeds share the model, the activations and the evaluation's own draws, so most of
   what moves a metric between seeds moves both variants alike; the per-seed difference cancels it.
   What the rule can detect at n seeds: the sign condition alone would pass a zero difference with
   probability 2 · 0.5ⁿ (0.25 at n = 3, 0.06 at n = 5), so the magnitude condition does the work at
   small n: a true paired difference smaller than ``2 · sd_d / √n`` (sd_d: the sd of the per-seed
   differences) is never separated. :func:`detectable_differences` reports that threshold per metric
   (sd_d pooled as the root mean square over every variant pair of the group), so a reader sees, e.g.,
   that a RAVEL difference below 0.03 could not have been detected with 3 seeds.
3. **How much do the figures depend on which test items were drawn?** SAEBench's families average over
   items: sparse probing over datasets, SCR over (dataset, class pair) runs, TPP over classes,
   absorption over first letters, RAVEL over (entity, attribute) pairs. Their stored raw outputs
   (``metrics_raw/<family>/<key>.json``) keep the per-item values; :func:`item_values` reads them and
   :func:`bootstrap_interval` gives a percentile bootstrap 95% interval of the mean over items
   (resampling items with replacement; deterministic for a given ``seed``). The interval is about the
   test set (another draw of items of the same kind), not about SAE seeds.

Everything renders through :func:`markdown_section`. Plain library: pandas / numpy, no prefect, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from sae_core.repair_report import ONE_SEED, SEPARATION_RULE, _mean_sd, _spread_text, separation

NOT_SEPARATED = "not separated"
RULE = SEPARATION_RULE.split(" The transfer")[0]  # the repair report's rule, without its gap-closed sentence
SPREAD_NOTE = ("mean ± sd over SAE seeds (sd with ddof = 1, not an interval; n = seeds; one seed: no spread)")
ITEM_LEVEL = 0.95
ITEM_RESAMPLES = 2000

# family -> how its stored raw output lists per-item values: (where, item key, {raw field: headline metric_name})
_SPARSE = {f"sae_top_{k}_test_accuracy": f"sae_top_{k}_test_accuracy" for k in (1, 2, 5, 10, 20, 50, 100)}
_SPARSE.update({"sae_test_accuracy": "sae_test_accuracy", "llm_test_accuracy": "llm_test_accuracy"})
_ABSORPTION = {"mean_absorption_fraction": "mean_absorption_fraction_score", "full_absorption_rate": "mean_full_absorption_score",
               "num_split_features": "mean_num_split_features"}
ITEM_FAMILIES = ("sparse_probing", "sparse_probing_sae_probes", "scr", "tpp", "absorption", "ravel")
_RAVEL = {"disentangle_score": "disentanglement_score", "cause_score": "cause_score", "isolation_score": "isolation_score"}


# ------------------------------------------------------------------ seeds
def with_seeds(metrics: pd.DataFrame, variants: pd.DataFrame | None = None) -> pd.DataFrame:
    """``metrics`` with a ``seed`` column: kept if the rows have one, else joined from the variants table
    on (``sae_prefix``, ``model_prefix``) (a variant row knows the seed its SAE was built with; a released
    SAE shared by every seed keeps its first seed). Rows without a match get seed 0."""
    frame = metrics.copy()
    if "seed" in frame or frame.empty:
        return frame
    keys = [k for k in ("sae_prefix", "model_prefix") if k in frame and variants is not None and k in variants]
    if variants is None or "seed" not in variants or not keys:
        return frame.assign(seed=0)
    seeds = variants[keys + ["seed"]].drop_duplicates(keys)
    frame = frame.merge(seeds, on=keys, how="left")
    frame["seed"] = frame["seed"].fillna(0).astype(int)
    return frame


def _labelled(metrics: pd.DataFrame) -> pd.DataFrame:
    from sae_core.report import model_keys, variant_label

    frame = metrics[metrics["value"].notna()] if "value" in metrics else metrics
    if "status" in frame:
        frame = frame[frame["status"] == "ok"]
    frame = frame.copy()
    frame["variant"] = frame.apply(variant_label, axis=1) if len(frame) else pd.Series(dtype=str)
    frame["metric"] = frame["metric_family"] + "/" + frame["metric_name"]
    return frame.assign(**{k: frame[k] for k in model_keys(frame)})


def _natural_key(key) -> list:
    """Sort key reading digit runs as numbers: ``blocks.3...`` before ``blocks.12...``."""
    import re

    parts = key if isinstance(key, tuple) else (key,)
    return [[int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(part))] for part in parts]


def _group_keys(frame: pd.DataFrame) -> list[str]:
    from sae_core.report import model_keys

    return ["hook", *model_keys(frame)]


def seed_summary(metrics: pd.DataFrame, variants: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (hook, compressed model, variant, metric): ``mean``, ``sd`` (ddof = 1; NaN with one
    seed), ``n_seeds`` and ``higher_is_better``."""
    frame = _labelled(with_seeds(metrics, variants))
    if frame.empty:
        return pd.DataFrame(columns=[*_group_keys(frame), "variant", "metric", "mean", "sd", "n_seeds"])
    per_seed = frame.groupby([*_group_keys(frame), "variant", "metric", "seed"], dropna=False)["value"].mean()
    rows = []
    for key, values in per_seed.groupby(level=list(range(per_seed.index.nlevels - 1)), dropna=False):
        mean, sd, n = _mean_sd(values.values)
        rows.append({**dict(zip([*_group_keys(frame), "variant", "metric"], key)), "mean": mean, "sd": sd, "n_seeds": n})
    out = pd.DataFrame(rows)
    better = frame.drop_duplicates("metric").set_index("metric")["higher_is_better"] if "higher_is_better" in frame else None
    out["higher_is_better"] = out["metric"].map(better) if better is not None else None
    return out


# ------------------------------------------------------------------ paired orderings
def pair_mark(differences: Iterable[float], higher_is_better: bool | None, a: str, b: str) -> str:
    """The ordering mark of ``a`` vs ``b`` from their paired per-seed differences (a − b):
    ``"a > b"`` / ``"b > a"`` ("better than" in the metric's own direction when it has one, else
    "larger than"), ``"not separated"``, or ``"n/a (one seed)"``."""
    d = [float(x) for x in differences if x is not None and np.isfinite(x)]
    mark = separation(d)
    if mark == ONE_SEED:
        return ONE_SEED
    if mark != "yes":
        return NOT_SEPARATED
    larger = float(np.mean(d)) > 0
    first = larger if higher_is_better is not False else not larger
    sign = ">" if higher_is_better is None else "better than"
    return f"{a} {sign} {b}" if first else f"{b} {sign} {a}"


def pairwise_marks(metrics: pd.DataFrame, variants: pd.DataFrame | None = None, names: list[str] | None = None) -> pd.DataFrame:
    """Every pair of variants of every (hook, compressed model) on every metric (or ``names``): the
    paired seeds ``n``, the mean and sd of the per-seed differences (``a − b``), the smallest difference
    the rule could separate at that n and sd (``detectable``: ``2 · sd / √n``), and the ``mark``
    (:func:`pair_mark`)."""
    frame = _labelled(with_seeds(metrics, variants))
    columns = [*_group_keys(frame), "metric", "a", "b", "n", "mean_difference", "sd_difference", "detectable", "mark"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    if names is not None:
        frame = frame[frame["metric"].isin(names)]
    rows = []
    for key, group in frame.groupby([*_group_keys(frame), "metric"], dropna=False):
        wide = group.pivot_table(index="seed", columns="variant", values="value", aggfunc="mean")
        higher = group["higher_is_better"].iloc[0] if "higher_is_better" in group else None
        higher = None if higher is None or pd.isna(higher) else bool(higher)
        for a, b in combinations(list(wide.columns), 2):
            d = (wide[a] - wide[b]).dropna()
            mean, sd, n = _mean_sd(d.values)
            rows.append({**dict(zip([*_group_keys(frame), "metric"], key)), "a": a, "b": b, "n": n, "mean_difference": mean,
                         "sd_difference": sd, "detectable": 2.0 * sd / math.sqrt(n) if n > 1 else float("nan"),
                         "mark": pair_mark(d.values, higher, a, b)})
    return pd.DataFrame(rows, columns=columns)


def detectable_differences(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (hook, compressed model, metric): the paired seeds ``n`` (the most any pair has) and the
    smallest true difference the separation rule could detect there, ``2 · sd_d / √n`` with sd_d the
    root mean square of the pairs' per-seed sd (NaN with one seed)."""
    if pairs.empty:
        return pd.DataFrame(columns=["metric", "n", "detectable"])
    keys = [c for c in pairs.columns if c not in ("a", "b", "n", "mean_difference", "sd_difference", "detectable", "mark")]
    rows = []
    for key, group in pairs.groupby(keys, dropna=False):
        n = int(group["n"].max())
        sds = group.loc[group["n"] > 1, "sd_difference"].dropna()
        rms = float(np.sqrt(np.mean(np.square(sds)))) if len(sds) else float("nan")
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "n": n,
                     "detectable": 2.0 * rms / math.sqrt(n) if n > 1 and np.isfinite(rms) else float("nan")})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ items
def bootstrap_interval(values: Iterable[float], *, level: float = ITEM_LEVEL, resamples: int = ITEM_RESAMPLES,
                       seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its percentile bootstrap interval at ``level``
    (items resampled with replacement ``resamples`` times by ``numpy.random.default_rng(seed)``, so the
    same values and seed give the same interval). One item: the interval is the value itself; none: NaNs."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(v.mean()), float(low), float(high)


def item_values(family: str, raw: Mapping[str, Any]) -> pd.DataFrame:
    """The per-item values in one stored SAEBench output (``MetricResult.raw``): columns ``item``,
    ``metric_name`` (the headline name the items average to) and ``value``. Empty for families
    without items (core) or a skipped result.

    sparse_probing and sparse_probing_sae_probes: ``eval_result_details`` (one per dataset); scr: ``eval_result_details`` (one per
    dataset and class pair); tpp: ``eval_result_unstructured`` (dataset -> class -> metric);
    absorption: ``eval_result_details`` (one per first letter evaluated); ravel:
    ``eval_result_unstructured`` (entity class -> "class_attribute" -> scores)."""
    rows: list[tuple[str, str, float]] = []
    details = raw.get("eval_result_details") or []
    unstructured = raw.get("eval_result_unstructured") or {}
    if family in ("sparse_probing", "sparse_probing_sae_probes"):  # the same per-dataset detail fields
        for d in details:
            rows += [(str(d.get("dataset_name")), name, d[field]) for field, name in _SPARSE.items() if d.get(field) is not None]
    elif family == "scr":
        for d in details:
            rows += [(str(d.get("dataset_name")), field, d[field]) for field in d if field.startswith("scr_metric_threshold_")
                     and d[field] is not None]
    elif family == "tpp" and isinstance(unstructured, Mapping):
        for dataset, classes in unstructured.items():
            for cls, values in (classes or {}).items():
                rows += [(f"{dataset}/{cls}", k, v) for k, v in (values or {}).items() if k.startswith("tpp_threshold_")]
    elif family == "absorption":
        for d in details:
            rows += [(str(d.get("first_letter")), name, d[field]) for field, name in _ABSORPTION.items() if d.get(field) is not None]
    elif family == "ravel" and isinstance(unstructured, Mapping):
        for entity in unstructured.values():
            for item, values in (entity or {}).items():
                rows += [(str(item), name, values[field]) for field, name in _RAVEL.items() if values.get(field) is not None]
    frame = pd.DataFrame(rows, columns=["item", "metric_name", "value"])
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame


def item_frame(results: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> pd.DataFrame:
    """Per-item values of many stored results: ``(metric rows' identity, raw)`` pairs, where the identity
    holds ``metric_family``, ``sae_prefix`` and ``model_prefix`` (what joins the items to the metric rows)."""
    frames = []
    for ident, raw in results:
        items = item_values(str(ident["metric_family"]), raw or {})
        if len(items):
            frames.append(items.assign(**{k: ident[k] for k in ("metric_family", "sae_prefix", "model_prefix") if k in ident}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def item_intervals(metrics: pd.DataFrame, items: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Per (hook, compressed model, variant, metric): each item's value averaged over the SAE seeds
    (the eval seed is fixed, so every seed is judged on the same items), then the number of items, the
    number of SAE seeds averaged, the mean and the bootstrap interval (:func:`bootstrap_interval`) of
    the mean over items."""
    if items is None or items.empty or metrics.empty:
        return pd.DataFrame()
    ident = _labelled(with_seeds(metrics))
    keys = ["metric_family", "sae_prefix", "model_prefix"]
    ident = ident.drop_duplicates([*keys, "metric_name"])[[*keys, "metric_name", *_group_keys(ident), "variant", "seed"]]
    merged = items.merge(ident, on=[*keys, "metric_name"], how="inner")
    keys = [*_group_keys(ident), "variant", "metric_family", "metric_name"]
    rows = []
    for key, group in merged.groupby(keys, dropna=False):
        per_item = group.groupby("item")["value"].mean()
        mean, low, high = bootstrap_interval(per_item.values, seed=seed)
        rows.append({**dict(zip(keys, key)), "n_items": int(per_item.notna().sum()), "n_seeds": int(group["seed"].nunique()),
                     "mean": mean, "low": low, "high": high})
    return pd.DataFrame(rows)


def stored_items(storage: Any, metric_results: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """:func:`item_frame` of the metric tasks' stored outputs (``rows_key`` / ``raw_key`` of each manifest),
    read only for the families that have items."""
    pairs = []
    for result in metric_results:
        if result.get("metric") not in ITEM_FAMILIES or not result.get("raw_key") or not result.get("rows_key"):
            continue
        try:
            if not storage.exists(result["raw_key"]):
                continue
            rows = storage.get_parquet(result["rows_key"])
            if rows.empty or "sae_prefix" not in rows:
                continue
            ident = {k: rows.iloc[0][k] for k in ("metric_family", "sae_prefix", "model_prefix") if k in rows}
            pairs.append((ident, (storage.get_json(result["raw_key"]) or {}).get("raw") or {}))
        except Exception:  # noqa: BLE001 - an unreadable output loses its interval, never the report
            continue
    return item_frame(pairs)


# variants-table columns compared with spread: column -> higher_is_better
VARIANT_MEASURES = {"explained_variance_centred": True, "ce_delta": False, "dead_latents": False}


def variant_rows(variants: pd.DataFrame | None) -> pd.DataFrame:
    """The variants table's compared columns (:data:`VARIANT_MEASURES`) as metric rows of family
    ``variants``, so that their seed spread and orderings use the same code as SAEBench's figures."""
    if variants is None or variants.empty or "seed" not in variants:
        return pd.DataFrame()
    frames = []
    for column, higher in VARIANT_MEASURES.items():
        if column in variants:
            frames.append(variants.assign(metric_family="variants", metric_name=column, value=pd.to_numeric(variants[column], errors="coerce"),
                                          higher_is_better=higher, status="ok"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ------------------------------------------------------------------ rendering
def markdown_section(metrics: pd.DataFrame, variants: pd.DataFrame | None = None, items: pd.DataFrame | None = None,
                     limit: int = 8) -> str:
    """The report's spread section (empty string when there is nothing to show: one seed and no items).

    Per (hook, compressed model): the compared metrics (one per family, as the headline table)
    as mean ± sd over seeds per variant; the ordering of every pair of variants with the separation rule;
    the smallest difference each metric could have detected at that n; and, where the stored outputs hold
    per-item results, the bootstrap interval over items."""
    from sae_core.report import _markdown_table, plotted_metrics

    from sae_core.report import current_columns

    metrics = with_seeds(metrics if metrics is not None else pd.DataFrame(), variants)
    extra = variant_rows(current_columns(variants) if variants is not None and not variants.empty else None)
    metrics = pd.concat([metrics, extra], ignore_index=True) if len(extra) else metrics
    if metrics.empty:
        return ""
    summary = seed_summary(metrics, variants)
    intervals = item_intervals(metrics, items) if items is not None else pd.DataFrame()
    if summary.empty or (summary["n_seeds"].max() < 2 and intervals.empty):
        return ""
    saebench = [m for m in dict.fromkeys(summary["metric"]) if not m.startswith("variants/")]
    names = [f"variants/{c}" for c in VARIANT_MEASURES if f"variants/{c}" in set(summary["metric"])] + plotted_metrics(saebench, limit)
    pairs = pairwise_marks(metrics, variants, names)
    detectable = detectable_differences(pairs)
    keys = _group_keys(summary)
    lines = ["## Spread: seeds, paired orderings, test items", "",
             f"Values are {SPREAD_NOTE}. {RULE} Pairs the rule does not order read \"{NOT_SEPARATED}\". "
             "\"detectable\" is the smallest paired difference the rule could separate at that n (2 × sd of the per-seed "
             "differences / √n, pooled over the pairs); with n seeds the sign condition alone passes a zero difference "
             "with probability 2 × 0.5ⁿ.", ""]
    groups = summary[summary["metric"].isin(names)].groupby(keys, dropna=False)
    for key, group in sorted(groups, key=lambda item: _natural_key(item[0])):  # blocks.3 before blocks.12
        key = key if isinstance(key, tuple) else (key,)
        lines += [f"### {' · '.join(str(k) for k in key)}", ""]
        table = group.pivot_table(index="variant", columns="metric", values="mean", aggfunc="first")
        cells = {(r.variant, r.metric): _spread_text(r.mean, r.sd, r.n_seeds) + (f" (n={r.n_seeds})" if r.n_seeds > 1 else "")
                 for r in group.itertuples()}
        shown = pd.DataFrame([{"variant": v, **{m: cells.get((v, m), "") for m in names if m in table.columns}}
                              for v in table.index])
        lines += [_markdown_table(shown), ""]
        sel = pairs
        for k, value in zip(keys, key):
            sel = sel[sel[k] == value]
        if len(sel) and (sel["n"] > 1).any():
            det = detectable
            for k, value in zip(keys, key):
                det = det[det[k] == value]
            lines += ["Paired orderings (per-seed differences a − b):", "",
                      _markdown_table(sel.assign(difference=[_spread_text(m, s, n) for m, s, n in
                                                             zip(sel["mean_difference"], sel["sd_difference"], sel["n"])])
                                      [["metric", "a", "b", "n", "difference", "mark"]]), "",
                      "Smallest detectable paired difference: " + ", ".join(
                          f"{r.metric} {r.detectable:.3g} (n={r.n})" for r in det.itertuples() if np.isfinite(r.detectable)) + ".", ""]
        if not intervals.empty:
            iv = intervals
            for k, value in zip(keys, key):
                iv = iv[iv[k] == value]
            iv = iv[(iv["metric_family"] + "/" + iv["metric_name"]).isin(names)]
            if len(iv):
                lines += [f"Bootstrap {ITEM_LEVEL:.0%} interval of the mean over test items (percentile, {ITEM_RESAMPLES} "
                          "resamples of the items, seed 0; each item's value averaged over the SAE seeds first):", "",
                          _markdown_table(iv.assign(metric=iv["metric_family"] + "/" + iv["metric_name"],
                                                    interval=[f"{m:.4g} [{lo:.4g}, {hi:.4g}]" for m, lo, hi in
                                                              zip(iv["mean"], iv["low"], iv["high"])])
                                          [["variant", "metric", "n_seeds", "n_items", "interval"]]), ""]
    return "\n".join(lines)
