"""The GPU check (benchmarks/gpu_check.sh) cannot rot: its dry run, on CPU at tiny budgets, against
the rehearsal's fake hub, runs every part (the gpt2-small flow, the caching benchmark against
SAELens, the prune-vs-retrain benchmark) and writes every figure into one JSON file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYER = 1


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu_writes_every_figure(tmp_path_factory, tmp_path):
    from tests.helpers.fakehub import shared_fake_hub

    hub = shared_fake_hub(tmp_path_factory, layers=(LAYER,))
    out = tmp_path / "out"
    env = {**os.environ, **hub.env(), "GPU_CHECK_SKIP_ENV": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--budget", "tiny", "--layer", str(LAYER),
                           "--hf-home", str(hub.hf_home), "--dataset-mirror", str(hub.dataset_mirror), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=7200)
    report = json.loads((out / "gpu_check.json").read_text())
    assert done.returncode == 0, json.dumps(report["parts"], indent=1, default=str)[-6000:]
    assert set(report["parts"]) == {"flow", "caching", "sae_variants"}
    flow, caching, variants = (report["parts"][k] for k in ("flow", "caching", "sae_variants"))
    assert {row["hook"] for row in flow["result"]["metrics"]} == {
        f"blocks.{LAYER}.hook_resid_post", f"blocks.{LAYER}.hook_mlp_out", f"blocks.{LAYER}.attn.hook_z"}
    assert caching["result"]["ours_tok_s"] > 0 and caching["result"]["saelens_tok_s"] > 0
    assert variants["result"]["prune_s"] > 0 and variants["result"]["projected"]["ratio"] > 0
    assert variants["activations"].startswith(str(out / "store"))  # the flow's own cached activations
    assert "| caching | ok |" in (out / "gpu_check.md").read_text()
