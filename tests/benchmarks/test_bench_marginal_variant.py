"""benchmarks/bench_marginal_variant.py runs as docs/benchmarks.md §11.4 types it (smallest size) and checks
its own equality claim: every variant's SAEBench output identical before and after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_marginal_variant_benchmark_runs_and_reports_identical_outputs(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/bench_marginal_variant.py", "--families", "tpp", "--variants", "1",
                           "--d-sae", "128", "--threads", "1", "--work", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert result["families"]["tpp"]["identical"] is True
    assert result["marginal_after"] > 0 and result["marginal_before"] > 0


def test_unknown_family_is_refused_by_name(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/bench_marginal_variant.py", "--families", "tpp,nope", "--work", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "nope" in done.stderr
