"""The combined table and report: Parquet + PNG + markdown in storage, and Prefect artifacts."""

from __future__ import annotations

import base64

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from sae_core import compression_report as crep
from sae_core import repair_report as rrep
from sae_core import report as rep
from sae_core.hashing import config_hash
from sae_core.storage import Storage
from tasks.common import ARTIFACT_TASK_OPTIONS, code_fingerprint


def collect_metrics(storage: Storage, metric_results: list[dict]) -> pd.DataFrame:
    frames = [rep.current_columns(storage.get_parquet(r["rows_key"])) for r in metric_results if r.get("rows_key")]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@task(name="report", **{**ARTIFACT_TASK_OPTIONS, "cache_policy": None, "persist_result": False})
def write_report(experiment_name: str, config: dict, compressed_llms: list[dict], variants: list[dict],
                 metric_results: list[dict], storage_url: str, controls: list[dict] | None = None,
                 base_model: dict | None = None) -> dict:
    """Always runs (it is cheap): the report reflects whatever the cached steps produced."""
    storage = Storage(storage_url)
    prefix = f"reports/{experiment_name}-{config_hash(config, length=10)}"
    variant_rows = rep.current_columns(pd.DataFrame([v["row"] for v in variants]))
    metrics = collect_metrics(storage, metric_results)

    audits = [r for r in metric_results if r.get("kind") == "feature_fidelity"]  # the feature audit's manifests
    plots = _rendered_plots(storage, prefix, metrics, variant_rows, metric_results, audits)
    storage.put_parquet(f"{prefix}/variants.parquet", variant_rows)
    frontier = rrep.report_section(variant_rows, metrics)  # None for rows without variant_spec
    if frontier is not None:
        storage.put_parquet(f"{prefix}/frontier.parquet", frontier[0])
        storage.put_parquet(f"{prefix}/frontier_budget.parquet", frontier[1])
    if not metrics.empty:
        storage.put_parquet(f"{prefix}/metrics.parquet", metrics)
        headline = rep.headline_table(metrics)
        storage.put_parquet(f"{prefix}/headline.parquet", headline)
    summary = (rep.markdown_summary(metrics, variant_rows, compressed_llms, sorted(plots), controls=controls, base_model=base_model)
               + "\n" + crep.markdown_section(metric_results, metrics) + ("\n" + frontier[2] if frontier is not None else ""))
    storage.put_bytes(f"{prefix}/summary.md", summary.encode())
    storage.put_json(f"{prefix}/config.json", config)

    key = f"sae-transfer-{experiment_name}".lower().replace("_", "-")
    if not metrics.empty:
        create_table_artifact(key=f"{key}-headline", table=_records(rep.rounded(rep.compact_headline_table(metrics))),
                              description="Headline SAEBench metrics per SAE variant, on the compressed model "
                                          "(one per family, 4 significant digits; all of them, unrounded, in the report's "
                                          "headline.parquet)")
    create_table_artifact(key=f"{key}-variants", table=_records(rep.rounded(rep.variants_for_display(variant_rows))),
                          description="SAE variants: cost and reconstruction on the compressed model (4 significant digits). "
                                      + rep.EXPLAINED_VARIANCE_NOTE)
    create_markdown_artifact(key=f"{key}-report", markdown=markdown_for_ui(summary, plots, storage.uri(prefix)),
                             description="Full comparison report, plots inline")
    create_link_artifact(key=f"{key}-storage", link=storage.uri(prefix), description="Report folder in storage")
    for variant in variants[:50]:  # links to checkpoints; a cap keeps the UI readable
        create_link_artifact(link=variant["sae_uri"], description=f"{variant['hook']} {rep.variant_label(variant['row'])} checkpoint")
    return {"prefix": prefix, "uri": storage.uri(prefix), "plots": sorted(plots), "n_metric_rows": int(len(metrics)),
            "n_variants": int(len(variant_rows))}


def _rendered_plots(storage: Storage, prefix: str, metrics: pd.DataFrame, variant_rows: pd.DataFrame,
                    metric_results: list[dict], audits: list[dict]) -> dict[str, bytes]:
    """The report's PNGs: read back from storage when the same inputs and plotting code drew them
    before (a cached re-run), drawn and stored otherwise. Drawing is most of the report's time."""
    render_key = config_hash(sorted(str(r.get("rows_key") or r.get("table_key")) for r in metric_results),
                             variant_rows.to_json(orient="records", double_precision=15),
                             code_fingerprint(__name__), *rrep.cache_inputs(variant_rows, metrics))
    index_key = f"{prefix}/plots.json"
    if storage.exists(index_key):
        index = storage.get_json(index_key)
        if index.get("render_key") == render_key and all(storage.exists(f"{prefix}/{n}") for n in index["plots"]):
            return {name: storage.get_bytes(f"{prefix}/{name}") for name in index["plots"]}
    plots = rep.metric_vs_sparsity_plots(metrics)
    cost_png = rep.cost_plot(variant_rows)
    if cost_png:
        plots["cost_per_variant.png"] = cost_png
    frontier_png = rrep.frontier_plot(variant_rows, rrep.identity_rows(metrics))  # None without variant_spec
    if frontier_png:
        plots["frontier.png"] = frontier_png
    from sae_core.training_report import training_curve_plots  # the trained SAEs' loss and dead latents per step

    plots.update(training_curve_plots(storage, variant_rows))
    if audits:
        plots.update(crep.compression_plots(audits, {a["table_key"]: storage.get_parquet(a["table_key"]) for a in audits}, metrics))
    for name, png in plots.items():
        storage.put_bytes(f"{prefix}/{name}", png)
    storage.put_json(index_key, {"render_key": render_key, "plots": sorted(plots)})  # last: the PNGs are complete
    return plots


# The UI cannot fetch file:// or private s3:// images, so plots go inline as data: URIs (which the
# Prefect UI renders) up to a budget that keeps the artifact small in Prefect's database.
INLINE_PLOTS_BUDGET_BYTES = 2_000_000


def markdown_for_ui(summary: str, plots: dict[str, bytes], report_uri: str) -> str:
    """The storage summary with each plot inlined while the budget lasts, the rest linked to storage."""
    budget = INLINE_PLOTS_BUDGET_BYTES
    for name in sorted(plots):
        encoded = base64.b64encode(plots[name]).decode()
        if len(encoded) <= budget:
            summary = summary.replace(f"]({name})", f"](data:image/png;base64,{encoded})")
            budget -= len(encoded)
        else:
            summary = summary.replace(f"![{name}]({name})", f"[{name}]({report_uri}/{name})")
    return summary


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict(orient="records")]
