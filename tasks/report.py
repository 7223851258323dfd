"""The combined table and report: Parquet + PNG + markdown in storage, and Prefect artifacts."""

from __future__ import annotations

import base64
import html
import json
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from sae_core import compression_report as crep
from sae_core import depth_report
from sae_core import html_report as hrep
from sae_core import repair_report as rrep
from sae_core import report as rep
from sae_core import spread
from sae_core.feature_cards import CARDS_CSS, render_cards
from sae_core.hashing import config_hash
from sae_core.storage import Storage
from tasks.common import ARTIFACT_TASK_OPTIONS, code_fingerprint


def collect_metrics(storage: Storage, metric_results: list[dict], problems: list[str] | None = None) -> pd.DataFrame:
    """The metric rows the results name. With ``problems`` given, a rows file missing from storage is
    skipped and named there (the report page shows it) instead of failing the report."""
    keys = [r["rows_key"] for r in metric_results if r.get("rows_key")]
    if problems is not None:
        problems += [f"Metric rows {k} are missing from storage: left out of this report." for k in keys if not storage.exists(k)]
        keys = [k for k in keys if storage.exists(k)]
    frames = [rep.current_columns(storage.get_parquet(k)) for k in keys]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@task(name="report", **{**ARTIFACT_TASK_OPTIONS, "cache_policy": None, "persist_result": False})
def write_report(experiment_name: str, config: dict, compressed_llms: list[dict], variants: list[dict],
                 metric_results: list[dict], storage_url: str, controls: list[dict] | None = None,
                 base_model: dict | None = None) -> dict:
    """Always runs (it is cheap): the report reflects whatever the cached steps produced."""
    storage = Storage(storage_url)
    prefix = f"reports/{experiment_name}-{config_hash(config, length=10)}"
    variant_rows = rep.current_columns(pd.DataFrame([v["row"] for v in variants]))
    problems: list[str] = []  # shown on the report page
    metrics = collect_metrics(storage, metric_results, problems)

    audits = [r for r in metric_results if r.get("kind") == "feature_fidelity"]  # the feature audit's manifests
    try:
        plots = _rendered_plots(storage, prefix, metrics, variant_rows, metric_results, audits)
    except Exception as exc:  # noqa: BLE001 - missing audit tables, odd rows: the page says so, the tables still come
        problems.append(f"The plots could not be drawn ({type(exc).__name__}: {exc}).")
        plots = {}
    storage.put_parquet(f"{prefix}/variants.parquet", variant_rows)
    frontier = rrep.report_section(variant_rows, metrics)  # None for rows without variant_spec
    if frontier is not None:
        storage.put_parquet(f"{prefix}/frontier.parquet", frontier[0])
        storage.put_parquet(f"{prefix}/frontier_budget.parquet", frontier[1])
    if not metrics.empty:
        storage.put_parquet(f"{prefix}/metrics.parquet", metrics)
        headline = rep.headline_table(metrics)
        storage.put_parquet(f"{prefix}/headline.parquet", headline)
    items = spread.stored_items(storage, metric_results)  # per-item values of the stored SAEBench outputs
    summary = (rep.markdown_summary(metrics, variant_rows, compressed_llms, sorted(plots), controls=controls, base_model=base_model,
                                    items=items)
               + "\n" + crep.markdown_section(metric_results, metrics) + ("\n" + frontier[2] if frontier is not None else ""))
    storage.put_bytes(f"{prefix}/summary.md", summary.encode())
    storage.put_json(f"{prefix}/config.json", config)
    html_uri = write_page(storage, prefix, experiment_name, config, summary, plots, metric_results, variant_rows, metrics, problems)

    key = f"sae-transfer-{experiment_name}".lower().replace("_", "-")
    if not metrics.empty:
        create_table_artifact(key=f"{key}-headline", table=_records(rep.rounded(rep.compact_headline_table(metrics))),
                              description="Headline SAEBench metrics per SAE variant, on the compressed model "
                                          "(one per family, 4 significant digits; all of them, unrounded, in the report's "
                                          "headline.parquet)")
    create_table_artifact(key=f"{key}-variants", table=_records(rep.rounded(rep.variants_for_display(variant_rows))),
                          description="SAE variants: cost and reconstruction on the compressed model (4 significant digits). "
                                      + rep.EXPLAINED_VARIANCE_NOTE)
    create_markdown_artifact(key=f"{key}-report", markdown=f"**[Report page]({html_uri})** (one HTML file, opens offline)\n\n"
                             + markdown_for_ui(summary, plots, storage.uri(prefix)),
                             description="Full comparison report, plots inline")
    create_link_artifact(key=f"{key}-storage", link=storage.uri(prefix), description="Report folder in storage")
    create_link_artifact(key=f"{key}-page", link=html_uri, description="Report page: one self-contained HTML file")
    for variant in variants[:50]:  # links to checkpoints; a cap keeps the UI readable
        create_link_artifact(link=variant["sae_uri"], description=f"{variant['hook']} {rep.variant_label(variant['row'])} checkpoint")
    return {"prefix": prefix, "uri": storage.uri(prefix), "plots": sorted(plots), "n_metric_rows": int(len(metrics)),
            "n_variants": int(len(variant_rows)), "html_uri": html_uri}


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
    plots.update(depth_report.depth_plots(metrics))  # each metric against layer, when the run has several layers
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


