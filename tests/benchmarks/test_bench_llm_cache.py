"""benchmarks/bench_llm_cache.py runs as docs/benchmarks.md §11.5 types it (smallest size) and checks its own
claims: every warm first variant found its entry and gave the cold run's SAEBench output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_llm_cache_benchmark_runs_and_reports_identical_outputs(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/bench_llm_cache.py", "--families", "tpp", "--repeats", "1",
                           "--d-sae", "128", "--threads", "1", "--work", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    tpp = result["families"]["tpp"]
    assert tpp["identical"] is True and tpp["statuses_as_expected"] is True
    assert 0 < result["warm"] < result["cold"]


def test_bad_arguments_are_refused_by_name(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/bench_llm_cache.py", "--families", "tpp,nope", "--work", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "nope" in done.stderr
    done = subprocess.run([sys.executable, "benchmarks/bench_llm_cache.py", "--repeats", "0", "--work", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "--repeats" in done.stderr
