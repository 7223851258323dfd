"""The report page of a real (tiny) toy run, opened from disk in headless Chromium (Debian's package,
installed by `make chromium`, which `make test-slow` runs first): every image loads, the feature
cards are there, nothing is fetched from outside, no console error or page exception.

`REPORT_SCREENSHOT=docs/report-page-toy.png` also writes the screenshot there (how docs/ got it)."""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path

import pytest

from sae_core.storage import Storage
from tasks import report as report_task
from tests.conftest import TINY_FLOW_OVERRIDES
from tests.helpers.browser import chromium_path, inspect_page

pytestmark = pytest.mark.slow


def test_toy_report_page_opens_offline_in_chromium(prefect_harness, tmp_path, monkeypatch):
    if chromium_path() is None:
        pytest.fail("no chromium: `make chromium` installs Debian's package (make test-slow does it first)")

    from flows.full import full

    storage_url = f"file://{tmp_path}/store"
    summary = full(preset="toy", overrides=TINY_FLOW_OVERRIDES, storage_url=storage_url)
    report = summary["report"] if "report" in summary else summary
    html_uri = report["html_uri"]
    assert html_uri.startswith("file://") and html_uri.endswith("/report.html")
    page_file = Path(html_uri[len("file://"):])
    copy = tmp_path / "opened-alone" / "report.html"  # nothing beside it: the page must stand alone
    copy.parent.mkdir()
    shutil.copy(page_file, copy)

    shot = tmp_path / "report-page.png"
    seen = inspect_page(copy, screenshot=shot)
    assert seen["exceptions"] == [] and seen["console_errors"] == []
    assert len(seen["images"]) >= 3, seen["images"]  # the metric, cost, frontier and audit plots
    assert all(i["complete"] and i["naturalWidth"] > 0 and i["scheme"] == "data" for i in seen["images"]), seen["images"]
    assert seen["cards"] > 0
    assert seen["missingTargets"] == 0 and len(seen["tocLinks"]) >= 5
    assert [r for r in seen["resources"] if not r.startswith(("data:", "file:"))] == []
    assert shot.read_bytes()[:4] == b"\x89PNG"
    if target := os.environ.get("REPORT_SCREENSHOT"):
        shutil.copy(shot, target)