def write_page(storage: Storage, prefix: str, experiment_name: str, config: dict, summary: str, plots: dict[str, bytes],
               metric_results: list[dict], variant_rows: pd.DataFrame, metrics: pd.DataFrame, problems: list[str]) -> str:
    """``{prefix}/report.html`` (sae_core.html_report): never raises for data problems, which the page names."""
    key = f"{prefix}/report.html"
    problems = list(problems)
    if variant_rows.empty and metrics.empty:
        problems.insert(0, "No finished run in this storage root: the report got no SAE variants and no metric rows. "
                           "Run the flow (make run) to the end, then the report again.")
    try:
        cards = [_card_fragment(storage, m) for m in metric_results if m.get("kind") == "feature_cards"]
        metadata = {"messages": problems, **run_metadata(storage, prefix, experiment_name, config)}
        page = hrep.build_report_page(title=f"SAE transfer report: {experiment_name}", summary_markdown=summary, plots=plots,
                                      card_fragments=cards, card_css=CARDS_CSS, metadata=metadata)
    except Exception as exc:  # noqa: BLE001 - a page that says what broke beats no page
        page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(experiment_name)}</title></head><body>"
                f"<h1>SAE transfer report: {html.escape(experiment_name)}</h1><p class='rp-message'>The report page could not be "
                f"built ({html.escape(type(exc).__name__)}: {html.escape(str(exc))}); summary.md beside it holds the report.</p>"
                + "".join(f"<p class='rp-message'>{html.escape(p)}</p>" for p in problems) + "</body></html>")
    storage.put_bytes(key, page.encode())
    return storage.uri(key)


def _card_fragment(storage: Storage, manifest: dict) -> str:
    where = html.escape(f"{manifest.get('hook', '?')}, {manifest.get('compression', '?')}")
    try:
        return render_cards(storage, manifest)
    except Exception as exc:  # noqa: BLE001 - one bad audit does not hide the rest of the page
        return f'<p class="rp-message">Feature cards for {where} could not be rendered ({html.escape(type(exc).__name__)}: {html.escape(str(exc))}).</p>'


def run_metadata(storage: Storage, prefix: str, experiment_name: str, config: dict) -> dict:
    """What the page says about the run: experiment, config hash, code version, storage, time, command."""
    from prefect.runtime import flow_run

    return {"command": run_command(), "experiment": experiment_name, "config_hash": config_hash(config),
            "code_version": code_version(), "storage_root": storage.url, "report_folder": storage.uri(prefix),
            "flow_run": f"{flow_run.name} ({flow_run.id})" if flow_run.id else None,
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def run_command() -> str:
    """The exact command: the argv as typed for a CLI run (``python -m flows.full --preset toy``), the
    deployment's name for a deployment run."""
    try:
        from prefect.runtime import deployment, flow_run

        if deployment.name:
            parameters = json.dumps(flow_run.parameters, default=str)
            return (f"deployment run of {flow_run.flow_name}/{deployment.name} (flow run {flow_run.name}), parameters "
                    f"{parameters if len(parameters) <= 400 else parameters[:400] + ' ...'}")
    except Exception:  # noqa: BLE001 - outside a flow run, or an older Prefect runtime
        pass
    return shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


def code_version() -> str:
    """The git commit of the checkout (``+ uncommitted changes`` when dirty); the code fingerprint without git."""
    root = Path(__file__).resolve().parents[1]
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except Exception:  # noqa: BLE001 - no git, not a checkout
        return f"code fingerprint {code_fingerprint(__name__)} (no git checkout)"
