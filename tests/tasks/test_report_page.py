"""The report task's HTML page: stored beside summary.md, linked from the artifacts, and a page
(never a crash) when the run is missing or broken."""

from __future__ import annotations

import pandas as pd
import pytest

from sae_core.storage import Storage
from tasks import report as report_task
from tests.sae_core.test_report import _rows, _variant_rows


@pytest.fixture
def artifacts(monkeypatch):
    made = []
    for name in ("create_table_artifact", "create_markdown_artifact", "create_link_artifact"):
        monkeypatch.setattr(report_task, name, lambda name=name, **kw: made.append((name, kw)))
    return made


def _variants(storage):
    return [{"row": row, "sae_uri": storage.uri(row["sae_prefix"]), "hook": row["hook"]}
            for row in _variant_rows().to_dict(orient="records")]


def _cards_manifest():
    return {"kind": "feature_cards", "status": "ok", "message": "", "cards_key": "feature_cards/k.parquet",
            "hook": "blocks.1.hook_resid_post", "sae_prefix": "saes/x/abc", "model_prefix": "compressed_models/abc123",
            "compression": "wanda:0.5"}


def test_page_is_stored_linked_and_holds_plots_cards_and_the_command(tmp_path, artifacts, monkeypatch):
    storage = Storage(f"file://{tmp_path}")
    storage.put_parquet("metrics/core/abc.parquet", _rows())
    seen = []
    monkeypatch.setattr(report_task, "render_cards", lambda s, m: seen.append(m) or
                        '<section class="fc-card" data-latent="3" data-class="damaged">latent 3</section>')
    monkeypatch.setattr(report_task, "CARDS_CSS", ".fc-card { color: red; }")
    out = report_task.write_report.fn("exp", {"name": "exp"}, [], _variants(storage),
                                      [{"rows_key": "metrics/core/abc.parquet"}, _cards_manifest()], storage.url)
    key = f"{out['prefix']}/report.html"
    assert out["html_uri"] == storage.uri(key) and storage.exists(f"{out['prefix']}/summary.md")
    page = storage.get_bytes(key).decode()
    assert seen == [_cards_manifest()] and 'data-latent="3"' in page and ".fc-card { color: red; }" in page
    assert page.count('<img src="data:image/png;base64,') == len(out["plots"]) >= 2
    assert "pytest" in page  # the command that ran (here: the test runner's argv)
    assert "Headline metrics" in page and 'class="rp-message"' not in page
    links = [kw["link"] for name, kw in artifacts if name == "create_link_artifact"]
    assert out["html_uri"] in links
    ui = next(kw["markdown"] for name, kw in artifacts if name == "create_markdown_artifact")
    assert f"[Report page]({out['html_uri']})" in ui


def test_no_finished_run_gives_a_page_that_says_so(tmp_path, artifacts):
    storage = Storage(f"file://{tmp_path}")
    out = report_task.write_report.fn("exp", {"name": "exp"}, [], [], [], storage.url)
    page = storage.get_bytes(f"{out['prefix']}/report.html").decode()
    assert "No finished run in this storage root" in page and "No feature cards" in page and "No plots" in page


def test_missing_pieces_are_named_on_the_page_not_a_crash(tmp_path, artifacts, monkeypatch):
    """A metric rows file gone from storage, an audit whose table is gone (plots fail), a cards renderer
    that raises: the task still writes every file and the page names each problem."""
    storage = Storage(f"file://{tmp_path}")
    storage.put_parquet("metrics/core/abc.parquet", _rows())

    def broken(storage, manifest):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(report_task, "render_cards", broken)
    audit = {"kind": "feature_fidelity", "table_key": "feature_audit/gone.parquet", "hook": "blocks.1.hook_resid_post",
             "sae_prefix": "saes/x/abc", "model_prefix": "compressed_models/abc123",
             "compression": {"spec": "wanda:0.5", "method": "wanda", "structure": "unstructured", "strength": 0.5},
             "perplexity": {"dense": 10.0, "compressed": 11.0}, "audit_perplexity": {"delta_pct": 10.0},
             "summary": {"survived_frac": 0.8, "degraded_frac": 0.1, "damaged_frac": 0.05, "dead_after_frac": 0.05,
                         "mean_r": 0.9, "n_active": 100}, "auc": {"auc_mean": 0.9}}
    out = report_task.write_report.fn("exp", {"name": "exp"}, [], _variants(storage),
                                      [{"rows_key": "metrics/core/abc.parquet"}, {"rows_key": "metrics/core/gone.parquet"},
                                       audit, _cards_manifest()], storage.url)
    page = storage.get_bytes(f"{out['prefix']}/report.html").decode()
    assert "Metric rows metrics/core/gone.parquet are missing from storage" in page
    assert "The plots could not be drawn" in page
    assert "Feature cards for blocks.1.hook_resid_post, wanda:0.5 could not be rendered (UnicodeDecodeError" in page
    assert out["n_metric_rows"] == len(_rows()) and storage.exists(f"{out['prefix']}/headline.parquet")


def test_run_command_is_the_argv_or_the_deployment(monkeypatch):
    import sys

    from prefect.runtime import deployment, flow_run

    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "flows.full", "--preset", "toy", "--storage", "file:///tmp/a b"])
    assert report_task.run_command() == "python -m flows.full --preset toy --storage 'file:///tmp/a b'"
    for module, name, value in [(deployment, "name", "sae-transfer-nightly"), (flow_run, "flow_name", "sae-transfer"),
                                (flow_run, "name", "witty-fox"), (flow_run, "parameters", {"preset": "toy"})]:
        monkeypatch.setattr(module, name, value, raising=False)
    assert report_task.run_command() == ('deployment run of sae-transfer/sae-transfer-nightly (flow run witty-fox), '
                                         'parameters {"preset": "toy"}')
